// How the GPU fusion kernel cuts a layout into work units (fusion_plan.hpp). Compiled with
// -ffp-contract=off: the taps come from the CPU reference's tap() and must round as it does.
#include "directport/kernels/fusion_plan.hpp"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <limits>
#include <queue>
#include <string>

#include "directport/core/error.hpp"
#include "directport/kernels/fusion_math.hpp"

namespace dp::kernels::plan {
namespace {

// An integer from the environment, or `fallback` where unset; out of [lo, hi] is an error.
std::int64_t env_int(const char* name, std::int64_t fallback, std::int64_t lo, std::int64_t hi) {
  const char* env = std::getenv(name);
  if (!env || !*env) return fallback;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  if (*end != '\0' || v < lo || v > hi) {
    throw ValidationError(std::string(name) + " must be a number from " + std::to_string(lo) + " to " + std::to_string(hi) +
                          ", got '" + env + "'");
  }
  return v;
}

// Units are numbered by an unsigned counter on the device: a bound far above any layout the
// FusionLayout limits allow at sensible unit sizes.
constexpr std::int64_t kMaxUnits = std::numeric_limits<std::int32_t>::max();
// The size of the units that cut `len` evenly into as few as have at most `want` each, rounded up
// to `align` (want a multiple of align): all but the last have that size, the last the rest.
std::int64_t even_split(std::int64_t len, std::int64_t want, std::int64_t align) {
  if (len <= 0) return align;
  const std::int64_t n = (len + want - 1) / want;
  const std::int64_t size = (len + n - 1) / n;
  return std::min(want, (size + align - 1) / align * align);
}
// How many units of `size` cover `len`.
std::int64_t parts(std::int64_t len, std::int64_t size) { return len <= 0 ? 0 : (len + size - 1) / size; }

[[noreturn]] void too_many(std::size_t units, std::int64_t target) {
  throw ValidationError("fusion layout makes " + std::to_string(units) + " work units of about " +
                        std::to_string(target) + " elements; the launch allows 2^31 - 1 (a larger " +
                        "DIRECTPORT_FUSION_UNIT, or a smaller grid)");
}

// The taps of every output index along one axis: what the CPU reference computes per element.
void push_taps(std::vector<Tap32>& taps, std::int64_t in, std::int64_t out) {
  const Resample r = make_resample(in, out);
  for (std::int64_t d = 0; d < out; ++d) {
    const Tap t = tap(r, d, in);
    taps.push_back({static_cast<std::uint32_t>(t.i0), static_cast<std::uint32_t>(t.i1), t.l0, t.l1});
  }
}

}  // namespace

int dtype_code(DType t) { return t == DType::f16 ? kF16 : t == DType::bf16 ? kBF16 : kF32; }

std::int64_t unit_elements_from_env() { return env_int("DIRECTPORT_FUSION_UNIT", kUnitElements, 256, std::int64_t(1) << 24); }
int unit_group_from_env() { return static_cast<int>(env_int("DIRECTPORT_FUSION_GROUP", kGroup, 1, kMaxGroup)); }
int blocks_per_sm_from_env() { return static_cast<int>(env_int("DIRECTPORT_FUSION_BLOCKS", kBlocksPerSm, 4, 5)); }
bool even_split_from_env() { return env_int("DIRECTPORT_FUSION_EVEN", 1, 0, 1) == 1; }

std::uint64_t unit_cost(const Unit& u) {
  return std::uint64_t(u.nc) * (std::uint64_t(u.rows) * std::max(u.cols, 1u) + std::uint64_t(u.nrows) * u.cols);
}

Balance estimate_balance(const FusionPlan& P, unsigned blocks, double fixed) {
  DP_EXPECTS(blocks >= 1 && fixed >= 0, "estimate_balance() needs at least one block and a fixed cost >= 0");
  // The blocks' totals so far, the least on top: the next unit goes to the block free first.
  std::priority_queue<double, std::vector<double>, std::greater<double>> free_at;
  for (unsigned b = 0; b < blocks; ++b) free_at.push(0.0);
  double total = 0, longest = 0;
  for (const auto& u : P.units) {
    const double c = double(unit_cost(u)) + fixed;
    const double t = free_at.top() + c;
    free_at.pop();
    free_at.push(t);
    total += c;
    longest = std::max(longest, t);
  }
  return {P.units.size(), blocks, longest, total / blocks};
}

FusionPlan plan_fusion(const FusionLayout& L, std::int64_t target, int group, bool even) {
  DP_EXPECTS(target >= 1 && group >= 1 && group <= kMaxGroup, "plan_fusion() needs unit_elements >= 1 and group in 1..8");
  const std::int64_t Hg = L.grid_h(), Wg = L.grid_w(), plane = Hg * Wg;
  FusionPlan P;
  auto& desc = P.teachers;
  auto& units = P.units;
  auto& taps = P.taps;
  std::size_t shared_bytes = 0;
  for (std::size_t i = 0; i < L.teachers(); ++i) {
    const auto& in = L.inputs()[i];
    TeacherDesc d{};
    d.dtype = dtype_code(in.dtype);
    d.norm = static_cast<int>(in.norm);
    d.channels = static_cast<int>(in.channels());
    d.chan_base = static_cast<unsigned>(L.channel_base(i));
    d.out_offset = L.offset(i);
    const auto ti = static_cast<std::uint32_t>(i);
    if (!in.spatial()) {
      d.mode = kVector;
      d.h = d.w = 1;
      for (std::int64_t e = 0; e < d.channels; e += target) {
        units.push_back({ti, 0, 1, static_cast<std::uint32_t>(e), static_cast<std::uint32_t>(std::min(target, d.channels - e)), 0, 0, 0, 0});
      }
      desc.push_back(d);
      continue;
    }
    d.h = static_cast<std::uint32_t>(in.shape[1]);
    d.w = static_cast<std::uint32_t>(in.shape[2]);
    d.mode = d.h == Hg && d.w == Wg ? kCopy : kBand;
    // Pairs: two adjacent elements share a row and an alignment of two in the input (copy) and
    // the output, whichever channel and row (the pointers themselves are checked per frame).
    d.pairs = L.offset(i) % 2 == 0 && plane % 2 == 0 && (d.mode == kCopy || Wg % 2 == 0);
    // Vectors of kVec elements the same way (kMaxCols is a multiple of kVec: a band's columns stay
    // aligned).
    d.vec = L.offset(i) % kVec == 0 && plane % kVec == 0 && (d.mode == kCopy || Wg % kVec == 0);
    int g = std::min(group, d.channels);  // channels a unit
    auto push = [&](std::int64_t c, std::int64_t y0, std::int64_t rows, std::int64_t x0, std::int64_t cols,
                    std::int64_t rbase, std::int64_t nrows) {
      units.push_back({ti, static_cast<std::uint32_t>(c), static_cast<std::uint32_t>(std::min<std::int64_t>(g, d.channels - c)),
                       static_cast<std::uint32_t>(y0), static_cast<std::uint32_t>(rows), static_cast<std::uint32_t>(x0),
                       static_cast<std::uint32_t>(cols), static_cast<std::uint32_t>(rbase), static_cast<std::uint32_t>(nrows)});
    };
    // The last quarter of a plane (rows, or elements) is cut into units of a quarter of the size
    // (kTailDivisor): taken last, they keep the launch's end short while the rest of the work
    // comes in units large enough that their fixed costs (a unit's taps, its rows of horizontal
    // interpolation, its sums) stay small. Each part is cut evenly (even_split()), so that no
    // large unit reaches into the last quarter and leaves it a sliver.
    if (d.mode == kCopy) {
      const std::int64_t align = d.vec ? kVec : 2;  // a unit starts and ends on a pair or a vector
      const std::int64_t n = std::max<std::int64_t>(align, target / g / align * align);
      const std::int64_t n_tail = std::max<std::int64_t>(align, target / kTailDivisor / g / align * align);
      const std::int64_t cut = (plane - plane / 4) / align * align;
      const std::int64_t head_size = even ? even_split(cut, n, align) : n;
      const std::int64_t tail_size = even ? even_split(plane - cut, n_tail, align) : n_tail;
      const std::int64_t count = (d.channels + g - 1) / g * (parts(cut, head_size) + parts(plane - cut, tail_size));
      if (std::int64_t(units.size()) + count > kMaxUnits) too_many(units.size() + std::size_t(count), target);
      for (std::int64_t c = 0; c < d.channels; c += g) {
        for (std::int64_t e = 0; e < plane;) {
          // (Not even: a large unit may reach past the cut, as kernel 6's plan did, for measuring.)
          const std::int64_t r = e < cut ? std::min(head_size, (even ? cut : plane) - e) : std::min(tail_size, plane - e);
          push(c, e, r, 0, 0, 0, 0);
          e += r;
        }
      }
      desc.push_back(d);
      continue;
    }
    d.row_taps = static_cast<std::uint32_t>(taps.size());
    push_taps(taps, d.h, Hg);
    d.col_taps = static_cast<std::uint32_t>(taps.size());
    push_taps(taps, d.w, Wg);
    const Tap32* rt = taps.data() + d.row_taps;
    d.tap_pairs = d.w % 2 == 0;
    for (std::int64_t x = 0; x < Wg && d.tap_pairs; ++x) {
      const Tap32& t = taps[d.col_taps + std::size_t(x)];
      d.tap_pairs = t.i1 == t.i0 + 1 && t.i0 % 2 == 0;
    }
    // Columns: the grid's width, or chunks of kMaxCols (even, so that pairs stay aligned).
    const std::int64_t cols = std::min(Wg, kMaxCols);
    // Rows: as many as make `target` elements, fewer where their input rows would not fit.
    auto span = [&](std::int64_t y0, std::int64_t rows) {  // input rows a band needs
      return std::int64_t(rt[y0 + rows - 1].i1) - std::int64_t(rt[y0].i0) + 1;
    };
    // The most input rows `rows` consecutive output rows need, wherever they start (the bands of
    // the plane's last quarter start anywhere); a shorter band needs no more.
    auto widest = [&](std::int64_t rows) {
      if (rows >= Hg) return span(0, Hg);
      std::int64_t m = 0;
      for (std::int64_t y0 = 0; y0 + rows <= Hg; ++y0) m = std::max(m, span(y0, rows));
      return m;
    };
    // Rows: as many as make the target's elements, fewer where their input rows would not fit.
    // (Two rows of kMaxCols fit for one channel: the loops end.)
    auto bytes = [&](std::int64_t rows) { return g * widest(rows) * cols * 4; };
    auto rows_for = [&](std::int64_t elements) {
      std::int64_t rows = std::clamp<std::int64_t>(elements / (g * cols), 1, std::min<std::int64_t>(Hg, kMaxRows));
      while (rows > 1 && bytes(rows) > kBandBytes) rows = rows > 8 ? rows * 3 / 4 : rows - 1;
      return rows;
    };
    std::int64_t rows = rows_for(target);
    while (g > 1 && bytes(rows) > kBandBytes) --g;
    const std::int64_t rows_tail = std::min(rows, rows_for(target / kTailDivisor));
    const std::int64_t cut = Hg - Hg / 4;
    // At most `rows` (`rows_tail`) a band, so their input rows fit as computed above.
    const std::int64_t head_rows = even ? even_split(cut, rows, 1) : rows;
    const std::int64_t tail_rows = even ? even_split(Hg - cut, rows_tail, 1) : rows_tail;
    const std::int64_t count =
        (d.channels + g - 1) / g * (parts(cut, head_rows) + parts(Hg - cut, tail_rows)) * ((Wg + cols - 1) / cols);
    if (std::int64_t(units.size()) + count > kMaxUnits) too_many(units.size() + std::size_t(count), target);
    for (std::int64_t c = 0; c < d.channels; c += g) {
      for (std::int64_t y0 = 0; y0 < Hg;) {
        const std::int64_t r = y0 < cut ? std::min(head_rows, (even ? cut : Hg) - y0) : std::min(tail_rows, Hg - y0);
        const std::int64_t need = span(y0, r);
        shared_bytes = std::max<std::size_t>(shared_bytes, static_cast<std::size_t>(std::min<std::int64_t>(g, d.channels - c) * need * cols * 4));
        for (std::int64_t x0 = 0; x0 < Wg; x0 += cols) push(c, y0, r, x0, std::min(cols, Wg - x0), rt[y0].i0, need);
        y0 += r;
      }
    }
    desc.push_back(d);
  }
  // The largest units first (output plus horizontal rows), so that the last ones taken are small.
  std::stable_sort(units.begin(), units.end(), [](const Unit& x, const Unit& y) { return unit_cost(x) > unit_cost(y); });
  P.shared_bytes = shared_bytes;
  return P;
}

}  // namespace dp::kernels::plan

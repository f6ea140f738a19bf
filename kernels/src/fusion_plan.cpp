// How the GPU fusion kernel cuts a layout into work units (fusion_plan.hpp). Compiled with
// -ffp-contract=off: the taps come from the CPU reference's tap() and must round as it does.
#include "directport/kernels/fusion_plan.hpp"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <limits>
#include <queue>
#include <string>
#include <utility>
#include <vector>

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
// The units along a plane of `total` rows (a band) or elements (a copy), as [start, start + len):
// its first three quarters [0, cut) in units of at most `want`, its last quarter in units of at
// most `want_tail`, each part cut into as few units as that allows, of sizes that differ by at most
// `align` (want and want_tail multiples of align; where `total` is not, the last unit takes the
// rest). Not `even` (kernel 6's cut): units of `want` while they start before the cut, the last
// of them reaching past it, then units of `want_tail`.
std::vector<std::pair<std::int64_t, std::int64_t>> cut_plane(std::int64_t total, std::int64_t cut, std::int64_t want,
                                                             std::int64_t want_tail, std::int64_t align, bool even) {
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  if (!even) {
    for (std::int64_t e = 0; e < total;) {
      const std::int64_t r = std::min(e < cut ? want : want_tail, total - e);
      out.emplace_back(e, r);
      e += r;
    }
    return out;
  }
  auto part = [&](std::int64_t begin, std::int64_t len, std::int64_t w) {
    if (len <= 0) return;
    const std::int64_t n = (len + w - 1) / w;  // at most `len / align + 1`: no unit is empty
    const std::int64_t granules = len / align, base = granules / n, extra = granules % n;
    for (std::int64_t i = 0, e = begin; i < n; ++i) {
      std::int64_t r = (base + (i < extra ? 1 : 0)) * align;
      if (i == n - 1) r = begin + len - e;  // the rest (len's remainder below align)
      out.emplace_back(e, r);
      e += r;
    }
  };
  part(0, cut, want);
  part(cut, total - cut, want_tail);
  return out;
}

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
bool even_split_from_env() { return env_int("DIRECTPORT_FUSION_EVEN", 0, 0, 1) == 1; }
bool grid_launch_from_env() { return env_int("DIRECTPORT_FUSION_GRID", 1, 0, 1) == 1; }
bool quad_loads_from_env() { return env_int("DIRECTPORT_FUSION_QUADS", 1, 0, 1) == 1; }
bool input_stats_from_env() { return env_int("DIRECTPORT_FUSION_INSTATS", 1, 0, 1) == 1; }

std::vector<double> axis_weights(const Tap32* taps, std::int64_t out, std::int64_t in) {
  std::vector<double> w(3 * std::size_t(in), 0.0);
  for (std::int64_t d = 0; d < out; ++d) {
    const Tap32& t = taps[d];
    DP_EXPECTS(t.i0 < in && t.i1 < in && (t.i1 == t.i0 || t.i1 == t.i0 + 1),
               "axis_weights() needs every output's taps inside the input, adjacent or equal");
    const double l0 = t.l0, l1 = t.l1;
    if (t.i0 == t.i1) {
      w[3 * t.i0] += l0 + l1;
      w[3 * t.i0 + 1] += (l0 + l1) * (l0 + l1);
    } else {
      w[3 * t.i0] += l0;
      w[3 * t.i1] += l1;
      w[3 * t.i0 + 1] += l0 * l0;
      w[3 * t.i1 + 1] += l1 * l1;
      w[3 * t.i0 + 2] += l0 * l1;
    }
  }
  return w;
}

std::uint64_t unit_cost(const Unit& u) {
  if (u.stats) return std::uint64_t(kStatsCost) * u.nc * u.rows * u.cols;  // input elements, each as kStatsCost outputs
  return std::uint64_t(u.nc) * (std::uint64_t(u.rows) * std::max(u.cols, 1u) + std::uint64_t(u.nrows) * u.cols);
}

Balance estimate_balance(const FusionPlan& P, unsigned blocks, double fixed) {
  DP_EXPECTS(blocks >= 1 && fixed >= 0, "estimate_balance() needs at least one block and a fixed cost >= 0");
  const std::size_t n = P.units.size();
  // The kernel launches no more blocks than units.
  blocks = static_cast<unsigned>(std::min<std::size_t>(blocks, std::max<std::size_t>(n, 1)));
  if (n == 0) return {0, blocks, 0, 0};
  auto cost = [&](std::size_t k) { return double(unit_cost(P.units[k])) + fixed; };
  double total = 0;
  for (std::size_t k = 0; k < n; ++k) total += cost(k);  // every unit runs once
  // As fuse_kernel hands them out: a block takes one unit as it starts, and the next one each
  // time it starts a unit (thread 0 claims it while the block works), so a block holds the unit
  // it runs and the one it will run next. Block b starts with units b and blocks + b.
  struct Running {
    double done;       // when its current unit ends
    std::size_t next;  // the unit it holds for after, or n
  };
  auto later = [](const Running& x, const Running& y) { return x.done > y.done; };
  std::priority_queue<Running, std::vector<Running>, decltype(later)> running(later);
  for (std::size_t b = 0; b < blocks; ++b) running.push({cost(b), blocks + b < n ? blocks + b : n});
  std::size_t taken = std::min<std::size_t>(n, 2 * std::size_t(blocks));
  double longest = 0;
  while (!running.empty()) {
    const Running r = running.top();
    running.pop();
    longest = std::max(longest, r.done);
    if (r.next == n) continue;  // nothing held: the block is done
    running.push({r.done + cost(r.next), taken < n ? taken++ : n});  // starts the held unit, claims the next
  }
  return {n, blocks, longest, total / blocks};
}

FusionPlan plan_fusion(const FusionLayout& L, std::int64_t target, int group, bool even, bool input_stats) {
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
        units.push_back({ti, 0, 1, static_cast<std::uint32_t>(e), static_cast<std::uint32_t>(std::min(target, d.channels - e)), 0, 0, 0, 0, 0});
      }
      d.chan_units = 1;
      d.units = static_cast<std::uint32_t>((d.channels + target - 1) / target);
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
                    std::int64_t rbase, std::int64_t nrows, std::uint32_t stats) {
      units.push_back({ti, static_cast<std::uint32_t>(c), static_cast<std::uint32_t>(std::min<std::int64_t>(g, d.channels - c)),
                       static_cast<std::uint32_t>(y0), static_cast<std::uint32_t>(rows), static_cast<std::uint32_t>(x0),
                       static_cast<std::uint32_t>(cols), static_cast<std::uint32_t>(rbase), static_cast<std::uint32_t>(nrows),
                       stats});
    };
    // The last quarter of a plane (rows, or elements) is cut into units of a quarter of the size
    // (kTailDivisor): taken last, they keep the launch's end short while the rest of the work
    // comes in units large enough that their fixed costs (a unit's taps, its rows of horizontal
    // interpolation, its sums) stay small. Each part is cut evenly (cut_plane()), so that no
    // large unit reaches into the last quarter and leaves it a sliver.
    if (d.mode == kCopy) {
      const std::int64_t align = d.vec ? kVec : 2;  // a unit starts and ends on a pair or a vector
      const std::int64_t n = std::max<std::int64_t>(align, target / g / align * align);
      const std::int64_t n_tail = std::max<std::int64_t>(align, target / kTailDivisor / g / align * align);
      const std::int64_t cut = (plane - plane / 4) / align * align;
      const auto pieces = cut_plane(plane, cut, n, n_tail, align, even);
      const std::int64_t count = (d.channels + g - 1) / g * std::int64_t(pieces.size());
      if (std::int64_t(units.size()) + count > kMaxUnits) too_many(units.size() + std::size_t(count), target);
      for (std::int64_t c = 0; c < d.channels; c += g) {
        for (const auto& [e, r] : pieces) push(c, e, r, 0, 0, 0, 0, 0);
      }
      d.chan_units = static_cast<std::uint32_t>(pieces.size());
      d.units = static_cast<std::uint32_t>(count);
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
    d.tap_quads = d.tap_pairs && d.dtype != kF32 && d.w % 8 == 0 && Wg % 4 == 0;
    for (std::int64_t x = 0; x < Wg && d.tap_quads; ++x) {
      const Tap32& first = taps[d.col_taps + std::size_t(x / 4 * 4)];
      d.tap_quads = first.i0 % 8 == 0 && taps[d.col_taps + std::size_t(x)].i0 == first.i0 + 2 * std::uint32_t(x % 4);
    }
    // Columns: the grid's width, or chunks of kMaxCols (even, so that pairs stay aligned).
    const std::int64_t cols = std::min(Wg, kMaxCols);
    // Rows: as many as make `target` elements, fewer where their input rows would not fit.
    auto span = [&](std::int64_t y0, std::int64_t rows) {  // input rows a band needs
      return std::int64_t(rt[y0 + rows - 1].i1) - std::int64_t(rt[y0].i0) + 1;
    };
    // The most input rows `rows` consecutive output rows need, wherever they start (cut_plane()'s
    // bands may start at any row); a shorter band needs no more.
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
    const auto bands = cut_plane(Hg, cut, rows, rows_tail, 1, even);
    const std::int64_t count = (d.channels + g - 1) / g * std::int64_t(bands.size()) * ((Wg + cols - 1) / cols);
    if (std::int64_t(units.size()) + count > kMaxUnits) too_many(units.size() + std::size_t(count), target);
    for (std::int64_t c = 0; c < d.channels; c += g) {
      for (const auto& [y0, r] : bands) {
        const std::int64_t need = span(y0, r);
        shared_bytes = std::max<std::size_t>(shared_bytes, static_cast<std::size_t>(std::min<std::int64_t>(g, d.channels - c) * need * cols * 4));
        for (std::int64_t x0 = 0; x0 < Wg; x0 += cols) push(c, y0, r, x0, std::min(cols, Wg - x0), rt[y0].i0, need, 0);
      }
    }
    std::int64_t stats_count = 0, stats_per_channel = 0;
    // Fewer inputs than outputs: the statistics from the input (axis_weights()), in kStats units of
    // up to kMaxGroup channels and `target` input elements.
    d.in_stats = input_stats && std::int64_t(d.h) * d.w < plane;
    if (d.in_stats) {
      d.row_weights = static_cast<std::uint32_t>(P.weights.size() / 3);
      const auto wy = axis_weights(rt, Hg, d.h);
      P.weights.insert(P.weights.end(), wy.begin(), wy.end());
      d.col_weights = static_cast<std::uint32_t>(P.weights.size() / 3);
      const auto wx = axis_weights(taps.data() + d.col_taps, Wg, d.w);
      P.weights.insert(P.weights.end(), wx.begin(), wx.end());
      // An input element costs a kStats unit about kStatsCost outputs' work (float64, four loads).
      const std::int64_t in_plane = std::int64_t(d.h) * d.w, target_s = std::max<std::int64_t>(1, target / kStatsCost);
      const std::int64_t gs = std::clamp<std::int64_t>(target_s / in_plane, 1, kMaxGroup);
      const std::int64_t rows_s = std::clamp<std::int64_t>(target_s / d.w, 1, d.h);
      stats_per_channel = (d.h + rows_s - 1) / rows_s;
      for (std::int64_t c = 0; c < d.channels; c += gs) {
        for (std::int64_t r0 = 0; r0 < d.h; r0 += rows_s) {
          units.push_back({ti, static_cast<std::uint32_t>(c), static_cast<std::uint32_t>(std::min<std::int64_t>(gs, d.channels - c)),
                           static_cast<std::uint32_t>(r0), static_cast<std::uint32_t>(std::min<std::int64_t>(rows_s, d.h - r0)), 0,
                           d.w, 0, 0, 1});
          ++stats_count;
        }
      }
      if (std::int64_t(units.size()) > kMaxUnits) too_many(units.size(), target);
    }
    d.chan_units = static_cast<std::uint32_t>(bands.size() * std::size_t((Wg + cols - 1) / cols) + stats_per_channel);
    d.units = static_cast<std::uint32_t>(count + stats_count);
    desc.push_back(d);
  }
  // Vectors and kStats units first (small, and the last unit of an isotropic teacher or of a channel
  // folds its statistics: taken early, that is not the launch's end), then the largest units (output
  // plus horizontal rows), so that the last ones taken are small.
  auto early = [&](const Unit& u) { return desc[u.teacher].mode == kVector || u.stats; };
  std::stable_sort(units.begin(), units.end(), [&](const Unit& x, const Unit& y) {
    if (early(x) != early(y)) return early(x);
    return unit_cost(x) > unit_cost(y);
  });
  P.shared_bytes = shared_bytes;
  return P;
}

}  // namespace dp::kernels::plan

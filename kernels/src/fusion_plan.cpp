// How the GPU fusion kernel cuts a layout into work units (fusion_plan.hpp). Compiled with
// -ffp-contract=off: the taps come from the CPU reference's tap() and must round as it does.
#include "directport/kernels/fusion_plan.hpp"

#include <algorithm>
#include <cstdlib>
#include <limits>
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

FusionPlan plan_fusion(const FusionLayout& L, std::int64_t target, int group) {
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
    int g = std::min(group, d.channels);  // channels a unit
    auto push = [&](std::int64_t c, std::int64_t y0, std::int64_t rows, std::int64_t x0, std::int64_t cols,
                    std::int64_t rbase, std::int64_t nrows) {
      units.push_back({ti, static_cast<std::uint32_t>(c), static_cast<std::uint32_t>(std::min<std::int64_t>(g, d.channels - c)),
                       static_cast<std::uint32_t>(y0), static_cast<std::uint32_t>(rows), static_cast<std::uint32_t>(x0),
                       static_cast<std::uint32_t>(cols), static_cast<std::uint32_t>(rbase), static_cast<std::uint32_t>(nrows)});
    };
    if (d.mode == kCopy) {
      const std::int64_t n = std::max<std::int64_t>(2, target / g / 2 * 2);
      const std::int64_t count = (d.channels + g - 1) / g * ((plane + n - 1) / n);
      if (std::int64_t(units.size()) + count > kMaxUnits) too_many(units.size() + std::size_t(count), target);
      for (std::int64_t c = 0; c < d.channels; c += g) {
        for (std::int64_t e = 0; e < plane; e += n) push(c, e, std::min(n, plane - e), 0, 0, 0, 0);
      }
      desc.push_back(d);
      continue;
    }
    d.row_taps = static_cast<std::uint32_t>(taps.size());
    push_taps(taps, d.h, Hg);
    d.col_taps = static_cast<std::uint32_t>(taps.size());
    push_taps(taps, d.w, Wg);
    const Tap32* rt = taps.data() + d.row_taps;
    // Columns: the grid's width, or chunks of kMaxCols (even, so that pairs stay aligned).
    const std::int64_t cols = std::min(Wg, kMaxCols);
    // Rows: as many as make `target` elements, fewer where their input rows would not fit.
    auto span = [&](std::int64_t y0, std::int64_t rows) {  // input rows a band needs
      return std::int64_t(rt[y0 + rows - 1].i1) - std::int64_t(rt[y0].i0) + 1;
    };
    auto widest = [&](std::int64_t rows) {
      std::int64_t m = 0;
      for (std::int64_t y0 = 0; y0 < Hg; y0 += rows) m = std::max(m, span(y0, std::min(rows, Hg - y0)));
      return m;
    };
    // (Two rows of kMaxCols fit for one channel: the loops end.)
    std::int64_t rows = std::clamp<std::int64_t>(target / (g * cols), 1, std::min<std::int64_t>(Hg, kMaxRows));
    auto bytes = [&] { return g * widest(rows) * cols * 4; };
    while (rows > 1 && bytes() > kBandBytes) rows = rows > 8 ? rows * 3 / 4 : rows - 1;
    while (g > 1 && bytes() > kBandBytes) --g;
    shared_bytes = std::max<std::size_t>(shared_bytes, static_cast<std::size_t>(bytes()));
    const std::int64_t count = (d.channels + g - 1) / g * ((Hg + rows - 1) / rows) * ((Wg + cols - 1) / cols);
    if (std::int64_t(units.size()) + count > kMaxUnits) too_many(units.size() + std::size_t(count), target);
    for (std::int64_t c = 0; c < d.channels; c += g) {
      for (std::int64_t y0 = 0; y0 < Hg; y0 += rows) {
        const std::int64_t r = std::min(rows, Hg - y0);
        for (std::int64_t x0 = 0; x0 < Wg; x0 += cols) push(c, y0, r, x0, std::min(cols, Wg - x0), rt[y0].i0, span(y0, r));
      }
    }
    desc.push_back(d);
  }
  // The largest units first (output plus horizontal rows), so that the last ones taken are small.
  auto cost = [](const Unit& u) {
    return std::uint64_t(u.nc) * (std::uint64_t(u.rows) * std::max(u.cols, 1u) + std::uint64_t(u.nrows) * u.cols);
  };
  std::stable_sort(units.begin(), units.end(), [&](const Unit& x, const Unit& y) { return cost(x) > cost(y); });
  P.shared_bytes = shared_bytes;
  return P;
}

}  // namespace dp::kernels::plan

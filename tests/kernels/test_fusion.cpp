// The fusion kernel: its layout, the CPU reference against independent float64 arithmetic
// (PyTorch's bilinear convention, the EMA statistics), the half and bfloat16 casts, and the GPU
// kernel against the CPU reference on random inputs (every dtype, odd sizes, up- and
// down-sampling, missing teachers) in the GPU suite.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "directport/core/error.hpp"
#include "directport/kernels/fusion.hpp"
#include "directport/kernels/traffic.hpp"
#include "directport/kernels/half.hpp"
#include "support/gpu_test.hpp"
#include "support/test_support.hpp"

#if DIRECTPORT_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

namespace dp {
namespace {

using kernels::FusionCpu;
using kernels::FusionInput;
using kernels::FusionLayout;
using kernels::NormMode;

// ------------------------------------------------------------------ casts

// The nearest representable value by exhaustive search over the format's finite values.
float nearest_in(const std::vector<float>& sorted_values, const std::vector<std::uint16_t>& bits_of, float x,
                 std::uint16_t& bits) {
  auto it = std::lower_bound(sorted_values.begin(), sorted_values.end(), x);
  std::size_t hi = static_cast<std::size_t>(it - sorted_values.begin());
  std::size_t best = hi < sorted_values.size() ? hi : hi - 1;
  if (hi > 0) {
    const double dlo = double(x) - sorted_values[hi - 1];
    const double dhi = hi < sorted_values.size() ? double(sorted_values[hi]) - x : INFINITY;
    if (dlo < dhi || (dlo == dhi && (bits_of[hi - 1] & 1) == 0)) best = hi - 1;
  }
  bits = bits_of[best];
  return sorted_values[best];
}

template <typename ToFloat>
void finite_values(ToFloat to_float, std::vector<float>& values, std::vector<std::uint16_t>& bits) {
  std::vector<std::pair<float, std::uint16_t>> v;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    float f = to_float(static_cast<std::uint16_t>(b));
    if (std::isfinite(f) && !(f == 0.0f && std::signbit(f))) v.push_back({f, static_cast<std::uint16_t>(b)});
  }
  std::sort(v.begin(), v.end());
  for (auto& [f, b] : v) {
    values.push_back(f);
    bits.push_back(b);
  }
}

TEST(FusionCasts, EveryHalfRoundTrips) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = kernels::half_to_float(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(kernels::half_to_float(kernels::float_to_half(f))));
      continue;
    }
    ASSERT_EQ(kernels::float_to_half(f), h) << "half 0x" << std::hex << b;
  }
}

TEST(FusionCasts, HalfRoundsToNearestEven) {
  std::vector<float> values;
  std::vector<std::uint16_t> bits;
  finite_values(kernels::half_to_float, values, bits);
  std::mt19937_64 rng(test::test_seed());
  std::uniform_real_distribution<float> mag(-18.0f, 16.0f);
  for (int i = 0; i < 200000; ++i) {
    float x = std::ldexp(1.0f + float(rng() % (1u << 23)) / float(1u << 23), int(mag(rng))) * ((rng() & 1) ? 1 : -1);
    if (std::fabs(x) > 65504.0f) continue;
    std::uint16_t want;
    nearest_in(values, bits, x, want);
    ASSERT_EQ(kernels::float_to_half(x), want) << "x = " << x;
  }
  // Exact midpoints round to even; beyond the largest finite value is infinity.
  EXPECT_EQ(kernels::float_to_half(65520.0f), 0x7c00);
  EXPECT_EQ(kernels::float_to_half(65519.0f), 0x7bff);
  EXPECT_EQ(kernels::float_to_half(std::ldexp(1.0f, -25)), 0x0000);           // half the smallest subnormal
  EXPECT_EQ(kernels::float_to_half(std::ldexp(3.0f, -25)), 0x0002);           // 1.5 units: to even
  EXPECT_EQ(kernels::float_to_half(-std::ldexp(1.0f, -24)), 0x8001);
  EXPECT_EQ(kernels::float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);    // tie: to even
  EXPECT_EQ(kernels::float_to_half(1.0f + std::ldexp(3.0f, -11)), 0x3c02);    // tie: to even
  EXPECT_EQ(kernels::float_to_half(std::numeric_limits<float>::infinity()), 0x7c00);
}

TEST(FusionCasts, Bf16RoundsToNearestEven) {
  std::vector<float> values;
  std::vector<std::uint16_t> bits;
  finite_values(kernels::bf16_to_float, values, bits);
  std::mt19937_64 rng(test::test_seed());
  for (int i = 0; i < 200000; ++i) {
    float x = std::ldexp(1.0f + float(rng() % (1u << 23)) / float(1u << 23), int(rng() % 200) - 100) * ((rng() & 1) ? 1 : -1);
    std::uint16_t want;
    nearest_in(values, bits, x, want);
    ASSERT_EQ(kernels::float_to_bf16(x), want) << "x = " << x;
  }
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float f = kernels::bf16_to_float(static_cast<std::uint16_t>(b));
    if (!std::isnan(f)) ASSERT_EQ(kernels::float_to_bf16(f), b);
  }
}

// ------------------------------------------------------------------ layout

FusionInput map(const std::string& name, DType t, std::int64_t c, std::int64_t h, std::int64_t w,
                NormMode n = NormMode::channel) {
  return {name, t, {c, h, w}, n};
}
FusionInput vec(const std::string& name, DType t, std::int64_t c, NormMode n = NormMode::channel) {
  return {name, t, {c}, n};
}

TEST(FusionLayout, OffsetsShapesAndMask) {
  FusionLayout L({map("edges", DType::f32, 3, 10, 20), vec("text", DType::f16, 5), map("depth", DType::bf16, 1, 40, 80)},
                 20, 40, DType::f16);
  EXPECT_EQ(L.offset(0), 0u);
  EXPECT_EQ(L.segment_elements(0), 3u * 20 * 40);
  EXPECT_EQ(L.offset(1), 2400u);
  EXPECT_EQ(L.offset(2), 2405u);
  EXPECT_EQ(L.mask_offset(), 2405u + 800);
  EXPECT_EQ(L.total_elements(), 3205u + 3);
  EXPECT_EQ(L.total_bytes(), L.total_elements() * 2);
  EXPECT_EQ(L.total_channels(), 9u);
  EXPECT_EQ(L.channel_base(2), 8u);
  EXPECT_EQ(L.input_bytes(2), 40u * 80 * 2);
  auto j = L.to_json();
  EXPECT_EQ(j["dtype"], "f16");
  EXPECT_EQ(j["elements"], L.total_elements());
  ASSERT_EQ(j["segments"].size(), 3u);
  EXPECT_EQ(j["segments"][1]["teacher"], "text");
  EXPECT_EQ(j["segments"][1]["offset"], 2400);
  EXPECT_EQ(j["segments"][2]["shape"], nlohmann::json({1, 20, 40}));
  EXPECT_EQ(j["segments"][2]["source_shape"], nlohmann::json({1, 40, 80}));
  EXPECT_EQ(j["segments"][2]["source_dtype"], "bf16");
  EXPECT_EQ(j["mask"]["offset"], 3205);
  EXPECT_EQ(j["mask"]["length"], 3);
}

TEST(FusionLayout, JsonRoundTripAndTamperedLayoutsAreRefused) {
  FusionLayout L({map("edges", DType::f32, 3, 10, 20, NormMode::none), vec("text", DType::f16, 5, NormMode::isotropic)}, 20,
                 40, DType::bf16, 0.05, 1e-4);
  auto j = L.to_json();
  auto back = FusionLayout::from_json(j);
  EXPECT_EQ(back.to_json(), j);
  auto refused = [&](const std::function<void(nlohmann::json&)>& edit, const std::string& needle) {
    auto t = j;
    edit(t);
    try {
      FusionLayout::from_json(t);
      ADD_FAILURE() << "accepted: " << t.dump();
    } catch (const ValidationError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  refused([](auto& t) { t["kind"] = "raw"; }, "'kind'");
  refused([](auto& t) { t["version"] = 2; }, "'version'");
  refused([](auto& t) { t.erase("grid"); }, "'grid' is missing");
  refused([](auto& t) { t["segments"][1]["offset"] = 7; }, "segments[1].offset");
  refused([](auto& t) { t["segments"][0]["shape"] = {3, 10, 20}; }, "segments[0].shape");
  refused([](auto& t) { t["elements"] = 1; }, "'elements'");
  refused([](auto& t) { t["mask"]["length"] = 3; }, "'mask'");
  refused([](auto& t) { t["segments"][0]["source_dtype"] = "u8"; }, "dtype");
  refused([](auto& t) { t["segments"][0]["teacher"] = 5; }, "wrong type");
}

void expect_invalid(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "accepted; expected an error about: " << needle;
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(FusionLayout, EveryBadInputIsNamed) {
  expect_invalid([] { FusionLayout({}, 8, 8, DType::f32); }, "1 to 32 teachers");
  std::vector<FusionInput> many;
  for (int i = 0; i < 33; ++i) many.push_back(vec("t" + std::to_string(i), DType::f32, 1));
  expect_invalid([&] { FusionLayout(many, 8, 8, DType::f32); }, "got 33");
  expect_invalid([] { FusionLayout({vec("a", DType::f32, 1)}, 0, 8, DType::f32); }, "grid");
  expect_invalid([] { FusionLayout({vec("a", DType::f32, 1)}, 8, 20000, DType::f32); }, "grid");
  expect_invalid([] { FusionLayout({vec("a", DType::f32, 1)}, 8, 8, DType::u8); }, "fused dtype");
  expect_invalid([] { FusionLayout({vec("a", DType::i32, 1)}, 8, 8, DType::f32); }, "teacher 0 ('a'): dtype");
  expect_invalid([] { FusionLayout({vec("a", DType::f32, 1), vec("a", DType::f32, 2)}, 8, 8, DType::f32); },
                 "name used twice");
  expect_invalid([] { FusionLayout({{"a", DType::f32, {1, 2}, NormMode::none}}, 8, 8, DType::f32); }, "shape must be");
  expect_invalid([] { FusionLayout({map("a", DType::f32, 1, 0, 3)}, 8, 8, DType::f32); }, "shape entries");
  expect_invalid([] { FusionLayout({vec("../x", DType::f32, 1)}, 8, 8, DType::f32); }, "teacher name");
  expect_invalid([] { FusionLayout({vec("a", DType::f32, 1)}, 8, 8, DType::f32, 0.0); }, "momentum");
  expect_invalid([] { FusionLayout({vec("a", DType::f32, 1)}, 8, 8, DType::f32, 1.5); }, "momentum");
  expect_invalid([] { FusionLayout({vec("a", DType::f32, 1)}, 8, 8, DType::f32, 0.1, 0.0); }, "eps");
  expect_invalid([] { kernels::parse_norm_mode("batch"); }, "valid: channel, isotropic, none");
}

// ------------------------------------------------------------------ the CPU reference

// PyTorch's bilinear resampling (align_corners=False), written independently in float64.
std::vector<double> resample_ref(const std::vector<float>& in, std::int64_t C, std::int64_t H, std::int64_t W,
                                 std::int64_t Hg, std::int64_t Wg) {
  std::vector<double> out(static_cast<std::size_t>(C * Hg * Wg));
  auto src = [](std::int64_t d, std::int64_t n_in, std::int64_t n_out, std::int64_t& i0, std::int64_t& i1, double& l1) {
    double s = n_in == n_out ? double(d) : std::max((d + 0.5) * double(n_in) / double(n_out) - 0.5, 0.0);
    i0 = std::min<std::int64_t>(static_cast<std::int64_t>(std::floor(s)), n_in - 1);
    i1 = std::min<std::int64_t>(i0 + 1, n_in - 1);
    l1 = s - double(i0);
  };
  for (std::int64_t c = 0; c < C; ++c) {
    for (std::int64_t y = 0; y < Hg; ++y) {
      std::int64_t y0, y1;
      double ly;
      src(y, H, Hg, y0, y1, ly);
      for (std::int64_t x = 0; x < Wg; ++x) {
        std::int64_t x0, x1;
        double lx;
        src(x, W, Wg, x0, x1, lx);
        auto v = [&](std::int64_t yy, std::int64_t xx) { return double(in[std::size_t((c * H + yy) * W + xx)]); };
        out[std::size_t((c * Hg + y) * Wg + x)] =
            (1 - ly) * ((1 - lx) * v(y0, x0) + lx * v(y0, x1)) + ly * ((1 - lx) * v(y1, x0) + lx * v(y1, x1));
      }
    }
  }
  return out;
}

std::vector<float> random_floats(std::mt19937_64& rng, std::size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<float> read_out(const FusionLayout& L, const std::vector<std::uint8_t>& out) {
  std::vector<float> r(L.total_elements());
  for (std::size_t i = 0; i < r.size(); ++i) {
    if (L.out_dtype() == DType::f32) {
      std::memcpy(&r[i], out.data() + 4 * i, 4);
    } else {
      std::uint16_t h;
      std::memcpy(&h, out.data() + 2 * i, 2);
      r[i] = L.out_dtype() == DType::f16 ? kernels::half_to_float(h) : kernels::bf16_to_float(h);
    }
  }
  return r;
}

TEST(FusionCpu, BilinearFollowsHalfPixelCentres) {
  // 2x2 -> 4x4: along each axis the weights give 0, 0.25, 0.75, 1 of the way.
  FusionLayout L({map("m", DType::f32, 1, 2, 2, NormMode::none)}, 4, 4, DType::f32);
  FusionCpu fu(L);
  const std::vector<float> in{0, 1, 2, 3};
  std::vector<std::uint8_t> out(L.total_bytes());
  fu.fuse({in.data()}, out.data());
  auto r = read_out(L, out);
  const double t[4] = {0, 0.25, 0.75, 1};
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) EXPECT_FLOAT_EQ(r[std::size_t(y * 4 + x)], float(2 * t[y] + t[x])) << y << "," << x;
  }
  EXPECT_EQ(r[16], 1.0f) << "mask";
  // 4 -> 2 along x: each output is the mean of two neighbours.
  FusionLayout D({map("m", DType::f32, 1, 1, 4, NormMode::none)}, 1, 2, DType::f32);
  FusionCpu fd(D);
  const std::vector<float> in4{0, 2, 4, 8};
  std::vector<std::uint8_t> o2(D.total_bytes());
  fd.fuse({in4.data()}, o2.data());
  auto r2 = read_out(D, o2);
  EXPECT_FLOAT_EQ(r2[0], 1.0f);
  EXPECT_FLOAT_EQ(r2[1], 6.0f);
}

TEST(FusionCpu, ResamplingMatchesFloat64OnRandomOddSizes) {
  std::mt19937_64 rng(test::test_seed());
  struct Case {
    std::int64_t C, H, W, Hg, Wg;
  };
  for (Case c : {Case{3, 7, 11, 13, 17}, Case{2, 31, 29, 5, 9}, Case{1, 1, 1, 3, 5}, Case{4, 13, 17, 13, 17},
                 Case{2, 9, 3, 4, 12}}) {
    SCOPED_TRACE(std::to_string(c.H) + "x" + std::to_string(c.W) + " -> " + std::to_string(c.Hg) + "x" + std::to_string(c.Wg));
    FusionLayout L({map("m", DType::f32, c.C, c.H, c.W, NormMode::none)}, c.Hg, c.Wg, DType::f32);
    FusionCpu fu(L);
    auto in = random_floats(rng, std::size_t(c.C * c.H * c.W), -4, 4);
    std::vector<std::uint8_t> out(L.total_bytes());
    fu.fuse({in.data()}, out.data());
    auto r = read_out(L, out);
    auto want = resample_ref(in, c.C, c.H, c.W, c.Hg, c.Wg);
    // The kernel computes source positions and weights in float, as PyTorch does: a few float
    // ulps of the position, times the slope of the data.
    for (std::size_t k = 0; k < want.size(); ++k) ASSERT_NEAR(r[k], want[k], 5e-5 * (1 + std::fabs(want[k]))) << "element " << k;
  }
}

// The EMA of the first two moments, in float64, fed the same resampled values.
struct StatsRef {
  std::vector<double> m1, m2;
  std::uint64_t frames = 0;
  void update(const std::vector<double>& e1, const std::vector<double>& e2, double m) {
    for (std::size_t c = 0; c < e1.size(); ++c) {
      m1[c] = frames ? (1 - m) * m1[c] + m * e1[c] : e1[c];
      m2[c] = frames ? (1 - m) * m2[c] + m * e2[c] : e2[c];
    }
    ++frames;
  }
};

TEST(FusionCpu, RunningStatisticsAndStandardisationMatchFloat64) {
  std::mt19937_64 rng(test::test_seed());
  const std::int64_t C = 3, H = 9, W = 14, Hg = 6, Wg = 10;
  const double momentum = 0.2, eps = 1e-5;
  for (NormMode mode : {NormMode::channel, NormMode::isotropic}) {
    SCOPED_TRACE(kernels::norm_mode_name(mode));
    FusionLayout L({map("m", DType::f32, C, H, W, mode), vec("v", DType::f32, 4, mode)}, Hg, Wg, DType::f32, momentum, eps);
    FusionCpu fu(L);
    StatsRef ref_m{std::vector<double>(C), std::vector<double>(C)}, ref_v{std::vector<double>(4), std::vector<double>(4)};
    std::vector<std::uint8_t> out(L.total_bytes());
    for (int frame = 0; frame < 12; ++frame) {
      SCOPED_TRACE("frame " + std::to_string(frame));
      // Channel c drifts: mean 3c + frame/4, spread 1 + c.
      std::vector<float> in_m(std::size_t(C * H * W)), in_v(4);
      std::normal_distribution<float> nd(0, 1);
      for (std::int64_t c = 0; c < C; ++c) {
        for (std::int64_t k = 0; k < H * W; ++k) in_m[std::size_t(c * H * W + k)] = 3.0f * c + frame / 4.0f + (1 + c) * nd(rng);
      }
      for (auto& x : in_v) x = 10.0f + 2.0f * nd(rng);
      const bool v_present = frame % 3 != 1;  // the vector teacher misses every third frame
      fu.fuse({in_m.data(), v_present ? in_v.data() : nullptr}, out.data());
      auto r = read_out(L, out);

      auto check = [&](StatsRef& ref, const std::vector<double>& vals, std::size_t channels, std::size_t per,
                       std::size_t base, const kernels::RunningStats& got) {
        std::vector<double> e1(channels), e2(channels);
        for (std::size_t c = 0; c < channels; ++c) {
          for (std::size_t k = 0; k < per; ++k) {
            e1[c] += vals[c * per + k] / double(per);
            e2[c] += vals[c * per + k] * vals[c * per + k] / double(per);
          }
        }
        const bool first = ref.frames == 0;
        if (first) ref.update(e1, e2, momentum);
        std::vector<double> var(channels);
        double var_mean = 0;
        for (std::size_t c = 0; c < channels; ++c) {
          var[c] = std::max(ref.m2[c] - ref.m1[c] * ref.m1[c], 0.0);
          var_mean += var[c] / double(channels);
        }
        for (std::size_t c = 0; c < channels; ++c) {
          const double s = 1 / std::sqrt((mode == NormMode::channel ? var[c] : var_mean) + eps);
          for (std::size_t k = 0; k < per; ++k) {
            const double want = (vals[c * per + k] - ref.m1[c]) * s;
            ASSERT_NEAR(r[base + c * per + k], want, 2e-4 * (1 + std::fabs(want))) << "channel " << c << " element " << k;
          }
        }
        if (!first) ref.update(e1, e2, momentum);
        ASSERT_EQ(got.frames, ref.frames);
        for (std::size_t c = 0; c < channels; ++c) {
          EXPECT_NEAR(got.m1[c], ref.m1[c], 1e-6 * (1 + std::fabs(ref.m1[c])));
          EXPECT_NEAR(got.m2[c], ref.m2[c], 1e-6 * (1 + std::fabs(ref.m2[c])));
        }
      };
      auto vals_m = resample_ref(in_m, C, H, W, Hg, Wg);
      check(ref_m, vals_m, C, std::size_t(Hg * Wg), L.offset(0), fu.stats(0));
      if (v_present) {
        std::vector<double> vals_v(in_v.begin(), in_v.end());
        check(ref_v, vals_v, 4, 1, L.offset(1), fu.stats(1));
        EXPECT_EQ(r[L.mask_offset() + 1], 1.0f);
      } else {
        for (std::size_t k = 0; k < 4; ++k) EXPECT_EQ(r[L.offset(1) + k], 0.0f) << "a missing teacher's segment is zero";
        EXPECT_EQ(r[L.mask_offset() + 1], 0.0f);
        EXPECT_EQ(fu.stats(1).frames, ref_v.frames) << "a missing teacher's statistics are left alone";
      }
      EXPECT_EQ(r[L.mask_offset()], 1.0f);
    }
  }
}

TEST(FusionCpu, IsotropicUsesOneScalePerTeacher) {
  // Two channels with spreads 1 and 3: isotropic keeps their ratio, channel mode equalises it.
  FusionLayout L({map("m", DType::f32, 2, 1, 4, NormMode::isotropic)}, 1, 4, DType::f32);
  FusionCpu fu(L);
  const std::vector<float> in{-1, 1, -1, 1, -3, 3, -3, 3};
  std::vector<std::uint8_t> out(L.total_bytes());
  fu.fuse({in.data()}, out.data());
  auto r = read_out(L, out);
  const double s = 1 / std::sqrt((1.0 + 9.0) / 2 + 1e-5);
  EXPECT_NEAR(r[0], -1 * s, 1e-6);
  EXPECT_NEAR(r[4], -3 * s, 1e-6);
  EXPECT_NEAR(r[5] / r[1], 3.0, 1e-5);
}

TEST(FusionCpu, InputAndOutputDtypesAreCastsOfTheFloatPath) {
  std::mt19937_64 rng(test::test_seed());
  const std::int64_t C = 2, H = 5, W = 7;
  auto in = random_floats(rng, std::size_t(C * H * W), -100, 100);
  for (DType src : {DType::f16, DType::bf16}) {
    // The same values rounded to the input dtype, given once as that dtype and once as f32.
    std::vector<std::uint16_t> narrow(in.size());
    std::vector<float> widened(in.size());
    for (std::size_t k = 0; k < in.size(); ++k) {
      narrow[k] = src == DType::f16 ? kernels::float_to_half(in[k]) : kernels::float_to_bf16(in[k]);
      widened[k] = src == DType::f16 ? kernels::half_to_float(narrow[k]) : kernels::bf16_to_float(narrow[k]);
    }
    for (DType out_t : {DType::f32, DType::f16, DType::bf16}) {
      SCOPED_TRACE(std::string(dtype_name(src)) + " -> " + dtype_name(out_t));
      FusionLayout La({map("m", src, C, H, W)}, 8, 3, out_t);
      FusionLayout Lf({map("m", DType::f32, C, H, W)}, 8, 3, DType::f32);
      FusionCpu fa(La), ff(Lf);
      std::vector<std::uint8_t> oa(La.total_bytes()), of(Lf.total_bytes());
      for (int frame = 0; frame < 3; ++frame) {
        fa.fuse({narrow.data()}, oa.data());
        ff.fuse({widened.data()}, of.data());
      }
      auto ra = read_out(La, oa), rf = read_out(Lf, of);
      for (std::size_t k = 0; k < ra.size(); ++k) {
        const float want = out_t == DType::f32  ? rf[k]
                           : out_t == DType::f16 ? kernels::half_to_float(kernels::float_to_half(rf[k]))
                                                 : kernels::bf16_to_float(kernels::float_to_bf16(rf[k]));
        ASSERT_EQ(ra[k], want) << "element " << k;
      }
    }
  }
}

TEST(FusionCpu, WrongNumberOfInputsIsRefused) {
  FusionLayout L({vec("a", DType::f32, 2), vec("b", DType::f32, 2)}, 1, 1, DType::f32);
  FusionCpu fu(L);
  std::vector<std::uint8_t> out(L.total_bytes());
  float x[2] = {1, 2};
  EXPECT_THROW(fu.fuse({x}, out.data()), PreconditionError);
}

TEST(FusionCpu, GpuEntryPointsFailCleanlyWithoutADevice) {
#if DIRECTPORT_HAS_CUDA
  if (dp::cuda::availability().usable) GTEST_SKIP() << "a device is present: see GpuFusion";
#endif
  EXPECT_THROW(kernels::FusionGpu(FusionLayout({vec("a", DType::f32, 2)}, 1, 1, DType::f32)), CudaError);
}

// ------------------------------------------------------------------ GPU against the CPU reference

class GpuFusion : public test::GpuTest {};

#if DIRECTPORT_HAS_CUDA
struct DeviceBytes {
  void* p = nullptr;
  explicit DeviceBytes(std::size_t n) {
    if (cudaMalloc(&p, n ? n : 8) != cudaSuccess) p = nullptr;
  }
  ~DeviceBytes() {
    if (p) cudaFree(p);
  }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
};

// One ulp of `dtype` at the magnitude of v.
double ulp_of(DType t, float v) {
  const int mant = t == DType::f16 ? 10 : t == DType::bf16 ? 7 : 23;
  const double a = std::max(std::fabs(double(v)), t == DType::f16 ? std::ldexp(1.0, -14) : 1e-30);
  return std::ldexp(1.0, int(std::floor(std::log2(a))) - mant);
}

// Random frames through both, teachers missing at random; outputs and statistics compared.
// `misalign`: every input and the output start one element past an allocation's start, so that
// the kernel may not load or store two elements at once. `negative_zeros`: every 5th input value
// is -0.0, which only the exact-sample rule of bilinear() passes through unchanged (1 * -0 + 0 * w
// is +0 for w >= 0).
// `offset`, where not 0: every input value is offset + (its random value) / 64, a mean far
// larger than the spread (the variance must survive how the kernel sums).
void compare_gpu_with_cpu(const FusionLayout& L, int frames, std::uint64_t seed, bool exact, bool misalign = false,
                          bool negative_zeros = false, float offset = 0.0f) {
  std::mt19937_64 rng(seed);
  FusionCpu cpu(L);
  kernels::FusionGpu gpu(L);
  std::vector<std::unique_ptr<DeviceBytes>> dev_in;
  std::vector<void*> in_at;
  for (std::size_t i = 0; i < L.teachers(); ++i) {
    const std::size_t skip = misalign ? dtype_size(L.inputs()[i].dtype) : 0;
    dev_in.push_back(std::make_unique<DeviceBytes>(L.input_bytes(i) + skip));
    ASSERT_TRUE(dev_in.back()->p);
    in_at.push_back(static_cast<std::uint8_t*>(dev_in.back()->p) + skip);
  }
  const std::size_t out_skip = misalign ? dtype_size(L.out_dtype()) : 0;
  DeviceBytes dev_out_alloc(L.total_bytes() + out_skip);
  ASSERT_TRUE(dev_out_alloc.p);
  void* const dev_out = static_cast<std::uint8_t*>(dev_out_alloc.p) + out_skip;
  std::vector<std::uint8_t> out_cpu(L.total_bytes()), out_gpu(L.total_bytes());
  for (int f = 0; f < frames; ++f) {
    SCOPED_TRACE("frame " + std::to_string(f));
    std::vector<std::vector<std::uint8_t>> host(L.teachers());
    std::vector<const void*> in_cpu(L.teachers()), in_gpu(L.teachers());
    for (std::size_t i = 0; i < L.teachers(); ++i) {
      if (f > 0 && rng() % 4 == 0) continue;  // missing this frame
      const auto& t = L.inputs()[i];
      auto vals = random_floats(rng, L.input_bytes(i) / dtype_size(t.dtype), -3.0f + float(i), 5.0f + 2.0f * float(i));
      if (negative_zeros) {
        for (std::size_t k = 0; k < vals.size(); k += 5) vals[k] = -0.0f;
      }
      if (offset != 0.0f) {
        for (auto& v : vals) v = offset + v / 64.0f;
      }
      host[i].resize(L.input_bytes(i));
      for (std::size_t k = 0; k < vals.size(); ++k) {
        if (t.dtype == DType::f32) {
          std::memcpy(host[i].data() + 4 * k, &vals[k], 4);
        } else {
          std::uint16_t h = t.dtype == DType::f16 ? kernels::float_to_half(vals[k]) : kernels::float_to_bf16(vals[k]);
          std::memcpy(host[i].data() + 2 * k, &h, 2);
        }
      }
      ASSERT_EQ(cudaMemcpy(in_at[i], host[i].data(), host[i].size(), cudaMemcpyHostToDevice), cudaSuccess);
      in_cpu[i] = host[i].data();
      in_gpu[i] = in_at[i];
    }
    std::vector<kernels::RunningStats> before;  // the statistics this frame is standardised with (a first frame: its own)
    for (std::size_t i = 0; i < L.teachers(); ++i) before.push_back(cpu.stats(i));
    cpu.fuse(in_cpu, out_cpu.data());
    for (std::size_t i = 0; i < L.teachers(); ++i) {
      if (before[i].frames == 0) before[i] = cpu.stats(i);
    }
    ASSERT_EQ(cudaMemset(dev_out, 0xff, L.total_bytes()), cudaSuccess);  // every element must be written
    gpu.fuse(in_gpu, dev_out, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(out_gpu.data(), dev_out, L.total_bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
    if (exact) {
      ASSERT_EQ(out_gpu, out_cpu) << "the GPU differs from the CPU reference";
    } else {
      auto rc = read_out(L, out_cpu), rg = read_out(L, out_gpu);
      // Both sides keep a channel's mean as a float32 rounded from float64 moments that agree to
      // about 1e-7 (the kernel sums in another order, and takes an upsampled map's moments from its
      // input): where the two round to neighbouring floats, every output of the channel moves by
      // that ulp times the scale. A mean far above the spread (1000 against 0.04) makes that
      // visible; allow it, with a few ulps of the fused dtype besides.
      const std::int64_t plane = L.grid_h() * L.grid_w();
      std::vector<double> slack(rc.size(), 0.0);  // per element: that ulp times its channel's scale
      for (std::size_t i = 0; i < L.teachers(); ++i) {
        if (L.inputs()[i].norm == NormMode::none) continue;
        const auto& st = before[i];
        auto var = [&](std::size_t j) { return std::max(st.m2[j] - st.m1[j] * st.m1[j], 0.0); };
        double iso = 0;  // an isotropic teacher's variance: the mean of its channels'
        for (std::size_t j = 0; j < st.m1.size(); ++j) iso += var(j) / double(st.m1.size());
        for (std::size_t e = 0; e < L.segment_elements(i); ++e) {
          const std::size_t c = L.inputs()[i].spatial() ? e / std::size_t(plane) : e;
          const double v = L.inputs()[i].norm == NormMode::isotropic ? iso : var(c);
          slack[L.offset(i) + e] = 1.01 * ulp_of(DType::f32, float(st.m1[c])) / std::sqrt(v + L.eps());
        }
      }
      for (std::size_t k = 0; k < rc.size(); ++k) {
        const double tol = (L.out_dtype() == DType::f32 ? 5e-5 * (1 + std::fabs(rc[k])) : 2.01 * ulp_of(L.out_dtype(), rc[k])) + slack[k];
        ASSERT_NEAR(rg[k], rc[k], tol) << "element " << k;
      }
    }
    for (std::size_t i = 0; i < L.teachers(); ++i) {
      auto gs = gpu.stats(i, nullptr);
      const auto& cs = cpu.stats(i);
      ASSERT_EQ(gs.frames, cs.frames);
      for (std::size_t c = 0; c < cs.m1.size(); ++c) {
        // Where the kernel moves 8 elements at once it sums their differences from a shift in
        // float32 before float64 (Sums::add8 in fusion.cu: within 2e-7 of the differences'
        // magnitudes, which here stay well below 5 (1 + |mean|)), so 1e-6 bounds it.
        ASSERT_NEAR(gs.m1[c], cs.m1[c], 1e-6 * (1 + std::fabs(cs.m1[c]))) << "teacher " << i << " channel " << c;
        ASSERT_NEAR(gs.m2[c], cs.m2[c], 1e-6 * (1 + std::fabs(cs.m2[c]))) << "teacher " << i << " channel " << c;
      }
    }
  }
}
#endif

TEST_F(GpuFusion, EveryDtypeOddSizesUpAndDownSamplingMatchTheCpu) {
#if DIRECTPORT_HAS_CUDA
  const std::uint64_t seed = test::test_seed();
  for (DType src : {DType::f32, DType::f16, DType::bf16}) {
    for (DType out_t : {DType::f32, DType::f16, DType::bf16}) {
      for (NormMode mode : {NormMode::none, NormMode::channel, NormMode::isotropic}) {
        SCOPED_TRACE(std::string(dtype_name(src)) + " -> " + dtype_name(out_t) + ", " + kernels::norm_mode_name(mode));
        FusionLayout L({map("up", src, 3, 17, 29, mode), map("down", src, 5, 64, 81, mode), map("same", src, 2, 37, 53, mode),
                        vec("vec", src, 7, mode), map("one", src, 1, 1, 1, mode)},
                       37, 53, out_t, 0.05);
        compare_gpu_with_cpu(L, 6, seed, mode == NormMode::none);
      }
    }
  }
#endif
}

// The kernel's work units: bands of output rows with their input rows in shared memory, split
// into column chunks on a grid wider than 2 048, made small (DIRECTPORT_FUSION_UNIT) so that a
// channel is many bands, of 1, 3 (a last group of fewer) and 8 channels (DIRECTPORT_FUSION_GROUP;
// a 9-channel teacher makes a full group of 8); a map resampled on one axis only; a strong
// downsampling (a band's input rows then span more than its output rows); a grid taller than a
// band's 256 rows; 8-element vectors (a grid width a multiple of 8); pointers that forbid paired
// and vector loads and stores; -0.0 inputs where outputs fall
// on input samples (the clamped first row and column, a 1x1 map), which must come out as -0.0.
TEST_F(GpuFusion, BandsChunksAndUnalignedPointersMatchTheCpu) {
#if DIRECTPORT_HAS_CUDA
  const std::uint64_t seed = test::test_seed();
  const std::pair<const char*, const char*> units[] = {{"256", "1"}, {"8192", "3"}, {"65536", "8"}};
  for (const auto& [unit, group] : units) {
    test::ScopedEnv unit_env("DIRECTPORT_FUSION_UNIT", unit), group_env("DIRECTPORT_FUSION_GROUP", group);
    for (bool misalign : {false, true}) {
      SCOPED_TRACE(std::string("DIRECTPORT_FUSION_UNIT=") + unit + ", DIRECTPORT_FUSION_GROUP=" + group +
                   (misalign ? ", misaligned pointers" : ""));
      FusionLayout wide({map("up", DType::f16, 2, 3, 1000), map("same", DType::bf16, 3, 6, 2100),
                         map("rows", DType::f32, 2, 6, 700), map("cols", DType::f32, 2, 2, 2100),
                         map("g8", DType::f16, 9, 3, 2100)},
                        6, 2100, DType::bf16, 0.1);
      compare_gpu_with_cpu(wide, 3, seed, false, misalign);
      FusionLayout down({map("down8", DType::bf16, 3, 256, 96), map("up", DType::f16, 5, 7, 6), map("same", DType::f32, 4, 32, 48),
                         vec("v", DType::f16, 300)},
                        32, 48, DType::f16, 0.1);
      compare_gpu_with_cpu(down, 4, seed + 1, false, misalign);
      FusionLayout tall({map("up", DType::f32, 2, 150, 3), map("same", DType::f16, 1, 300, 4)}, 300, 4, DType::f32, 0.1);
      compare_gpu_with_cpu(tall, 2, seed + 2, false, misalign);
      // 8-element vectors: a grid wider than a band with a width a multiple of 8, every input
      // dtype; a map after a 2-element vector takes pairs instead.
      FusionLayout vectors({map("up", DType::f16, 2, 3, 1000), map("same", DType::bf16, 2, 6, 2104),
                            map("same32", DType::f32, 1, 6, 2104), vec("two", DType::f32, 2), map("after", DType::bf16, 1, 3, 100)},
                           6, 2104, DType::f16, 0.1);
      compare_gpu_with_cpu(vectors, 3, seed + 4, false, misalign);
      FusionLayout exact({map("up", DType::f32, 3, 16, 12, NormMode::none), map("down", DType::f16, 2, 64, 96, NormMode::none),
                          map("one", DType::f32, 2, 1, 1, NormMode::none), map("same", DType::bf16, 1, 32, 48, NormMode::none)},
                         32, 48, DType::f32);
      compare_gpu_with_cpu(exact, 2, seed + 3, true, misalign, true);
    }
  }
#endif
}

// Values of mean 1000 and a spread of about 0.1 (f32 inputs, vectors and pairs both): summing
// squares of the values in float32 would lose the variance (3 % of it, and 1.5 % of every output,
// for such a channel); the outputs and moments must match the CPU's float64 sums.
TEST_F(GpuFusion, AMeanFarAboveTheSpreadKeepsItsVariance) {
#if DIRECTPORT_HAS_CUDA
  for (NormMode mode : {NormMode::channel, NormMode::isotropic}) {
    SCOPED_TRACE(kernels::norm_mode_name(mode));
    FusionLayout L({map("same", DType::f32, 3, 64, 96, mode), map("up", DType::f32, 2, 16, 24, mode),
                    vec("two", DType::f32, 2, mode), map("pairs", DType::f32, 2, 64, 96, mode)},
                   64, 96, DType::f32, 0.2);
    compare_gpu_with_cpu(L, 4, test::test_seed(), false, false, false, 1000.0f);
  }
#endif
}

// The kernel's other ways, each against the CPU reference on the layouts above: statistics of
// upsampled maps summed from every output (DIRECTPORT_FUSION_INSTATS=0; the default takes them
// from the input in kStats units, here also split over input rows and grouped over channels at
// the small unit size), persistent blocks taking units from a counter (DIRECTPORT_FUSION_GRID=0),
// and bands loaded a pair of inputs at a time (DIRECTPORT_FUSION_QUADS=0), with a mean far above
// the spread too.
TEST_F(GpuFusion, EveryLaunchAndWayOfSummingMatchesTheCpu) {
#if DIRECTPORT_HAS_CUDA
  const std::uint64_t seed = test::test_seed();
  const std::vector<std::pair<const char*, const char*>> ways = {
      {"DIRECTPORT_FUSION_INSTATS", "0"}, {"DIRECTPORT_FUSION_GRID", "0"}, {"DIRECTPORT_FUSION_QUADS", "0"}};
  for (const auto& [var, value] : ways) {
    for (const char* unit : {"4096", "32768"}) {
      test::ScopedEnv way(var, value), size("DIRECTPORT_FUSION_UNIT", unit);
      SCOPED_TRACE(std::string(var) + "=" + value + ", DIRECTPORT_FUSION_UNIT=" + unit);
      for (NormMode mode : {NormMode::channel, NormMode::isotropic}) {
        FusionLayout L({map("up", DType::f16, 3, 17, 29, mode), map("down", DType::bf16, 5, 64, 96, mode),
                        map("same", DType::f32, 2, 32, 48, mode), vec("vec", DType::f16, 7, mode), map("one", DType::f32, 1, 1, 1, mode)},
                       32, 48, DType::bf16, 0.05);
        compare_gpu_with_cpu(L, 4, seed, false);
        FusionLayout far({map("same", DType::f32, 3, 64, 96, mode), map("up", DType::f32, 2, 16, 24, mode),
                          vec("two", DType::f32, 2, mode)},
                         64, 96, DType::f32, 0.2);
        compare_gpu_with_cpu(far, 3, seed + 1, false, false, false, 1000.0f);
      }
    }
  }
#endif
}

// The benchmark's floor (kernels/traffic.hpp): every whole 16-byte chunk of the output written
// with its index, the bytes after the last whole chunk left alone, inputs of any length read.
TEST_F(GpuFusion, TheTrafficFloorWritesEveryChunkOnce) {
#if DIRECTPORT_HAS_CUDA
  const std::size_t out_bytes = 16 * 300001 + 7;
  DeviceBytes out(out_bytes), in1(1 << 20), in2(48);
  ASSERT_TRUE(out.p && in1.p && in2.p);
  ASSERT_EQ(cudaMemset(out.p, 0xab, out_bytes), cudaSuccess);
  ASSERT_EQ(cudaMemset(in1.p, 0x5c, 1 << 20), cudaSuccess);
  ASSERT_EQ(cudaMemset(in2.p, 0x11, 48), cudaSuccess);
  kernels::traffic_floor_gpu({{in1.p, (1 << 20) - 3}, {in2.p, 48}}, out.p, out_bytes, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<std::uint32_t> host(out_bytes / 4 + 1);
  ASSERT_EQ(cudaMemcpy(host.data(), out.p, out_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  for (std::size_t i = 0; i < out_bytes / 16; ++i) {
    for (int k = 0; k < 4; ++k) ASSERT_EQ(host[4 * i + k], std::uint32_t(i)) << "chunk " << i;
  }
  const auto* tail = reinterpret_cast<const std::uint8_t*>(host.data()) + out_bytes / 16 * 16;
  for (int k = 0; k < 7; ++k) EXPECT_EQ(tail[k], 0xab) << "byte " << k << " after the last chunk";
  EXPECT_THROW(kernels::traffic_floor_gpu({}, static_cast<std::uint8_t*>(out.p) + 4, 64, nullptr), PreconditionError);
#endif
}

TEST_F(GpuFusion, LargeTensorsMatchTheCpu) {
#if DIRECTPORT_HAS_CUDA
  FusionLayout L({map("a", DType::f16, 64, 120, 160), map("b", DType::bf16, 32, 480, 640), vec("c", DType::f32, 768)}, 240,
                 320, DType::bf16);
  compare_gpu_with_cpu(L, 3, test::test_seed(), false);
#endif
}

}  // namespace
}  // namespace dp

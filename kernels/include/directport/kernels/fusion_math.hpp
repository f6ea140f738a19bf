// The arithmetic of the fusion kernel, shared by the CPU reference and the CUDA kernel so that
// both compute the same thing in the same order. On the GPU every operation is an explicitly
// rounded intrinsic (no fused multiply-add contraction); the CPU side is compiled with
// -ffp-contract=off. Interpolation and standardisation are then bit-identical on both.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DP_HD __host__ __device__ __forceinline__
#else
#define DP_HD inline
#endif

namespace dp::kernels {

#if defined(__CUDA_ARCH__)
DP_HD float f_add(float a, float b) { return __fadd_rn(a, b); }
DP_HD float f_sub(float a, float b) { return __fsub_rn(a, b); }
DP_HD float f_mul(float a, float b) { return __fmul_rn(a, b); }
DP_HD double d_add(double a, double b) { return __dadd_rn(a, b); }
DP_HD double d_sub(double a, double b) { return __dsub_rn(a, b); }
DP_HD double d_mul(double a, double b) { return __dmul_rn(a, b); }
#else
DP_HD float f_add(float a, float b) { return a + b; }
DP_HD float f_sub(float a, float b) { return a - b; }
DP_HD float f_mul(float a, float b) { return a * b; }
DP_HD double d_add(double a, double b) { return a + b; }
DP_HD double d_sub(double a, double b) { return a - b; }
DP_HD double d_mul(double a, double b) { return a * b; }
#endif

// Source coordinate of destination index d along one axis, half-pixel centres
// (align_corners=False): src = (d + 0.5) * in/out - 0.5, clamped at 0.
struct Resample {
  float scale;
  bool identity;
};
DP_HD Resample make_resample(std::int64_t in, std::int64_t out) {
  return {static_cast<float>(in) / static_cast<float>(out), in == out};
}

struct Tap {
  std::int64_t i0, i1;  // neighbours (clamped at the last index)
  float l0, l1;         // their weights, l0 + l1 == 1
};
DP_HD Tap tap(const Resample& r, std::int64_t d, std::int64_t in) {
  if (r.identity) return {d, d, 1.0f, 0.0f};
  float s = f_sub(f_mul(f_add(static_cast<float>(d), 0.5f), r.scale), 0.5f);
  if (s < 0.0f) s = 0.0f;
  std::int64_t i0 = static_cast<std::int64_t>(s);
  if (i0 > in - 1) i0 = in - 1;
  const std::int64_t i1 = i0 < in - 1 ? i0 + 1 : i0;
  const float l1 = f_sub(s, static_cast<float>(i0));
  return {i0, i1, f_sub(1.0f, l1), l1};
}

// v00 at (y0, x0), v01 at (y0, x1), v10 at (y1, x0), v11 at (y1, x1); PyTorch's order.
// A destination that falls exactly on a source sample (same size on both axes, say) takes it
// unchanged, so that infinities and NaNs of other taps do not leak in through a zero weight.
DP_HD float bilinear(float v00, float v01, float v10, float v11, const Tap& ty, const Tap& tx) {
  if (ty.l1 == 0.0f && tx.l1 == 0.0f) return v00;
  const float top = f_add(f_mul(tx.l0, v00), f_mul(tx.l1, v01));
  const float bottom = f_add(f_mul(tx.l0, v10), f_mul(tx.l1, v11));
  return f_add(f_mul(ty.l0, top), f_mul(ty.l1, bottom));
}

DP_HD float standardise(float v, float mean, float scale) { return f_mul(f_sub(v, mean), scale); }

// One step of the exponential moving average: (1 - m) * old + m * x.
DP_HD double ema(double old, double x, double m) { return d_add(d_mul(1.0 - m, old), d_mul(m, x)); }

}  // namespace dp::kernels

// The CUDA fusion kernel (fusion.hpp, docs/FUSION.md "kernel 6"). One launch writes the whole
// fused tensor and, in its last block, folds the frame's moments into the running statistics.
//
// The work is a list of units, built once per layout; the launch has as many blocks as the card
// holds at once, and each takes units from a counter (the largest first; the next one while it
// works on the current one) until none is left:
//   - copy: a range of the channel planes (one, or up to kMaxGroup: DIRECTPORT_FUSION_GROUP) of
//     a spatial teacher that has the grid's size (no resampling: each value is read once,
//     standardised, cast and stored, eight or two at a time where the alignment allows);
//   - band: a band of output rows (and at most kMaxCols columns) of the channels of a resampled
//     teacher. The block first interpolates horizontally every input row the band needs into
//     shared memory (H[r][x], exactly bilinear()'s `top`/`bottom`), then every output value is
//     the vertical interpolation of two of those rows: for a map upsampled 14x, one horizontal
//     interpolation serves 14 output rows, and an output costs three multiplies and adds (a
//     thread takes 8 adjacent outputs where the layout allows). Values are bit for bit those
//     of bilinear();
//   - vector: a range of a global vector teacher (each element its own channel).
// The units and the bilinear taps of every output row and column of a teacher are planned once,
// on the host, with the CPU reference's code (fusion_plan.hpp); the kernel reads them from
// tables. Statistics: each thread sums its values in float64 (8 at a time first in float32:
// Sums::add8), the block sums the threads, one
// atomic per unit and channel into the accumulators; the last block to finish (a counter) turns
// the accumulators into the statistics and the (mean, scale) pairs the next frame uses, so that
// a frame is one launch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "directport/cuda/driver.hpp"
#include "directport/kernels/fusion.hpp"
#include "directport/kernels/fusion_math.hpp"
#include "directport/kernels/fusion_plan.hpp"

namespace dp::kernels {
namespace {

using namespace plan;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct LaunchArgs {
  const void* in[FusionLayout::kMaxTeachers];
  std::uint32_t present;     // bit i: teacher i has an input this frame
  std::uint32_t accumulate;  // bit i: fold this frame into teacher i's statistics
  std::uint32_t first;       // bit i: ... as its first frame (initialise rather than average)
  std::uint32_t paired;      // bit i: this frame's pointers are aligned for teacher i's pairs
  std::uint32_t vectored;    // bit i: ... for its vectors of kVec elements
  std::uint32_t in_pairs;    // bit i: teacher i's input is aligned to two elements
  int write;                 // 0: statistics only (a teacher's first frame)
  void* out;
  int out_dtype;
  int teachers;
  std::uint32_t grid_w;
  std::uint32_t plane;  // grid_h * grid_w
  std::uint64_t mask_offset;
  const TeacherDesc* desc;
  const Unit* units;
  const Tap32* taps;
  double *m1, *m2, *acc1, *acc2;
  float *mean, *scale;
  unsigned unit_count;
  unsigned* next;  // the next unit to take (blocks take units in turn until none is left)
  unsigned* done;  // blocks finished; the last one folds the statistics and resets both counters
  double momentum, eps;
};

// ------------------------------------------------------------------ loads and stores

template <typename T>
__device__ __forceinline__ float ld(const T* p);
template <>
__device__ __forceinline__ float ld<float>(const float* p) { return __ldg(p); }
template <>
__device__ __forceinline__ float ld<__half>(const __half* p) { return __half2float(__ldg(p)); }
template <>
__device__ __forceinline__ float ld<__nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }

// The 4 aligned bytes at p as a pair of 16-bit floats.
template <typename Pair>
__device__ __forceinline__ Pair ld_pair16(const void* p) {
  const unsigned u = __ldg(static_cast<const unsigned*>(p));
  Pair h;
  std::memcpy(&h, &u, sizeof u);
  return h;
}

// A pair of 16-bit floats to two floats, and two floats to a pair rounded to nearest even (as
// st() rounds), for both half types.
__device__ __forceinline__ float2 to_float2(__half2 h) { return __half22float2(h); }
__device__ __forceinline__ float2 to_float2(__nv_bfloat162 h) { return __bfloat1622float2(h); }
template <typename Pair>
__device__ __forceinline__ Pair to_pair(float a, float b);
template <>
__device__ __forceinline__ __half2 to_pair<__half2>(float a, float b) { return __floats2half2_rn(a, b); }
template <>
__device__ __forceinline__ __nv_bfloat162 to_pair<__nv_bfloat162>(float a, float b) { return __floats2bfloat162_rn(a, b); }

// Two adjacent elements (p aligned to two of them).
template <typename T>
__device__ __forceinline__ float2 ld2(const T* p);
template <>
__device__ __forceinline__ float2 ld2<float>(const float* p) { return __ldg(reinterpret_cast<const float2*>(p)); }
template <>
__device__ __forceinline__ float2 ld2<__half>(const __half* p) { return to_float2(ld_pair16<__half2>(p)); }
template <>
__device__ __forceinline__ float2 ld2<__nv_bfloat16>(const __nv_bfloat16* p) { return to_float2(ld_pair16<__nv_bfloat162>(p)); }

template <typename T>
__device__ __forceinline__ void st(T* p, float v);
template <>
__device__ __forceinline__ void st<float>(float* p, float v) { *p = v; }
template <>
__device__ __forceinline__ void st<__half>(__half* p, float v) { *p = __float2half_rn(v); }
template <>
__device__ __forceinline__ void st<__nv_bfloat16>(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Two adjacent elements, each rounded to nearest even as st() does.
template <typename T>
__device__ __forceinline__ void st2(T* p, float a, float b);
template <>
__device__ __forceinline__ void st2<float>(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
template <>
__device__ __forceinline__ void st2<__half>(__half* p, float a, float b) { *reinterpret_cast<__half2*>(p) = to_pair<__half2>(a, b); }
template <>
__device__ __forceinline__ void st2<__nv_bfloat16>(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = to_pair<__nv_bfloat162>(a, b);
}

// kVec = 8 adjacent elements (p aligned to 16 bytes), as ld() and st() take them one by one.
static_assert(kVec == 8, "ld8() and st8() move 8 elements");
template <typename Pair>
__device__ __forceinline__ void unpack8(const uint4& u, float (&v)[8]) {
  const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    Pair h;
    std::memcpy(&h, &w[k], sizeof h);
    const float2 f = to_float2(h);
    v[2 * k] = f.x;
    v[2 * k + 1] = f.y;
  }
}
template <typename T>
__device__ __forceinline__ void ld8(const T* p, float (&v)[8]);
template <>
__device__ __forceinline__ void ld8<float>(const float* p, float (&v)[8]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
template <>
__device__ __forceinline__ void ld8<__half>(const __half* p, float (&v)[8]) {
  unpack8<__half2>(__ldg(reinterpret_cast<const uint4*>(p)), v);
}
template <>
__device__ __forceinline__ void ld8<__nv_bfloat16>(const __nv_bfloat16* p, float (&v)[8]) {
  unpack8<__nv_bfloat162>(__ldg(reinterpret_cast<const uint4*>(p)), v);
}

template <typename Pair>
__device__ __forceinline__ unsigned pack2(float a, float b) {
  const Pair h = to_pair<Pair>(a, b);
  unsigned u;
  std::memcpy(&u, &h, sizeof u);
  return u;
}
template <typename T>
__device__ __forceinline__ void st8(T* p, const float (&v)[8]);
template <>
__device__ __forceinline__ void st8<float>(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
template <>
__device__ __forceinline__ void st8<__half>(__half* p, const float (&v)[8]) {
  *reinterpret_cast<uint4*>(p) = make_uint4(pack2<__half2>(v[0], v[1]), pack2<__half2>(v[2], v[3]),
                                            pack2<__half2>(v[4], v[5]), pack2<__half2>(v[6], v[7]));
}
template <>
__device__ __forceinline__ void st8<__nv_bfloat16>(__nv_bfloat16* p, const float (&v)[8]) {
  *reinterpret_cast<uint4*>(p) = make_uint4(pack2<__nv_bfloat162>(v[0], v[1]), pack2<__nv_bfloat162>(v[2], v[3]),
                                            pack2<__nv_bfloat162>(v[4], v[5]), pack2<__nv_bfloat162>(v[6], v[7]));
}

__device__ __forceinline__ void store_any(void* p, int dtype, std::uint64_t i, float v) {
  if (dtype == kF16) {
    st(static_cast<__half*>(p) + i, v);
  } else if (dtype == kBF16) {
    st(static_cast<__nv_bfloat16*>(p) + i, v);
  } else {
    st(static_cast<float*>(p) + i, v);
  }
}

__device__ __forceinline__ float load_any(const void* p, int dtype, std::uint64_t i) {
  if (dtype == kF16) return ld(static_cast<const __half*>(p) + i);
  if (dtype == kBF16) return ld(static_cast<const __nv_bfloat16*>(p) + i);
  return ld(static_cast<const float*>(p) + i);
}

// ------------------------------------------------------------------ sums

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;  // valid in lane 0
}

// A thread's running sums of its values and their squares, in float64 (v * v of a float is exact
// in a double, so the fused multiply-add rounds once, as the reference's multiply and add do).
struct Sums {
  double s1 = 0.0, s2 = 0.0;
  // add8() sums the differences from a shift (the first finite value the thread saw), counted in
  // n; raw() gives the sums of the values themselves. add() and add8() are not mixed in a unit.
  float shift = 0.0f;
  bool shifted = false;
  unsigned n = 0;
  __device__ __forceinline__ void add(float v) {
    const double d = v;
    s1 += d;
    s2 = __fma_rn(d, d, s2);
  }
  // Eight values: their differences from the shift, and the squares of those, summed in float32
  // first (a tree of rounded adds), then added in float64, which converts two values rather than
  // eight. The float32 steps err by about 3 roundings of the differences' magnitudes, not of the
  // values': a channel whose mean is far larger than its spread keeps its variance (the squares
  // of the values themselves would lose it in float32). A sum that is not finite in float32 is
  // redone in float64.
  __device__ __forceinline__ void add8(const float (&v)[8]) {
    if (!shifted) {
      shifted = true;
      shift = isfinite(v[0]) ? v[0] : 0.0f;
    }
    n += 8;
    float d[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) d[k] = f_sub(v[k], shift);
    const float a = f_add(f_add(f_add(d[0], d[1]), f_add(d[2], d[3])), f_add(f_add(d[4], d[5]), f_add(d[6], d[7])));
    float q[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) q[k] = __fmaf_rn(d[2 * k + 1], d[2 * k + 1], f_mul(d[2 * k], d[2 * k]));
    const float b = f_add(f_add(q[0], q[1]), f_add(q[2], q[3]));
    if (isfinite(a) && isfinite(b)) {
      s1 += static_cast<double>(a);
      s2 += static_cast<double>(b);
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const double e = d_sub(static_cast<double>(v[k]), static_cast<double>(shift));
        s1 += e;
        s2 = __fma_rn(e, e, s2);
      }
    }
  }
  // The sums of the values: sum (x - s) + n s and sum (x - s)^2 + 2 s sum (x - s) + n s^2.
  __device__ __forceinline__ double2 raw() const {
    if (!shifted || shift == 0.0f) return make_double2(s1, s2);
    const double sh = shift, cnt = n;
    return make_double2(s1 + cnt * sh, s2 + 2.0 * sh * s1 + cnt * sh * sh);
  }
};

// Per-warp sums of a unit's channels, then the block's: one atomic per channel and moment.
struct Partials {
  double v[kWarps][kMaxGroup][2];
};
__device__ __forceinline__ void warp_partial(const Sums& s, int g, Partials& p) {
  const double2 r = s.raw();
  const double s1 = warp_sum(r.x), s2 = warp_sum(r.y);
  if ((threadIdx.x & 31) == 0) {
    p.v[threadIdx.x >> 5][g][0] = s1;
    p.v[threadIdx.x >> 5][g][1] = s2;
  }
}
// Every thread of the block, after warp_partial() for channels [0, nc). (Every thread fences
// once, before its block counts itself done, so that the launch's last block sees the sums.)
__device__ __forceinline__ void commit(const LaunchArgs& a, const Partials& p, int nc, unsigned ch0) {
  __syncthreads();
  if (threadIdx.x < 2 * nc) {
    const int g = threadIdx.x >> 1, k = threadIdx.x & 1;
    double sum = 0.0;
    for (int w = 0; w < kWarps; ++w) sum += p.v[w][g][k];
    atomicAdd((k ? a.acc2 : a.acc1) + ch0 + g, sum);
  }
}

// ------------------------------------------------------------------ the units

// A value's way out: standardised, cast, stored (where this pass writes) and summed (where it
// keeps statistics).
template <typename TO>
struct Emit {
  TO* dst;  // the unit's first output element
  float mean, scale;
  bool write, acc;
  Sums sums;
  __device__ __forceinline__ void one(std::uint32_t i, float v) {
    if (write) st(dst + i, standardise(v, mean, scale));
    if (acc) sums.add(v);
  }
  __device__ __forceinline__ void eight(std::uint32_t i, const float (&v)[8]) {
    if (write) {
      float o[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) o[k] = standardise(v[k], mean, scale);
      st8(dst + i, o);
    }
    if (acc) sums.add8(v);
  }
  __device__ __forceinline__ void two(std::uint32_t i, float v0, float v1) {
    if (write) st2(dst + i, standardise(v0, mean, scale), standardise(v1, mean, scale));
    if (acc) {
      sums.add(v0);
      sums.add(v1);
    }
  }
};

// copy: elements [u.y0, u.y0 + u.rows) of channel c's plane; input and output planes have the
// grid's size, so a value is taken unchanged (bilinear()'s exact-sample case).
template <typename TI, typename TO>
__device__ __forceinline__ void copy_channel(const LaunchArgs& a, const Unit& u, std::uint32_t c, Emit<TO>& e, bool vec,
                                             bool pairs) {
  const TI* src = static_cast<const TI*>(a.in[u.teacher]) + std::uint64_t(c) * a.plane + u.y0;
  if (vec) {  // u.y0 and u.rows multiples of kVec, the pointers aligned to 16 bytes (checked on the host)
#pragma unroll 2
    for (std::uint32_t i = kVec * threadIdx.x; i < u.rows; i += kVec * kThreads) {
      float v[kVec];
      ld8(src + i, v);
      e.eight(i, v);
    }
  } else if (pairs) {  // u.y0 and u.rows even, the pointers aligned (checked on the host)
    for (std::uint32_t i = 2 * threadIdx.x; i < u.rows; i += 2 * kThreads) {
      const float2 v = ld2(src + i);
      e.two(i, v.x, v.y);
    }
  } else {
    for (std::uint32_t i = threadIdx.x; i < u.rows; i += kThreads) e.one(i, ld(src + i));
  }
}

// An output row of a band: where its two rows of H start, and their weights.
struct RowRef {
  std::uint32_t a, b;
  float l0, l1;
};

// band, step 1: H[g][r][x], input row u.rbase + r of channel u.c + g interpolated horizontally
// at the band's column x, for every channel of the unit; and the band's rows as RowRefs.
// `split` (vectors: u.cols a multiple of 8): a row holds its columns in two halves, first the
// columns 8j..8j+3 for every j, then 8j+4..8j+7, so that the threads of band_channel_vec(), a
// thread 8 columns, read each half of their columns from consecutive 16-byte words (no bank
// conflicts).
template <typename TI>
__device__ __forceinline__ void band_rows(const LaunchArgs& a, const TeacherDesc& t, const Unit& u, float* H, RowRef* refs,
                                          bool split) {
  const Tap32* ct = a.taps + t.col_taps + u.x0;
  const Tap32* rt = a.taps + t.row_taps + u.y0;
  const std::uint32_t cols = u.cols;
  for (std::uint32_t y = threadIdx.x; y < u.rows; y += kThreads) {
    const Tap32 ty = rt[y];
    refs[y] = {(ty.i0 - u.rbase) * cols, (ty.i1 - u.rbase) * cols, ty.l0, ty.l1};
  }
  const std::uint64_t in_plane = std::uint64_t(t.h) * t.w;
  // Every column's taps adjacent, the first even (the plan), the input aligned to two (this
  // frame): one aligned load of two elements takes both. Uniform over the block.
  const bool two = t.tap_pairs && ((a.in_pairs >> u.teacher) & 1u);
  for (std::uint32_t x = threadIdx.x; x < cols; x += kThreads) {
    const Tap32 tx = ct[x];
    const std::uint32_t hx = split ? ((x & 4) ? cols / 2 : 0) + ((x >> 3) << 2) + (x & 3) : x;
    for (std::uint32_t g = 0; g < u.nc; ++g) {
      const TI* row = static_cast<const TI*>(a.in[u.teacher]) + (u.c + g) * in_plane + std::uint64_t(u.rbase) * t.w;
      float* h = H + g * u.nrows * cols + hx;
      if (two) {
#pragma unroll 4
        for (std::uint32_t r = 0; r < u.nrows; ++r) {
          const float2 v = ld2(row + r * t.w + tx.i0);
          h[r * cols] = f_add(f_mul(tx.l0, v.x), f_mul(tx.l1, v.y));
        }
      } else {
#pragma unroll 4
        for (std::uint32_t r = 0; r < u.nrows; ++r) {
          const float v0 = ld(row + r * t.w + tx.i0);
          const float v1 = ld(row + r * t.w + tx.i1);  // the same element where i1 == i0
          h[r * cols] = f_add(f_mul(tx.l0, v0), f_mul(tx.l1, v1));
        }
      }
    }
  }
}

// band, step 2: output rows [u.y0, u.y0 + u.rows) and columns [u.x0, u.x0 + u.cols) of channel
// c, from its rows H. Each output is the vertical interpolation of two rows of H. A thread keeps
// its columns (one or two adjacent) and walks down the rows; the threads of a row cover it side
// by side.
template <typename TI, typename TO>
__device__ __forceinline__ void band_channel(const LaunchArgs& a, const TeacherDesc& t, const Unit& u, std::uint32_t c,
                                             Emit<TO>& e, bool pairs, const float* H, const RowRef* refs) {
  const TI* src = static_cast<const TI*>(a.in[u.teacher]) + std::uint64_t(c) * t.h * t.w;
  const Tap32* ct = a.taps + t.col_taps + u.x0;
  const Tap32* rt = a.taps + t.row_taps + u.y0;
  const std::uint32_t cols = u.cols;
  const int step = pairs ? 2 : 1;
  const std::uint32_t per_row = umin(kThreads, (cols + step - 1) / step);
  const std::uint32_t rows_at_once = kThreads / per_row;
  const std::uint32_t lane_x = threadIdx.x % per_row, lane_y = threadIdx.x / per_row;
  if (lane_y >= rows_at_once) return;
  const std::uint32_t out_w = a.grid_w;
  for (std::uint32_t x = lane_x * step; x < cols; x += per_row * step) {
#pragma unroll 2
    for (std::uint32_t y = lane_y; y < u.rows; y += rows_at_once) {
      const RowRef ty = refs[y];
      const float* ha = H + ty.a + x;
      const float* hb = H + ty.b + x;
      const std::uint32_t o = y * out_w + x;  // within the plane: below 2^31
      if (pairs) {
        const float2 A = *reinterpret_cast<const float2*>(ha), B = *reinterpret_cast<const float2*>(hb);
        float v0 = f_add(f_mul(ty.l0, A.x), f_mul(ty.l1, B.x));
        float v1 = f_add(f_mul(ty.l0, A.y), f_mul(ty.l1, B.y));
        if (ty.l1 == 0.0f) {  // an output row on an input row: where the column is too, the sample itself
          const TI* row = src + std::uint64_t(rt[y].i0) * t.w;
          const Tap32 c0 = ct[x], c1 = ct[x + 1];
          if (c0.l1 == 0.0f) v0 = ld(row + c0.i0);
          if (c1.l1 == 0.0f) v1 = ld(row + c1.i0);
        }
        e.two(o, v0, v1);
      } else {
        float v = f_add(f_mul(ty.l0, ha[0]), f_mul(ty.l1, hb[0]));
        if (ty.l1 == 0.0f) {
          const Tap32 c0 = ct[x];
          if (c0.l1 == 0.0f) v = ld(src + std::uint64_t(rt[y].i0) * t.w + c0.i0);
        }
        e.one(o, v);
      }
    }
  }
}

// band, step 2 with vectors: as band_channel(), a thread taking kVec adjacent columns of a row
// (the band's columns, the grid's width and the teacher's offset are multiples of kVec, the
// output aligned to 16 bytes: checked on the host), loading them from H four at a time (H's
// rows split in halves by band_rows()).
template <typename TI, typename TO>
__device__ __forceinline__ void band_channel_vec(const LaunchArgs& a, const TeacherDesc& t, const Unit& u, std::uint32_t c,
                                                 Emit<TO>& e, const float* H, const RowRef* refs) {
  const std::uint32_t cols = u.cols;
  const std::uint32_t per_row = cols / kVec;  // at most kMaxCols / kVec = kThreads
  const std::uint32_t rows_at_once = kThreads / per_row;
  const std::uint32_t lane_x = threadIdx.x % per_row, lane_y = threadIdx.x / per_row;
  if (lane_y >= rows_at_once) return;
  const std::uint32_t x = lane_x * kVec;
  const std::uint32_t out_w = a.grid_w;
#pragma unroll 2
  for (std::uint32_t y = lane_y; y < u.rows; y += rows_at_once) {
    const RowRef ty = refs[y];
    const float* ha = H + ty.a + x / 2;
    const float* hb = H + ty.b + x / 2;
    const float4 A0 = *reinterpret_cast<const float4*>(ha), A1 = *reinterpret_cast<const float4*>(ha + cols / 2);
    const float4 B0 = *reinterpret_cast<const float4*>(hb), B1 = *reinterpret_cast<const float4*>(hb + cols / 2);
    const float A[8] = {A0.x, A0.y, A0.z, A0.w, A1.x, A1.y, A1.z, A1.w};
    const float B[8] = {B0.x, B0.y, B0.z, B0.w, B1.x, B1.y, B1.z, B1.w};
    float v[kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) v[k] = f_add(f_mul(ty.l0, A[k]), f_mul(ty.l1, B[k]));
    if (ty.l1 == 0.0f) {  // an output row on an input row: where the column is too, the sample itself
      const TI* row = static_cast<const TI*>(a.in[u.teacher]) + std::uint64_t(c) * t.h * t.w +
                      std::uint64_t(a.taps[t.row_taps + u.y0 + y].i0) * t.w;
      const Tap32* ct = a.taps + t.col_taps + u.x0 + x;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const Tap32 ck = ct[k];
        if (ck.l1 == 0.0f) v[k] = ld(row + ck.i0);
      }
    }
    e.eight(y * out_w + x, v);  // within the plane: below 2^31
  }
}

template <typename TI, typename TO>
__device__ __forceinline__ void spatial_unit(const LaunchArgs& a, const TeacherDesc& t, const Unit& u, bool acc,
                                             float* H, RowRef* refs, Partials& partials) {
  const bool pairs = t.pairs && ((a.paired >> u.teacher) & 1u);
  const bool vec = t.vec && ((a.vectored >> u.teacher) & 1u);
  // The first channel's (mean, scale), loaded before the band's rows so that their round trip
  // overlaps with those.
  float mean = a.mean[t.chan_base + u.c], scale = a.scale[t.chan_base + u.c];
  if (t.mode == kBand) {
    band_rows<TI>(a, t, u, H, refs, vec);
    __syncthreads();
  }
  for (std::uint32_t g = 0; g < u.nc; ++g) {
    const std::uint32_t c = u.c + g;
    const unsigned ch = t.chan_base + c;
    Emit<TO> e;
    e.write = a.write != 0;
    e.acc = acc;
    if (g > 0) {
      mean = a.mean[ch];
      scale = a.scale[ch];
    }
    e.mean = mean;
    e.scale = scale;
    if (t.mode == kCopy) {
      e.dst = static_cast<TO*>(a.out) + t.out_offset + std::uint64_t(c) * a.plane + u.y0;
      copy_channel<TI, TO>(a, u, c, e, vec, pairs);
    } else {
      e.dst = static_cast<TO*>(a.out) + t.out_offset + std::uint64_t(c) * a.plane + std::uint64_t(u.y0) * a.grid_w + u.x0;
      if (vec) {
        band_channel_vec<TI, TO>(a, t, u, c, e, H + g * u.nrows * u.cols, refs);
      } else {
        band_channel<TI, TO>(a, t, u, c, e, pairs, H + g * u.nrows * u.cols, refs);
      }
    }
    if (acc) warp_partial(e.sums, static_cast<int>(g), partials);  // uniform over the block
  }
  if (acc) commit(a, partials, static_cast<int>(u.nc), t.chan_base + u.c);
}

template <typename TI>
__device__ __forceinline__ void spatial_unit_in(const LaunchArgs& a, const TeacherDesc& t, const Unit& u, bool acc,
                                                float* H, RowRef* refs, Partials& partials) {
  if (a.out_dtype == kF16) {
    spatial_unit<TI, __half>(a, t, u, acc, H, refs, partials);
  } else if (a.out_dtype == kBF16) {
    spatial_unit<TI, __nv_bfloat16>(a, t, u, acc, H, refs, partials);
  } else {
    spatial_unit<TI, float>(a, t, u, acc, H, refs, partials);
  }
}

// A missing teacher's part of the unit: zeros.
__device__ __forceinline__ void zero_unit(const LaunchArgs& a, const TeacherDesc& t, const Unit& u) {
  for (std::uint32_t c = u.c; c < u.c + u.nc; ++c) {
    if (t.mode == kBand) {
      const std::uint64_t base = t.out_offset + std::uint64_t(c) * a.plane + std::uint64_t(u.y0) * a.grid_w + u.x0;
      for (std::uint32_t i = threadIdx.x; i < u.rows * u.cols; i += kThreads) {
        const std::uint32_t y = i / u.cols, x = i - y * u.cols;
        store_any(a.out, a.out_dtype, base + std::uint64_t(y) * a.grid_w + x, 0.0f);
      }
    } else {
      const std::uint64_t base = t.out_offset + (t.mode == kCopy ? std::uint64_t(c) * a.plane : 0) + u.y0;
      for (std::uint32_t i = threadIdx.x; i < u.rows; i += kThreads) store_any(a.out, a.out_dtype, base + i, 0.0f);
    }
  }
}

// ------------------------------------------------------------------ the statistics

// Every accumulating teacher's accumulators into its running statistics and (mean, scale), by
// one block (the launch's last) over all their channels at once. The other blocks have finished,
// so this is the launch's tail: every step loads what it needs for several channels before it
// stores anything, so that a step costs about one round trip to L2 rather than one a channel.
//   1. each thread takes kFold channels at a time: the running moments, and (mean, scale) where
//      the norm is per channel or none; an isotropic teacher's channel leaves its variance in
//      acc1 for step 2;
//   2. a warp an isotropic teacher sums those variances (a fixed order) into its one scale;
//   3. that scale is stored for each of the teacher's channels, and acc1 cleared.
struct FinalScratch {
  unsigned end[FusionLayout::kMaxTeachers];  // a teacher's channels end here in the statistics arrays
  int norm[FusionLayout::kMaxTeachers];
  double inv_n[FusionLayout::kMaxTeachers];  // 1 / the values a channel sums per frame
  float iso_scale[FusionLayout::kMaxTeachers];
};

__device__ __forceinline__ int teacher_of(const FinalScratch& f, int teachers, unsigned k) {
  int i = 0;
  while (i < teachers - 1 && k >= f.end[i]) ++i;
  return i;
}

constexpr int kFold = 4;  // channels a thread folds at once

__device__ void finalize(const LaunchArgs& a, FinalScratch& f) {
  constexpr int iso = static_cast<int>(NormMode::isotropic), none = static_cast<int>(NormMode::none);
  if (threadIdx.x < a.teachers) {
    const TeacherDesc t = a.desc[threadIdx.x];
    f.end[threadIdx.x] = t.chan_base + t.channels;
    f.norm[threadIdx.x] = t.norm;
    f.inv_n[threadIdx.x] = t.mode == kVector ? 1.0 : 1.0 / static_cast<double>(a.plane);
  }
  __syncthreads();
  const unsigned total = f.end[a.teachers - 1];
  for (unsigned k0 = 0; k0 < total; k0 += kThreads * kFold) {
    double s1[kFold], s2[kFold], o1[kFold], o2[kFold];
    int who[kFold];
#pragma unroll
    for (int j = 0; j < kFold; ++j) {
      const unsigned k = k0 + j * kThreads + threadIdx.x;
      who[j] = k < total ? teacher_of(f, a.teachers, k) : -1;
      if (who[j] >= 0 && !((a.accumulate >> who[j]) & 1u)) who[j] = -1;
      if (who[j] >= 0) {
        s1[j] = __ldcg(a.acc1 + k);
        s2[j] = __ldcg(a.acc2 + k);
        o1[j] = a.m1[k];
        o2[j] = a.m2[k];
      }
    }
#pragma unroll
    for (int j = 0; j < kFold; ++j) {
      if (who[j] < 0) continue;
      const unsigned k = k0 + j * kThreads + threadIdx.x;
      const int i = who[j];
      const bool first = (a.first >> i) & 1u;
      // Products and rsqrt() rather than divisions and 1 / sqrt(): the fold runs alone at the
      // launch's end, and float64 division and square root are long chains (within an ulp of
      // the reference's float64, far below what the float32 (mean, scale) keep).
      const double e1 = s1[j] * f.inv_n[i], e2 = s2[j] * f.inv_n[i];
      const double m1 = first ? e1 : ema(o1[j], e1, a.momentum);
      const double m2 = first ? e2 : ema(o2[j], e2, a.momentum);
      const double var = fmax(d_sub(m2, d_mul(m1, m1)), 0.0);
      a.m1[k] = m1;
      a.m2[k] = m2;
      a.acc2[k] = 0.0;
      a.acc1[k] = f.norm[i] == iso ? var : 0.0;  // step 2 sums it, step 3 clears it
      if (f.norm[i] == none) {
        a.mean[k] = 0.0f;
        a.scale[k] = 1.0f;
      } else {
        a.mean[k] = static_cast<float>(m1);
        if (f.norm[i] != iso) a.scale[k] = static_cast<float>(rsqrt(d_add(var, a.eps)));
      }
    }
  }
  __syncthreads();  // the block's own global writes are visible to it after the barrier
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int i = warp; i < a.teachers; i += kWarps) {
    if (!((a.accumulate >> i) & 1u) || f.norm[i] != iso) continue;
    const unsigned begin = i ? f.end[i - 1] : 0;
    double local = 0.0;
#pragma unroll 8
    for (unsigned k = begin + lane; k < f.end[i]; k += 32) local += __ldcg(a.acc1 + k);
    local = warp_sum(local);
    if (lane == 0) {
      const double channels = static_cast<double>(f.end[i] - begin);
      f.iso_scale[i] = static_cast<float>(rsqrt(d_add(local / channels, a.eps)));
    }
  }
  __syncthreads();
  for (unsigned k = threadIdx.x; k < total; k += kThreads) {
    const int i = teacher_of(f, a.teachers, k);
    if (!((a.accumulate >> i) & 1u) || f.norm[i] != iso) continue;
    a.scale[k] = f.iso_scale[i];
    a.acc1[k] = 0.0;
  }
}

// One unit: its part of the fused tensor and its sums.
__device__ __forceinline__ void run_unit(const LaunchArgs& a, const TeacherDesc* descs, const Unit& u, float* H, RowRef* refs,
                                         Partials& partials) {
  const TeacherDesc t = descs[u.teacher];
  const bool present = (a.present >> u.teacher) & 1u;
  const bool acc = (a.accumulate >> u.teacher) & 1u;
  if (!present) {  // uniform over the block, as everything below that branches on the unit
    if (a.write) zero_unit(a, t, u);
  } else if (t.mode == kVector) {
    for (std::uint32_t i = threadIdx.x; i < u.rows; i += kThreads) {
      const std::uint32_t e = u.y0 + i;
      const unsigned ch = t.chan_base + e;  // each element its own channel
      const float v = load_any(a.in[u.teacher], t.dtype, e);
      if (acc) {
        a.acc1[ch] = v;  // one value per channel and frame: no other writer
        a.acc2[ch] = static_cast<double>(v) * v;
      }
      if (a.write) store_any(a.out, a.out_dtype, t.out_offset + e, standardise(v, a.mean[ch], a.scale[ch]));
    }
  } else if (a.write || acc) {
    if (t.dtype == kF16) {
      spatial_unit_in<__half>(a, t, u, acc, H, refs, partials);
    } else if (t.dtype == kBF16) {
      spatial_unit_in<__nv_bfloat16>(a, t, u, acc, H, refs, partials);
    } else {
      spatial_unit_in<float>(a, t, u, acc, H, refs, partials);
    }
  }
}

// As many blocks as the card holds at once; each takes units in turn (the largest first, as the
// host ordered them) until none is left, so that no block is the launch's long tail.
template <int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks) fuse_kernel(LaunchArgs a) {
  extern __shared__ __align__(16) float H[];
  __shared__ RowRef refs[kMaxRows];
  __shared__ Partials partials;
  __shared__ FinalScratch final_scratch;
  __shared__ TeacherDesc descs[FusionLayout::kMaxTeachers];
  __shared__ unsigned taken[2];
  __shared__ bool last;

  if (a.write && blockIdx.x == 0 && threadIdx.x < a.teachers) {
    store_any(a.out, a.out_dtype, a.mask_offset + threadIdx.x, ((a.present >> threadIdx.x) & 1u) ? 1.0f : 0.0f);
  }
  if (threadIdx.x < a.teachers) descs[threadIdx.x] = a.desc[threadIdx.x];
  if (threadIdx.x == 0) taken[0] = atomicAdd(a.next, 1u);
  __syncthreads();
  // Thread 0 takes the next unit while the block works on this one: the atomic's round trip
  // is off the path.
  for (int slot = 0;; slot ^= 1) {
    const unsigned k = taken[slot];
    if (k >= a.unit_count) break;  // uniform: every thread read the same slot
    unsigned next = 0;
    if (threadIdx.x == 0) next = atomicAdd(a.next, 1u);
    const Unit u = a.units[k];  // in registers: the output's stores cannot alias it
    run_unit(a, descs, u, H, refs, partials);
    if (threadIdx.x == 0) taken[slot ^ 1] = next;  // every thread read it last before the previous barrier
    __syncthreads();  // the unit is done with the shared memory; the next slot is visible
  }
  // The last block to get here resets the counters and folds every accumulator. Every thread
  // fences its sums (atomics and the vectors' stores) before its block counts itself done, so
  // that they are visible to that block.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(a.done, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (a.accumulate) finalize(a, final_scratch);
  if (threadIdx.x == 0) {
    *a.next = 0;
    *a.done = 0;
  }
}

}  // namespace

struct FusionGpu::Device {
  TeacherDesc* desc = nullptr;
  Unit* units = nullptr;
  Tap32* taps = nullptr;
  double* stats = nullptr;  // m1, m2, acc1, acc2: total_channels each
  float* norm = nullptr;    // mean, scale
  unsigned* counters = nullptr;  // next, done
  unsigned unit_count = 0;
  unsigned blocks = 0;
  std::size_t shared_bytes = 0;
  std::size_t channels = 0;
  void (*kernel)(LaunchArgs) = nullptr;  // fuse_kernel<4> or <5> (DIRECTPORT_FUSION_BLOCKS)
  std::vector<int> pairs;  // per teacher: TeacherDesc::pairs
  std::vector<int> vec;    // ... TeacherDesc::vec
  std::vector<int> copy;   // ... 1 where its mode is kCopy (its input is loaded in vectors too)
  ~Device() {
    cudaFree(desc);
    cudaFree(units);
    cudaFree(taps);
    cudaFree(stats);
    cudaFree(norm);
    cudaFree(counters);
  }
  double* m1() const { return stats; }
  double* m2() const { return stats + channels; }
  double* acc1() const { return stats + 2 * channels; }
  double* acc2() const { return stats + 3 * channels; }
  float* mean() const { return norm; }
  float* scale() const { return norm + channels; }
};

FusionGpu::FusionGpu(FusionLayout layout)
    : layout_(std::move(layout)), frames_(layout_.teachers(), 0), dev_(std::make_unique<Device>()) {
  const auto& L = layout_;
  auto& D = *dev_;
  const FusionPlan P = plan_fusion(L, unit_elements_from_env(), unit_group_from_env(), even_split_from_env());
  const auto& units = P.units;
  const auto& desc = P.teachers;
  const auto& taps = P.taps;
  const std::size_t shared_bytes = P.shared_bytes;
  D.unit_count = static_cast<unsigned>(units.size());
  const int want_per_sm = blocks_per_sm_from_env();
  D.kernel = want_per_sm == 5 ? fuse_kernel<5> : fuse_kernel<4>;
  if (shared_bytes > 48 * 1024) {
    DP_CUDA_CHECK(cudaFuncSetAttribute(D.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)));
  }
  // Shared memory for the blocks an SM is meant to hold (the rest stays L1 cache, which the
  // loads of inputs and taps use).
  int device = 0, sms = 0, smem_sm = 0;
  DP_CUDA_CHECK(cudaGetDevice(&device));
  DP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  DP_CUDA_CHECK(cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  cudaFuncAttributes fa{};
  DP_CUDA_CHECK(cudaFuncGetAttributes(&fa, D.kernel));
  const std::size_t smem_needed = std::size_t(want_per_sm) * (shared_bytes + fa.sharedSizeBytes + 1024);
  if (smem_sm > 0) {
    const int carveout = static_cast<int>(std::min<std::size_t>(100, (smem_needed * 100 + smem_sm - 1) / std::size_t(smem_sm)));
    DP_CUDA_CHECK(cudaFuncSetAttribute(D.kernel, cudaFuncAttributePreferredSharedMemoryCarveout, carveout));
  }
  int per_sm = 0;
  DP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, D.kernel, kThreads, shared_bytes));
  if (per_sm < 1) {
    throw CudaError("the fusion kernel does not fit on an SM of this device (" + std::to_string(shared_bytes) +
                    " bytes of shared memory a block)");
  }
  D.blocks = static_cast<unsigned>(std::min<std::int64_t>(std::int64_t(per_sm) * sms, std::int64_t(units.size())));
  D.shared_bytes = shared_bytes;
  D.channels = L.total_channels();
  for (const auto& d : desc) {
    D.pairs.push_back(d.pairs);
    D.vec.push_back(d.vec);
    D.copy.push_back(d.mode == kCopy);
  }
  DP_CUDA_CHECK(cudaMalloc(&D.desc, desc.size() * sizeof(TeacherDesc)));
  DP_CUDA_CHECK(cudaMalloc(&D.units, units.size() * sizeof(Unit)));
  DP_CUDA_CHECK(cudaMalloc(&D.taps, std::max<std::size_t>(1, taps.size()) * sizeof(Tap32)));
  DP_CUDA_CHECK(cudaMalloc(&D.stats, 4 * D.channels * sizeof(double)));
  DP_CUDA_CHECK(cudaMalloc(&D.norm, 2 * D.channels * sizeof(float)));
  DP_CUDA_CHECK(cudaMalloc(&D.counters, 2 * sizeof(unsigned)));
  DP_CUDA_CHECK(cudaMemcpy(D.desc, desc.data(), desc.size() * sizeof(TeacherDesc), cudaMemcpyHostToDevice));
  DP_CUDA_CHECK(cudaMemcpy(D.units, units.data(), units.size() * sizeof(Unit), cudaMemcpyHostToDevice));
  if (!taps.empty()) DP_CUDA_CHECK(cudaMemcpy(D.taps, taps.data(), taps.size() * sizeof(Tap32), cudaMemcpyHostToDevice));
  DP_CUDA_CHECK(cudaMemset(D.stats, 0, 4 * D.channels * sizeof(double)));
  DP_CUDA_CHECK(cudaMemset(D.counters, 0, 2 * sizeof(unsigned)));
  std::vector<float> norm(2 * D.channels, 0.0f);
  std::fill(norm.begin() + static_cast<std::ptrdiff_t>(D.channels), norm.end(), 1.0f);
  DP_CUDA_CHECK(cudaMemcpy(D.norm, norm.data(), norm.size() * sizeof(float), cudaMemcpyHostToDevice));
}

FusionGpu::~FusionGpu() = default;

void FusionGpu::fuse(const std::vector<const void*>& inputs, void* out, GpuStream stream) {
  const auto& L = layout_;
  if (inputs.size() != L.teachers()) {
    throw PreconditionError("fuse() got " + std::to_string(inputs.size()) + " inputs for " +
                            std::to_string(L.teachers()) + " teachers");
  }
  DP_EXPECTS(out != nullptr, "fuse() needs an output buffer");
  auto& D = *dev_;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  LaunchArgs a{};
  std::uint32_t present = 0, first = 0, paired = 0, vectored = 0, in_pairs = 0;
  const auto out_align = 2 * dtype_size(L.out_dtype());
  const bool out_ok = reinterpret_cast<std::uintptr_t>(out) % out_align == 0;
  const bool out16 = reinterpret_cast<std::uintptr_t>(out) % 16 == 0;
  for (std::size_t i = 0; i < L.teachers(); ++i) {
    a.in[i] = inputs[i];
    if (!inputs[i]) continue;
    present |= 1u << i;
    if (frames_[i] == 0) first |= 1u << i;
    const auto in_align = 2 * dtype_size(L.inputs()[i].dtype);
    if (reinterpret_cast<std::uintptr_t>(inputs[i]) % in_align == 0) in_pairs |= 1u << i;
    if (D.pairs[i] && out_ok && reinterpret_cast<std::uintptr_t>(inputs[i]) % in_align == 0) paired |= 1u << i;
    // A band's input is read element by element: only a copy's must be aligned for vectors.
    if (D.vec[i] && out16 && (!D.copy[i] || reinterpret_cast<std::uintptr_t>(inputs[i]) % 16 == 0)) vectored |= 1u << i;
  }
  a.present = present;
  a.paired = paired;
  a.vectored = vectored;
  a.in_pairs = in_pairs;
  a.out = out;
  a.out_dtype = dtype_code(L.out_dtype());
  a.teachers = static_cast<int>(L.teachers());
  a.grid_w = static_cast<std::uint32_t>(L.grid_w());
  a.plane = static_cast<std::uint32_t>(L.grid_h() * L.grid_w());
  a.mask_offset = L.mask_offset();
  a.desc = D.desc;
  a.units = D.units;
  a.taps = D.taps;
  a.m1 = D.m1();
  a.m2 = D.m2();
  a.acc1 = D.acc1();
  a.acc2 = D.acc2();
  a.mean = D.mean();
  a.scale = D.scale();
  a.unit_count = D.unit_count;
  a.next = D.counters;
  a.done = D.counters + 1;
  a.momentum = L.momentum();
  a.eps = L.eps();
  const dim3 grid(D.blocks);
  if (first) {
    // A teacher's first frame: its statistics first, so that it is standardised with them.
    a.write = 0;
    a.accumulate = first;
    a.first = first;
    D.kernel<<<grid, kThreads, D.shared_bytes, s>>>(a);
    DP_CUDA_CHECK(cudaGetLastError());
  }
  a.write = 1;
  a.accumulate = present & ~first;
  a.first = 0;
  D.kernel<<<grid, kThreads, D.shared_bytes, s>>>(a);
  DP_CUDA_CHECK(cudaGetLastError());
  for (std::size_t i = 0; i < L.teachers(); ++i) {
    if (inputs[i]) ++frames_[i];
  }
}

RunningStats FusionGpu::stats(std::size_t teacher, GpuStream stream) const {
  DP_EXPECTS(teacher < layout_.teachers(), "stats() of a teacher that is not in the layout");
  const auto& D = *dev_;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const std::size_t base = layout_.channel_base(teacher);
  const auto C = static_cast<std::size_t>(layout_.inputs()[teacher].channels());
  RunningStats r{std::vector<double>(C), std::vector<double>(C), frames_[teacher]};
  DP_CUDA_CHECK(cudaMemcpyAsync(r.m1.data(), D.m1() + base, C * sizeof(double), cudaMemcpyDeviceToHost, s));
  DP_CUDA_CHECK(cudaMemcpyAsync(r.m2.data(), D.m2() + base, C * sizeof(double), cudaMemcpyDeviceToHost, s));
  DP_CUDA_CHECK(cudaStreamSynchronize(s));
  return r;
}

}  // namespace dp::kernels

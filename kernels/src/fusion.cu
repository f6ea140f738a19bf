// The CUDA fusion kernel (fusion.hpp, docs/FUSION.md "kernel 7"). One launch writes the whole
// fused tensor and folds the frame's moments into the running statistics.
//
// The work is a list of units, built once per layout; the launch has a block a unit, which the
// GPU starts as others end, in the plan's order (vectors and kStats units first, then the largest)
// (DIRECTPORT_FUSION_GRID=0: as many blocks as the card holds at once, each taking units from a
// counter, kernel 6's way):
//   - copy: a range of the channel planes (one, or up to kMaxGroup: DIRECTPORT_FUSION_GROUP) of
//     a spatial teacher that has the grid's size (no resampling: each value is read once,
//     standardised, cast and stored, eight or two at a time where the alignment allows);
//   - band: a band of output rows (and at most kMaxCols columns) of the channels of a resampled
//     teacher. The block first interpolates horizontally every input row the band needs into
//     shared memory (H[r][x], exactly bilinear()'s `top`/`bottom`; a 2x downsampling of a 16-bit
//     map loads 8 inputs for 4 columns at once), then every output value is the vertical
//     interpolation of two of those rows: for a map upsampled 14x, one horizontal interpolation
//     serves 14 output rows, and an output costs three multiplies and adds (a thread takes 8
//     adjacent outputs where the layout allows). Values are bit for bit those of bilinear();
//   - vector: a range of a global vector teacher (each element its own channel);
//   - kStats: the moments of an upsampled map's channels from its input, in closed form
//     (axis_weights() in fusion_plan.hpp); its output units then sum nothing
//     (DIRECTPORT_FUSION_INSTATS=0: no kStats units, every output summed).
// The units and the bilinear taps of every output row and column of a teacher are planned once,
// on the host, with the CPU reference's code (fusion_plan.hpp); the kernel reads them from
// tables. Statistics: each thread sums its values in float64 (8 at a time first in float32:
// Sums::add8), the block sums the threads, one atomic per unit and channel into the
// accumulators; the unit that completes a channel (an isotropic teacher: all of its channels)
// turns its accumulators into the statistics and the (mean, scale) the next frame uses, so that
// a frame is one launch and the folds are spread over it.
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
  std::uint32_t in16;        // bit i: teacher i's input is aligned to 16 bytes (and quads are on)
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
  const double* weights;  // FusionPlan::weights
  double *m1, *m2, *acc1, *acc2;
  float *mean, *scale;
  unsigned* chan_done;     // per channel: its units finished this launch (the last folds it, resets it)
  unsigned* teacher_done;  // per teacher: ... (an isotropic teacher's last unit folds all its channels)
  unsigned unit_count;
  int grid;        // 1: a block a unit (blockIdx.x); 0: blocks take units from `next`
  unsigned* next;  // grid 0: the next unit to take (blocks take units in turn until none is left)
  unsigned* done;  // grid 0: blocks finished; the last one resets both counters
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

// What warp 0 found a unit completes (unit_done()), folded once the unit is over (run_folds()):
// lane l's channel, or ~0u, and an isotropic teacher, or -1.
struct Folds {
  unsigned chan[32];
  int teacher[32];
  int iso;
};

// Per-warp sums of a unit's channels, then the block's: one atomic per channel and moment.
struct Partials {
  double v[kWarps][kMaxGroup][2];
  Folds folds;
};
__device__ __forceinline__ void warp_partial(const Sums& s, int g, Partials& p) {
  const double2 r = s.raw();
  const double s1 = warp_sum(r.x), s2 = warp_sum(r.y);
  if ((threadIdx.x & 31) == 0) {
    p.v[threadIdx.x >> 5][g][0] = s1;
    p.v[threadIdx.x >> 5][g][1] = s2;
  }
}
// ------------------------------------------------------------------ the statistics
//
// A channel's sums are complete once every unit that covers it has added its own: each unit
// counts itself done on the channel (chan_done) and the unit that completes it folds it into
// the running statistics and the (mean, scale) the next frame uses; an isotropic teacher's
// channels share one scale, so its units count on the teacher (teacher_done) and its last unit
// folds all of them. The folds are spread over the launch (a channel ends whenever its last unit
// does) rather than left to its end. No unit of a channel reads its (mean, scale) after the
// channel is folded: each reads them before it counts itself done.

constexpr int kFold = 4;  // channels a lane of an isotropic fold loads at once

// Channel k of teacher i from its sums: the running moments and, unless the teacher is
// isotropic, its (mean, scale); returns the variance. Products and rsqrt() rather than divisions
// and 1 / sqrt() (within an ulp of the reference's float64, far below what the float32 (mean,
// scale) keep).
__device__ __forceinline__ double fold_moments(const LaunchArgs& a, const TeacherDesc& t, int i, unsigned k, double s1,
                                               double s2) {
  constexpr int iso = static_cast<int>(NormMode::isotropic), none = static_cast<int>(NormMode::none);
  const bool first = (a.first >> i) & 1u;
  const double inv_n = t.mode == kVector ? 1.0 : 1.0 / static_cast<double>(a.plane);
  const double e1 = s1 * inv_n, e2 = s2 * inv_n;
  const double m1 = first ? e1 : ema(a.m1[k], e1, a.momentum);
  const double m2 = first ? e2 : ema(a.m2[k], e2, a.momentum);
  const double var = fmax(d_sub(m2, d_mul(m1, m1)), 0.0);
  a.m1[k] = m1;
  a.m2[k] = m2;
  if (t.norm == none) {
    a.mean[k] = 0.0f;
    a.scale[k] = 1.0f;
  } else {
    a.mean[k] = static_cast<float>(m1);
    if (t.norm != iso) a.scale[k] = static_cast<float>(rsqrt(d_add(var, a.eps)));
  }
  return var;
}

// Channel k's accumulators (complete, visible after the caller's fence) folded and cleared.
__device__ __forceinline__ void fold_channel(const LaunchArgs& a, const TeacherDesc& t, int i, unsigned k) {
  const double s1 = __ldcg(a.acc1 + k), s2 = __ldcg(a.acc2 + k);
  a.acc1[k] = 0.0;
  a.acc2[k] = 0.0;
  fold_moments(a, t, i, k, s1, s2);
}

// An isotropic teacher's channels, by one warp (all 32 lanes): each channel folded, then the
// mean of their variances gives the teacher's one scale.
__device__ void fold_isotropic(const LaunchArgs& a, const TeacherDesc& t, int i) {
  const unsigned lane = threadIdx.x & 31, C = static_cast<unsigned>(t.channels);
  double local = 0.0;
  for (unsigned k0 = 0; k0 < C; k0 += 32 * kFold) {
    double s1[kFold], s2[kFold];
#pragma unroll
    for (int j = 0; j < kFold; ++j) {  // loads before stores: one round trip for kFold channels
      const unsigned c = k0 + j * 32 + lane;
      if (c < C) {
        s1[j] = __ldcg(a.acc1 + t.chan_base + c);
        s2[j] = __ldcg(a.acc2 + t.chan_base + c);
      }
    }
#pragma unroll
    for (int j = 0; j < kFold; ++j) {
      const unsigned c = k0 + j * 32 + lane;
      if (c >= C) continue;
      a.acc1[t.chan_base + c] = 0.0;
      a.acc2[t.chan_base + c] = 0.0;
      local += fold_moments(a, t, i, t.chan_base + c, s1[j], s2[j]);
    }
  }
  local = __shfl_sync(0xffffffffu, warp_sum(local), 0);
  const float scale = static_cast<float>(rsqrt(d_add(local / static_cast<double>(C), a.eps)));
  for (unsigned c = lane; c < C; c += 32) a.scale[t.chan_base + c] = scale;
}

// Warp 0 (all its lanes), once the unit's sums of channels [ch0, ch0 + nc) of teacher i are in
// the accumulators and fenced: the unit counts itself done, and notes what it completes in f.
__device__ __forceinline__ void unit_done(const LaunchArgs& a, const TeacherDesc& t, int i, int nc, unsigned ch0, Folds& f) {
  const unsigned lane = threadIdx.x & 31;
  if (t.norm == static_cast<int>(NormMode::isotropic)) {
    if (lane == 0 && atomicAdd(a.teacher_done + i, 1u) == t.units - 1) f.iso = i;
  } else if (lane < static_cast<unsigned>(nc) && atomicAdd(a.chan_done + ch0 + lane, 1u) == t.chan_units - 1) {
    f.chan[lane] = ch0 + lane;
    f.teacher[lane] = i;
  }
}

// Warp 0 (all its lanes), after a unit: the folds unit_done() noted, and the notes cleared.
// Called at the kernel's top level, where the unit's registers are free.
__device__ void run_folds(const LaunchArgs& a, const TeacherDesc* descs, Folds& f) {
  const unsigned lane = threadIdx.x & 31;
  __syncwarp();
  const unsigned k = f.chan[lane];
  const int iso = f.iso;
  __threadfence();  // after the counters: the other units' sums are visible
  if (k != ~0u) {
    const int i = f.teacher[lane];
    f.chan[lane] = ~0u;
    fold_channel(a, descs[i], i, k);
    a.chan_done[k] = 0;
  }
  __syncwarp();
  if (iso >= 0) {
    fold_isotropic(a, descs[iso], iso);
    if (lane == 0) {
      a.teacher_done[iso] = 0;
      f.iso = -1;
    }
  }
  __syncwarp();
}

// Every thread of the block, after warp_partial() for channels [0, nc) of teacher i (where `sums`):
// warp 0 adds the block's sums to the accumulators (one atomic per channel and moment), fences
// them, and counts the unit done. A unit without sums (the output of an in_stats teacher) only
// counts itself, once every thread has read its channels' (mean, scale) (the barrier).
__device__ __forceinline__ void commit(const LaunchArgs& a, const TeacherDesc& t, int i, Partials& p, int nc, unsigned ch0,
                                       bool sums) {
  __syncthreads();
  if (threadIdx.x >= 32) return;
  if (sums && threadIdx.x < 2 * nc) {
    const int g = threadIdx.x >> 1, k = threadIdx.x & 1;
    double sum = 0.0;
    for (int w = 0; w < kWarps; ++w) sum += p.v[w][g][k];
    atomicAdd((k ? a.acc2 : a.acc1) + ch0 + g, sum);
  }
  // The sums, and this unit's reads of its channels' (mean, scale) before the barrier, ordered
  // before the count that may let another unit fold them.
  __threadfence();
  __syncwarp();
  unit_done(a, t, i, nc, ch0, p.folds);
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
#pragma unroll 4
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
  if constexpr (sizeof(TI) == 2) {
    // Four adjacent columns from one 16-byte load of their 8 inputs (tap_quads, the input aligned
    // to 16 bytes this frame): a thread takes 4 columns and walks the band's input rows, so that
    // several loads are in flight. Uniform over the block.
    if (t.tap_quads && ((a.in16 >> u.teacher) & 1u)) {
      const std::uint32_t groups = cols / 4;
      const std::uint32_t lanes_q = umin(groups, kThreads), lanes_r = kThreads / lanes_q;
      const std::uint32_t tq = threadIdx.x % lanes_q, tr = threadIdx.x / lanes_q;
      if (tr >= lanes_r) return;
      for (std::uint32_t q = tq; q < groups; q += lanes_q) {
        const std::uint32_t x = 4 * q;
        const std::uint32_t i0 = ct[x].i0;
        const float a0 = ct[x].l0, b0 = ct[x].l1, a1 = ct[x + 1].l0, b1 = ct[x + 1].l1;
        const float a2 = ct[x + 2].l0, b2 = ct[x + 2].l1, a3 = ct[x + 3].l0, b3 = ct[x + 3].l1;
        const std::uint32_t hx = split ? ((x & 4) ? cols / 2 : 0) + ((x >> 3) << 2) : x;
        for (std::uint32_t g = 0; g < u.nc; ++g) {
          const TI* row = static_cast<const TI*>(a.in[u.teacher]) + (u.c + g) * in_plane + std::uint64_t(u.rbase) * t.w + i0;
          float* h = H + g * u.nrows * cols + hx;
#pragma unroll 2
          for (std::uint32_t r = tr; r < u.nrows; r += lanes_r) {
            float v[kVec];
            ld8(row + r * t.w, v);
            *reinterpret_cast<float4*>(h + r * cols) =
                make_float4(f_add(f_mul(a0, v[0]), f_mul(b0, v[1])), f_add(f_mul(a1, v[2]), f_mul(b1, v[3])),
                            f_add(f_mul(a2, v[4]), f_mul(b2, v[5])), f_add(f_mul(a3, v[6]), f_mul(b3, v[7])));
          }
        }
      }
      return;
    }
  }
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

__device__ __forceinline__ void ld_hrow(const float* h, std::uint32_t half, float (&v)[kVec]) {
  const float4 p = *reinterpret_cast<const float4*>(h), q = *reinterpret_cast<const float4*>(h + half);
  v[0] = p.x, v[1] = p.y, v[2] = p.z, v[3] = p.w, v[4] = q.x, v[5] = q.y, v[6] = q.z, v[7] = q.w;
}

// band, step 2 with vectors: as band_channel(), a thread taking kVec adjacent columns of a row
// (the band's columns, the grid's width and the teacher's offset are multiples of kVec, the
// output aligned to 16 bytes: checked on the host), loading them from H four at a time (H's
// rows split in halves by band_rows()). The threads of a row cover it side by side, the block's
// rows_at_once rows at a time, two rows a thread in flight.
template <typename TI, typename TO>
__device__ __forceinline__ void band_channel_vec(const LaunchArgs& a, const TeacherDesc& t, const Unit& u, std::uint32_t c,
                                                      Emit<TO>& e, const float* H, const RowRef* refs) {
  const std::uint32_t cols = u.cols;
  const std::uint32_t per_row = cols / kVec;
  const std::uint32_t rows_at_once = kThreads / per_row;
  const std::uint32_t lane_x = threadIdx.x % per_row, lane_y = threadIdx.x / per_row;
  if (lane_y >= rows_at_once) return;
  const std::uint32_t x = lane_x * kVec;
  const std::uint32_t out_w = a.grid_w;
#pragma unroll 2
  for (std::uint32_t y = lane_y; y < u.rows; y += rows_at_once) {
    const RowRef ty = refs[y];
    float A[kVec], B[kVec];
    ld_hrow(H + ty.a + x / 2, cols / 2, A);
    ld_hrow(H + ty.b + x / 2, cols / 2, B);
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
  // An in_stats teacher's sums come from its kStats units: its output units only count themselves
  // done (and, in a pass that writes nothing, do nothing else).
  const bool sums = acc && !t.in_stats;
  if (acc && !sums && !a.write) {
    commit(a, t, static_cast<int>(u.teacher), partials, static_cast<int>(u.nc), t.chan_base + u.c, false);
    return;
  }
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
    e.acc = sums;
    if (g > 0) {
      mean = a.mean[ch];
      scale = a.scale[ch];
    }
    e.mean = mean;
    e.scale = scale;
    if (t.mode == kCopy) {
      e.dst = static_cast<TO*>(a.out) + t.out_offset + std::uint64_t(c) * a.plane + u.y0;
      copy_channel<TI, TO>(a, u, c, e, vec, pairs);
    } else if (e.write || e.acc) {
      e.dst = static_cast<TO*>(a.out) + t.out_offset + std::uint64_t(c) * a.plane + std::uint64_t(u.y0) * a.grid_w + u.x0;
      if (vec) {
        band_channel_vec<TI, TO>(a, t, u, c, e, H + g * u.nrows * u.cols, refs);
      } else {
        band_channel<TI, TO>(a, t, u, c, e, pairs, H + g * u.nrows * u.cols, refs);
      }
    }
    if (sums) warp_partial(e.sums, static_cast<int>(g), partials);  // uniform over the block
  }
  if (acc) commit(a, t, static_cast<int>(u.teacher), partials, static_cast<int>(u.nc), t.chan_base + u.c, sums);
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

// kStats: the sums of channels [u.c, u.c + u.nc) of an in_stats teacher over its input rows
// [u.y0, u.y0 + u.rows), in float64, from the input and the weights of its axes: the sums of the
// channel resampled (axis_weights() in fusion_plan.hpp gives the formula).
template <typename TI>
__device__ void stats_unit(const LaunchArgs& a, const TeacherDesc& t, const Unit& u, Partials& partials) {
  const std::uint32_t w = t.w, h = t.h, n = u.rows * w;
  const double* wy = a.weights + 3 * std::uint64_t(t.row_weights);
  const double* wx = a.weights + 3 * std::uint64_t(t.col_weights);
  for (std::uint32_t g = 0; g < u.nc; ++g) {
    const TI* X = static_cast<const TI*>(a.in[u.teacher]) + std::uint64_t(u.c + g) * h * w;
    Sums s;
    for (std::uint32_t e = threadIdx.x; e < n; e += kThreads) {
      const std::uint32_t r = u.y0 + e / w, j = e % w;
      const TI* p = X + std::uint64_t(r) * w + j;
      const bool right = j + 1 < w, down = r + 1 < h;
      const double x = ld(p), cy = __ldg(wy + 3 * r), cx = __ldg(wx + 3 * j), gx0 = __ldg(wx + 3 * j + 1);
      s.s1 = fma(cy * cx, x, s.s1);
      const double xd = down ? ld(p + w) : 0.0;  // the neighbour below (unused on the last row)
      double row = gx0 * x * x, cross = 0.0;
      if (right) {
        const double xr = ld(p + 1), gx1 = __ldg(wx + 3 * j + 2);
        row = fma(2.0 * gx1 * x, xr, row);
        if (down) cross = gx1 * (x * ld(p + w + 1) + xr * xd);
      }
      if (down) cross = fma(gx0 * x, xd, cross);
      s.s2 = fma(__ldg(wy + 3 * r + 1), row, s.s2);
      if (down) s.s2 = fma(2.0 * __ldg(wy + 3 * r + 2), cross, s.s2);
    }
    warp_partial(s, static_cast<int>(g), partials);  // uniform over the block
  }
  commit(a, t, static_cast<int>(u.teacher), partials, static_cast<int>(u.nc), t.chan_base + u.c, true);
}

// One unit: its part of the fused tensor and its sums.
__device__ __forceinline__ void run_unit(const LaunchArgs& a, const TeacherDesc* descs, const Unit& u, float* H, RowRef* refs,
                                         Partials& partials) {
  const TeacherDesc t = descs[u.teacher];
  const bool present = (a.present >> u.teacher) & 1u;
  const bool acc = (a.accumulate >> u.teacher) & 1u;
  if (u.stats) {  // uniform over the block, as everything below that branches on the unit
    if (!present || !acc) return;
    if (t.dtype == kF16) {
      stats_unit<__half>(a, t, u, partials);
    } else if (t.dtype == kBF16) {
      stats_unit<__nv_bfloat16>(a, t, u, partials);
    } else {
      stats_unit<float>(a, t, u, partials);
    }
  } else if (!present) {
    if (a.write) zero_unit(a, t, u);
  } else if (t.mode == kVector) {
    // Each element its own channel, whose sums are this one value: a channel or none teacher's
    // element is folded here; an isotropic teacher's wait in the accumulators for its last unit.
    const bool iso = t.norm == static_cast<int>(NormMode::isotropic);
    for (std::uint32_t i = threadIdx.x; i < u.rows; i += kThreads) {
      const std::uint32_t e = u.y0 + i;
      const unsigned ch = t.chan_base + e;
      const float v = load_any(a.in[u.teacher], t.dtype, e);
      const float mean = a.mean[ch], scale = a.scale[ch];  // this frame's, read before the fold
      if (a.write) store_any(a.out, a.out_dtype, t.out_offset + e, standardise(v, mean, scale));
      if (acc && iso) {
        a.acc1[ch] = v;  // one value per channel and frame: no other writer
        a.acc2[ch] = static_cast<double>(v) * v;
      } else if (acc) {
        fold_moments(a, t, static_cast<int>(u.teacher), ch, v, static_cast<double>(v) * v);
      }
    }
    if (acc && iso) {  // uniform over the block
      __threadfence();
      __syncthreads();
      if (threadIdx.x < 32) unit_done(a, t, static_cast<int>(u.teacher), 0, 0, partials.folds);
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

// DIRECTPORT_FUSION_GRID=1 (the default): a block a unit, blockIdx.x, in the plan's order (the
// GPU starts blocks as others end). 0: as many blocks as the card holds at once, each taking
// units in turn (the largest first, as the host ordered them) until none is left.
template <int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks) fuse_kernel(LaunchArgs a) {
  extern __shared__ __align__(16) float H[];
  __shared__ RowRef refs[kMaxRows];
  __shared__ Partials partials;
  __shared__ TeacherDesc descs[FusionLayout::kMaxTeachers];
  __shared__ unsigned taken[2];

  if (a.write && blockIdx.x == 0 && threadIdx.x < a.teachers) {
    store_any(a.out, a.out_dtype, a.mask_offset + threadIdx.x, ((a.present >> threadIdx.x) & 1u) ? 1.0f : 0.0f);
  }
  if (threadIdx.x < a.teachers) descs[threadIdx.x] = a.desc[threadIdx.x];
  if (threadIdx.x < 32) {
    partials.folds.chan[threadIdx.x] = ~0u;
    if (threadIdx.x == 0) partials.folds.iso = -1;
  }
  if (a.grid) {
    const Unit u = a.units[blockIdx.x];  // in registers: the output's stores cannot alias it
    __syncthreads();
    run_unit(a, descs, u, H, refs, partials);
    if (threadIdx.x < 32) run_folds(a, descs, partials.folds);
    return;
  }
  if (threadIdx.x == 0) taken[0] = atomicAdd(a.next, 1u);
  __syncthreads();
  // Thread 0 takes the next unit while the block works on this one: the atomic's round trip
  // is off the path.
  for (int slot = 0;; slot ^= 1) {
    const unsigned k = taken[slot];
    if (k >= a.unit_count) break;  // uniform: every thread read the same slot
    unsigned next = 0;
    if (threadIdx.x == 0) next = atomicAdd(a.next, 1u);
    const Unit u = a.units[k];
    run_unit(a, descs, u, H, refs, partials);
    if (threadIdx.x < 32) run_folds(a, descs, partials.folds);
    if (threadIdx.x == 0) taken[slot ^ 1] = next;  // every thread read it last before the previous barrier
    __syncthreads();  // the unit is done with the shared memory; the next slot is visible
  }
  // Every block has taken its last unit once all have got here: the last resets the counters
  // for the next launch.
  if (threadIdx.x == 0 && atomicAdd(a.done, 1u) == gridDim.x - 1) {
    *a.next = 0;
    *a.done = 0;
  }
}

}  // namespace

struct FusionGpu::Device {
  TeacherDesc* desc = nullptr;
  Unit* units = nullptr;
  Tap32* taps = nullptr;
  double* weights = nullptr;  // FusionPlan::weights
  double* stats = nullptr;    // m1, m2, acc1, acc2: total_channels each
  float* norm = nullptr;      // mean, scale
  unsigned* counters = nullptr;  // next, done, then chan_done (total_channels), teacher_done (teachers)
  unsigned unit_count = 0;
  unsigned blocks = 0;
  bool grid = true;        // DIRECTPORT_FUSION_GRID
  bool quads = true;       // DIRECTPORT_FUSION_QUADS
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
    cudaFree(weights);
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
  const FusionPlan P = plan_fusion(L, unit_elements_from_env(), unit_group_from_env(), even_split_from_env(), input_stats_from_env());
  const auto& units = P.units;
  const auto& desc = P.teachers;
  const auto& taps = P.taps;
  const std::size_t shared_bytes = P.shared_bytes;
  D.unit_count = static_cast<unsigned>(units.size());
  D.grid = grid_launch_from_env();
  D.quads = quad_loads_from_env();
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
  D.blocks = D.grid ? D.unit_count
                    : static_cast<unsigned>(std::min<std::int64_t>(std::int64_t(per_sm) * sms, std::int64_t(units.size())));
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
  DP_CUDA_CHECK(cudaMalloc(&D.weights, std::max<std::size_t>(1, P.weights.size()) * sizeof(double)));
  const std::size_t counters = 2 + D.channels + desc.size();
  DP_CUDA_CHECK(cudaMalloc(&D.counters, counters * sizeof(unsigned)));
  DP_CUDA_CHECK(cudaMemcpy(D.desc, desc.data(), desc.size() * sizeof(TeacherDesc), cudaMemcpyHostToDevice));
  DP_CUDA_CHECK(cudaMemcpy(D.units, units.data(), units.size() * sizeof(Unit), cudaMemcpyHostToDevice));
  if (!taps.empty()) DP_CUDA_CHECK(cudaMemcpy(D.taps, taps.data(), taps.size() * sizeof(Tap32), cudaMemcpyHostToDevice));
  DP_CUDA_CHECK(cudaMemset(D.stats, 0, 4 * D.channels * sizeof(double)));
  if (!P.weights.empty()) {
    DP_CUDA_CHECK(cudaMemcpy(D.weights, P.weights.data(), P.weights.size() * sizeof(double), cudaMemcpyHostToDevice));
  }
  DP_CUDA_CHECK(cudaMemset(D.counters, 0, counters * sizeof(unsigned)));
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
  std::uint32_t present = 0, first = 0, paired = 0, vectored = 0, in_pairs = 0, in16 = 0;
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
    if (D.quads && reinterpret_cast<std::uintptr_t>(inputs[i]) % 16 == 0) in16 |= 1u << i;
    if (D.pairs[i] && out_ok && reinterpret_cast<std::uintptr_t>(inputs[i]) % in_align == 0) paired |= 1u << i;
    // A band's input is read element by element: only a copy's must be aligned for vectors.
    if (D.vec[i] && out16 && (!D.copy[i] || reinterpret_cast<std::uintptr_t>(inputs[i]) % 16 == 0)) vectored |= 1u << i;
  }
  a.present = present;
  a.paired = paired;
  a.vectored = vectored;
  a.in_pairs = in_pairs;
  a.in16 = in16;
  a.out = out;
  a.out_dtype = dtype_code(L.out_dtype());
  a.teachers = static_cast<int>(L.teachers());
  a.grid_w = static_cast<std::uint32_t>(L.grid_w());
  a.plane = static_cast<std::uint32_t>(L.grid_h() * L.grid_w());
  a.mask_offset = L.mask_offset();
  a.desc = D.desc;
  a.units = D.units;
  a.taps = D.taps;
  a.weights = D.weights;
  a.m1 = D.m1();
  a.m2 = D.m2();
  a.acc1 = D.acc1();
  a.acc2 = D.acc2();
  a.mean = D.mean();
  a.scale = D.scale();
  a.unit_count = D.unit_count;
  a.grid = D.grid;
  a.next = D.counters;
  a.done = D.counters + 1;
  a.chan_done = D.counters + 2;
  a.teacher_done = D.counters + 2 + D.channels;
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

// The CUDA fusion kernel (fusion.hpp). One launch writes the whole fused tensor. The grid is
// y over work items (a group of up to kGroup channels of one teacher) and x over tiles: for a
// spatial teacher a tile of 32 output columns by kWarps * kRows rows, each warp kRows adjacent
// rows of 32 adjacent columns; for a vector teacher kThreads elements. A thread computes its
// column's horizontal taps and its rows' vertical taps once (the same for every channel of the
// group; the vertical ones the same for the whole warp) and then, for each channel, loads each
// input row it needs once (two values, interpolated horizontally), reuses it for the next output
// row where the taps allow (an upsampled map: a few input rows for kRows output rows),
// interpolates vertically, standardises, casts and stores. Indices within a plane are 32-bit and
// the dtypes are template parameters. Where the teacher's statistics are updated this frame, each
// thread sums its values (float64), each warp sums by shuffles, the block through shared memory,
// then one atomic per block and channel into the per-channel float64 accumulators. A second, tiny
// kernel turns the accumulators into the running statistics and the (mean, scale) pairs the next
// frame uses.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <cstring>
#include <limits>

#include "directport/cuda/driver.hpp"
#include "directport/kernels/fusion.hpp"
#include "directport/kernels/fusion_math.hpp"

namespace dp::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kGroup = 32;  // channels of one teacher per work item (a thread per pixel)
// ... with row tiles a thread does group * kRows elements: 16 channels where that still makes
// kRowBlocks blocks for the teacher, else 4, so that a small teacher is not the launch's tail (an
// H200 measured a 16-channel map in 64 blocks of 16 channels as the tail, and 4 channels for
// every teacher as slower on a 384-channel one).
constexpr int kRowGroupLarge = 16, kRowGroupSmall = 4;
constexpr std::int64_t kRowBlocks = 1024;
constexpr int kRows = 4;    // output rows per warp (a spatial tile: 32 columns x kWarps * kRows rows)

enum : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

int dtype_code(DType t) { return t == DType::f16 ? kF16 : t == DType::bf16 ? kBF16 : kF32; }

struct TeacherDesc {
  int dtype;
  int spatial;
  int norm;  // NormMode
  int channels;
  std::int64_t h, w;
  Resample ry, rx;
  unsigned chan_base;  // first index in the statistics arrays
  std::uint64_t out_offset;
};

enum : int { kPixels = 0, kRowTiles = 1 };  // how a spatial item maps threads to output elements

struct Item {
  int teacher;
  int c0, nc;  // channels [c0, c0 + nc) of a spatial teacher; a vector teacher: 0, C
  int tiles;   // spatial: kPixels (a thread per pixel) or kRowTiles (a warp per 32 x kRows tile)
};

struct LaunchArgs {
  const void* in[FusionLayout::kMaxTeachers];
  std::uint32_t present;     // bit i: teacher i has an input this frame
  std::uint32_t accumulate;  // bit i: fold this frame into teacher i's statistics
  int write;                 // 0: statistics only (a teacher's first frame)
  void* out;
  int out_dtype;
  int teachers;
  std::uint32_t grid_w;
  std::uint32_t plane;  // grid_h * grid_w
  std::uint64_t mask_offset;
  const TeacherDesc* desc;
  const Item* items;
  double* acc1;
  double* acc2;
  const float* mean;
  const float* scale;
};

template <typename T>
__device__ __forceinline__ float ld(const T* p);
template <>
__device__ __forceinline__ float ld<float>(const float* p) { return __ldg(p); }
template <>
__device__ __forceinline__ float ld<__half>(const __half* p) { return __half2float(__ldg(p)); }
template <>
__device__ __forceinline__ float ld<__nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }

template <typename T>
__device__ __forceinline__ void st(T* p, float v);
template <>
__device__ __forceinline__ void st<float>(float* p, float v) { *p = v; }
template <>
__device__ __forceinline__ void st<__half>(__half* p, float v) { *p = __float2half_rn(v); }
template <>
__device__ __forceinline__ void st<__nv_bfloat16>(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

__device__ __forceinline__ void store_any(void* p, int dtype, std::uint64_t i, float v) {
  if (dtype == kF16) {
    st(static_cast<__half*>(p) + i, v);
  } else if (dtype == kBF16) {
    st(static_cast<__nv_bfloat16*>(p) + i, v);
  } else {
    st(static_cast<float*>(p) + i, v);
  }
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;  // valid in lane 0
}

__device__ __forceinline__ double block_sum(double v, double* shared) {
  v = warp_sum(v);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = 0.0;
  if (warp == 0) {
    v = lane < (blockDim.x >> 5) ? shared[lane] : 0.0;
    v = warp_sum(v);
  }
  return v;  // valid in thread 0
}

// Shared scratch of a block for the statistics: (kPixels) each channel's values, one per thread
// (a row padded by one word, so that the column reads below hit 32 different banks); per-warp
// partial sums [warp][channel of the group][s1, s2].
struct StatScratch {
  float vals[kGroup][kThreads + 1];
  double red[kWarps][kGroup][2];
};

// After a __syncthreads(): sums the per-warp partials in sc.red over the block and adds them to
// the channels' float64 accumulators, one atomic per block and channel.
__device__ __forceinline__ void commit_stats(const LaunchArgs& a, const StatScratch& sc, int nc, unsigned ch0) {
  if (threadIdx.x < nc) {
    double s1 = 0.0, s2 = 0.0;
    for (int j = 0; j < kWarps; ++j) {
      s1 += sc.red[j][threadIdx.x][0];
      s2 += sc.red[j][threadIdx.x][1];
    }
    atomicAdd(a.acc1 + ch0 + threadIdx.x, s1);
    atomicAdd(a.acc2 + ch0 + threadIdx.x, s2);
  }
}

// kPixels: the channels [c0, c0 + nc) of a spatial teacher at one pixel per thread (kernel 3 of
// docs/FUSION.md). Where the statistics are kept, each value goes to shared memory (one store a
// channel, not a shuffle tree of 20 instructions) and the block reduces them after the loop:
// lane k of warp j sums channel k over threads [32j, 32j + 32), in float64.
template <typename TI, typename TO>
__device__ __forceinline__ void spatial_pixels(const LaunchArgs& a, const TeacherDesc& t, const Item& it, bool acc,
                                               StatScratch& sc) {
  const std::uint32_t pix = blockIdx.x * kThreads + threadIdx.x;
  const bool valid = pix < a.plane;
  const std::uint32_t y = valid ? pix / a.grid_w : 0, x = valid ? pix - y * a.grid_w : 0;
  const Tap ty = tap(t.ry, y, t.h), tx = tap(t.rx, x, t.w);
  const auto w = static_cast<std::uint32_t>(t.w);
  const std::uint32_t r0 = static_cast<std::uint32_t>(ty.i0) * w, r1 = static_cast<std::uint32_t>(ty.i1) * w;
  const auto x0 = static_cast<std::uint32_t>(tx.i0), x1 = static_cast<std::uint32_t>(tx.i1);
  const std::uint64_t in_plane = static_cast<std::uint64_t>(t.h) * static_cast<std::uint64_t>(t.w);
  const TI* src = static_cast<const TI*>(a.in[it.teacher]) + std::uint64_t(it.c0) * in_plane;
  TO* dst = static_cast<TO*>(a.out) + t.out_offset + std::uint64_t(it.c0) * a.plane + pix;
  const unsigned ch0 = t.chan_base + it.c0;
  for (int k = 0; k < it.nc; ++k, src += in_plane, dst += a.plane) {
    float v = 0.0f;
    if (valid) {
      v = bilinear(ld(src + r0 + x0), ld(src + r0 + x1), ld(src + r1 + x0), ld(src + r1 + x1), ty, tx);
      if (a.write) st(dst, standardise(v, a.mean[ch0 + k], a.scale[ch0 + k]));
    }
    if (acc) sc.vals[k][threadIdx.x] = v;
  }
  if (!acc) return;  // uniform over the block
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane < it.nc) {
    double s1 = 0.0, s2 = 0.0;
    const float* row = &sc.vals[lane][warp * 32];
#pragma unroll 4
    for (int i = 0; i < 32; ++i) {
      const double v = row[i];
      s1 += v;
      s2 += v * v;
    }
    sc.red[warp][lane][0] = s1;
    sc.red[warp][lane][1] = s2;
  }
  __syncthreads();
  commit_stats(a, sc, it.nc, ch0);
}

// One row of a channel at the thread's column: the raw value at x0 (bilinear()'s shortcut
// when both fractions are 0) and the horizontal interpolation, as bilinear() computes it.
struct RowVal {
  float raw, h;
};
template <typename TI>
__device__ __forceinline__ RowVal load_row(const TI* row, std::uint32_t x0, std::uint32_t x1, const Tap& tx) {
  const float v0 = ld(row + x0);
  const float v1 = x1 != x0 ? ld(row + x1) : v0;
  return {v0, f_add(f_mul(tx.l0, v0), f_mul(tx.l1, v1))};
}

// kRowTiles: the channels [c0, c0 + nc) of a spatial teacher over one tile: a warp covers 32 adjacent
// columns and kRows adjacent rows, so a row's vertical taps are the same for the whole warp and
// the horizontal interpolations of an input row are loaded once and reused by the output rows
// that need it (an upsampled map needs few input rows for kRows output rows). Values are bit
// for bit those of bilinear(). The statistics are summed per thread over its rows (float64),
// per warp by shuffles, per block through shared memory, then one atomic per block and channel.
template <typename TI, typename TO>
__device__ __forceinline__ void spatial_item(const LaunchArgs& a, const TeacherDesc& t, const Item& it, bool acc,
                                             StatScratch& sc, std::uint32_t x, std::uint32_t y0) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const std::uint32_t grid_h = a.plane / a.grid_w;
  const bool col_ok = x < a.grid_w;
  const Tap tx = tap(t.rx, col_ok ? x : 0, t.w);
  const auto x0 = static_cast<std::uint32_t>(tx.i0), x1 = static_cast<std::uint32_t>(tx.i1);
  const auto w = static_cast<std::uint32_t>(t.w);
  // The rows' vertical taps, the same for every channel (warp-uniform).
  int rows = 0;
  std::uint32_t i0[kRows], i1[kRows];
  float l0[kRows], l1[kRows];
#pragma unroll
  for (int j = 0; j < kRows; ++j) {
    if (y0 + j < grid_h) {
      const Tap ty = tap(t.ry, y0 + j, t.h);
      i0[j] = static_cast<std::uint32_t>(ty.i0);
      i1[j] = static_cast<std::uint32_t>(ty.i1);
      l0[j] = ty.l0;
      l1[j] = ty.l1;
      rows = j + 1;
    }
  }
  const std::uint64_t in_plane = static_cast<std::uint64_t>(t.h) * static_cast<std::uint64_t>(t.w);
  const TI* src = static_cast<const TI*>(a.in[it.teacher]) + std::uint64_t(it.c0) * in_plane;
  TO* dst = static_cast<TO*>(a.out) + t.out_offset + std::uint64_t(it.c0) * a.plane + std::uint64_t(y0) * a.grid_w + x;
  const unsigned ch0 = t.chan_base + it.c0;
  for (int k = 0; k < it.nc; ++k, src += in_plane, dst += a.plane) {
    double s1 = 0.0, s2 = 0.0;
    if (col_ok) {
      const float mean = a.mean[ch0 + k], scale = a.scale[ch0 + k];
      std::uint32_t ra = 0xffffffffu, rb = 0xffffffffu;  // the input rows held in A and B
      RowVal A{0.0f, 0.0f}, B{0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        if (j < rows) {
          // A := row i0, B := row i1, reusing what the previous output row loaded.
          if (i0[j] != ra) {
            if (i0[j] == rb) {
              A = B;
            } else {
              A = load_row(src + i0[j] * w, x0, x1, tx);
            }
            ra = i0[j];
          }
          if (i1[j] != rb) {
            B = i1[j] == ra ? A : load_row(src + i1[j] * w, x0, x1, tx);
            rb = i1[j];
          }
          const float v = (l1[j] == 0.0f && tx.l1 == 0.0f) ? A.raw : f_add(f_mul(l0[j], A.h), f_mul(l1[j], B.h));
          if (a.write) st(dst + j * a.grid_w, standardise(v, mean, scale));
          s1 += v;
          s2 += static_cast<double>(v) * v;
        }
      }
    }
    if (acc) {  // uniform over the block
      s1 = warp_sum(s1);
      s2 = warp_sum(s2);
      if (lane == 0) {
        sc.red[warp][k][0] = s1;
        sc.red[warp][k][1] = s2;
      }
    }
  }
  if (!acc) return;
  __syncthreads();
  commit_stats(a, sc, it.nc, ch0);
}

template <typename TI, typename TO>
__device__ __forceinline__ void spatial_any(const LaunchArgs& a, const TeacherDesc& t, const Item& it, bool acc,
                                            StatScratch& sc, std::uint32_t x, std::uint32_t y0) {
  if (it.tiles == kRowTiles) {
    spatial_item<TI, TO>(a, t, it, acc, sc, x, y0);
  } else {
    spatial_pixels<TI, TO>(a, t, it, acc, sc);
  }
}

template <typename TI>
__device__ __forceinline__ void spatial_item_in(const LaunchArgs& a, const TeacherDesc& t, const Item& it, bool acc,
                                                StatScratch& sc, std::uint32_t x, std::uint32_t y0) {
  if (a.out_dtype == kF16) {
    spatial_any<TI, __half>(a, t, it, acc, sc, x, y0);
  } else if (a.out_dtype == kBF16) {
    spatial_any<TI, __nv_bfloat16>(a, t, it, acc, sc, x, y0);
  } else {
    spatial_any<TI, float>(a, t, it, acc, sc, x, y0);
  }
}

__device__ __forceinline__ float load_any(const void* p, int dtype, std::uint64_t i) {
  if (dtype == kF16) return ld(static_cast<const __half*>(p) + i);
  if (dtype == kBF16) return ld(static_cast<const __nv_bfloat16*>(p) + i);
  return ld(static_cast<const float*>(p) + i);
}

__global__ void __launch_bounds__(kThreads, 3) fuse_kernel(LaunchArgs a) {
  __shared__ StatScratch sc;
  const Item it = a.items[blockIdx.y];
  const TeacherDesc t = a.desc[it.teacher];
  const bool present = (a.present >> it.teacher) & 1u;
  const bool acc = (a.accumulate >> it.teacher) & 1u;

  if (a.write && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x < a.teachers) {
    store_any(a.out, a.out_dtype, a.mask_offset + threadIdx.x, ((a.present >> threadIdx.x) & 1u) ? 1.0f : 0.0f);
  }
  if (t.spatial) {
    const std::uint32_t grid_h = a.plane / a.grid_w;
    std::uint32_t x = 0, y0 = 0;
    if (it.tiles == kRowTiles) {
      // Tile blockIdx.x of the grid: 32 columns by kWarps * kRows rows; this warp's kRows rows.
      const std::uint32_t tiles_x = (a.grid_w + 31) / 32;
      const std::uint32_t tiles = tiles_x * ((grid_h + kWarps * kRows - 1) / (kWarps * kRows));
      if (blockIdx.x >= tiles) return;  // uniform over the block
      x = (blockIdx.x % tiles_x) * 32 + (threadIdx.x & 31);
      y0 = (blockIdx.x / tiles_x) * (kWarps * kRows) + (threadIdx.x >> 5) * kRows;
    } else if (blockIdx.x * kThreads >= a.plane) {
      return;  // uniform over the block
    }
    if (!present) {  // uniform over the block
      if (!a.write) return;
      if (it.tiles == kRowTiles) {
        if (x < a.grid_w) {
          for (int k = 0; k < it.nc; ++k) {
            for (int j = 0; j < kRows && y0 + j < grid_h; ++j) {
              store_any(a.out, a.out_dtype,
                        t.out_offset + std::uint64_t(it.c0 + k) * a.plane + std::uint64_t(y0 + j) * a.grid_w + x, 0.0f);
            }
          }
        }
      } else {
        const std::uint32_t e = blockIdx.x * kThreads + threadIdx.x;
        if (e < a.plane) {
          for (int k = 0; k < it.nc; ++k) {
            store_any(a.out, a.out_dtype, t.out_offset + std::uint64_t(it.c0 + k) * a.plane + e, 0.0f);
          }
        }
      }
      return;
    }
    if (!a.write && !acc) return;
    if (t.dtype == kF16) {
      spatial_item_in<__half>(a, t, it, acc, sc, x, y0);
    } else if (t.dtype == kBF16) {
      spatial_item_in<__nv_bfloat16>(a, t, it, acc, sc, x, y0);
    } else {
      spatial_item_in<float>(a, t, it, acc, sc, x, y0);
    }
    return;
  }
  const std::uint32_t extent = static_cast<std::uint32_t>(it.nc);
  const std::uint32_t e = blockIdx.x * kThreads + threadIdx.x;
  if (blockIdx.x * kThreads >= extent) return;  // uniform over the block
  if (!present) {
    if (a.write && e < extent) store_any(a.out, a.out_dtype, t.out_offset + e, 0.0f);
    return;
  }
  if (!a.write && !acc) return;
  if (e >= extent) return;
  const unsigned ch = t.chan_base + e;  // a vector teacher: each element its own channel
  const float v = load_any(a.in[it.teacher], t.dtype, e);
  if (acc) {
    a.acc1[ch] = v;  // one value per channel and frame: no other writer
    a.acc2[ch] = static_cast<double>(v) * v;
  }
  if (a.write) store_any(a.out, a.out_dtype, t.out_offset + e, standardise(v, a.mean[ch], a.scale[ch]));
}

struct FinalizeArgs {
  std::uint32_t teachers_mask;  // bit i: fold teacher i's accumulators
  std::uint32_t first_mask;     // bit i: its first frame (initialise rather than average)
  std::int64_t grid_elements;   // Hg * Wg
  double momentum, eps;
  const TeacherDesc* desc;
  double *m1, *m2, *acc1, *acc2;
  float *mean, *scale;
};

// One block per teacher.
__global__ void __launch_bounds__(kThreads) finalize_kernel(FinalizeArgs a) {
  __shared__ double shared[kThreads / 32];
  __shared__ double var_sum;
  const int i = blockIdx.x;
  if (!((a.teachers_mask >> i) & 1u)) return;
  const TeacherDesc t = a.desc[i];
  const bool first = (a.first_mask >> i) & 1u;
  const double n = t.spatial ? static_cast<double>(a.grid_elements) : 1.0;
  double local = 0.0;
  for (int c = threadIdx.x; c < t.channels; c += blockDim.x) {
    const unsigned k = t.chan_base + c;
    const double e1 = a.acc1[k] / n, e2 = a.acc2[k] / n;
    a.acc1[k] = 0.0;
    a.acc2[k] = 0.0;
    const double m1 = first ? e1 : ema(a.m1[k], e1, a.momentum);
    const double m2 = first ? e2 : ema(a.m2[k], e2, a.momentum);
    a.m1[k] = m1;
    a.m2[k] = m2;
    local += fmax(d_sub(m2, d_mul(m1, m1)), 0.0);
  }
  local = block_sum(local, shared);
  if (threadIdx.x == 0) var_sum = local;
  __syncthreads();
  for (int c = threadIdx.x; c < t.channels; c += blockDim.x) {
    const unsigned k = t.chan_base + c;
    if (t.norm == static_cast<int>(NormMode::none)) {
      a.mean[k] = 0.0f;
      a.scale[k] = 1.0f;
      continue;
    }
    const double m1 = a.m1[k];
    const double v = t.norm == static_cast<int>(NormMode::channel) ? fmax(d_sub(a.m2[k], d_mul(m1, m1)), 0.0)
                                                                    : var_sum / static_cast<double>(t.channels);
    a.mean[k] = static_cast<float>(m1);
    a.scale[k] = static_cast<float>(1.0 / sqrt(d_add(v, a.eps)));
  }
}

}  // namespace

struct FusionGpu::Device {
  TeacherDesc* desc = nullptr;
  Item* items = nullptr;
  double* stats = nullptr;  // m1, m2, acc1, acc2: total_channels each
  float* norm = nullptr;    // mean, scale
  unsigned item_count = 0;
  unsigned grid_x = 1;
  std::size_t channels = 0;
  ~Device() {
    cudaFree(desc);
    cudaFree(items);
    cudaFree(stats);
    cudaFree(norm);
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
  std::vector<TeacherDesc> desc;
  std::vector<Item> items;
  const std::int64_t plane = L.grid_h() * L.grid_w();
  constexpr auto kMax32 = static_cast<std::int64_t>(std::numeric_limits<std::int32_t>::max());
  if (plane > kMax32) {
    throw ValidationError("fusion grid " + std::to_string(L.grid_h()) + "x" + std::to_string(L.grid_w()) +
                          " has more than 2^31 elements a channel; the kernel indexes a plane with 32 bits");
  }
  // Blocks along x: a spatial teacher's pixels by kThreads or its row tiles, or a vector
  // teacher's elements by kThreads.
  const std::int64_t row_tiles = ((L.grid_w() + 31) / 32) * ((L.grid_h() + kWarps * kRows - 1) / (kWarps * kRows));
  const std::int64_t pixel_blocks = (plane + kThreads - 1) / kThreads;
  std::int64_t largest_blocks = 1;
  // Row tiles pay off where an input row serves several output rows: maps upsampled in y.
  // DIRECTPORT_FUSION_TILES=pixels|rows forces one mapping for every teacher (for measuring them
  // against each other: bench/fusion_bench.cpp); unset or "auto" chooses per teacher.
  const char* tiles_env = std::getenv("DIRECTPORT_FUSION_TILES");
  const std::string tiles_mode = tiles_env ? tiles_env : "auto";
  if (tiles_mode != "auto" && tiles_mode != "pixels" && tiles_mode != "rows") {
    throw ValidationError("DIRECTPORT_FUSION_TILES must be auto, pixels or rows, got '" + tiles_mode + "'");
  }
  for (std::size_t i = 0; i < L.teachers(); ++i) {
    const auto& in = L.inputs()[i];
    TeacherDesc d{};
    d.dtype = dtype_code(in.dtype);
    d.spatial = in.spatial();
    d.norm = static_cast<int>(in.norm);
    d.channels = static_cast<int>(in.channels());
    d.h = in.spatial() ? in.shape[1] : 1;
    d.w = in.spatial() ? in.shape[2] : 1;
    d.ry = make_resample(d.h, in.spatial() ? L.grid_h() : 1);
    d.rx = make_resample(d.w, in.spatial() ? L.grid_w() : 1);
    d.chan_base = static_cast<unsigned>(L.channel_base(i));
    d.out_offset = L.offset(i);
    desc.push_back(d);
    if (in.spatial()) {
      if (d.h * d.w > kMax32) {
        throw ValidationError("fusion input " + std::to_string(i) + " has more than 2^31 elements a channel (" +
                              std::to_string(d.h) + "x" + std::to_string(d.w) + "); the kernel indexes a plane with 32 bits");
      }
      const bool rows = tiles_mode == "rows" || (tiles_mode == "auto" && d.h < L.grid_h());
      largest_blocks = std::max(largest_blocks, rows ? row_tiles : pixel_blocks);
      const int group = !rows ? kGroup
                        : row_tiles * ((d.channels + kRowGroupLarge - 1) / kRowGroupLarge) >= kRowBlocks ? kRowGroupLarge
                                                                                                        : kRowGroupSmall;
      for (int c = 0; c < d.channels; c += group) {
        items.push_back({static_cast<int>(i), c, std::min(group, d.channels - c), rows ? kRowTiles : kPixels});
      }
    } else {
      items.push_back({static_cast<int>(i), 0, d.channels, kPixels});
      largest_blocks = std::max<std::int64_t>(largest_blocks, (d.channels + kThreads - 1) / kThreads);
    }
  }
  // The grid's y holds one item per group of channels: at most 65535.
  if (items.size() > 65535) {
    throw ValidationError("fusion layout has " + std::to_string(items.size()) + " work items of up to " +
                          std::to_string(kGroup) + " channels; the kernel's grid allows 65535 (fewer channels, or " +
                          "DIRECTPORT_FUSION_TILES=pixels)");
  }
  auto& D = *dev_;
  D.item_count = static_cast<unsigned>(items.size());
  D.channels = L.total_channels();
  D.grid_x = static_cast<unsigned>(std::max<std::int64_t>(1, largest_blocks));
  DP_CUDA_CHECK(cudaMalloc(&D.desc, desc.size() * sizeof(TeacherDesc)));
  DP_CUDA_CHECK(cudaMalloc(&D.items, items.size() * sizeof(Item)));
  DP_CUDA_CHECK(cudaMalloc(&D.stats, 4 * D.channels * sizeof(double)));
  DP_CUDA_CHECK(cudaMalloc(&D.norm, 2 * D.channels * sizeof(float)));
  DP_CUDA_CHECK(cudaMemcpy(D.desc, desc.data(), desc.size() * sizeof(TeacherDesc), cudaMemcpyHostToDevice));
  DP_CUDA_CHECK(cudaMemcpy(D.items, items.data(), items.size() * sizeof(Item), cudaMemcpyHostToDevice));
  DP_CUDA_CHECK(cudaMemset(D.stats, 0, 4 * D.channels * sizeof(double)));
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
  std::uint32_t present = 0, first = 0;
  for (std::size_t i = 0; i < L.teachers(); ++i) {
    a.in[i] = inputs[i];
    if (!inputs[i]) continue;
    present |= 1u << i;
    if (frames_[i] == 0) first |= 1u << i;
  }
  a.present = present;
  a.out = out;
  a.out_dtype = dtype_code(L.out_dtype());
  a.teachers = static_cast<int>(L.teachers());
  a.grid_w = static_cast<std::uint32_t>(L.grid_w());
  a.mask_offset = L.mask_offset();
  a.desc = D.desc;
  a.items = D.items;
  a.plane = static_cast<std::uint32_t>(L.grid_h() * L.grid_w());
  a.acc1 = D.acc1();
  a.acc2 = D.acc2();
  a.mean = D.mean();
  a.scale = D.scale();

  FinalizeArgs f{};
  f.grid_elements = L.grid_h() * L.grid_w();
  f.momentum = L.momentum();
  f.eps = L.eps();
  f.desc = D.desc;
  f.m1 = D.m1();
  f.m2 = D.m2();
  f.acc1 = D.acc1();
  f.acc2 = D.acc2();
  f.mean = D.mean();
  f.scale = D.scale();
  const dim3 grid(D.grid_x, D.item_count);
  if (first) {
    // A teacher's first frame: its statistics first, so that it is standardised with them.
    a.write = 0;
    a.accumulate = first;
    fuse_kernel<<<grid, kThreads, 0, s>>>(a);
    DP_CUDA_CHECK(cudaGetLastError());
    f.teachers_mask = first;
    f.first_mask = first;
    finalize_kernel<<<static_cast<unsigned>(L.teachers()), kThreads, 0, s>>>(f);
    DP_CUDA_CHECK(cudaGetLastError());
  }
  a.write = 1;
  a.accumulate = present & ~first;
  fuse_kernel<<<grid, kThreads, 0, s>>>(a);
  DP_CUDA_CHECK(cudaGetLastError());
  if (a.accumulate) {
    f.teachers_mask = a.accumulate;
    f.first_mask = 0;
    finalize_kernel<<<static_cast<unsigned>(L.teachers()), kThreads, 0, s>>>(f);
    DP_CUDA_CHECK(cudaGetLastError());
  }
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

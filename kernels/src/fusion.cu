// The CUDA fusion kernel (fusion.hpp). One launch writes the whole fused tensor: a 2-D grid,
// y over channel planes (one per channel of a spatial teacher, one per vector teacher), x over
// the elements of a plane. Each thread resamples, standardises, casts and stores its elements
// and, where the teacher's statistics are updated this frame, adds them to per-block float64
// partial sums, folded into the per-channel accumulators with one atomic per block. A second,
// tiny kernel turns the accumulators into the running statistics and the (mean, scale) pairs
// the next frame uses.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "directport/cuda/driver.hpp"
#include "directport/kernels/fusion.hpp"
#include "directport/kernels/fusion_math.hpp"

namespace dp::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kElementsPerThread = 4;  // grid x is sized for about this many elements a thread

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

struct PlaneDesc {
  int teacher;
  int channel;  // -1: a vector teacher's plane (each element its own channel)
  std::uint32_t elements;
  std::uint64_t out_offset;
  std::uint64_t in_offset;  // elements into the teacher's input
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
  std::uint64_t mask_offset;
  const TeacherDesc* desc;
  const PlaneDesc* planes;
  double* acc1;
  double* acc2;
  const float* mean;
  const float* scale;
};

__device__ __forceinline__ float load(const void* p, int dtype, std::uint64_t i) {
  if (dtype == kF16) return __half2float(static_cast<const __half*>(p)[i]);
  if (dtype == kBF16) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  return __ldg(static_cast<const float*>(p) + i);
}

__device__ __forceinline__ void store(void* p, int dtype, std::uint64_t i, float v) {
  if (dtype == kF16) {
    static_cast<__half*>(p)[i] = __float2half_rn(v);
  } else if (dtype == kBF16) {
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  } else {
    static_cast<float*>(p)[i] = v;
  }
}

__device__ __forceinline__ double block_sum(double v, double* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = 0.0;
  if (warp == 0) {
    v = lane < (blockDim.x >> 5) ? shared[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  return v;  // valid in thread 0
}

__global__ void __launch_bounds__(kThreads) fuse_kernel(LaunchArgs a) {
  __shared__ double shared[kThreads / 32];
  const PlaneDesc p = a.planes[blockIdx.y];
  const TeacherDesc t = a.desc[p.teacher];
  const bool present = (a.present >> p.teacher) & 1u;
  const bool acc = (a.accumulate >> p.teacher) & 1u;

  if (a.write && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x < a.teachers) {
    store(a.out, a.out_dtype, a.mask_offset + threadIdx.x, ((a.present >> threadIdx.x) & 1u) ? 1.0f : 0.0f);
  }
  const std::uint32_t stride = gridDim.x * blockDim.x;
  const std::uint32_t first = blockIdx.x * blockDim.x + threadIdx.x;
  if (!present) {  // uniform over the block
    if (a.write) {
      for (std::uint32_t e = first; e < p.elements; e += stride) store(a.out, a.out_dtype, p.out_offset + e, 0.0f);
    }
    return;
  }
  if (!a.write && !acc) return;
  const void* in = a.in[p.teacher];
  double s1 = 0.0, s2 = 0.0;
  if (p.channel >= 0) {
    const unsigned ch = t.chan_base + p.channel;
    const float mean = a.write ? a.mean[ch] : 0.0f;
    const float scale = a.write ? a.scale[ch] : 1.0f;
    for (std::uint32_t e = first; e < p.elements; e += stride) {
      const std::uint32_t y = e / a.grid_w, x = e - y * a.grid_w;
      const Tap ty = tap(t.ry, y, t.h), tx = tap(t.rx, x, t.w);
      const std::uint64_t r0 = p.in_offset + ty.i0 * t.w, r1 = p.in_offset + ty.i1 * t.w;
      const float v = bilinear(load(in, t.dtype, r0 + tx.i0), load(in, t.dtype, r0 + tx.i1),
                               load(in, t.dtype, r1 + tx.i0), load(in, t.dtype, r1 + tx.i1), ty, tx);
      if (acc) {
        s1 += v;
        s2 += static_cast<double>(v) * v;
      }
      if (a.write) store(a.out, a.out_dtype, p.out_offset + e, standardise(v, mean, scale));
    }
    if (acc) {
      s1 = block_sum(s1, shared);
      s2 = block_sum(s2, shared);
      if (threadIdx.x == 0) {
        atomicAdd(a.acc1 + ch, s1);
        atomicAdd(a.acc2 + ch, s2);
      }
    }
  } else {
    for (std::uint32_t e = first; e < p.elements; e += stride) {
      const unsigned ch = t.chan_base + e;
      const float v = load(in, t.dtype, p.in_offset + e);
      if (acc) {
        a.acc1[ch] = v;  // one value per channel and frame: no other writer
        a.acc2[ch] = static_cast<double>(v) * v;
      }
      if (a.write) store(a.out, a.out_dtype, p.out_offset + e, standardise(v, a.mean[ch], a.scale[ch]));
    }
  }
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
  PlaneDesc* planes = nullptr;
  double* stats = nullptr;  // m1, m2, acc1, acc2: total_channels each
  float* norm = nullptr;    // mean, scale
  unsigned plane_count = 0;
  unsigned grid_x = 1;
  std::size_t channels = 0;
  ~Device() {
    cudaFree(desc);
    cudaFree(planes);
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
  std::vector<PlaneDesc> planes;
  std::uint32_t largest = 1;
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
      const auto per = static_cast<std::uint32_t>(L.grid_h() * L.grid_w());
      for (int c = 0; c < d.channels; ++c) {
        planes.push_back({static_cast<int>(i), c, per, d.out_offset + std::uint64_t(c) * per,
                          std::uint64_t(c) * std::uint64_t(d.h * d.w)});
      }
      largest = std::max(largest, per);
    } else {
      planes.push_back({static_cast<int>(i), -1, static_cast<std::uint32_t>(d.channels), d.out_offset, 0});
      largest = std::max(largest, static_cast<std::uint32_t>(d.channels));
    }
  }
  auto& D = *dev_;
  D.plane_count = static_cast<unsigned>(planes.size());
  D.channels = L.total_channels();
  const std::uint32_t per_block = kThreads * kElementsPerThread;
  D.grid_x = std::max<std::uint32_t>(1, (largest + per_block - 1) / per_block);
  DP_CUDA_CHECK(cudaMalloc(&D.desc, desc.size() * sizeof(TeacherDesc)));
  DP_CUDA_CHECK(cudaMalloc(&D.planes, planes.size() * sizeof(PlaneDesc)));
  DP_CUDA_CHECK(cudaMalloc(&D.stats, 4 * D.channels * sizeof(double)));
  DP_CUDA_CHECK(cudaMalloc(&D.norm, 2 * D.channels * sizeof(float)));
  DP_CUDA_CHECK(cudaMemcpy(D.desc, desc.data(), desc.size() * sizeof(TeacherDesc), cudaMemcpyHostToDevice));
  DP_CUDA_CHECK(cudaMemcpy(D.planes, planes.data(), planes.size() * sizeof(PlaneDesc), cudaMemcpyHostToDevice));
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
  a.planes = D.planes;
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
  const dim3 grid(D.grid_x, D.plane_count);
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

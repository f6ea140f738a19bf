// CUDA fill and checksum, bit-identical to checksum_cpu.cpp.
#include <cuda_runtime.h>

#include "directport/cuda/driver.hpp"
#include "directport/kernels/checksum.hpp"

namespace dp::kernels {
namespace {

__device__ __forceinline__ std::uint64_t d_mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void fill_kernel(std::uint64_t* __restrict__ w, std::size_t n, std::uint64_t base) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    w[i] = d_mix64(base + i);
  }
}

__global__ void zero_kernel(std::uint64_t* out) { *out = 0; }

__global__ void checksum_kernel(const std::uint64_t* __restrict__ w, std::size_t n, unsigned long long* out) {
  std::uint64_t sum = 0;
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    sum += d_mix64(__ldg(w + i) ^ (i * 0xD6E8FEB86659FD93ull));
  }
  // Warp reduction, then the block's warps in shared memory, then one atomic per block
  // (wrap-around addition is associative mod 2^64). One atomic per warp made a 1 MiB checksum
  // into mapped host memory take 13 ms on an H200: thousands of atomics across PCIe.
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_down_sync(0xffffffffu, sum, o);
  // Launched with whole warps, at most 1024 threads (checksum_gpu: 256).
  __shared__ std::uint64_t warp_sums[32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = (blockDim.x + 31) >> 5;
  if (lane == 0) warp_sums[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    sum = lane < warps ? warp_sums[lane] : 0;
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_down_sync(0xffffffffu, sum, o);
    if (lane == 0) atomicAdd(out, static_cast<unsigned long long>(sum));
  }
}

__global__ void poke_kernel(volatile std::uint64_t* dst, std::uint64_t v) { *dst = v; }

int grid_for(std::size_t n) {
  static int sms = [] {
    int dev = 0, v = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev);
    return v > 0 ? v : 80;
  }();
  std::size_t blocks = (n + 255) / 256;
  return static_cast<int>(blocks < std::size_t(sms) * 8 ? (blocks ? blocks : 1) : std::size_t(sms) * 8);
}

}  // namespace

void fill_gpu(void* dst, std::size_t bytes, std::uint64_t seed, GpuStream stream) {
  DP_EXPECTS(bytes % 8 == 0, "fill_gpu needs a multiple of 8 bytes");
  std::size_t n = bytes / 8;
  fill_kernel<<<grid_for(n), 256, 0, reinterpret_cast<cudaStream_t>(stream)>>>(static_cast<std::uint64_t*>(dst), n,
                                                                               seed * 0x100000001B3ull);
  DP_CUDA_CHECK(cudaGetLastError());
}

void checksum_gpu(const void* src, std::size_t bytes, std::uint64_t* out, GpuStream stream) {
  DP_EXPECTS(bytes % 8 == 0, "checksum_gpu needs a multiple of 8 bytes");
  auto s = reinterpret_cast<cudaStream_t>(stream);
  std::size_t n = bytes / 8;
  zero_kernel<<<1, 1, 0, s>>>(out);
  checksum_kernel<<<grid_for(n), 256, 0, s>>>(static_cast<const std::uint64_t*>(src), n,
                                              reinterpret_cast<unsigned long long*>(out));
  DP_CUDA_CHECK(cudaGetLastError());
}

void poke_gpu(void* dst, std::uint64_t value, GpuStream stream) {
  poke_kernel<<<1, 1, 0, reinterpret_cast<cudaStream_t>(stream)>>>(static_cast<std::uint64_t*>(dst), value);
  DP_CUDA_CHECK(cudaGetLastError());
}

}  // namespace dp::kernels

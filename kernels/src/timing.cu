#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <thread>

#include "directport/cuda/driver.hpp"
#include "directport/kernels/timing.hpp"

namespace dp::kernels {
namespace {

__device__ __forceinline__ std::uint64_t globaltimer() {
  std::uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void stamp_kernel(std::uint64_t* dst, std::uint64_t seq) {
  dst[1] = seq;
  dst[0] = globaltimer();
}

__global__ void since_kernel(const std::uint64_t* frame, std::uint64_t* out) {
  std::uint64_t now = globaltimer();
  out[0] = now - frame[0];
  out[1] = frame[1];
}

void CUDART_CB sleep_host(void* ns) {
  std::this_thread::sleep_for(std::chrono::nanoseconds(reinterpret_cast<std::uintptr_t>(ns)));
}

}  // namespace

void hold_stream(std::uint64_t ns, GpuStream stream) {
  DP_CUDA_CHECK(cudaLaunchHostFunc(reinterpret_cast<cudaStream_t>(stream), sleep_host,
                                   reinterpret_cast<void*>(static_cast<std::uintptr_t>(ns))));
}

void stamp_time_gpu(std::uint64_t* dst, std::uint64_t seq, GpuStream stream) {
  stamp_kernel<<<1, 1, 0, reinterpret_cast<cudaStream_t>(stream)>>>(dst, seq);
  DP_CUDA_CHECK(cudaGetLastError());
}

void measure_since_gpu(const std::uint64_t* frame, std::uint64_t* out, GpuStream stream) {
  since_kernel<<<1, 1, 0, reinterpret_cast<cudaStream_t>(stream)>>>(frame, out);
  DP_CUDA_CHECK(cudaGetLastError());
}

}  // namespace dp::kernels

// The fusion benchmark's floor (traffic.hpp): a frame's reads and writes, nothing else.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>

#include "directport/core/error.hpp"
#include "directport/cuda/driver.hpp"
#include "directport/kernels/traffic.hpp"

namespace dp::kernels {
namespace {

constexpr int kMaxInputs = 8;
constexpr int kThreads = 256;

struct TrafficArgs {
  const uint4* in[kMaxInputs];
  std::size_t chunks_in[kMaxInputs];
  int inputs;
  uint4* out;
  std::size_t chunks_out;
  unsigned zero;  // 0, unknown to the compiler: the loads feed the stores (acc * zero), so they stay
};

__global__ void __launch_bounds__(kThreads) traffic_kernel(TrafficArgs a) {
  const std::size_t stride = std::size_t(gridDim.x) * kThreads;
  const std::size_t first = std::size_t(blockIdx.x) * kThreads + threadIdx.x;
  unsigned acc = 0;
  for (int k = 0; k < a.inputs; ++k) {
#pragma unroll 4
    for (std::size_t i = first; i < a.chunks_in[k]; i += stride) {
      const uint4 v = __ldg(a.in[k] + i);
      acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
  }
  const unsigned keep = acc * a.zero;
#pragma unroll 4
  for (std::size_t i = first; i < a.chunks_out; i += stride) {
    const unsigned v = static_cast<unsigned>(i) + keep;
    a.out[i] = make_uint4(v, v, v, v);
  }
}

}  // namespace

void traffic_floor_gpu(const std::vector<TrafficInput>& inputs, void* out, std::size_t out_bytes, GpuStream stream) {
  DP_EXPECTS(inputs.size() <= kMaxInputs, "traffic_floor_gpu() takes at most 8 inputs");
  DP_EXPECTS(reinterpret_cast<std::uintptr_t>(out) % 16 == 0, "traffic_floor_gpu() needs a 16-byte aligned output");
  TrafficArgs a{};
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    DP_EXPECTS(reinterpret_cast<std::uintptr_t>(inputs[k].data) % 16 == 0, "traffic_floor_gpu() needs 16-byte aligned inputs");
    a.in[k] = static_cast<const uint4*>(inputs[k].data);
    a.chunks_in[k] = inputs[k].bytes / 16;
  }
  a.inputs = static_cast<int>(inputs.size());
  a.out = static_cast<uint4*>(out);
  a.chunks_out = out_bytes / 16;
  // The resident blocks of the current device, asked once a device: a timed call does no more
  // host work than the fusion's own launch (its events bracket the host's calls too).
  static std::mutex m;
  static std::map<int, int> slots_of;
  int device = 0;
  DP_CUDA_CHECK(cudaGetDevice(&device));
  int slots = 0;
  {
    std::lock_guard<std::mutex> lock(m);
    auto it = slots_of.find(device);
    if (it == slots_of.end()) {
      int sms = 0, per_sm = 0;
      DP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
      DP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, traffic_kernel, kThreads, 0));
      it = slots_of.emplace(device, std::max(1, per_sm * sms)).first;
    }
    slots = it->second;
  }
  std::size_t most = 0;
  for (int k = 0; k < a.inputs; ++k) most = std::max(most, a.chunks_in[k]);
  most = std::max(most, a.chunks_out);
  // As many blocks as the card holds at once, fewer where there is less to do.
  const std::size_t want = std::max<std::size_t>(1, (most + kThreads - 1) / kThreads);
  const auto blocks = static_cast<unsigned>(std::min<std::size_t>(want, std::size_t(slots)));
  traffic_kernel<<<blocks, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(a);
  DP_CUDA_CHECK(cudaGetLastError());
}

}  // namespace dp::kernels

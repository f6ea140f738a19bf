#include <cuda_runtime.h>

#include "directport/cuda/driver.hpp"
#include "directport/kernels/checksum.hpp"
#include "directport/kernels/frame_check.hpp"

namespace dp::kernels {
namespace {

__global__ void set_word(std::uint64_t* dst, std::uint64_t v) { *dst = v; }
__global__ void copy_word(std::uint64_t* dst, const std::uint64_t* src) { *dst = *src; }
__global__ void compare(const std::uint64_t* frame, std::size_t n, std::uint64_t expected_seq,
                        const std::uint64_t* sum, std::uint64_t* result) {
  std::uint64_t r = kFrameOk;
  if (frame[0] != expected_seq) r = kFrameWrongSeq;
  else if (frame[n - 1] != *sum) r = kFrameBadChecksum;
  *result = r;
}

}  // namespace

void stamp_frame_gpu(void* dst, std::size_t bytes, std::uint64_t seq, std::uint64_t seed, std::uint64_t* scratch,
                     GpuStream stream) {
  DP_EXPECTS(bytes % 8 == 0 && bytes >= kMinStampedBytes, "stamped frames need >= 24 bytes, a multiple of 8");
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* w = static_cast<std::uint64_t*>(dst);
  std::size_t n = bytes / 8;
  set_word<<<1, 1, 0, s>>>(w, seq);
  fill_gpu(w + 1, (n - 2) * 8, seed, stream);
  checksum_gpu(w, (n - 1) * 8, scratch, stream);
  copy_word<<<1, 1, 0, s>>>(w + n - 1, scratch);
  DP_CUDA_CHECK(cudaGetLastError());
}

void verify_frame_gpu(const void* src, std::size_t bytes, std::uint64_t expected_seq, std::uint64_t* scratch,
                      std::uint64_t* result, GpuStream stream) {
  DP_EXPECTS(bytes % 8 == 0 && bytes >= kMinStampedBytes, "stamped frames need >= 24 bytes, a multiple of 8");
  auto s = reinterpret_cast<cudaStream_t>(stream);
  std::size_t n = bytes / 8;
  checksum_gpu(src, (n - 1) * 8, scratch, stream);
  compare<<<1, 1, 0, s>>>(static_cast<const std::uint64_t*>(src), n, expected_seq, scratch, result);
  DP_CUDA_CHECK(cudaGetLastError());
}

}  // namespace dp::kernels

// Self-verifying frames for tests, benchmarks and chaos runs. A stamped frame of n 64-bit words
// holds: word 0 = seq, words 1..n-2 = fill(seed), word n-1 = checksum of words 0..n-2.
// A reader checks it without any side channel: torn, stale or foreign frames fail.
#pragma once

#include <cstddef>
#include <cstdint>

#include "directport/core/types.hpp"

namespace dp::kernels {

enum FrameCheck : std::uint64_t { kFrameOk = 0, kFrameWrongSeq = 1, kFrameBadChecksum = 2 };

inline constexpr std::size_t kMinStampedBytes = 24;

// The fill seed of frame `seq` in the stamped streams of pattern-source and vulkan-source (any
// seed verifies; a fixed rule makes their frames the same).
inline constexpr std::uint64_t stamp_seed(std::uint64_t seq) { return seq * 7919 + 17; }

void stamp_frame_cpu(void* dst, std::size_t bytes, std::uint64_t seq, std::uint64_t seed);
FrameCheck verify_frame_cpu(const void* src, std::size_t bytes, std::uint64_t expected_seq);

// GPU: enqueued on `stream`. `result` points to device-visible memory (device or mapped host)
// that receives a FrameCheck; `scratch` to one uint64 of device memory for the reduction
// (see checksum_gpu).
void stamp_frame_gpu(void* dst, std::size_t bytes, std::uint64_t seq, std::uint64_t seed, std::uint64_t* scratch,
                     GpuStream stream);
void verify_frame_gpu(const void* src, std::size_t bytes, std::uint64_t expected_seq, std::uint64_t* scratch,
                      std::uint64_t* result, GpuStream stream);

}  // namespace dp::kernels

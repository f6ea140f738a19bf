// The memory traffic of a frame alone, for the fusion benchmark's floor: one launch that reads
// every input once and writes the output once, in 16-byte accesses, with no arithmetic. What a
// kernel that does the fusion's work on top of that traffic can at best approach.
#pragma once

#include <cstddef>
#include <vector>

#include "directport/core/types.hpp"

namespace dp::kernels {

struct TrafficInput {
  const void* data;
  std::size_t bytes;
};

// Reads every input's 16-byte chunks (at most 8 inputs, each 16-byte aligned), then writes
// out_bytes / 16 chunks of `out` (16-byte aligned), chunk i holding four copies of the 32-bit
// value i. Bytes past the last whole chunk are neither read nor written. One launch on `stream`.
void traffic_floor_gpu(const std::vector<TrafficInput>& inputs, void* out, std::size_t out_bytes, GpuStream stream);

}  // namespace dp::kernels

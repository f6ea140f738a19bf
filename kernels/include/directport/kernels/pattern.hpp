// Deterministic test tensors: element k of frame f is a function of (seed, f, k) alone, so that
// any process can recompute what a `tensor-source` published (and what fusing it must give).
#pragma once

#include <cstddef>
#include <cstdint>

#include "directport/core/types.hpp"
#include "directport/kernels/checksum.hpp"

namespace dp::kernels {

// Element `index` of a tensor whose channels are `plane` elements long: uniform in
// [c - 1, c + 1) where c = index / plane (channel c is centred on c).
inline float pattern_value(std::uint64_t seed, std::uint64_t frame_id, std::uint64_t index, std::uint64_t plane) {
  const std::uint64_t r = mix64(seed * 0x9E3779B97F4A7C15ull ^ mix64(frame_id) ^ index);
  const float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f);
  return static_cast<float>(index / plane) + 2.0f * u - 1.0f;
}

// Fills `elements` values of `dtype` (f32, f16 or bf16; others throw ValidationError).
void fill_pattern_cpu(void* dst, DType dtype, std::size_t elements, std::uint64_t plane, std::uint64_t seed,
                      std::uint64_t frame_id);

}  // namespace dp::kernels

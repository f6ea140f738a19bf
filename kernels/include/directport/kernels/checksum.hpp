// Frame integrity: a position-dependent 64-bit checksum and a seeded pseudo-random fill, with a
// CPU reference and a CUDA implementation that give bit-identical results. Used by the tests,
// the benchmarks and the chaos tool to prove that no torn, stale or mismatched frame is accepted.
#pragma once

#include <cstddef>
#include <cstdint>

#include "directport/core/types.hpp"

namespace dp::kernels {

// splitmix64: the mixing function of both the fill and the checksum.
inline std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Word i of a filled buffer is mix64(seed * 0x100000001B3 + i). `bytes` must be a multiple of 8.
void fill_cpu(void* dst, std::size_t bytes, std::uint64_t seed);
// Sum over 64-bit words w_i of mix64(w_i ^ (i * 0xD6E8FEB86659FD93)), mod 2^64; bytes % 8 == 0.
// Order-independent, so the GPU can reduce in any order.
std::uint64_t checksum_cpu(const void* src, std::size_t bytes);

// GPU versions: enqueued on `stream`, never synchronised. `out` is one uint64 of device memory
// (mapped host memory works, but the reduction's atomics then cross the bus: one per block, so
// keep it for tests). Throw CudaError if CUDA is not usable.
void fill_gpu(void* dst, std::size_t bytes, std::uint64_t seed, GpuStream stream);
void checksum_gpu(const void* src, std::size_t bytes, std::uint64_t* out, GpuStream stream);
// A kernel that writes one word at `dst` (used to prove read-only mappings fault).
void poke_gpu(void* dst, std::uint64_t value, GpuStream stream);

}  // namespace dp::kernels

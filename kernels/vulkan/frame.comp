// Self-verifying frames on Vulkan, bit-identical to kernels/src/frame_check_cpu.cpp: a stamped
// frame of n 64-bit words holds word 0 = seq, words 1..n-2 = fill(seed) (word j is
// mix64(seed * 0x100000001B3 + j - 1)), word n-1 = the checksum of words 0..n-2, the sum of
// mix64(w_i ^ (i * 0xD6E8FEB86659FD93)) mod 2^64.
//
// mode 0 (stamp): writes words 0..n-2 and adds their checksum to sums[0]; the host side then
// copies sums[0] into word n-1. mode 1 (checksum): adds the checksum of words 0..n-2 to sums[0].
// sums[0] must be zero before either. Word indices are 32-bit: frames end below 32 GiB of buffer.
#version 450
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_EXT_shader_atomic_int64 : require

layout(local_size_x = 256) in;

layout(std430, binding = 0) buffer Frames { uint64_t words[]; };
layout(std430, binding = 1) buffer Sums { uint64_t sums[]; };

layout(push_constant) uniform Params {
  uint64_t first;  // the frame's first word in `words`
  uint64_t n;      // words in the frame
  uint64_t seq;
  uint64_t seed;
  uint mode;
} p;

shared uint64_t partial[256];

uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15UL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
  return x ^ (x >> 31);
}

void main() {
  const uint64_t base = p.seed * 0x100000001B3UL;
  const uint64_t stride = uint64_t(gl_NumWorkGroups.x) * 256UL;
  uint64_t acc = 0UL;
  for (uint64_t i = uint64_t(gl_GlobalInvocationID.x); i < p.n - 1UL; i += stride) {
    uint64_t w;
    if (p.mode == 0u) {
      w = i == 0UL ? p.seq : mix64(base + i - 1UL);
      words[uint(p.first + i)] = w;
    } else {
      w = words[uint(p.first + i)];
    }
    acc += mix64(w ^ (i * 0xD6E8FEB86659FD93UL));
  }
  const uint lid = gl_LocalInvocationID.x;
  partial[lid] = acc;
  barrier();
  for (uint s = 128u; s > 0u; s >>= 1) {
    if (lid < s) partial[lid] += partial[lid + s];
    barrier();
  }
  if (lid == 0u) atomicAdd(sums[0], partial[0]);
}

#include <cstring>

#include "directport/core/error.hpp"
#include "directport/kernels/checksum.hpp"

namespace dp::kernels {

void fill_cpu(void* dst, std::size_t bytes, std::uint64_t seed) {
  DP_EXPECTS(bytes % 8 == 0, "fill_cpu needs a multiple of 8 bytes");
  auto* w = static_cast<std::uint64_t*>(dst);
  const std::uint64_t base = seed * 0x100000001B3ull;
  for (std::size_t i = 0; i < bytes / 8; ++i) w[i] = mix64(base + i);
}

std::uint64_t checksum_cpu(const void* src, std::size_t bytes) {
  DP_EXPECTS(bytes % 8 == 0, "checksum_cpu needs a multiple of 8 bytes");
  const auto* p = static_cast<const unsigned char*>(src);
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < bytes / 8; ++i) {
    std::uint64_t w;
    std::memcpy(&w, p + 8 * i, 8);
    sum += mix64(w ^ (i * 0xD6E8FEB86659FD93ull));
  }
  return sum;
}

}  // namespace dp::kernels

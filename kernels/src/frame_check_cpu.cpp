#include <cstring>

#include "directport/core/error.hpp"
#include "directport/kernels/checksum.hpp"
#include "directport/kernels/frame_check.hpp"

namespace dp::kernels {

void stamp_frame_cpu(void* dst, std::size_t bytes, std::uint64_t seq, std::uint64_t seed) {
  DP_EXPECTS(bytes % 8 == 0 && bytes >= kMinStampedBytes, "stamped frames need >= 24 bytes, a multiple of 8");
  auto* w = static_cast<std::uint64_t*>(dst);
  std::size_t n = bytes / 8;
  w[0] = seq;
  fill_cpu(w + 1, (n - 2) * 8, seed);
  w[n - 1] = checksum_cpu(w, (n - 1) * 8);
}

FrameCheck verify_frame_cpu(const void* src, std::size_t bytes, std::uint64_t expected_seq) {
  DP_EXPECTS(bytes % 8 == 0 && bytes >= kMinStampedBytes, "stamped frames need >= 24 bytes, a multiple of 8");
  const auto* p = static_cast<const unsigned char*>(src);
  std::size_t n = bytes / 8;
  std::uint64_t seq, sum;
  std::memcpy(&seq, p, 8);
  std::memcpy(&sum, p + (n - 1) * 8, 8);
  if (seq != expected_seq) return kFrameWrongSeq;
  return checksum_cpu(p, (n - 1) * 8) == sum ? kFrameOk : kFrameBadChecksum;
}

}  // namespace dp::kernels

#include "directport/platform/fd.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "directport/core/error.hpp"

namespace dp::platform {

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0 && ::close(fd_) != 0 && errno != EINTR) {
    log_cleanup_failure("close(" + std::to_string(fd_) + ") failed");
  }
  fd_ = fd;
}

UniqueFd UniqueFd::dup() const {
  DP_EXPECTS(fd_ >= 0, "dup() of an empty descriptor");
  return UniqueFd(DP_POSIX_CHECK(::fcntl(fd_, F_DUPFD_CLOEXEC, 0), "duplicating a descriptor"));
}

}  // namespace dp::platform

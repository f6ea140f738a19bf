// Typed errors and the one check macro per API family (POSIX here; CUDA in cuda/check.hpp).
// Every message says what was attempted, on what, and what to do about it.
#pragma once

#include <cerrno>
#include <stdexcept>
#include <string>

namespace dp {

// Base of every error the library throws at its API boundary.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A caller broke a documented precondition (bad argument, wrong state).
class PreconditionError : public Error {
 public:
  using Error::Error;
};

// A system call failed; errno() is the raw code.
class SystemError : public Error {
 public:
  SystemError(const std::string& what, int err);
  int error_code() const noexcept { return err_; }

 private:
  int err_;
};

// Input from outside the process (manifest, peer message, config, CLI) is malformed.
class ValidationError : public Error {
 public:
  using Error::Error;
};

// A peer's shared state is still being created (a manifest whose header is not published
// yet): not malformed, retry a moment later.
class NotReadyError : public Error {
 public:
  using Error::Error;
};

// A peer went away (EOF on its socket, process gone, heartbeat stale).
class PeerGoneError : public Error {
 public:
  using Error::Error;
};

// A bounded wait ran out.
class TimeoutError : public Error {
 public:
  using Error::Error;
};

// The CUDA runtime or driver refused an operation.
class CudaError : public Error {
 public:
  using Error::Error;
};

[[noreturn]] void throw_precondition(const char* cond, const std::string& why, const char* file,
                                     int line);
[[noreturn]] void throw_system(const std::string& what, int err);

// Logs a failure in cleanup code, where throwing is forbidden.
void log_cleanup_failure(const std::string& what) noexcept;

}  // namespace dp

#define DP_EXPECTS(cond, why)                                       \
  do {                                                              \
    if (!(cond)) ::dp::throw_precondition(#cond, (why), __FILE__, __LINE__); \
  } while (0)

// Evaluates a POSIX call returning -1 on error, retrying on EINTR; throws SystemError naming
// `what` otherwise. Yields the call's result.
#define DP_POSIX_CHECK(call, what)                       \
  ([&]() {                                               \
    for (;;) {                                           \
      auto dp_rc_ = (call);                              \
      if (dp_rc_ != -1) return dp_rc_;                   \
      if (errno == EINTR) continue;                      \
      ::dp::throw_system((what), errno);                 \
    }                                                    \
  }())

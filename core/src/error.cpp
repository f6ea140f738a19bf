#include "directport/core/error.hpp"

#include <cstdio>
#include <cstring>

namespace dp {

SystemError::SystemError(const std::string& what, int err)
    : Error(what + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")"), err_(err) {}

void throw_precondition(const char* cond, const std::string& why, const char* file, int line) {
  throw PreconditionError(why + " [" + cond + " failed at " + file + ":" + std::to_string(line) +
                          "]");
}

void throw_system(const std::string& what, int err) { throw SystemError(what, err); }

void log_cleanup_failure(const std::string& what) noexcept {
  std::fprintf(stderr, "directport: cleanup: %s\n", what.c_str());
}

}  // namespace dp

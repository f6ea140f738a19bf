// Move-only owner of an OS handle: a file descriptor on Linux, a kernel object HANDLE on Windows.
#pragma once

#include <utility>

namespace dp::platform {

// The OS's handle type as the seam passes it around (descriptor lists of broker messages,
// UniqueFd::get()). Linux code keeps seeing plain ints.
#if defined(_WIN32)
using NativeHandle = void*;  // HANDLE
inline constexpr NativeHandle kNoHandle = nullptr;
// Win32 says "no handle" two ways (NULL, INVALID_HANDLE_VALUE); a UniqueFd stores both as NULL.
inline NativeHandle normalize_handle(NativeHandle h) noexcept {
  return h == reinterpret_cast<NativeHandle>(-1) ? kNoHandle : h;
}
inline bool is_valid_handle(NativeHandle h) noexcept { return h != kNoHandle; }
#else
using NativeHandle = int;
inline constexpr NativeHandle kNoHandle = -1;
inline NativeHandle normalize_handle(NativeHandle h) noexcept { return h; }
inline bool is_valid_handle(NativeHandle h) noexcept { return h >= 0; }
#endif

class UniqueFd {
 public:
  UniqueFd() noexcept = default;
  explicit UniqueFd(NativeHandle fd) noexcept : fd_(normalize_handle(fd)) {}
  ~UniqueFd() { reset(); }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, kNoHandle)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, kNoHandle);
    }
    return *this;
  }

  NativeHandle get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return is_valid_handle(fd_); }
  NativeHandle release() noexcept { return std::exchange(fd_, kNoHandle); }
  void reset(NativeHandle fd = kNoHandle) noexcept;
  // A second handle for the same object (close-on-exec / not inheritable), same access.
  UniqueFd dup() const;

 private:
  NativeHandle fd_ = kNoHandle;
};

}  // namespace dp::platform

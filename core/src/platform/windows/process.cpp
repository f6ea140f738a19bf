// Windows: process identity is (pid, creation time from GetProcessTimes); liveness asks the
// process object itself (OpenProcess + WaitForSingleObject), so a pid reused by a newer process
// is told apart by its creation time.
#include "directport/platform/process.hpp"

#include <limits>

#include "win32.hpp"

namespace dp::platform {
namespace {

// 100 ns ticks since 1601-01-01 (FILETIME); 0 if unreadable.
std::uint64_t creation_time(HANDLE process) {
  FILETIME created{}, exited{}, kernel{}, user{};
  if (!::GetProcessTimes(process, &created, &exited, &kernel, &user)) return 0;
  return (std::uint64_t(created.dwHighDateTime) << 32) | created.dwLowDateTime;
}

}  // namespace

std::uint64_t process_start_time(std::int64_t pid) {
  if (pid <= 0 || pid > std::numeric_limits<DWORD>::max()) return 0;
  // PROCESS_QUERY_LIMITED_INFORMATION is granted on most processes, other users' included; one we
  // may not open at all reads as "no such process" (0), which discovery never needs: it judges
  // only its own user's nodes.
  HANDLE h = ::OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE, FALSE, static_cast<DWORD>(pid));
  if (!h) return 0;
  std::uint64_t t = 0;
  // An exited process whose object someone still holds is dead for our purposes (the zombie case).
  if (::WaitForSingleObject(h, 0) == WAIT_TIMEOUT) t = creation_time(h);
  ::CloseHandle(h);
  return t;
}

ProcessIdentity self_identity() {
  static const ProcessIdentity id{static_cast<std::int64_t>(::GetCurrentProcessId()),
                                  creation_time(::GetCurrentProcess())};
  return id;  // no fork() on Windows: the cached value is always ours
}

bool is_alive(const ProcessIdentity& id) {
  if (id.pid <= 0) return false;
  std::uint64_t now = process_start_time(id.pid);
  return now != 0 && (id.start_time == 0 || now == id.start_time);
}

std::uint32_t current_uid() { return win::uid_of_sid(win::current_user_sid()); }

std::int64_t monotonic_ns() {
  static const std::int64_t freq = [] {
    LARGE_INTEGER f{};
    ::QueryPerformanceFrequency(&f);
    return f.QuadPart;
  }();
  LARGE_INTEGER c{};
  ::QueryPerformanceCounter(&c);
  // Split to avoid overflowing counter * 1e9.
  return (c.QuadPart / freq) * 1000000000LL + (c.QuadPart % freq) * 1000000000LL / freq;
}

std::int64_t realtime_ns() {
  FILETIME ft{};
  ::GetSystemTimePreciseAsFileTime(&ft);
  const std::int64_t ticks = static_cast<std::int64_t>((std::uint64_t(ft.dwHighDateTime) << 32) | ft.dwLowDateTime);
  constexpr std::int64_t kUnixEpochTicks = 116444736000000000LL;  // 1970-01-01 in FILETIME ticks
  return (ticks - kUnixEpochTicks) * 100;
}

std::string hostname() {
  wchar_t buf[256] = {};
  DWORD n = static_cast<DWORD>(sizeof buf / sizeof buf[0]);
  if (::GetComputerNameExW(ComputerNameDnsHostname, buf, &n) && n > 0) return win::narrow(std::wstring(buf, n));
  n = static_cast<DWORD>(sizeof buf / sizeof buf[0]);
  if (::GetComputerNameW(buf, &n)) return win::narrow(std::wstring(buf, n));
  return {};
}

}  // namespace dp::platform

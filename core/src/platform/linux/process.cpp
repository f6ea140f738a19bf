#include "directport/platform/process.hpp"

#include <sys/types.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

namespace dp::platform {

std::uint64_t process_start_time(std::int64_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  if (!f) return 0;
  std::string line;
  std::getline(f, line);
  // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
  auto close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  char state = 0;
  rest >> state;
  if (state == 'Z' || state == 'X') return 0;  // a zombie is dead for our purposes
  // Fields 4..21 precede starttime (field 22); we have consumed field 3.
  for (int i = 4; i <= 21; ++i) rest >> field;
  std::uint64_t start = 0;
  rest >> start;
  return start;
}

ProcessIdentity self_identity() {
  static const ProcessIdentity id{static_cast<std::int64_t>(::getpid()),
                                  process_start_time(::getpid())};
  // After fork() the cached value is the parent's; recompute when the pid differs.
  if (id.pid != ::getpid()) return {::getpid(), process_start_time(::getpid())};
  return id;
}

bool is_alive(const ProcessIdentity& id) {
  if (id.pid <= 0) return false;
  std::uint64_t now = process_start_time(id.pid);
  return now != 0 && (id.start_time == 0 || now == id.start_time);
}

std::uint32_t current_uid() { return static_cast<std::uint32_t>(::getuid()); }

std::int64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

std::int64_t realtime_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

std::string hostname() {
  char buf[256] = {};
  ::gethostname(buf, sizeof buf - 1);
  return buf;
}

}  // namespace dp::platform

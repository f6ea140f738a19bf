// Process identity (pid + start time, immune to pid reuse), liveness and clocks.
#pragma once

#include <cstdint>
#include <string>

namespace dp::platform {

struct ProcessIdentity {
  std::int64_t pid = 0;
  std::uint64_t start_time = 0;  // OS-specific: Linux ticks since boot, Windows creation FILETIME; 0 = unknown
  bool operator==(const ProcessIdentity& o) const { return pid == o.pid && start_time == o.start_time; }
  bool operator!=(const ProcessIdentity& o) const { return !(*this == o); }
};

ProcessIdentity self_identity();
// Start time of `pid`, or 0 if there is no such process.
std::uint64_t process_start_time(std::int64_t pid);
// True if the very process `id` names still runs (not a zombie, not a reused pid).
bool is_alive(const ProcessIdentity& id);

std::uint32_t current_uid();
std::int64_t monotonic_ns();

// One iteration's pause in a busy-wait loop (the CPU's spin-wait hint), cheaper for the sibling
// hyper-thread and the memory system than an empty loop.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}
std::int64_t realtime_ns();
std::string hostname();

}  // namespace dp::platform

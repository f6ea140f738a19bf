#include "directport/core/fence.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <ctime>

#include "directport/platform/process.hpp"
#include "directport/platform/shm.hpp"

namespace dp::fence {
namespace {

// The futex compares 32 bits: the low half of the little-endian 64-bit word.
std::uint32_t* low_half(const protocol::AtomicU64& w) {
  return reinterpret_cast<std::uint32_t*>(const_cast<protocol::AtomicU64*>(&w));
}

void futex_wait(const protocol::AtomicU64& w, std::uint32_t expected, std::chrono::nanoseconds t) {
  timespec ts{static_cast<time_t>(t.count() / 1000000000), static_cast<long>(t.count() % 1000000000)};
  // Shared (non-private) futex: waiters and wakers are different processes.
  ::syscall(SYS_futex, low_half(w), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

}  // namespace

void raise_in_page(const platform::UniqueFd& page_fd, std::uint32_t slot, std::uint64_t value) {
  auto rw = platform::Segment::map_fd(page_fd.dup(), protocol::kFencePageBytes, platform::Access::read_write);
  host_signal(page_word(rw.data(), slot), value);
}

void host_wake(const protocol::AtomicU64& word) noexcept {
  ::syscall(SYS_futex, low_half(word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

void host_signal(protocol::AtomicU64& word, std::uint64_t value) noexcept {
  std::uint64_t cur = word.load(std::memory_order_relaxed);
  while (cur < value && !word.compare_exchange_weak(cur, value, std::memory_order_release)) {
  }
  host_wake(word);
}

bool host_wait(const protocol::AtomicU64& word, std::uint64_t value, std::chrono::nanoseconds timeout,
               const std::function<bool()>& keep_waiting, std::chrono::nanoseconds slice) {
  const std::int64_t deadline = platform::monotonic_ns() + timeout.count();
  for (;;) {
    std::uint64_t cur = word.load(std::memory_order_acquire);
    if (cur >= value) return true;
    std::int64_t left = deadline - platform::monotonic_ns();
    if (left <= 0) return false;
    if (keep_waiting && !keep_waiting()) return false;
    futex_wait(word, static_cast<std::uint32_t>(cur),
               std::chrono::nanoseconds(std::min<std::int64_t>(left, slice.count())));
  }
}

bool host_wait_change(const protocol::AtomicU64& word, std::uint64_t old, std::chrono::nanoseconds timeout) {
  const std::int64_t deadline = platform::monotonic_ns() + timeout.count();
  for (;;) {
    if (word.load(std::memory_order_acquire) != old) return true;
    std::int64_t left = deadline - platform::monotonic_ns();
    if (left <= 0) return false;
    futex_wait(word, static_cast<std::uint32_t>(old), std::chrono::nanoseconds(left));
  }
}

}  // namespace dp::fence

// Host timeline fences: 64-bit monotonic words in shared memory, signalled with a release store
// plus a futex wake, waited on with a bounded futex wait. The GPU kinds live in cuda/.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>

#include "directport/core/protocol.hpp"
#include "directport/platform/fd.hpp"

namespace dp::fence {

// Slot `slot`'s timeline word in a fence page (kFenceStride apart).
inline protocol::AtomicU64& page_word(void* page, std::uint32_t slot) {
  return *reinterpret_cast<protocol::AtomicU64*>(static_cast<char*>(page) + slot * protocol::kFenceStride);
}
inline const protocol::AtomicU64& page_word(const void* page, std::uint32_t slot) {
  return *reinterpret_cast<const protocol::AtomicU64*>(static_cast<const char*>(page) + slot * protocol::kFenceStride);
}

// The consumer's state in a subscription's release page (at kConsumerStateOffset).
inline protocol::ConsumerState& consumer_state(void* page) {
  return *reinterpret_cast<protocol::ConsumerState*>(static_cast<char*>(page) + protocol::kConsumerStateOffset);
}
inline const protocol::ConsumerState& consumer_state(const void* page) {
  return *reinterpret_cast<const protocol::ConsumerState*>(static_cast<const char*>(page) + protocol::kConsumerStateOffset);
}

// A survivor's write into a dead peer's fence page, which it otherwise maps read-only: maps the
// page from `page_fd` writable for the moment and raises slot `slot`'s word to `value`.
void raise_in_page(const platform::UniqueFd& page_fd, std::uint32_t slot, std::uint64_t value);

// Raises `word` to `value` (never lowers it) and wakes every waiter in any process.
void host_signal(protocol::AtomicU64& word, std::uint64_t value) noexcept;
// Wakes waiters of `word` without changing it.
void host_wake(const protocol::AtomicU64& word) noexcept;
// Waits until `word >= value`, at most `timeout`. Every `slice` it calls `keep_waiting` (if set)
// and gives up when that returns false. Returns true once the value is reached.
bool host_wait(const protocol::AtomicU64& word, std::uint64_t value, std::chrono::nanoseconds timeout,
               const std::function<bool()>& keep_waiting = {},
               std::chrono::nanoseconds slice = std::chrono::milliseconds(10));
// Waits until `word` differs from `old`, at most `timeout` (a futex wait on its low half).
bool host_wait_change(const protocol::AtomicU64& word, std::uint64_t old, std::chrono::nanoseconds timeout);

}  // namespace dp::fence

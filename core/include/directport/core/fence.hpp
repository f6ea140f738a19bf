// Host timeline fences: 64-bit monotonic words in shared memory, signalled with a release store
// plus a futex wake, waited on with a bounded futex wait. The GPU kinds live in cuda/.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>

#include "directport/core/protocol.hpp"

namespace dp::fence {

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

// The GPU waits a producer's stream has for its consumers' releases, in stream order, and the
// bound on how long one may hold the stream (StreamSpec::release_timeout, PROTOCOL.md §10.3).
//
// acquire() enqueues on the producer's stream a wait for each release a consumer has enqueued
// on its own stream but that has not run yet. If that consumer's stream stalls (alive, its
// release never reached), the producer's stream waits with it, and so does every other
// consumer. ReleaseWaits records the waits as they are enqueued and says which consumer is
// holding the stream, and since when:
//
//   - the clock of a wait starts when the producer's stream has reached it: when the ready
//     signal of the frame published before it has run (a ready word the producer's CPU reads),
//     not when the CPU enqueued it, so the producer's own backlog never counts against a
//     healthy consumer;
//   - only the oldest wait that has not passed (the head) is timed: a consumer whose release
//     sits behind its wait for a frame the blocked stream has not written yet is waiting for
//     the head's consumer, not stalled itself; its clock starts when it becomes the head.
//
// Not thread-safe: the Publisher calls it under its lock.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>

namespace dp {

class ReleaseWaits {
 public:
  struct Wait {
    std::uint64_t subscription = 0;  // Publisher's subscription id
    std::uint64_t connection = 0;    // its broker connection
    std::uint32_t slot = 0;          // the slot whose release is waited for
    std::uint64_t value = 0;         // the seq whose release is waited for
    std::uint32_t after_slot = 0;    // the frame published just before the wait was enqueued:
    std::uint64_t after_seq = 0;     // its slot and seq (0: none, the stream reaches it at once)
  };
  struct Stalled {
    Wait wait;
    std::int64_t waited_ns = 0;  // since the stream reached the wait (as seen by check())
  };
  // Whether the consumer's release of `value` in `slot` has run (its page's `released`).
  using ReleasedFn = std::function<bool(const Wait&)>;
  // Whether the producer's stream has signalled frame `seq` in `slot` (its host ready word).
  using SignalledFn = std::function<bool(std::uint32_t slot, std::uint64_t seq)>;

  void push(const Wait& w) { waits_.push_back(w); }
  // Forgets the waits that have passed, from the oldest; cheap enough for every acquire().
  void prune(const ReleasedFn& released);
  // Forgets a subscription's waits (it is gone: its releases were raised).
  void forget(std::uint64_t subscription);
  // The head, if it has held the stream for longer than `bound_ns` as of `now_ns`. Reported once:
  // the caller cuts its consumer off, which forgets its waits; until then it is not reported again.
  std::optional<Stalled> check(std::int64_t now_ns, std::int64_t bound_ns, const ReleasedFn& released,
                               const SignalledFn& signalled);
  // Reports the head again at the next check() that finds it still past the bound (its consumer
  // was not cut this time: another was, at the same tick).
  void rearm() { head_reported_ = false; }
  std::size_t size() const { return waits_.size(); }
  const Wait& at(std::size_t i) const { return waits_[i]; }

 private:
  std::deque<Wait> waits_;
  // The head as timed: its identity, since when the stream has been waiting on it (as first seen
  // by check()), and whether it was reported.
  std::uint64_t head_subscription_ = 0, head_value_ = 0;
  std::uint32_t head_slot_ = 0;
  std::int64_t head_since_ns_ = 0;
  bool head_timed_ = false;
  bool head_reported_ = false;
};

}  // namespace dp

#include "directport/core/release_waits.hpp"

#include <algorithm>

namespace dp {

void ReleaseWaits::prune(const ReleasedFn& released) {
  while (!waits_.empty() && released(waits_.front())) waits_.pop_front();
}

void ReleaseWaits::forget(std::uint64_t subscription) {
  waits_.erase(std::remove_if(waits_.begin(), waits_.end(),
                              [&](const Wait& w) { return w.subscription == subscription; }),
               waits_.end());
}

std::optional<ReleaseWaits::Stalled> ReleaseWaits::check(std::int64_t now_ns, std::int64_t bound_ns,
                                                         const ReleasedFn& released, const SignalledFn& signalled) {
  prune(released);
  if (waits_.empty()) {
    head_timed_ = false;
    return std::nullopt;
  }
  const Wait& head = waits_.front();
  // Not reached yet: the stream is still busy with the producer's own work before it.
  if (head.after_seq != 0 && !signalled(head.after_slot, head.after_seq)) {
    head_timed_ = false;
    return std::nullopt;
  }
  const bool same = head_timed_ && head.subscription == head_subscription_ && head.slot == head_slot_ &&
                    head.value == head_value_;
  if (!same) {
    head_subscription_ = head.subscription;
    head_slot_ = head.slot;
    head_value_ = head.value;
    head_since_ns_ = now_ns;
    head_timed_ = true;
    head_reported_ = false;
  }
  const std::int64_t waited = now_ns - head_since_ns_;
  if (waited <= bound_ns || head_reported_) return std::nullopt;
  head_reported_ = true;
  return Stalled{head, waited};
}

}  // namespace dp

// Pairing of the student's two streams by frame_id: sensor frames (the student's input) and
// fused frames (its target). A pair is the two frames of one frame_id; frames that cannot have a
// partner any more are handed back and counted, never mixed with another id.
//
// Both streams deliver increasing frame_ids (a producer publishes in order; the compositor fuses
// in order), possibly with gaps. When the oldest id held on both sides pairs, everything older on
// either side can no longer pair and is handed back (unmatched). Each side holds at most
// `max_held` frames (its ring's slots minus one, so that its producer always has a slot); the
// oldest beyond that are handed back (unmatched). A frame whose id is not newer than the last
// paired one is handed back at once (late).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

namespace dp::student {

class Pairer {
 public:
  using Handle = std::size_t;  // the caller's name for a frame it holds
  enum Side { input = 0, target = 1 };

  struct Counters {
    std::uint64_t paired = 0;
    std::uint64_t unmatched_input = 0;   // input frames handed back without a partner
    std::uint64_t unmatched_target = 0;  // target frames handed back without a partner
  };
  struct Pair {
    std::uint64_t frame_id;
    Handle input, target;
  };

  explicit Pairer(std::size_t max_held_input = 2, std::size_t max_held_target = 2);
  void set_max_held(Side side, std::size_t n);

  // A frame arrived; frames to hand back at once are appended to `release`.
  void add(Side side, std::uint64_t frame_id, Handle h, std::vector<Handle>& release);
  // The next pair, if both sides hold one id; frames older than it are appended to `release`.
  std::optional<Pair> pop(std::vector<Handle>& release);
  // Every frame still held (shutdown).
  std::vector<Handle> drain();

  const Counters& counters() const { return counters_; }
  std::size_t held(Side side) const { return q_[side].size(); }

 private:
  struct Held {
    std::uint64_t frame_id;
    Handle handle;
  };
  void unmatched(Side side, Handle h, std::vector<Handle>& release);
  std::deque<Held> q_[2];  // sorted by frame_id
  std::size_t max_held_[2];
  std::uint64_t last_paired_ = 0;
  bool paired_any_ = false;
  Counters counters_;
};

}  // namespace dp::student

// Frame alignment of the compositor (DESIGN §7): frames of N teachers arrive in any order and
// some never arrive; the aligner says when a frame_id is ready to fuse and with which frames.
//
// Policy. The target is the oldest frame_id held by any teacher that is newer than the last one
// fused. It is fused as soon as every live teacher has settled it — holds a frame of that id, or
// already holds a newer one (so it will never deliver it) — or once `wait` has passed since the
// first frame of that id arrived. Teachers marked not live (their producer is gone) are never
// waited for. Frames older than the last fused id arrive too late and are handed back at once;
// so are the oldest frames of a teacher holding more than `max_pending` (a teacher cannot be
// kept from publishing by frames we hold).
//
// Pure logic over (teacher, frame_id, time, handle), so that the tests drive it directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

namespace dp::compositor {

class Aligner {
 public:
  using Handle = std::size_t;  // the caller's name for a frame it holds

  struct Counters {
    std::uint64_t fused = 0;     // frame_ids fused
    std::uint64_t complete = 0;  // ... with every teacher's frame
    std::uint64_t late = 0;      // frames handed back: their id was already fused (or a repeat)
    std::uint64_t evicted = 0;   // frames handed back: their teacher held too many
  };

  struct Decision {
    std::uint64_t frame_id = 0;
    std::vector<std::optional<Handle>> frames;  // per teacher; nullopt: missing (masked)
  };

  Aligner(std::size_t teachers, std::int64_t wait_ns, std::size_t max_pending);

  // A frame of teacher `t` arrived at `now_ns`. Frames to hand back to their producer at once
  // (too late, a repeat, or evicted) are appended to `release`.
  void add(std::size_t t, std::uint64_t frame_id, std::int64_t now_ns, Handle h, std::vector<Handle>& release);

  // Teacher `t` may have at most `n` frames held (its ring's slots minus one, so that it always
  // has a slot to publish into); older ones are evicted.
  void set_max_pending(std::size_t t, std::size_t n);

  // A teacher whose producer is gone is not waited for; its held frames stay usable.
  void set_live(std::size_t t, bool live);

  // The next fusion, if one is due at `now_ns`. Its frames leave the aligner: the caller hands
  // them back once fused.
  std::optional<Decision> poll(std::int64_t now_ns);

  // When poll() next has something to decide without a new arrival (a deadline), or nullopt.
  std::optional<std::int64_t> deadline() const;

  // Every frame still held, removed (shutdown).
  std::vector<Handle> drain();

  const Counters& counters() const { return counters_; }
  std::size_t pending(std::size_t t) const { return teachers_[t].frames.size(); }
  std::uint64_t last_fused() const { return last_fused_; }

 private:
  struct Held {
    std::uint64_t frame_id;
    std::int64_t arrived_ns;
    Handle handle;
  };
  struct Teacher {
    std::deque<Held> frames;  // sorted by frame_id
    bool live = true;
    std::size_t max_pending = 1;
  };
  std::optional<std::uint64_t> target() const;

  std::vector<Teacher> teachers_;
  std::int64_t wait_ns_;
  std::uint64_t last_fused_ = 0;
  bool fused_any_ = false;
  Counters counters_;
};

}  // namespace dp::compositor

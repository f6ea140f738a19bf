// The frame content scheme shared by the stream tests and dp_test_helper: every frame is random
// content derived from (run seed, producer tag, seq), its frame_id is (tag << 32) | seq, and its
// FrameInfo::checksum is checksum_cpu() of the bytes. A consumer can then check, for every frame
// it gets, that the bytes match the metadata (no torn frame) and the metadata matches the seq
// (no stale or misattributed frame).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "directport/core/stream.hpp"
#include "directport/kernels/checksum.hpp"

namespace dp::test {

inline std::uint64_t frame_seed(std::uint64_t run_seed, std::uint64_t tag, std::uint64_t seq) {
  return kernels::mix64(run_seed ^ kernels::mix64((tag << 48) ^ seq));
}
inline std::uint64_t frame_id_for(std::uint64_t tag, std::uint64_t seq) {
  return (tag << 32) | seq;
}

// A host stream of `bytes` (multiple of 8) as dtype u8, shape {bytes / 8, 8}.
StreamSpec host_spec(const std::string& name, std::size_t bytes, std::uint32_t slots = 3,
                     std::chrono::microseconds acquire_timeout = std::chrono::microseconds(20000));

struct PublishStats {
  std::uint64_t published = 0;
  std::uint64_t dropped = 0;
  std::int64_t max_acquire_ns = 0;
  nlohmann::json to_json() const;
};

// One acquire + fill + publish. False (and counted as dropped) when acquire() timed out.
bool publish_one(Publisher& pub, std::uint64_t run_seed, std::uint64_t tag, PublishStats& stats);

// Checks frames as they arrive; counts every kind of mismatch.
class FrameVerifier {
 public:
  FrameVerifier(std::uint64_t run_seed, std::uint64_t tag, std::size_t bytes)
      : seed_(run_seed), tag_(tag), bytes_(bytes), scratch_(bytes / 8) {}
  // Checks `f`; returns false and records why on a mismatch.
  bool check(const Frame& f);
  // Checks that the bytes still match the checksum (after holding the frame a while).
  bool recheck(const Frame& f);
  // Accepts frames of another producer tag from now on (after a reconnect).
  void set_tag(std::uint64_t tag) {
    tag_ = tag;
    last_seq_ = 0;
  }

  std::uint64_t frames() const { return frames_; }
  std::uint64_t mismatches() const { return mismatches_; }
  std::uint64_t gaps() const { return gaps_; }
  std::uint64_t first_seq() const { return first_seq_; }
  std::uint64_t last_seq() const { return last_seq_; }
  const std::vector<std::string>& errors() const { return errors_; }
  nlohmann::json to_json() const;

 private:
  void fail(const std::string& why);
  std::uint64_t seed_, tag_;
  std::size_t bytes_;
  std::vector<std::uint64_t> scratch_;
  std::uint64_t frames_ = 0, mismatches_ = 0, gaps_ = 0, first_seq_ = 0, last_seq_ = 0;
  std::vector<std::string> errors_;
};

}  // namespace dp::test

#include "support/frames.hpp"

#include "directport/platform/process.hpp"

namespace dp::test {

StreamSpec host_spec(const std::string& name, std::size_t bytes, std::uint32_t slots,
                     std::chrono::microseconds acquire_timeout) {
  StreamSpec s;
  s.name = name;
  s.dtype = DType::u8;
  s.shape = {static_cast<std::int64_t>(bytes / 8), 8};
  s.slots = slots;
  s.memory = MemoryKind::host;
  s.fence = FenceKind::host_futex;
  s.acquire_timeout = acquire_timeout;
  return s;
}

nlohmann::json PublishStats::to_json() const {
  return {{"published", published}, {"dropped", dropped}, {"max_acquire_ns", max_acquire_ns}};
}

bool publish_one(Publisher& pub, std::uint64_t run_seed, std::uint64_t tag, PublishStats& stats) {
  std::int64_t t0 = platform::monotonic_ns();
  auto lease = pub.acquire();
  std::int64_t dt = platform::monotonic_ns() - t0;
  if (dt > stats.max_acquire_ns) stats.max_acquire_ns = dt;
  if (!lease) {
    ++stats.dropped;
    return false;
  }
  kernels::fill_cpu(lease->data, lease->bytes, frame_seed(run_seed, tag, lease->seq));
  FrameInfo info;
  info.frame_id = frame_id_for(tag, lease->seq);
  info.checksum = kernels::checksum_cpu(lease->data, lease->bytes);
  pub.publish(*lease, info);
  ++stats.published;
  return true;
}

void FrameVerifier::fail(const std::string& why) {
  ++mismatches_;
  if (errors_.size() < 8) errors_.push_back(why);
}

bool FrameVerifier::check(const Frame& f) {
  ++frames_;
  std::string at = "seq " + std::to_string(f.seq) + ": ";
  if (f.bytes != bytes_) {
    fail(at + "frame has " + std::to_string(f.bytes) + " bytes, expected " +
         std::to_string(bytes_));
    return false;
  }
  if (f.seq <= last_seq_) fail(at + "not after the previous frame " + std::to_string(last_seq_));
  if (first_seq_ == 0 || last_seq_ == 0) {
    if (first_seq_ == 0) first_seq_ = f.seq;
  } else if (f.seq > last_seq_ + 1) {
    gaps_ += f.seq - last_seq_ - 1;
  }
  last_seq_ = f.seq;
  if (f.frame_id != frame_id_for(tag_, f.seq)) {
    fail(at + "frame_id " + std::to_string(f.frame_id) + " does not map to this seq/tag");
    return false;
  }
  std::uint64_t actual = kernels::checksum_cpu(f.data, f.bytes);
  if (actual != f.checksum) {
    fail(at + "bytes do not match the slot's checksum (torn or overwritten frame)");
    return false;
  }
  kernels::fill_cpu(scratch_.data(), bytes_, frame_seed(seed_, tag_, f.seq));
  if (kernels::checksum_cpu(scratch_.data(), bytes_) != f.checksum) {
    fail(at + "content is not the one published under this seq (stale frame)");
    return false;
  }
  return true;
}

bool FrameVerifier::recheck(const Frame& f) {
  if (kernels::checksum_cpu(f.data, f.bytes) != f.checksum) {
    fail("seq " + std::to_string(f.seq) + ": frame changed while held");
    return false;
  }
  return true;
}

nlohmann::json FrameVerifier::to_json() const {
  return {{"frames", frames_},       {"mismatches", mismatches_}, {"gaps", gaps_},
          {"first_seq", first_seq_}, {"last_seq", last_seq_},     {"errors", errors_}};
}

}  // namespace dp::test

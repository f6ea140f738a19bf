// ReleaseWaits: which consumer's release holds the producer's GPU stream, and since when
// (PROTOCOL.md §10.3). The GPU side (the words a real stream writes) is in
// tests/cuda/test_gpu_transport.cpp; here the words are plain maps the test sets.
#include <gtest/gtest.h>

#include <map>
#include <utility>

#include "directport/core/fence.hpp"
#include "directport/core/release_waits.hpp"
#include "directport/core/stream.hpp"
#include "directport/platform/shm.hpp"
#include "support/frames.hpp"

namespace dp {
namespace {

constexpr std::int64_t kMs = 1000000;
constexpr std::int64_t kBound = 1000 * kMs;  // 1 s

class ReleaseWaitsTest : public ::testing::Test {
 protected:
  // released[{subscription, slot}]: the consumer's released word; ready[slot]: the producer's.
  std::map<std::pair<std::uint64_t, std::uint32_t>, std::uint64_t> released;
  std::map<std::uint32_t, std::uint64_t> ready;
  ReleaseWaits waits;

  ReleaseWaits::ReleasedFn released_fn() {
    return [this](const ReleaseWaits::Wait& w) { return released[{w.subscription, w.slot}] >= w.value; };
  }
  ReleaseWaits::SignalledFn signalled_fn() {
    return [this](std::uint32_t slot, std::uint64_t seq) { return ready[slot] >= seq; };
  }
  std::optional<ReleaseWaits::Stalled> check(std::int64_t now) {
    return waits.check(now, kBound, released_fn(), signalled_fn());
  }
  // A wait of subscription `sub` (connection 100 + sub) for seq `value` in `slot`, enqueued after
  // frame `after_seq` was published into `after_slot`.
  void push(std::uint64_t sub, std::uint32_t slot, std::uint64_t value, std::uint32_t after_slot,
            std::uint64_t after_seq) {
    waits.push({sub, 100 + sub, slot, value, after_slot, after_seq});
  }
};

TEST_F(ReleaseWaitsTest, NothingEnqueuedNothingStalls) {
  EXPECT_FALSE(check(0));
  EXPECT_FALSE(check(10 * kBound));
}

// The clock starts at the first check that finds the stream at the wait, and the head is
// reported once it has held the stream for longer than the bound, and only once.
TEST_F(ReleaseWaitsTest, AHeadThatHoldsTheStreamPastTheBoundIsReportedOnce) {
  ready[0] = 1;
  push(1, 0, 1, 0, 1);
  EXPECT_FALSE(check(5 * kBound)) << "the clock starts here, not at 0";
  EXPECT_FALSE(check(5 * kBound + kBound)) << "exactly the bound is not past it";
  auto s = check(5 * kBound + kBound + kMs);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->wait.subscription, 1u);
  EXPECT_EQ(s->wait.connection, 101u);
  EXPECT_EQ(s->wait.value, 1u);
  EXPECT_EQ(s->waited_ns, kBound + kMs);
  EXPECT_FALSE(check(20 * kBound)) << "reported once; the caller cuts the consumer off";
}

// A head reported but not acted on (another consumer was cut at that tick) is reported again at
// the next check if it is still pending, and not if its release ran meanwhile.
TEST_F(ReleaseWaitsTest, ARearmedHeadIsReportedAgainWhileItLasts) {
  ready[0] = 1;
  push(1, 0, 1, 0, 1);
  EXPECT_FALSE(check(0));
  ASSERT_TRUE(check(kBound + 1));
  EXPECT_FALSE(check(kBound + 2));
  waits.rearm();
  EXPECT_TRUE(check(kBound + 3));
  waits.rearm();
  released[{1, 0}] = 1;
  EXPECT_FALSE(check(kBound + 4));
}

TEST_F(ReleaseWaitsTest, AReleaseThatRunsEndsTheWait) {
  ready[0] = 1;
  push(1, 0, 1, 0, 1);
  EXPECT_FALSE(check(0));
  released[{1, 0}] = 1;
  EXPECT_FALSE(check(2 * kBound));
  EXPECT_EQ(waits.size(), 0u);
}

// The producer's own backlog: a wait behind frames its stream has not signalled yet is not
// timed, however long ago the CPU enqueued it.
TEST_F(ReleaseWaitsTest, AWaitTheStreamHasNotReachedIsNotTimed) {
  push(1, 1, 4, 0, 6);  // enqueued after frame 6 (slot 0), which the stream has not signalled
  ready[0] = 3;
  EXPECT_FALSE(check(0));
  EXPECT_FALSE(check(10 * kBound));
  ready[0] = 6;  // the stream is at the wait now
  EXPECT_FALSE(check(11 * kBound));
  EXPECT_FALSE(check(12 * kBound));
  EXPECT_TRUE(check(12 * kBound + kMs));
}

// A later frame signalled into the same slot means the earlier one was too.
TEST_F(ReleaseWaitsTest, ALaterFrameInTheSlotCountsAsReached) {
  push(1, 1, 4, 0, 6);
  ready[0] = 9;
  EXPECT_FALSE(check(0));
  EXPECT_TRUE(check(kBound + 1));
}

// Only the head is timed: a consumer whose release waits behind the head's is not stalled
// itself; its clock starts once the head is gone.
TEST_F(ReleaseWaitsTest, OnlyTheOldestWaitIsTimed) {
  ready[0] = 1;
  push(1, 0, 1, 0, 1);  // consumer 1 stalls
  push(2, 0, 1, 0, 1);  // consumer 2's release is behind its own wait for a frame
  EXPECT_FALSE(check(0));
  auto s = check(kBound + 1);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->wait.subscription, 1u);
  waits.forget(1);  // cut off
  EXPECT_FALSE(check(kBound + 2)) << "consumer 2's clock starts now";
  EXPECT_FALSE(check(2 * kBound + 2));
  auto s2 = check(2 * kBound + 3);
  ASSERT_TRUE(s2);
  EXPECT_EQ(s2->wait.subscription, 2u);
}

// A head that passes while the next wait is already reached: the next one's clock starts at the
// check that first sees it at the head.
TEST_F(ReleaseWaitsTest, TheNextHeadStartsItsOwnClock) {
  ready[0] = 1;
  ready[1] = 2;
  push(1, 0, 1, 0, 1);
  push(1, 1, 2, 1, 2);
  EXPECT_FALSE(check(0));
  released[{1, 0}] = 1;
  EXPECT_FALSE(check(kBound / 2));
  EXPECT_FALSE(check(kBound + kMs)) << "the second wait has been the head for half the bound";
  EXPECT_TRUE(check(kBound / 2 + kBound + kMs));
}

TEST_F(ReleaseWaitsTest, PruneDropsPassedWaitsFromTheFrontOnly) {
  push(1, 0, 1, 0, 0);
  push(2, 1, 2, 0, 1);
  push(1, 2, 3, 1, 2);
  released[{1, 0}] = 1;
  released[{1, 2}] = 3;  // passed, but behind one that has not
  waits.prune(released_fn());
  ASSERT_EQ(waits.size(), 2u);
  EXPECT_EQ(waits.at(0).subscription, 2u);
  released[{2, 1}] = 2;
  waits.prune(released_fn());
  EXPECT_EQ(waits.size(), 0u);
}

TEST_F(ReleaseWaitsTest, ForgetRemovesOneSubscriptionsWaits) {
  push(1, 0, 1, 0, 0);
  push(2, 1, 2, 0, 1);
  push(1, 2, 3, 1, 2);
  waits.forget(1);
  ASSERT_EQ(waits.size(), 1u);
  EXPECT_EQ(waits.at(0).subscription, 2u);
}

// A wait enqueued before any frame was published is reached at once.
TEST_F(ReleaseWaitsTest, AWaitBeforeTheFirstFrameIsReachedAtOnce) {
  push(1, 0, 1, 0, 0);
  EXPECT_FALSE(check(0));
  EXPECT_TRUE(check(kBound + 1));
}

// ------------------------------------------------------------------ the producer's side of the cut

// Stands in for a GPU producer transport: GPU waits for releases are recorded, not enqueued, and
// the "stream" runs the ready signals at once or (run_stream false) keeps them as a backlog until
// run(). The ready words are in a host page, as the CUDA transport's host mirror.
class FakeGpuProducer : public ProducerTransport {
 public:
  explicit FakeGpuProducer(const StreamSpec& spec)
      : stride_(spec.frame_bytes()), frames_(spec.slots * spec.frame_bytes()),
        page_(platform::Segment::create_anonymous("fake-ready", protocol::kFencePageBytes, false)) {}
  void* slot_data(std::uint32_t slot) override { return frames_.data() + slot * stride_; }
  std::size_t slot_stride() const override { return stride_; }
  std::vector<int> export_fds() const override { return {}; }
  nlohmann::json describe() const override { return {{"memory_handle", "fake"}}; }
  protocol::AtomicU64& ready_word(std::uint32_t slot) override { return fence::page_word(page_.data(), slot); }
  void attach(ReleasePageView&, platform::Segment&) override {}
  void detach(ReleasePageView&, platform::Segment&&) noexcept override {}
  void wait_released(GpuStream, const ReleasePageView&, std::uint32_t slot, std::uint64_t value) override {
    waits.emplace_back(slot, value);
  }
  void signal_ready(GpuStream, std::uint32_t slot, std::uint64_t seq) override {
    if (run_stream) {
      ready_word(slot).store(seq);
    } else {
      backlog.emplace_back(slot, seq);
    }
  }
  bool gpu_side() const override { return true; }
  bool gpu_waits() const override { return true; }
  void run() {
    for (auto [slot, seq] : backlog) ready_word(slot).store(seq);
    backlog.clear();
  }
  bool run_stream = true;
  std::vector<std::pair<std::uint32_t, std::uint64_t>> waits, backlog;

 private:
  std::size_t stride_;
  std::vector<char> frames_;
  platform::Segment page_;
};

// A consumer's release page, written by the test as a consumer would.
struct FakeConsumer {
  platform::Segment page = platform::Segment::create_anonymous("fake-release", protocol::kFencePageBytes, false);
  protocol::ReleaseRecord& rec(std::uint32_t slot) { return static_cast<protocol::ReleaseRecord*>(page.data())[slot]; }
  protocol::ConsumerState& state() { return fence::consumer_state(page.data()); }
  // Claims `seq` in `slot` and enqueues its release; `ran`: the release has run too.
  void take(std::uint32_t slot, std::uint64_t seq, bool ran) {
    rec(slot).held = seq;
    rec(slot).release_enqueued = seq;
    if (ran) rec(slot).released = seq;
  }
};

class PublisherCutTest : public ::testing::Test {
 protected:
  PublisherCutTest() {
    spec_ = test::host_spec("frames", 4096, 3);
    spec_.release_timeout = std::chrono::milliseconds(1000);
    auto t = std::make_unique<FakeGpuProducer>(spec_);
    gpu_ = t.get();
    pub_ = std::make_unique<Publisher>(spec_, control_, 0, std::move(t));
    std::vector<int> fds;
    pub_->add_subscription(7, "stalled", stalled_.page.fd().dup(), fds);
    pub_->add_subscription(8, "healthy", healthy_.page.fd().dup(), fds);
  }
  // Publishes the next frame; the slot it went to.
  std::uint32_t publish() {
    auto lease = pub_->acquire();
    EXPECT_TRUE(lease);
    if (!lease) return 0;
    pub_->publish(*lease, {lease->seq, 0, 0});
    return lease->slot;
  }
  // Frames 1..3 into slots 0..2; both consumers take frame 1 (slot 0), and only the healthy
  // one's release runs; frame 4 then needs slot 0 and our stream waits for the stalled one.
  void stall_on_frame_one() {
    ASSERT_EQ(publish(), 0u);
    stalled_.take(0, 1, false);
    healthy_.take(0, 1, true);
    ASSERT_EQ(publish(), 1u);
    ASSERT_EQ(publish(), 2u);
    ASSERT_EQ(publish(), 0u);
    ASSERT_EQ(gpu_->waits, (std::vector<std::pair<std::uint32_t, std::uint64_t>>{{0, 1}}))
        << "one GPU wait, for the stalled consumer's release of frame 1";
  }
  StreamSpec spec_;
  alignas(64) protocol::ControlBlock control_{};
  FakeGpuProducer* gpu_ = nullptr;
  std::unique_ptr<Publisher> pub_;
  FakeConsumer stalled_, healthy_;
};

constexpr std::int64_t kT0 = 1000 * kBound;

TEST_F(PublisherCutTest, AStalledReleaseIsReportedAfterTheBoundAndCutOff) {
  stall_on_frame_one();
  EXPECT_FALSE(pub_->stalled(kT0));
  EXPECT_FALSE(pub_->stalled(kT0 + kBound));
  auto s = pub_->stalled(kT0 + kBound + kMs);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->wait.connection, 7u);
  EXPECT_EQ(s->client, "stalled");
  EXPECT_EQ(s->wait.value, 1u);
  EXPECT_TRUE(pub_->cut(s->wait.connection, &s->wait));
  // The page: what had been read, the mark, and the one word our wait needs raised, flagged.
  EXPECT_EQ(stalled_.rec(0).released_at_cut.load(), 0u);
  EXPECT_EQ(stalled_.state().cut.load(), 1u);
  EXPECT_EQ(stalled_.rec(0).released.load(), 1u | protocol::kForcedReady);
  EXPECT_EQ(stalled_.rec(1).released.load(), 0u) << "no wait of ours on slot 1: left alone";
  // The healthy consumer's page is not touched.
  EXPECT_EQ(healthy_.state().cut.load(), 0u);
  EXPECT_EQ(healthy_.rec(0).released.load(), 1u);
  auto c = pub_->counters();
  EXPECT_EQ(c.cut_off, 1u);
  EXPECT_EQ(c.subscribers, 1u);
  EXPECT_FALSE(pub_->stalled(kT0 + 10 * kBound)) << "its waits are forgotten";
  EXPECT_EQ(pub_->consumers().size(), 1u);
}

// The consumer's stream ran its release between the tick that reported it and the cut: no cut.
TEST_F(PublisherCutTest, AConsumerThatRecoveredBeforeTheCutIsNotCut) {
  stall_on_frame_one();
  EXPECT_FALSE(pub_->stalled(kT0));
  auto s = pub_->stalled(kT0 + 2 * kBound);
  ASSERT_TRUE(s);
  stalled_.rec(0).released = 1;
  EXPECT_FALSE(pub_->cut(s->wait.connection, &s->wait));
  EXPECT_EQ(stalled_.state().cut.load(), 0u);
  EXPECT_EQ(pub_->counters().cut_off, 0u);
  EXPECT_EQ(pub_->counters().subscribers, 2u);
}

// A cut asked for directly (Node::cut_off) of a consumer whose stream has already written its
// release: the word is left as its stream wrote it (no flag), so its reconnect gate can open.
TEST_F(PublisherCutTest, AReleaseTheConsumersStreamWroteIsLeftAlone) {
  stall_on_frame_one();
  stalled_.rec(0).released = 1;
  EXPECT_TRUE(pub_->cut(7));
  EXPECT_EQ(stalled_.rec(0).released.load(), 1u);
  EXPECT_EQ(stalled_.rec(0).released_at_cut.load(), 1u);
  EXPECT_EQ(stalled_.state().cut.load(), 1u);
}

// Our stream's own backlog: the wait sits behind frames it has not signalled, so it is not timed
// however long it has been enqueued; once the stream gets there, the clock starts.
TEST_F(PublisherCutTest, TheProducersOwnBacklogIsNotCountedAgainstAConsumer) {
  gpu_->run_stream = false;
  ASSERT_EQ(publish(), 0u);
  stalled_.take(0, 1, false);
  healthy_.take(0, 1, true);
  gpu_->run();  // frame 1 signalled: slot 0 may be reused once released
  ASSERT_EQ(publish(), 1u);
  ASSERT_EQ(publish(), 2u);
  ASSERT_EQ(publish(), 0u);  // the wait, behind frames 2 and 3, not yet signalled
  ASSERT_EQ(gpu_->waits.size(), 1u);
  EXPECT_FALSE(pub_->stalled(kT0));
  EXPECT_FALSE(pub_->stalled(kT0 + 5 * kBound)) << "the stream has not reached the wait";
  gpu_->run();
  EXPECT_FALSE(pub_->stalled(kT0 + 6 * kBound));
  EXPECT_FALSE(pub_->stalled(kT0 + 7 * kBound));
  EXPECT_TRUE(pub_->stalled(kT0 + 7 * kBound + kMs));
}

// Acquiring the same slot again after an abandoned lease enqueues the wait again (it may be on
// another stream) but records it once.
TEST_F(PublisherCutTest, AnAbandonedLeaseDoesNotRecordItsWaitTwice) {
  stall_on_frame_one();
  ASSERT_EQ(pub_->counters().waits_pending, 1u);
  // The stalled consumer holds frames 2 and 3 (slots 1 and 2, releases not enqueued): only slot 0
  // can be acquired, each time with a GPU wait for its release of frame 1.
  stalled_.rec(1).held = 2;
  stalled_.rec(2).held = 3;
  for (int i = 0; i < 5; ++i) {
    auto lease = pub_->acquire();
    ASSERT_TRUE(lease);
    EXPECT_EQ(lease->slot, 0u);
    pub_->abandon(*lease);
  }
  EXPECT_EQ(gpu_->waits.size(), 6u) << "enqueued each time";
  EXPECT_EQ(pub_->counters().waits_pending, 1u) << "recorded once";
  EXPECT_FALSE(pub_->stalled(kT0));
  auto s = pub_->stalled(kT0 + kBound + kMs);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->wait.value, 1u);
}

}  // namespace
}  // namespace dp

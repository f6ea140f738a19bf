// ReleaseWaits: which consumer's release holds the producer's GPU stream, and since when
// (PROTOCOL.md §10.3). The GPU side (the words a real stream writes) is in
// tests/cuda/test_gpu_transport.cpp; here the words are plain maps the test sets.
#include <gtest/gtest.h>

#include <map>
#include <utility>

#include "directport/core/release_waits.hpp"

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

}  // namespace
}  // namespace dp

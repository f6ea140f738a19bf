// Frame alignment by frame_id: complete sets, out-of-order arrivals, missing and late frames,
// dead teachers, the bounded wait, and eviction so that no teacher is kept from publishing.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

#include "directport/compositor/aligner.hpp"
#include "directport/core/error.hpp"
#include "support/test_support.hpp"

namespace dp::compositor {
namespace {

constexpr std::int64_t kMs = 1'000'000;

// Handles encode (teacher, frame_id) so that a test can say which frame came back.
Aligner::Handle h(std::size_t t, std::uint64_t id) { return t * 1'000'000 + id; }

TEST(Aligner, CompleteSetIsFusedAtOnce) {
  Aligner a(3, 50 * kMs, 4);
  std::vector<Aligner::Handle> rel;
  a.add(0, 10, 0, h(0, 10), rel);
  a.add(1, 10, 1, h(1, 10), rel);
  EXPECT_FALSE(a.poll(2)) << "teacher 2 has said nothing about frame 10 yet";
  a.add(2, 10, 3, h(2, 10), rel);
  auto d = a.poll(4);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->frame_id, 10u);
  for (std::size_t t = 0; t < 3; ++t) EXPECT_EQ(d->frames[t], h(t, 10));
  EXPECT_TRUE(rel.empty());
  EXPECT_EQ(a.counters().fused, 1u);
  EXPECT_EQ(a.counters().complete, 1u);
  EXPECT_FALSE(a.poll(5));
}

TEST(Aligner, ATeacherThatMovedPastAFrameIsNotWaitedFor) {
  Aligner a(2, 50 * kMs, 4);
  std::vector<Aligner::Handle> rel;
  a.add(0, 10, 0, h(0, 10), rel);
  a.add(1, 11, 1, h(1, 11), rel);  // teacher 1 skipped 10
  auto d = a.poll(2);
  ASSERT_TRUE(d) << "teacher 1 holds 11: it will never deliver 10";
  EXPECT_EQ(d->frame_id, 10u);
  EXPECT_EQ(d->frames[0], h(0, 10));
  EXPECT_FALSE(d->frames[1]);
  EXPECT_EQ(a.counters().complete, 0u);
}

TEST(Aligner, MissingFrameIsFusedWithoutItAfterTheWait) {
  Aligner a(2, 50 * kMs, 4);
  std::vector<Aligner::Handle> rel;
  a.add(0, 7, 100 * kMs, h(0, 7), rel);
  EXPECT_FALSE(a.poll(120 * kMs));
  ASSERT_TRUE(a.deadline());
  EXPECT_EQ(*a.deadline(), 150 * kMs) << "the wait runs from the first arrival of the id";
  EXPECT_FALSE(a.poll(150 * kMs - 1));
  auto d = a.poll(150 * kMs);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->frame_id, 7u);
  EXPECT_FALSE(d->frames[1]);
}

TEST(Aligner, OutOfOrderArrivalsAreFusedInIdOrder) {
  Aligner a(2, 50 * kMs, 4);
  std::vector<Aligner::Handle> rel;
  a.add(0, 3, 0, h(0, 3), rel);
  a.add(0, 1, 0, h(0, 1), rel);
  a.add(0, 2, 0, h(0, 2), rel);
  a.add(1, 2, 0, h(1, 2), rel);
  a.add(1, 1, 0, h(1, 1), rel);
  a.add(1, 3, 0, h(1, 3), rel);
  for (std::uint64_t id = 1; id <= 3; ++id) {
    auto d = a.poll(1);
    ASSERT_TRUE(d);
    EXPECT_EQ(d->frame_id, id);
    EXPECT_EQ(d->frames[0], h(0, id));
    EXPECT_EQ(d->frames[1], h(1, id));
  }
  EXPECT_EQ(a.counters().complete, 3u);
  EXPECT_TRUE(rel.empty());
}

TEST(Aligner, LateAndRepeatedFramesAreHandedBackAtOnce) {
  Aligner a(2, 10 * kMs, 4);
  std::vector<Aligner::Handle> rel;
  a.add(0, 5, 0, h(0, 5), rel);
  a.add(1, 5, 0, h(1, 5), rel);
  ASSERT_TRUE(a.poll(0));
  a.add(1, 4, 1, h(1, 4), rel);  // older than the last fused id
  a.add(0, 5, 1, h(0, 5) + 500'000, rel);  // the same id again
  a.add(0, 6, 1, h(0, 6), rel);
  a.add(0, 6, 2, h(0, 6) + 500'000, rel);  // a repeat of a held id
  EXPECT_EQ(rel, (std::vector<Aligner::Handle>{h(1, 4), h(0, 5) + 500'000, h(0, 6) + 500'000}));
  EXPECT_EQ(a.counters().late, 3u);
  EXPECT_EQ(a.pending(0), 1u);
}

TEST(Aligner, DeadTeachersAreNotWaitedForAndComeBack) {
  Aligner a(2, 1000 * kMs, 4);
  std::vector<Aligner::Handle> rel;
  a.set_live(1, false);
  a.add(0, 1, 0, h(0, 1), rel);
  auto d = a.poll(1);
  ASSERT_TRUE(d) << "a dead teacher is not waited for";
  EXPECT_FALSE(d->frames[1]);
  a.set_live(1, true);
  a.add(0, 2, 2, h(0, 2), rel);
  EXPECT_FALSE(a.poll(3)) << "a live teacher is waited for again";
  a.add(1, 2, 4, h(1, 2), rel);
  d = a.poll(5);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->frames[1], h(1, 2));
}

TEST(Aligner, ATeacherHoldsAtMostItsBound) {
  Aligner a(2, 1000 * kMs, 2);
  std::vector<Aligner::Handle> rel;
  a.set_max_pending(0, 2);
  for (std::uint64_t id = 1; id <= 5; ++id) a.add(0, id, 0, h(0, id), rel);
  EXPECT_EQ(a.pending(0), 2u);
  EXPECT_EQ(rel, (std::vector<Aligner::Handle>{h(0, 1), h(0, 2), h(0, 3)})) << "the oldest are evicted";
  EXPECT_EQ(a.counters().evicted, 3u);
  auto rest = a.drain();
  std::sort(rest.begin(), rest.end());
  EXPECT_EQ(rest, (std::vector<Aligner::Handle>{h(0, 4), h(0, 5)}));
}

TEST(Aligner, BadCallsAreRefused) {
  EXPECT_THROW(Aligner(0, 1, 1), PreconditionError);
  EXPECT_THROW(Aligner(1, -1, 1), PreconditionError);
  Aligner a(1, 0, 1);
  std::vector<Aligner::Handle> rel;
  EXPECT_THROW(a.add(1, 1, 0, 0, rel), PreconditionError);
}

// Random arrivals (shuffled, some frames never sent, some sent twice): every frame comes back
// exactly once (fused or handed back), ids are fused in increasing order, and a fusion never
// mixes ids.
TEST(Aligner, RandomScheduleLosesAndMixesNothing) {
  std::mt19937_64 rng(test::test_seed());
  const std::size_t T = 4;
  Aligner a(T, 5 * kMs, 3);
  std::vector<std::pair<std::size_t, std::uint64_t>> arrivals;
  for (std::uint64_t id = 1; id <= 400; ++id) {
    for (std::size_t t = 0; t < T; ++t) {
      if (rng() % 5 == 0) continue;  // never sent
      arrivals.push_back({t, id});
      if (rng() % 20 == 0) arrivals.push_back({t, id});  // sent twice
    }
  }
  // Local disorder: each arrival moves up to 6 places.
  for (std::size_t i = 0; i + 1 < arrivals.size(); ++i) {
    std::size_t j = std::min(arrivals.size() - 1, i + rng() % 7);
    std::swap(arrivals[i], arrivals[j]);
  }
  std::multiset<Aligner::Handle> out;
  std::vector<Aligner::Handle> rel;
  std::uint64_t last = 0;
  std::int64_t now = 0;
  std::size_t seq = 0;
  auto take = [&](const Aligner::Decision& d) {
    EXPECT_GT(d.frame_id, last);
    last = d.frame_id;
    for (std::size_t t = 0; t < T; ++t) {
      if (!d.frames[t]) continue;
      EXPECT_EQ(*d.frames[t] / 1000 % 1000, d.frame_id % 1000) << "a fusion mixed frame ids";
      out.insert(*d.frames[t]);
    }
  };
  std::multiset<Aligner::Handle> sent;
  for (auto [t, id] : arrivals) {
    now += static_cast<std::int64_t>(rng() % (2 * kMs));
    // Unique handle per arrival: teacher, id and a serial number.
    const Aligner::Handle hh = (seq++) * 1'000'000 + (id % 1000) * 1000 + t;
    sent.insert(hh);
    a.add(t, id, now, hh, rel);
    while (auto d = a.poll(now)) take(*d);
  }
  now += 100 * kMs;
  while (auto d = a.poll(now)) take(*d);
  for (auto x : rel) out.insert(x);
  for (auto x : a.drain()) out.insert(x);
  EXPECT_EQ(out, sent) << "every frame is fused or handed back exactly once";
  EXPECT_GT(a.counters().fused, 300u);
}

}  // namespace
}  // namespace dp::compositor

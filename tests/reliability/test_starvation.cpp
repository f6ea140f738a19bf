// A consumer that subscribes and never releases cannot starve the producer (DESIGN §6: "the
// producer is never blocked indefinitely by a consumer"). The producer is this process; the
// consumers are dp_test_helper processes: a greedy one that takes frames and never releases
// them, and a well-behaved one that verifies every frame it gets.
//
// What holds, and is checked: every acquire() returns within the stream's acquire timeout (plus
// a generous margin for a loaded machine); every acquire that finds no free slot is counted as a
// drop, exactly; the producer's broker keeps answering and its heartbeat stays fresh; while the
// greedy consumer leaves at least one slot free the producer keeps publishing and the good
// consumer keeps receiving intact frames; and the holds of a consumer that dies are released at
// once. What does not hold: consumers that together hold every slot stop the stream (each
// publish is then a counted drop) until one of them releases or dies - the protocol bounds the
// producer's wait, it does not take frames back from a live consumer (docs/RELIABILITY.md).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <thread>

#include "directport/core/broker.hpp"
#include "directport/core/manifest.hpp"
#include "directport/core/node.hpp"
#include "support/fixtures.hpp"
#include "support/frames.hpp"

namespace dp {
namespace {

using namespace std::chrono_literals;
using test::Child;

constexpr std::size_t kBytes = 8 * 1024;
constexpr auto kAcquireTimeout = 20ms;
// A generous margin over the acquire timeout: the bound is the timeout, the margin is for a
// loaded 2-core machine that does not schedule us at once.
constexpr auto kAcquireMargin = 500ms;

class StarvationMP : public test::DomainTest {
 protected:
  void SetUp() override {
    DomainTest::SetUp();
    seed_ = test::test_seed();
  }
  Child consumer(std::vector<std::string> extra) {
    std::vector<std::string> args{"consumer", domain_, "src", "frames", "bytes=" + std::to_string(kBytes),
                                  "seed=" + std::to_string(seed_), "deadline_ms=60000"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Child::helper(args);
  }
  // `n` publish attempts, one per millisecond; acquire times and outcomes in `ps`.
  void publish(Publisher& pub, int n, test::PublishStats& ps) {
    for (int i = 0; i < n; ++i) {
      test::publish_one(pub, seed_, 1, ps);
      std::this_thread::sleep_for(1ms);
    }
  }
  nlohmann::json status(const std::string& who) {
    auto r = ManifestReader::open(domain_, "src");
    auto c = BrokerClient::connect(r.json()["broker"].get<std::string>(), who, r.owner(), 2000ms);
    return c.request({{"op", "status"}}, {}, 2000ms).body["consumers"]["frames"];
  }
  static const nlohmann::json* find_client(const nlohmann::json& consumers, const std::string& client) {
    for (auto& c : consumers) {
      if (c.value("client", "") == client) return &c;
    }
    return nullptr;
  }
  std::uint64_t seed_ = 0;
};

TEST_F(StarvationMP, AConsumerThatNeverReleasesCannotStarveTheProducer) {
  NodeOptions no;
  no.name = "src";
  no.domain = domain_;
  no.type = "test";
  Node node(no);
  auto& pub = node.advertise(test::host_spec("frames", kBytes, 3, kAcquireTimeout));
  node.set_running();
  auto greedy = consumer({"hold_all=2", "go=1", "client=greedy"});
  auto good = consumer({"client=good"});
  ASSERT_TRUE(greedy.expect("ready", 10s)) << greedy.transcript();
  ASSERT_TRUE(good.expect("ready", 10s)) << good.transcript();
  ASSERT_TRUE(test::wait_until([&] { return pub.counters().subscribers == 2; }, 5s));
  test::PublishStats ps;
  publish(pub, 3, ps);
  greedy.io().write_line("go");
  ASSERT_TRUE(greedy.expect("holding", 10s)) << greedy.transcript();

  // Phase 1: two of three slots held for good. The producer keeps publishing on the third.
  const auto drops_before = pub.counters().dropped;
  test::PublishStats p1;
  publish(pub, 400, p1);
  EXPECT_LE(p1.max_acquire_ns, std::chrono::nanoseconds(kAcquireTimeout + kAcquireMargin).count()) << p1.to_json();
  EXPECT_EQ(pub.counters().dropped - drops_before, p1.dropped) << "every failed acquire is a counted drop";
  EXPECT_GE(p1.published, 200u) << "the producer must keep publishing: " << p1.to_json();
  auto st = status("probe");
  auto* g = find_client(st, "greedy");
  ASSERT_NE(g, nullptr) << st;
  EXPECT_EQ((*g)["holding"].size(), 2u) << "the greedy consumer's holds are visible: " << st;
  // The well-behaved consumer got frames all along, every one intact.
  auto* ok = find_client(st, "good");
  ASSERT_NE(ok, nullptr) << st;
  EXPECT_GT((*ok)["last_taken"].get<std::uint64_t>(), 300u) << st;

  // Phase 2: a second greedy consumer takes the last free slot. Now nothing can be published,
  // but the producer is still never blocked beyond its bound, and counts every drop.
  auto greedier = consumer({"hold_all=1", "mode=latest", "go=1", "client=greedier"});
  ASSERT_TRUE(greedier.expect("ready", 10s)) << greedier.transcript();
  ASSERT_TRUE(test::wait_until([&] { return pub.counters().subscribers == 3; }, 5s));
  publish(pub, 1, ps);
  greedier.io().write_line("go");
  ASSERT_TRUE(greedier.expect("holding", 10s)) << greedier.transcript();
  const auto drops_mid = pub.counters().dropped;
  test::PublishStats p2;
  const auto t0 = std::chrono::steady_clock::now();
  publish(pub, 20, p2);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(p2.published, 0u) << "every slot is held: nothing can be published";
  EXPECT_EQ(p2.dropped, 20u);
  EXPECT_EQ(pub.counters().dropped - drops_mid, 20u) << "every drop is counted";
  EXPECT_LE(p2.max_acquire_ns, std::chrono::nanoseconds(kAcquireTimeout + kAcquireMargin).count()) << p2.to_json();
  EXPECT_LT(took, 20 * (kAcquireTimeout + 1ms) + 5s) << "the 20 attempts must take about 20 x the timeout";
  EXPECT_NO_THROW(status("probe")) << "the producer's broker must keep answering";
  EXPECT_LT(ManifestReader::open(domain_, "src").heartbeat_age_ns(), 2000000000) << "and its heartbeat go on";

  // The greedy ones die: their holds are released at once and publishing resumes.
  greedy.kill(SIGKILL);
  greedier.kill(SIGKILL);
  ASSERT_TRUE(greedy.wait(10s));
  ASSERT_TRUE(greedier.wait(10s));
  test::PublishStats p3;
  EXPECT_TRUE(test::wait_until([&] { return test::publish_one(pub, seed_, 1, p3); }, 5s));
  publish(pub, 50, p3);
  EXPECT_GE(p3.published, 40u) << p3.to_json();
  EXPECT_TRUE(test::wait_until([&] { return pub.counters().subscribers == 1; }, 5s));

  good.io().write_line("stop");
  auto r = good.expect("result", 10s);
  ASSERT_TRUE(r) << good.transcript();
  auto j = nlohmann::json::parse(*r);
  EXPECT_EQ(j["mismatches"], 0) << j.dump();
  EXPECT_GT(j["received"].get<std::uint64_t>(), 300u) << j.dump();
  auto s = good.wait(10s);
  ASSERT_TRUE(s);
  EXPECT_TRUE(WIFEXITED(*s) && WEXITSTATUS(*s) == 0) << test::describe_status(*s);
}

}  // namespace
}  // namespace dp

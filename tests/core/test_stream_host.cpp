// The frame protocol over the host backend (DESIGN §6): producers and consumers in separate
// processes, random frame content checked end to end, slow consumers, drops, and the death of
// either side (kill -9).
//
// Suites ending in MP run processes (label multiprocess). The test process is the producer when
// the consumers are helpers, and the consumer when the producer must die: a process with a
// broker thread only ever starts others with fork+exec (test::Child::spawn).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <optional>
#include <thread>

#include "directport/core/broker.hpp"
#include "directport/core/error.hpp"
#include "directport/core/fence.hpp"
#include "directport/core/manifest.hpp"
#include "directport/core/node.hpp"
#include "directport/core/stream.hpp"
#include "support/fixtures.hpp"
#include "support/frames.hpp"

namespace dp {
namespace {

using namespace std::chrono_literals;
using test::Child;

constexpr std::size_t kBytes = 8 * 4099;  // an odd number of words, not a power of two

class StreamHost : public test::DomainTest {
 protected:
  void SetUp() override {
    DomainTest::SetUp();
    seed_ = test::test_seed();
  }
  NodeOptions node_opts(const std::string& name) {
    NodeOptions o;
    o.name = name;
    o.domain = domain_;
    o.type = "test";
    return o;
  }
  SubscribeOptions sub_opts(const std::string& client = "test") {
    SubscribeOptions o;
    o.domain = domain_;
    o.client_name = client;
    o.reconnect_interval = 10ms;
    return o;
  }
  std::vector<std::string> kv(std::initializer_list<std::pair<const char*, std::string>> l) {
    std::vector<std::string> v;
    for (auto& [k, val] : l) v.push_back(std::string(k) + "=" + val);
    return v;
  }
  // A consumer helper for DOMAIN/node/stream with extra key=value args.
  Child consumer(const std::string& node, const std::string& stream,
                 std::vector<std::string> extra) {
    std::vector<std::string> args{"consumer",
                                  domain_,
                                  node,
                                  stream,
                                  "bytes=" + std::to_string(kBytes),
                                  "seed=" + std::to_string(seed_)};
    args.insert(args.end(), extra.begin(), extra.end());
    return Child::helper(args);
  }
  Child producer(const std::string& node, const std::string& stream,
                 std::vector<std::string> extra) {
    std::vector<std::string> args{"producer",
                                  domain_,
                                  node,
                                  stream,
                                  "bytes=" + std::to_string(kBytes),
                                  "seed=" + std::to_string(seed_)};
    args.insert(args.end(), extra.begin(), extra.end());
    return Child::helper(args);
  }
  // Publishes `n` frames and takes each as it comes, held; fewer (and a failure) if one is missing.
  std::vector<Frame> frames_held(Publisher& pub, Subscriber& sub, test::PublishStats& ps, int n) {
    std::vector<Frame> held;
    for (int i = 0; i < n; ++i) {
      EXPECT_TRUE(test::publish_one(pub, seed_, 1, ps));
      auto f = sub.next(1s);
      EXPECT_TRUE(f);
      if (!f) break;
      held.push_back(*f);
    }
    return held;
  }
  static nlohmann::json result_of(Child& c, std::chrono::milliseconds timeout = 30s) {
    auto r = c.expect("result", timeout);
    if (!r) return nullptr;
    return nlohmann::json::parse(*r);
  }
  std::uint64_t seed_ = 0;
};
using StreamHostMP = StreamHost;

// ------------------------------------------------------------------ in one process

TEST_F(StreamHost, PublishAndReceiveInOneProcess) {
  Node node(node_opts("cam"));
  auto& pub = node.advertise(test::host_spec("rgb", kBytes));
  Subscriber sub("cam", "rgb", sub_opts());
  EXPECT_EQ(sub.address(), "cam/rgb");
  EXPECT_EQ(spec_to_json(sub.spec()), spec_to_json(pub.spec()));
  EXPECT_EQ(pub.counters().subscribers, 1u);
  EXPECT_FALSE(sub.next(0ns)) << "nothing published yet";
  test::PublishStats ps;
  ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  auto f = sub.next(1s);
  ASSERT_TRUE(f);
  test::FrameVerifier v(seed_, 1, kBytes);
  EXPECT_TRUE(v.check(*f)) << v.to_json();
  EXPECT_EQ(f->seq, 1u);
  EXPECT_EQ(f->generation, 1u);
  EXPECT_TRUE(f->valid);
  EXPECT_TRUE(sub.is_valid(*f));
  EXPECT_GT(f->t_publish_ns, 0);
  EXPECT_EQ(f->t_source_ns, f->t_publish_ns) << "t_source defaults to the publish time";
  // The producer's manifest lists the subscription and what it holds.
  auto doc = ManifestReader::open(domain_, "cam").json();
  ASSERT_EQ(doc["streams"][0]["consumers"].size(), 1u);
  EXPECT_EQ(doc["streams"][0]["consumers"][0]["client"], "test");
  EXPECT_EQ(pub.consumers()[0]["holding"], nlohmann::json::array({1}));
  sub.release(*f);
  EXPECT_EQ(pub.consumers()[0]["holding"], nlohmann::json::array());
  EXPECT_FALSE(sub.next(0ns));
  EXPECT_EQ(sub.counters().received, 1u);
  EXPECT_EQ(sub.state(), Subscriber::State::connected);
}

// publish() makes the futex wake-up system call only when a consumer sleeps on the stream
// (ConsumerState::sleeping), and then the sleeper gets the frame.
TEST_F(StreamHost, PublishWakesOnlyWhenAConsumerSleeps) {
  Node node(node_opts("cam"));
  auto& pub = node.advertise(test::host_spec("rgb", kBytes));
  Subscriber sub("cam", "rgb", sub_opts());
  test::PublishStats ps;
  ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  EXPECT_EQ(pub.counters().wakeups, 0u) << "nobody sleeps: no wake-up";
  auto f = sub.next(1s);
  ASSERT_TRUE(f);
  sub.release(*f);
  EXPECT_EQ(pub.consumers()[0]["sleeping"], false);
  // A sleeper's flag drops for a few instructions every 10 ms (it looks at the producer again),
  // so a publish may find it awake now and then: five rounds, at least four wake-ups.
  test::FrameVerifier v(seed_, 1, kBytes);
  for (std::uint64_t round = 0; round < 5; ++round) {
    std::optional<Frame> got;
    std::thread waiter([&] { got = sub.next(20s); });
    ASSERT_TRUE(test::wait_until([&] { return pub.consumers()[0]["sleeping"] == true; }, 10s))
        << "the consumer never said it sleeps";
    ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
    waiter.join();
    ASSERT_TRUE(got);
    EXPECT_EQ(got->seq, round + 2);
    EXPECT_TRUE(v.check(*got)) << v.to_json();
    EXPECT_EQ(pub.consumers()[0]["sleeping"], false) << "awake again";
    sub.release(*got);
  }
  EXPECT_GE(pub.counters().wakeups, 4u);
  EXPECT_LE(pub.counters().wakeups, 5u);
}

TEST_F(StreamHost, LatestSkipsToTheNewest) {
  Node node(node_opts("cam"));
  auto& pub = node.advertise(test::host_spec("rgb", kBytes));
  Subscriber sub("cam", "rgb", sub_opts());
  test::PublishStats ps;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  auto f = sub.latest();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->seq, 3u);
  test::FrameVerifier v(seed_, 1, kBytes);
  EXPECT_TRUE(v.check(*f)) << v.to_json();
  sub.release(*f);
  EXPECT_FALSE(sub.latest()) << "nothing newer than the last one received";
  ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  f = sub.latest();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->seq, 4u);
  EXPECT_TRUE(v.check(*f)) << v.to_json();
  sub.release(*f);
}

TEST_F(StreamHost, NextReturnsFramesInOrderWhileTheyAreInTheRing) {
  Node node(node_opts("cam"));
  auto& pub = node.advertise(test::host_spec("rgb", kBytes, 4));
  Subscriber sub("cam", "rgb", sub_opts());
  test::PublishStats ps;
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  test::FrameVerifier v(seed_, 1, kBytes);
  for (std::uint64_t want = 1; want <= 4; ++want) {
    auto f = sub.next(1s);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->seq, want);
    EXPECT_TRUE(v.check(*f)) << v.to_json();
    sub.release(*f);
  }
  EXPECT_EQ(sub.counters().missed, 0u);
}

// Frames published after we subscribed and overwritten before we looked are "missed", whether
// or not we had received anything before.
TEST_F(StreamHost, MissedCountsFramesLostBeforeTheFirstOneReceived) {
  Node node(node_opts("cam"));
  auto& pub = node.advertise(test::host_spec("rgb", kBytes, 3));
  Subscriber sub("cam", "rgb", sub_opts());
  test::PublishStats ps;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  auto f = sub.next(1s);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->seq, 3u) << "the oldest frame still in a 3-slot ring after 5 publishes";
  sub.release(*f);
  auto c = sub.counters();
  EXPECT_EQ(c.received, 1u);
  EXPECT_EQ(c.missed, 2u) << "seq 1 and 2 were published while subscribed and never received";
  // The same loss later in the run is counted, for comparison.
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  f = sub.next(1s);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->seq, 8u);
  sub.release(*f);
  EXPECT_EQ(sub.counters().missed, c.missed + 4);
}

TEST_F(StreamHost, ReleaseOfAFrameNotHeldIsAPreconditionError) {
  Node node(node_opts("cam"));
  auto& pub = node.advertise(test::host_spec("rgb", kBytes));
  Subscriber sub("cam", "rgb", sub_opts());
  test::PublishStats ps;
  ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  auto f = sub.next(1s);
  ASSERT_TRUE(f);
  Frame forged = *f;
  forged.generation = 77;
  EXPECT_THROW(sub.release(forged), PreconditionError);
  forged = *f;
  forged.seq += 1;
  EXPECT_THROW(sub.release(forged), PreconditionError);
  sub.release(*f);
  EXPECT_THROW(sub.release(*f), PreconditionError) << "a frame released twice";
}

TEST_F(StreamHost, ProducerDropsWithinItsTimeoutWhenEverySlotIsHeld) {
  Node node(node_opts("cam"));
  const auto timeout = 30ms;
  auto& pub = node.advertise(test::host_spec("rgb", kBytes, 3, timeout));
  Subscriber sub("cam", "rgb", sub_opts());
  test::PublishStats ps;
  const auto held = frames_held(pub, sub, ps, 3);
  ASSERT_EQ(held.size(), 3u);
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(pub.acquire()) << "every slot is held";
  auto dt = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(dt, timeout);
  EXPECT_LT(dt, timeout + 500ms) << "acquire() blocked well past its acquire_timeout";
  EXPECT_EQ(pub.counters().dropped, 1u);
  // The held frames were not touched.
  test::FrameVerifier v(seed_, 1, kBytes);
  for (auto& f : held) EXPECT_TRUE(v.check(f)) << v.to_json();
  // The subscriber learns about the drop.
  EXPECT_TRUE(test::wait_until(
      [&] {
        sub.state();
        return sub.counters().dropped == 1;
      },
      2s));
  // Releasing one frame frees exactly its slot.
  sub.release(held[1]);
  auto lease = pub.acquire();
  ASSERT_TRUE(lease);
  EXPECT_EQ(lease->slot, held[1].slot);
  pub.abandon(*lease);
}

TEST_F(StreamHost, DestroyedSubscriberReleasesItsHolds) {
  Node node(node_opts("cam"));
  auto& pub = node.advertise(test::host_spec("rgb", kBytes, 3, 5ms));
  test::PublishStats ps;
  {
    Subscriber sub("cam", "rgb", sub_opts());
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
      ASSERT_TRUE(sub.next(1s));  // held, never released
    }
    EXPECT_FALSE(pub.acquire());
  }
  // The broker sees EOF and drops the subscription's holds.
  EXPECT_TRUE(test::wait_until([&] { return test::publish_one(pub, seed_, 1, ps); }, 5s));
  EXPECT_EQ(pub.counters().subscribers, 0u);
}

TEST_F(StreamHost, FrameMemoryIsMappedReadOnly) {
  Node node(node_opts("cam"));
  auto& pub = node.advertise(test::host_spec("rgb", kBytes));
  Subscriber sub("cam", "rgb", sub_opts());
  test::PublishStats ps;
  ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  auto f = sub.next(1s);
  ASSERT_TRUE(f);
  EXPECT_EQ(test::mapping_perms(f->data), "r--s");
  auto lease = pub.acquire();
  ASSERT_TRUE(lease);
  EXPECT_EQ(test::mapping_perms(lease->data), "rw-s") << "the producer's own mapping is writable";
  pub.abandon(*lease);
  EXPECT_TRUE(pub.describe().value("sealed", false)) << "the memory is write-sealed for peers";
  sub.release(*f);
}

TEST_F(StreamHost, StreamMemoryCannotBeResized) {
  Node node(node_opts("cam"));
  auto& pub = node.advertise(test::host_spec("rgb", kBytes));
  auto fds = pub.transport().export_fds();
  ASSERT_EQ(fds.size(), 2u);
  EXPECT_EQ(::ftruncate(fds[0], 0), -1) << "slot memory must be size-sealed";
  EXPECT_EQ(errno, EPERM);
}

// Consumers map the producer's ready page: if its owner could shrink it, every reader would die
// of SIGBUS on its next fence read. The single-writer rule needs the size sealed.
TEST_F(StreamHost, ReadyPageCannotBeShrunk) {
  Node node(node_opts("cam"));
  auto& pub = node.advertise(test::host_spec("rgb", kBytes));
  int page = pub.transport().export_fds().at(1);
  if (::ftruncate(page, 0) == 0) {
    ASSERT_EQ(::ftruncate(page, protocol::kFencePageBytes), 0);  // put it back before we touch it
    ADD_FAILURE() << "the ready page handed to consumers can be shrunk (not size-sealed)";
  } else {
    EXPECT_EQ(errno, EPERM);
  }
}

TEST_F(StreamHost, SubscribingToAMissingNodeOrStreamNamesIt) {
  auto no_wait = sub_opts();
  no_wait.wait_for_producer = 0ms;
  try {
    Subscriber sub("ghost", "rgb", no_wait);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'ghost'"), std::string::npos) << e.what();
  }
  Node node(node_opts("cam"));
  node.advertise(test::host_spec("rgb", kBytes));
  node.advertise(test::host_spec("depth", 64));
  try {
    Subscriber sub("cam", "ir", no_wait);
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("'ir'"), std::string::npos) << m;
    EXPECT_NE(m.find("rgb, depth"), std::string::npos) << "lists what is published: " << m;
  }
  // A producer that is running has advertised all it publishes: no use waiting for 'ir'.
  node.set_running();
  auto waiting = sub_opts();
  waiting.wait_for_producer = 10s;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(Subscriber("cam", "ir", waiting), Error);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s) << "waited for a stream a running producer lacks";
  EXPECT_THROW(Subscriber("cam", "r/gb", sub_opts()), ValidationError);
  EXPECT_THROW(Subscriber("../cam", "rgb", sub_opts()), ValidationError);
  EXPECT_THROW(node.subscribe("cam"), ValidationError) << "NODE/STREAM needed";
  // With options, by default, no wait at all: for nodes that retry on their own.
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_THROW(node.subscribe("ghost/rgb", sub_opts()), Error);
  EXPECT_LT(std::chrono::steady_clock::now() - t1, 2s) << "SubscribeOptions{} must not wait";
}

// Producers and consumers may start in any order (found by dp_chaos: a sink restarted while its
// source was down exited at once, "no node" or "its manifest is litter", and the launcher's
// back-off grew with every such exit). The producer here appears 300 ms late, and advertises its
// stream 200 ms after its manifest.
TEST_F(StreamHost, SubscriberWaitsForAProducerThatStartsLater) {
  std::atomic<bool> stop{false};
  std::atomic<int> published{0};
  std::thread producer([&] {
    std::this_thread::sleep_for(300ms);
    Node node(node_opts("cam"));
    std::this_thread::sleep_for(200ms);  // a manifest without the stream yet, state "starting"
    auto& pub = node.advertise(test::host_spec("rgb", kBytes));
    node.set_running();
    test::PublishStats ps;
    while (!stop) {
      if (test::publish_one(pub, seed_, 1, ps)) ++published;
      std::this_thread::sleep_for(2ms);
    }
  });
  auto opts = sub_opts();
  opts.wait_for_producer = 10s;
  const auto t0 = std::chrono::steady_clock::now();
  std::optional<Subscriber> sub;
  EXPECT_NO_THROW(sub.emplace("cam", "rgb", opts));
  const auto waited = std::chrono::steady_clock::now() - t0;
  if (sub) {
    EXPECT_GE(waited, 250ms) << "connected before the producer existed?";
    test::FrameVerifier v(seed_, 1, kBytes);
    auto f = sub->next(5s);
    ASSERT_TRUE(f) << "no frame after the wait";
    EXPECT_TRUE(v.check(*f)) << v.to_json();
    sub->release(*f);
    EXPECT_EQ(sub->counters().reconnects, 0u);
  }
  stop = true;
  producer.join();
  EXPECT_GT(published.load(), 0);
}

// A producer caught between publishing its manifest's header and writing its JSON: the
// subscriber that does not wait must get the retryable NotReadyError, never a ValidationError,
// which nodes treat as fatal (the distill graph's teachers exited on it at start-up on a GPU).
TEST_F(StreamHost, AManifestBeingCreatedIsNotReadyNotMalformed) {
  auto w = ManifestWriter::create(domain_, "early");  // header published, no JSON
  auto opts = sub_opts();
  opts.wait_for_producer = 0ms;
  try {
    Subscriber sub("early", "rgb", opts);
    FAIL() << "subscribed to a manifest without JSON";
  } catch (const ValidationError& e) {
    FAIL() << "a manifest being created was taken for a malformed one: " << e.what();
  } catch (const NotReadyError& e) {
    EXPECT_NE(std::string(e.what()).find("still starting"), std::string::npos) << e.what();
  }
}

TEST_F(StreamHost, SubscriberWaitGivesUpAfterItsBoundNamingTheCause) {
  auto opts = sub_opts();
  opts.wait_for_producer = 300ms;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    Subscriber sub("ghost", "rgb", opts);
    FAIL() << "subscribed to a node that never existed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no node 'ghost'"), std::string::npos) << e.what();
  }
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 5s);
}

TEST_F(StreamHost, SubscriberWaitEndsWhenCancelled) {
  auto opts = sub_opts();
  opts.wait_for_producer = 60s;
  const auto t0 = std::chrono::steady_clock::now();
  opts.cancelled = [&] { return std::chrono::steady_clock::now() - t0 > 200ms; };
  EXPECT_THROW(Subscriber("ghost", "rgb", opts), Error);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s) << "the wait ignored its cancellation";
  // Node::subscribe without options waits (kDefaultProducerWait), and hands the node's own
  // cancellation to its subscriptions.
  auto no = node_opts("sink");
  no.cancelled = [&] { return std::chrono::steady_clock::now() - t0 > 400ms; };
  Node node(no);
  EXPECT_THROW(node.subscribe("ghost/rgb"), Error);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s) << "Node::subscribe did not pass the cancellation on";
}

TEST_F(StreamHost, AdvertiseChecksTheSpecAndDuplicates) {
  Node node(node_opts("cam"));
  node.advertise(test::host_spec("rgb", kBytes));
  EXPECT_THROW(node.advertise(test::host_spec("rgb", kBytes)), PreconditionError);
  auto bad = test::host_spec("bad", kBytes);
  bad.slots = 1;
  EXPECT_THROW(node.advertise(bad), ValidationError);
  EXPECT_EQ(node.find("bad"), nullptr);
  EXPECT_NE(node.find("rgb"), nullptr);
}

// A consumer holding nothing when its producer goes can still ask what the stream was (the
// compositor checks a returning teacher against it).
TEST_F(StreamHost, SpecStaysKnownWhileTheProducerIsGone) {
  auto node = std::make_unique<Node>(node_opts("cam"));
  node->advertise(test::host_spec("rgb", kBytes));
  Subscriber sub("cam", "rgb", sub_opts());
  const auto before = spec_to_json(sub.spec());
  node.reset();
  ASSERT_TRUE(test::wait_until([&] { return sub.state() == Subscriber::State::producer_gone; }, 5s));
  EXPECT_EQ(spec_to_json(sub.spec()), before);
}

// A consumer the producer cuts off (Node::cut_off: the broker's tick does it to one whose release
// holds a GPU stream past its release_timeout, PROTOCOL.md §10.3) sees a cut, not a death: the
// frame it had not released is invalid at once, the one it had released stays valid, the
// producer no longer counts its holds, and it subscribes again (its releases, on the CPU, have
// all run).
TEST_F(StreamHost, ACutConsumerLosesWhatItHadNotReadAndSubscribesAgain) {
  Node node(node_opts("cam"));
  auto& pub = node.advertise(test::host_spec("rgb", kBytes, 3, 20ms));
  Subscriber sub("cam", "rgb", sub_opts());
  test::PublishStats ps;
  const auto held = frames_held(pub, sub, ps, 2);
  ASSERT_EQ(held.size(), 2u);
  const Frame f1 = held[0], f2 = held[1];
  sub.release(f1);
  const auto connection = pub.consumers()[0]["connection"].get<std::uint64_t>();
  node.cut_off(connection);
  EXPECT_EQ(pub.counters().cut_off, 1u);
  EXPECT_EQ(pub.counters().subscribers, 0u);
  // At once, whether or not the subscriber has looked at its connection yet.
  EXPECT_TRUE(sub.is_valid(f1)) << "released (read) before the cut";
  EXPECT_FALSE(sub.is_valid(f2)) << "still held at the cut: its slot may be rewritten";
  // The producer no longer waits for the holds of the consumer it cut: every slot is writable.
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(test::publish_one(pub, seed_, 1, ps));
  EXPECT_EQ(pub.counters().dropped, 0u);
  ASSERT_TRUE(test::wait_until([&] { return sub.state() == Subscriber::State::connected && sub.counters().reconnects == 1; }, 5s))
      << "cuts " << sub.counters().cuts << ", reconnects " << sub.counters().reconnects << ", state "
      << static_cast<int>(sub.state());
  ASSERT_TRUE(test::wait_until([&] { return pub.counters().subscribers == 1; }, 5s));
  auto c = sub.counters();
  EXPECT_EQ(c.cuts, 1u);
  EXPECT_EQ(c.invalidated, 1u);
  EXPECT_FALSE(sub.is_valid(f2));
  sub.release(f2);  // a frame of the cut connection: nothing to write, no error
  ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  auto f3 = sub.next(1s);
  ASSERT_TRUE(f3);
  EXPECT_EQ(f3->generation, 2u);
  test::FrameVerifier v(seed_, 1, kBytes);
  EXPECT_TRUE(v.check(*f3)) << v.to_json();
  EXPECT_TRUE(sub.is_valid(*f3));
  sub.release(*f3);
  EXPECT_EQ(pub.counters().cut_off, 1u);
}

// A survivor of a dead producer raises the ready words of frames it holds (seq | kForcedReady),
// and a timeline semaphore, one for every slot, with them; another consumer's wait then passes on
// that raise before its own watchdog has seen the death. Such a frame may have no data:
// is_valid() says so at once, and the death, when the subscriber sees it, counts it invalid
// though its release has run. A frame older than the one a raise names was written (the producer
// reuses a slot only once its stream has signalled the slot's previous frame): it stays valid.
// The test writes into the ready page what survivors would; the host transport raises nothing.
TEST_F(StreamHost, AFrameWhoseReadyWordASurvivorRaisedIsInvalid) {
  auto node = std::make_unique<Node>(node_opts("cam"));
  auto& pub = node->advertise(test::host_spec("rgb", kBytes, 4));
  Subscriber sub("cam", "rgb", sub_opts());
  test::PublishStats ps;
  const auto f = frames_held(pub, sub, ps, 4);
  ASSERT_EQ(f.size(), 4u);
  for (auto& x : f) EXPECT_TRUE(sub.is_valid(x)) << "seq " << x.seq;
  auto page = platform::Segment::map_fd(platform::UniqueFd(::dup(pub.transport().export_fds().at(1))),
                                        protocol::kFencePageBytes, platform::Access::read_write);
  auto word = [&](const Frame& x) -> protocol::AtomicU64& { return fence::page_word(page.data(), x.slot); };
  word(f[2]).store(0);  // never signalled: its wait passed on another slot's raise
  // While no word carries the flag, a word still on its way is the live producer's: no verdict.
  EXPECT_TRUE(sub.is_valid(f[2]));
  word(f[0]).store((f[0].seq + 4) | protocol::kForcedReady);  // raised for a later frame of its slot
  word(f[1]).store(f[1].seq | protocol::kForcedReady);        // raised for this very frame
  EXPECT_TRUE(sub.is_valid(f[0])) << "older than the frame its word was raised for: written";
  EXPECT_FALSE(sub.is_valid(f[1])) << "its word raised by a survivor: its data may never have been written";
  EXPECT_FALSE(sub.is_valid(f[2])) << "below its seq, and a survivor has raised words of the page";
  EXPECT_TRUE(sub.is_valid(f[3])) << "its word is the producer's own";
  for (int i = 1; i < 3; ++i) sub.release(f[i]);  // their releases run (at once, on the host)
  node.reset();
  ASSERT_TRUE(test::wait_until([&] { return sub.state() == Subscriber::State::producer_gone; }, 5s));
  EXPECT_FALSE(sub.next(10ms));
  EXPECT_EQ(sub.counters().invalidated, 2u) << "the two raised frames, released or not, and no other";
  EXPECT_TRUE(sub.is_valid(f[0]));
  EXPECT_TRUE(sub.is_valid(f[3]));
  sub.release(f[0]);
  sub.release(f[3]);
}

TEST_F(StreamHost, GracefulProducerStopIsSeenAsProducerGone) {
  auto node = std::make_unique<Node>(node_opts("cam"));
  auto& pub = node->advertise(test::host_spec("rgb", kBytes));
  Subscriber sub("cam", "rgb", sub_opts());
  test::PublishStats ps;
  ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  auto f = sub.next(1s);
  ASSERT_TRUE(f);
  node.reset();
  EXPECT_TRUE(
      test::wait_until([&] { return sub.state() == Subscriber::State::producer_gone; }, 5s));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(sub.next(50ms));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  // The frame held across the producer's exit stays readable.
  test::FrameVerifier v(seed_, 1, kBytes);
  EXPECT_TRUE(v.check(*f)) << v.to_json();
  EXPECT_TRUE(sub.is_valid(*f));
  sub.release(*f);
}

// ------------------------------------------------------------------ a lying producer

// A fake producer: a hand-written manifest and a broker whose "subscribe" reply the test
// controls. The subscriber must refuse every inconsistent reply with a dp::Error.
class FakeProducer : public StreamHost {
 protected:
  void start(std::function<void(nlohmann::json& reply, std::vector<int>& fds)> tamper) {
    spec_ = test::host_spec("rgb", kBytes);
    stride_ = (kBytes + 255) / 256 * 256;
    mem_ = platform::Segment::create_anonymous("dp-test-fake-mem", stride_ * spec_.slots, true);
    page_ =
        platform::Segment::create_anonymous("dp-test-fake-ready", protocol::kFencePageBytes, false);
    manifest_.emplace(ManifestWriter::create(domain_, "fake"));
    manifest_->control(0).slot_count = spec_.slots;
    Broker::Options bo;
    bo.socket_name = broker_socket_name(domain_, "fake");
    bo.node_name = "fake";
    broker_ = std::make_unique<Broker>(bo);
    auto entry = spec_to_json(spec_);
    entry["control_index"] = 0;
    entry["slot_stride"] = stride_;
    entry["memory_handle"] = "posix-fd";
    entry["fence_handle"] = "posix-fd";
    broker_->on("subscribe", [this, entry, tamper](const PeerInfo&, const nlohmann::json&,
                                                   std::vector<platform::UniqueFd>&) {
      BrokerReply r;
      r.body = entry;
      r.body["op"] = "subscribed";
      r.fds = {mem_.fd().get(), page_.fd().get()};
      tamper(r.body, r.fds);
      return r;
    });
    broker_->start();
    manifest_->set_json({{"name", "fake"},
                         {"type", "fake"},
                         {"broker", bo.socket_name},
                         {"streams", nlohmann::json::array({entry})}});
  }
  void expect_refused(const std::string& needle) {
    try {
      Subscriber sub("fake", "rgb", sub_opts());
      ADD_FAILURE() << "subscribed through an inconsistent reply";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "a malformed reply escaped as a non-dp exception: " << e.what();
    }
  }
  void TearDown() override {
    broker_.reset();
    manifest_.reset();
    StreamHost::TearDown();
  }
  StreamSpec spec_;
  std::size_t stride_ = 0;
  platform::Segment mem_, page_;
  std::optional<ManifestWriter> manifest_;
  std::unique_ptr<Broker> broker_;
};

TEST_F(FakeProducer, HonestReplyWorks) {
  start([](nlohmann::json&, std::vector<int>&) {});
  Subscriber sub("fake", "rgb", sub_opts());
  EXPECT_EQ(sub.spec().frame_bytes(), kBytes);
}

TEST_F(FakeProducer, ReplyWithAnotherSpec) {
  start([](nlohmann::json& r, std::vector<int>&) { r["slots"] = 4; });
  expect_refused("disagrees");
}

TEST_F(FakeProducer, ReplyWithAnotherControlIndex) {
  start([](nlohmann::json& r, std::vector<int>&) { r["control_index"] = 1; });
  expect_refused("control index");
}

TEST_F(FakeProducer, ReplyWithTooSmallAStride) {
  start([](nlohmann::json& r, std::vector<int>&) { r["slot_stride"] = 8; });
  expect_refused("stride");
}

TEST_F(FakeProducer, ReplyWithOneDescriptor) {
  start([](nlohmann::json&, std::vector<int>& fds) { fds.pop_back(); });
  expect_refused("descriptors");
}

TEST_F(FakeProducer, ReplyWithMemorySmallerThanPromised) {
  start([](nlohmann::json& r, std::vector<int>&) { r["slot_stride"] = 1 << 20; });
  expect_refused("promises");
}

TEST_F(FakeProducer, ReplyWithoutControlIndex) {
  start([](nlohmann::json& r, std::vector<int>&) { r.erase("control_index"); });
  expect_refused("control_index");
}

TEST_F(FakeProducer, ReplyWithAStrideOfTheWrongType) {
  start([](nlohmann::json& r, std::vector<int>&) { r["slot_stride"] = "big"; });
  expect_refused("slot_stride");
}

// ------------------------------------------------------------------ across processes

struct FanoutCase {
  const char* name;
  const char* kinds;  // one letter per consumer: f(ast, next), s(low: holds 2 ms), l(atest)
  int frames;
  int period_us;
  std::uint32_t slots;
  int acquire_timeout_ms;
};

void PrintTo(const FanoutCase& c, std::ostream* os) {
  *os << c.name << " (consumers '" << c.kinds << "', " << c.frames << " frames, " << c.slots
      << " slots)";
}

class StreamHostFanoutMP : public StreamHost, public ::testing::WithParamInterface<FanoutCase> {};

// One producer (this process), N consumer processes of three kinds: fast (next), slow (holds
// each frame 2 ms, then checks it was not overwritten meanwhile), and polling (latest).
TEST_P(StreamHostFanoutMP, EveryFrameReceivedIsIntactAndAccounted) {
  const FanoutCase p = GetParam();
  const int n = static_cast<int>(std::strlen(p.kinds)), frames = p.frames;
  const auto acquire_timeout = std::chrono::milliseconds(p.acquire_timeout_ms);
  Node node(node_opts("src"));
  auto& pub = node.advertise(test::host_spec("frames", kBytes, p.slots, acquire_timeout));
  node.set_running();
  std::vector<Child> cs;
  std::vector<std::string> kinds;
  for (int i = 0; i < n; ++i) {
    std::string kind = p.kinds[i] == 's' ? "slow" : p.kinds[i] == 'l' ? "latest" : "fast";
    kinds.push_back(kind);
    std::vector<std::string> extra{"frames=" + std::to_string(frames),
                                   "client=c" + std::to_string(i), "deadline_ms=40000"};
    if (kind == "slow") extra.push_back("hold_us=2000");
    if (kind == "latest") extra.push_back("mode=latest");
    cs.push_back(consumer("src", "frames", extra));
  }
  for (auto& c : cs)
    ASSERT_TRUE(c.expect("ready", 10s)) << "consumer did not subscribe: " << c.transcript();
  ASSERT_TRUE(test::wait_until([&] { return pub.counters().subscribers == std::uint64_t(n); }, 5s));

  test::PublishStats ps;
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  while (ps.published < std::uint64_t(frames) && std::chrono::steady_clock::now() < give_up) {
    test::publish_one(pub, seed_, 1, ps);
    if (p.period_us) std::this_thread::sleep_for(std::chrono::microseconds(p.period_us));
  }
  ASSERT_EQ(ps.published, std::uint64_t(frames));
  EXPECT_LE(ps.max_acquire_ns, std::chrono::nanoseconds(acquire_timeout + 250ms).count())
      << "the producer blocked longer than its acquire_timeout";
  EXPECT_EQ(pub.counters().dropped, ps.dropped);
  EXPECT_EQ(pub.counters().published, ps.published);

  for (int i = 0; i < n; ++i) {
    SCOPED_TRACE("consumer " + std::to_string(i) + " (" + kinds[i] + ")");
    auto r = result_of(cs[i], 40s);
    ASSERT_FALSE(r.is_null()) << cs[i].transcript();
    auto st = cs[i].wait(10s);
    ASSERT_TRUE(st);
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << test::describe_status(*st);
    EXPECT_EQ(r["mismatches"], 0) << r.dump();
    EXPECT_EQ(r["last_seq"], frames) << "every consumer ends with the last frame: " << r.dump();
    auto received = r["received"].get<std::uint64_t>(), missed = r["missed"].get<std::uint64_t>();
    auto got = r["frames"].get<std::uint64_t>(), gaps = r["gaps"].get<std::uint64_t>();
    auto first = r["first_seq"].get<std::uint64_t>();
    EXPECT_EQ(received, got) << r.dump();
    EXPECT_GE(received, 1u);
    EXPECT_EQ(got + gaps, std::uint64_t(frames) - first + 1) << r.dump();
    EXPECT_GE(missed, gaps) << r.dump();
    EXPECT_LE(missed, gaps + first - 1) << r.dump();
    EXPECT_LE(r["dropped"].get<std::uint64_t>(), ps.dropped) << r.dump();
    EXPECT_EQ(r["state"], "connected");
    std::printf(
        "[   info   ] consumer %d (%s): received %llu, missed %llu, first seq %llu, drops seen "
        "%llu\n",
        i, kinds[i].c_str(), static_cast<unsigned long long>(received),
        static_cast<unsigned long long>(missed), static_cast<unsigned long long>(first),
        static_cast<unsigned long long>(r["dropped"].get<std::uint64_t>()));
  }
  std::printf("[   info   ] producer: %llu published, %llu dropped, longest acquire %.3f ms\n",
              static_cast<unsigned long long>(ps.published),
              static_cast<unsigned long long>(ps.dropped), ps.max_acquire_ns / 1e6);
  EXPECT_TRUE(test::wait_until([&] { return pub.counters().subscribers == 0; }, 5s));
}

INSTANTIATE_TEST_SUITE_P(
    Consumers, StreamHostFanoutMP,
    ::testing::Values(FanoutCase{"1", "f", 300, 300, 3, 20},
                      FanoutCase{"4", "fsfl", 300, 300, 3, 20},
                      // As fast as possible, two slots, two slow readers: the producer must drop
                      // (after 1 ms each time) instead of waiting for them.
                      FanoutCase{"4_contended", "ssfl", 3000, 0, 2, 1}),
    [](const auto& info) { return std::string(info.param.name); });

TEST_F(StreamHostMP, KilledConsumersHoldsAreReleased) {
  Node node(node_opts("src"));
  const auto timeout = 30ms;
  auto& pub = node.advertise(test::host_spec("frames", kBytes, 3, timeout));
  auto c = consumer("src", "frames", {"hold_all=3", "go=1"});
  ASSERT_TRUE(c.expect("ready", 10s)) << c.transcript();
  ASSERT_TRUE(test::wait_until([&] { return pub.counters().subscribers == 1; }, 5s));
  test::PublishStats ps;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  c.io().write_line("go");
  ASSERT_TRUE(c.expect("holding", 10s)) << c.transcript();
  // Every slot is held by a live consumer: the producer drops, within its bound.
  EXPECT_FALSE(test::publish_one(pub, seed_, 1, ps));
  EXPECT_LE(ps.max_acquire_ns, std::chrono::nanoseconds(timeout + 500ms).count());
  EXPECT_EQ(pub.counters().dropped, 1u);
  c.kill(SIGKILL);
  ASSERT_TRUE(c.wait(10s));
  // The broker sees EOF at once and releases the dead consumer's holds.
  EXPECT_TRUE(test::wait_until([&] { return test::publish_one(pub, seed_, 1, ps); }, 5s));
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(test::publish_one(pub, seed_, 1, ps));
  EXPECT_EQ(pub.counters().subscribers, 0u);
}

// The cut across processes: a consumer holding a frame is cut off by the producer (this
// process), which then writes every slot; the consumer goes on with the frames published after,
// every one intact, and reports the cut, the frame it lost and its new subscription.
TEST_F(StreamHostMP, ACutConsumerGoesOnWithIntactFrames) {
  Node node(node_opts("src"));
  auto& pub = node.advertise(test::host_spec("frames", kBytes, 3, 20ms));
  const int frames = 60;
  auto c = consumer("src", "frames", {"hold_first=1", "frames=" + std::to_string(frames), "client=cut-me"});
  ASSERT_TRUE(c.expect("ready", 10s)) << c.transcript();
  ASSERT_TRUE(test::wait_until([&] { return pub.counters().subscribers == 1; }, 5s));
  test::PublishStats ps;
  ASSERT_TRUE(test::publish_one(pub, seed_, 1, ps));
  ASSERT_TRUE(c.expect("holding", 10s)) << c.transcript();
  node.cut_off(pub.consumers()[0]["connection"].get<std::uint64_t>());
  EXPECT_EQ(pub.counters().cut_off, 1u);
  const auto give_up = std::chrono::steady_clock::now() + 30s;
  while (ps.published < std::uint64_t(frames) && std::chrono::steady_clock::now() < give_up) {
    // Once it has subscribed again (its first frames after the cut may be missed: it starts
    // at the newest).
    if (pub.counters().subscribers == 1) test::publish_one(pub, seed_, 1, ps);
    std::this_thread::sleep_for(2ms);
  }
  ASSERT_EQ(ps.published, std::uint64_t(frames));
  auto r = result_of(c);
  ASSERT_FALSE(r.is_null()) << c.transcript();
  EXPECT_EQ(r["mismatches"], 0) << r.dump();
  EXPECT_EQ(r["last_seq"], frames) << r.dump();
  EXPECT_EQ(r["cuts"], 1) << r.dump();
  EXPECT_EQ(r["reconnects"], 1) << r.dump();
  EXPECT_EQ(r["invalidated"], 1) << r.dump();
  EXPECT_EQ(r["held_valid"], false) << r.dump();
  EXPECT_EQ(r["state"], "connected") << r.dump();
  EXPECT_EQ(pub.counters().dropped, 0u);
}

TEST_F(StreamHostMP, ProducerKeepsPublishingWhenAConsumerIsKilledMidRun) {
  Node node(node_opts("src"));
  const auto timeout = 20ms;
  auto& pub = node.advertise(test::host_spec("frames", kBytes, 3, timeout));
  const int frames = 240;
  auto survivor =
      consumer("src", "frames", {"frames=" + std::to_string(frames), "client=survivor"});
  auto victim = consumer("src", "frames", {"hold_us=1000", "client=victim"});
  ASSERT_TRUE(survivor.expect("ready", 10s)) << survivor.transcript();
  ASSERT_TRUE(victim.expect("ready", 10s)) << victim.transcript();
  ASSERT_TRUE(test::wait_until([&] { return pub.counters().subscribers == 2; }, 5s));
  test::PublishStats ps;
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  while (ps.published < std::uint64_t(frames) && std::chrono::steady_clock::now() < give_up) {
    test::publish_one(pub, seed_, 1, ps);
    if (ps.published == 80 && !victim.reaped()) {
      victim.kill(SIGKILL);
      ASSERT_TRUE(victim.wait(10s));
    }
    std::this_thread::sleep_for(300us);
  }
  ASSERT_EQ(ps.published, std::uint64_t(frames));
  EXPECT_LE(ps.max_acquire_ns, std::chrono::nanoseconds(timeout + 250ms).count());
  auto r = result_of(survivor);
  ASSERT_FALSE(r.is_null()) << survivor.transcript();
  EXPECT_EQ(r["mismatches"], 0) << r.dump();
  EXPECT_EQ(r["last_seq"], frames) << r.dump();
  EXPECT_TRUE(test::wait_until([&] { return pub.counters().subscribers == 0; }, 5s));
}

// This process consumes; the producer is a helper that is killed, then started again.
TEST_F(StreamHostMP, ProducerKilledThenRestartedConsumerReconnects) {
  auto p1 = producer("src", "frames", {"tag=1", "period_us=2000"});
  ASSERT_TRUE(p1.expect("ready", 10s)) << p1.transcript();
  p1.io().write_line("go");
  Subscriber sub("src", "frames", sub_opts("survivor"));
  test::FrameVerifier v(seed_, 1, kBytes);
  std::optional<Frame> kept;
  for (int got = 0; got < 10;) {
    auto f = sub.next(5s);
    ASSERT_TRUE(f) << "no frame from the first producer";
    EXPECT_TRUE(v.check(*f)) << v.to_json();
    ++got;
    if (got == 5) {
      kept = f;  // held across the producer's death
    } else {
      sub.release(*f);
    }
  }
  p1.kill(SIGKILL);
  ASSERT_TRUE(p1.wait(10s));

  // next() keeps returning within its bound; the subscriber notices the death.
  const auto t0 = std::chrono::steady_clock::now();
  bool gone = false;
  while (std::chrono::steady_clock::now() - t0 < 5s) {
    auto s = std::chrono::steady_clock::now();
    auto f = sub.next(100ms);
    EXPECT_LT(std::chrono::steady_clock::now() - s, 2s) << "next() overran its timeout";
    if (f) {  // published before the kill: still a good frame
      EXPECT_TRUE(v.check(*f)) << v.to_json();
      sub.release(*f);
      continue;
    }
    if (sub.state() == Subscriber::State::producer_gone) {
      gone = true;
      break;
    }
  }
  ASSERT_TRUE(gone) << "state() never became producer_gone after kill -9 of the producer";
  EXPECT_EQ(sub.counters().reconnects, 0u);

  // The frame held while the producer died is still mapped and intact.
  ASSERT_TRUE(kept);
  EXPECT_TRUE(v.recheck(*kept)) << v.to_json();
  EXPECT_TRUE(sub.is_valid(*kept));

  // A new instance under the same name: the subscriber finds it by itself.
  auto p2 = producer("src", "frames", {"tag=2", "period_us=2000"});
  ASSERT_TRUE(p2.expect("ready", 10s)) << p2.transcript();
  p2.io().write_line("go");
  v.set_tag(2);
  int from_second = 0;
  const auto t1 = std::chrono::steady_clock::now();
  while (from_second < 10 && std::chrono::steady_clock::now() - t1 < 10s) {
    auto f = sub.next(200ms);
    if (!f) continue;
    EXPECT_TRUE(v.check(*f)) << v.to_json();
    EXPECT_EQ(f->generation, 2u);
    ++from_second;
    sub.release(*f);
  }
  EXPECT_EQ(from_second, 10) << "no frames from the restarted producer";
  EXPECT_EQ(sub.counters().reconnects, 1u);
  EXPECT_EQ(sub.state(), Subscriber::State::connected);
  EXPECT_EQ(v.mismatches(), 0u) << v.to_json();

  // The old frame can still be released (nobody waits for it any more).
  EXPECT_TRUE(v.recheck(*kept));
  sub.release(*kept);

  p2.io().write_line("stop");
  auto stats = p2.expect("stats", 10s);
  ASSERT_TRUE(stats) << p2.transcript();
  auto st = p2.wait(10s);
  ASSERT_TRUE(st);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << test::describe_status(*st);
}

// A consumer that starts while its producer is dead (its manifest is litter) waits for the next
// instance instead of failing (found by dp_chaos).
TEST_F(StreamHostMP, SubscriberWaitsForTheNextInstanceOfADeadProducer) {
  auto p1 = producer("src", "frames", {"tag=1", "period_us=2000"});
  ASSERT_TRUE(p1.expect("ready", 10s)) << p1.transcript();
  p1.kill(SIGKILL);
  ASSERT_TRUE(p1.wait(10s));
  ASSERT_FALSE(test::shm_entries(domain_).empty()) << "the killed producer's manifest is the litter under test";
  // The subscriber waits on a thread of its own; the new instance is started from this one
  // (PR_SET_PDEATHSIG would kill a helper started by a thread that ends).
  auto opts = sub_opts("late");
  opts.wait_for_producer = 10s;
  std::optional<Subscriber> sub;
  std::string error;
  std::thread waiter([&] {
    try {
      sub.emplace("src", "frames", opts);
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  std::this_thread::sleep_for(300ms);
  auto p2 = producer("src", "frames", {"tag=2", "period_us=2000"});
  if (p2.expect("ready", 10s)) p2.io().write_line("go");
  waiter.join();
  ASSERT_TRUE(sub) << "gave up on the restarting producer: " << error << "\n" << p2.transcript();
  test::FrameVerifier v(seed_, 2, kBytes);
  auto f = sub->next(5s);
  ASSERT_TRUE(f) << "no frame from the new instance";
  EXPECT_TRUE(v.check(*f)) << v.to_json();
  sub->release(*f);
  p2.io().write_line("stop");
  ASSERT_TRUE(p2.expect("stats", 10s)) << p2.transcript();
  ASSERT_TRUE(p2.wait(10s));
}

// A consumer cannot write the stream memory: the mapping is read-only, mprotect() cannot make it
// writable (the memfd is write-sealed), and a write faults.
TEST_F(StreamHostMP, ConsumerCannotWriteTheFrameMemory) {
  auto p = producer("src", "frames", {"frames=3"});
  ASSERT_TRUE(p.expect("ready", 10s)) << p.transcript();
  Subscriber sub("src", "frames", sub_opts());
  p.io().write_line("go");
  auto f = sub.next(5s);
  ASSERT_TRUE(f);
  EXPECT_EQ(test::mapping_perms(f->data), "r--s");
  // No threads here (the producer is the helper), so a plain fork is safe.
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    auto page = reinterpret_cast<std::uintptr_t>(f->data) & ~std::uintptr_t(4095);
    if (::mprotect(reinterpret_cast<void*>(page), 4096, PROT_READ | PROT_WRITE) == 0) ::_exit(3);
    *static_cast<volatile char*>(const_cast<void*>(f->data)) = 1;
    ::_exit(4);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(pid, &st, 0), pid);
  EXPECT_FALSE(WIFEXITED(st) && WEXITSTATUS(st) == 3)
      << "mprotect() made the frame memory writable";
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV) << test::describe_status(st);
  test::FrameVerifier v(seed_, 1, kBytes);
  EXPECT_TRUE(v.check(*f)) << v.to_json();
  sub.release(*f);
  p.io().write_line("stop");
  ASSERT_TRUE(p.wait(10s));
}

// A consumer hands its release page to the producer, which maps it and reads it on every
// acquire. If the consumer could shrink it afterwards, the producer would die of SIGBUS: one
// buggy or hostile peer must not be able to kill another.
TEST_F(StreamHostMP, ConsumerShrinkingItsReleasePageCannotKillTheProducer) {
  auto p = producer("src", "frames", {"period_us=500"});
  ASSERT_TRUE(p.expect("ready", 10s)) << p.transcript();
  auto m = ManifestReader::open(domain_, "src");
  auto doc = m.json();
  auto client =
      BrokerClient::connect(doc["broker"].get<std::string>(), "hostile", m.owner(), 5000ms);
  // A page made by hand, as a hostile client would: a plain memfd, no seals.
  platform::UniqueFd page(::memfd_create("dp-release-hostile", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  ASSERT_TRUE(page);
  ASSERT_EQ(::ftruncate(page.get(), protocol::kFencePageBytes), 0);
  bool accepted = true;
  try {
    client.request({{"op", "subscribe"}, {"stream", "frames"}}, {page.get()}, 5000ms);
  } catch (const Error& e) {
    accepted = false;  // refusing a page that is not size-sealed is a correct defence
  }
  bool shrunk = accepted && ::ftruncate(page.get(), 0) == 0;
  p.io().write_line("go");
  const auto& control = m.control(0);
  test::wait_until([&] { return control.published.load() >= 50 || p.wait(0ms).has_value(); }, 10s);
  p.io().write_line("stop");
  auto stats = p.expect("stats", 10s);
  auto st = p.wait(10s);
  ASSERT_TRUE(st);
  EXPECT_TRUE(stats && WIFEXITED(*st) && WEXITSTATUS(*st) == 0)
      << "producer " << test::describe_status(*st) << " after a subscriber "
      << (shrunk ? "shrank" : "kept") << " its release page";
}

TEST_F(StreamHostMP, ProducerShrinkingItsReadyPageCannotKillConsumers) {
  auto p = producer("src", "frames", {"frames=1"});
  ASSERT_TRUE(p.expect("ready", 10s)) << p.transcript();
  auto c = consumer("src", "frames", {"go=1", "frames=1", "deadline_ms=5000"});
  ASSERT_TRUE(c.expect("ready", 10s)) << c.transcript();
  p.io().write_line("go");
  ASSERT_TRUE(p.expect("done", 10s)) << p.transcript();
  p.io().write_line("shrink");
  auto how = p.expect("shrink", 10s);
  ASSERT_TRUE(how) << p.transcript();
  c.io().write_line("go");
  auto r = result_of(c, 10s);
  auto st = c.wait(10s);
  ASSERT_TRUE(st);
  EXPECT_TRUE(!r.is_null() && WIFEXITED(*st) && WEXITSTATUS(*st) == 0)
      << "consumer " << test::describe_status(*st) << " after the producer's ready page was "
      << *how;
  if (!r.is_null()) {
    EXPECT_EQ(r["mismatches"], 0) << r.dump();
  }
  p.io().write_line("stop");
  ASSERT_TRUE(p.expect("stats", 10s)) << p.transcript();
  ASSERT_TRUE(p.wait(10s));
}

}  // namespace
}  // namespace dp

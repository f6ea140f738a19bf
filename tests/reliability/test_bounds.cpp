// Resource bounds, end to end on a live node: what one peer can make a node hold (subscriptions,
// connections, descriptors, manifest text) is bounded, a peer past a bound costs only itself,
// and hostile input (oversized or descriptor-flooded messages, a manifest nested beyond reason)
// is refused without crashing the node or the tools. The unit-level bounds (message and manifest
// sizes, JSON nesting) are tested with their units: tests/platform/test_socket.cpp
// (MessageBounds, TooManyDescriptorsAreRefusedWithoutLeaking), tests/core/test_manifest.cpp
// (ManifestImage.*, ManifestJson.Oversized, ManifestJson.DeepNestingNeitherCrashesNorPasses),
// tests/core/test_json_input.cpp, tests/core/test_graph.cpp.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "directport/core/broker.hpp"
#include "directport/core/error.hpp"
#include "directport/core/json_input.hpp"
#include "directport/core/manifest.hpp"
#include "directport/core/names.hpp"
#include "directport/core/node.hpp"
#include "directport/platform/child.hpp"
#include "directport/platform/shm.hpp"
#include "directport/platform/socket.hpp"
#include "support/fixtures.hpp"
#include "support/frames.hpp"

#ifndef DP_CLI
#error "DP_CLI (the path of the directport binary) must be defined by CMake"
#endif

namespace dp {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using platform::LocalSocket;

class Bounds : public test::DomainTest {
 protected:
  NodeOptions node_opts(const std::string& name) {
    NodeOptions o;
    o.name = name;
    o.domain = domain_;
    o.type = "test";
    return o;
  }
  // A client of node `name`'s broker (hello done).
  BrokerClient client(const std::string& name, const std::string& who = "probe") {
    auto r = ManifestReader::open(domain_, name);
    return BrokerClient::connect(r.json()["broker"].get<std::string>(), who, r.owner());
  }
  std::string broker_of(const std::string& name) {
    return ManifestReader::open(domain_, name).json()["broker"].get<std::string>();
  }
  // Sends one subscribe for `stream` with a fresh release page; the reply's op.
  static std::string subscribe(BrokerClient& c, const std::string& stream, std::string* error = nullptr) {
    auto page = platform::Segment::create_anonymous("dp-test-release", protocol::kFencePageBytes, false);
    try {
      return c.request({{"op", "subscribe"}, {"stream", stream}}, {page.fd().get()}).body["op"];
    } catch (const Error& e) {
      if (error) *error = e.what();
      return "error";
    }
  }
};
using BoundsMP = Bounds;

TEST_F(Bounds, SubscriptionsPerStreamAreBoundedAndEachAnswerIsTrue) {
  const int fds_before = test::count_open_fds();
  {
    Node node(node_opts("src"));
    auto& pub = node.advertise(test::host_spec("frames", 4096));
    auto greedy = client("src", "greedy");
    for (std::size_t i = 0; i < kMaxSubscriptionsPerStream; ++i) ASSERT_EQ(subscribe(greedy, "frames"), "subscribed") << i;
    std::string why;
    EXPECT_EQ(subscribe(greedy, "frames", &why), "error");
    EXPECT_NE(why.find("64 subscriptions, its bound"), std::string::npos) << why;
    EXPECT_EQ(pub.counters().subscribers, kMaxSubscriptionsPerStream) << "a refused subscribe must not count";
    // The refusal costs the greedy peer only: another consumer is refused too (the stream is
    // full), but the node serves it, publishes, and frees everything when the greedy one goes.
    auto other = client("src", "other");
    EXPECT_EQ(other.request({{"op", "status"}}).body["consumers"]["frames"].size(), kMaxSubscriptionsPerStream);
    test::PublishStats ps;
    EXPECT_TRUE(test::publish_one(pub, 1, 1, ps)) << "no subscriber holds a slot: publishing must work";
    greedy = BrokerClient();  // closes the connection: every subscription of it ends
    EXPECT_TRUE(test::wait_until([&] { return pub.counters().subscribers == 0; }, 5s));
    EXPECT_EQ(subscribe(other, "frames"), "subscribed");
  }
  EXPECT_TRUE(test::wait_until([&] { return test::count_open_fds() == fds_before; }, 5s))
      << "descriptors leaked: " << test::count_open_fds() << " open, " << fds_before << " before";
}

// Before the bound existed, the 725th subscribe on a default node overflowed the 64 KiB manifest
// JSON: the subscription was made but the peer was told it failed, and every later rewrite
// failed, leaving a stale manifest. Consumer lists are now left out instead.
TEST_F(Bounds, ManifestOverflowDropsConsumerListsNotSubscriptions) {
  auto opts = node_opts("src");
  opts.manifest.json_capacity = 1024;  // room for the node and its stream (~560 B), not for 10 consumers
  Node node(opts);
  auto& pub = node.advertise(test::host_spec("frames", 4096));
  std::vector<BrokerClient> clients;
  for (int i = 0; i < 10; ++i) {
    clients.push_back(client("src", "c" + std::to_string(i)));
    std::string why;
    ASSERT_EQ(subscribe(clients.back(), "frames", &why), "subscribed") << i << ": " << why;
  }
  EXPECT_EQ(pub.counters().subscribers, 10u);
  auto doc = ManifestReader::open(domain_, "src").json();
  EXPECT_EQ(doc.value("consumers_omitted", false), true) << doc.dump();
  ASSERT_EQ(doc["streams"].size(), 1u);
  EXPECT_EQ(doc["streams"][0]["consumers"], json::array());
  EXPECT_EQ(clients[0].request({{"op", "status"}}).body["consumers"]["frames"].size(), 10u) << "live data stays";
  clients.clear();
  EXPECT_TRUE(test::wait_until([&] { return pub.counters().subscribers == 0; }, 5s));
  EXPECT_TRUE(test::wait_until(
      [&] { return !ManifestReader::open(domain_, "src").json().contains("consumers_omitted"); }, 5s))
      << "once it fits again, the manifest is complete again";
}

TEST_F(Bounds, BrokerConnectionsAreBounded) {
  Broker::Options bo;
  bo.socket_name = test::unique_name("dp-test-bounded-");
  bo.node_name = "bounded";
  bo.max_connections = 8;
  Broker broker(bo);
  broker.start();
  std::vector<BrokerClient> in;
  for (int i = 0; i < 8; ++i) in.push_back(BrokerClient::connect(bo.socket_name, "c", platform::self_identity()));
  EXPECT_TRUE(test::wait_until([&] { return broker.connection_count() == 8; }, 5s));
  // The ninth is told why, and closed.
  auto extra = LocalSocket::connect(bo.socket_name);
  auto m = extra.receive(5000ms);
  ASSERT_TRUE(m) << "no refusal message";
  auto j = parse_message(m->bytes);
  EXPECT_EQ(j["op"], "error");
  EXPECT_NE(j["message"].get<std::string>().find("8 connections open, its bound"), std::string::npos) << j;
  EXPECT_FALSE(extra.receive(5000ms)) << "then EOF";
  EXPECT_EQ(broker.refused_count(), 1u);
  EXPECT_EQ(broker.connection_count(), 8u);
  // The ones inside are served; once one leaves, a new client gets in.
  EXPECT_EQ(in[3].request({{"op", "get"}, {"names", json::array()}}).body["op"], "fds");
  in.pop_back();
  EXPECT_TRUE(test::wait_until([&] { return broker.connection_count() == 7; }, 5s));
  EXPECT_NO_THROW(BrokerClient::connect(bo.socket_name, "late", platform::self_identity()));
}

TEST_F(Bounds, NodeBrokerHasTheDefaultConnectionBound) {
  Node node(node_opts("src"));
  std::vector<LocalSocket> socks;
  for (std::size_t i = 0; i < kMaxBrokerConnections; ++i) socks.push_back(LocalSocket::connect(broker_of("src")));
  EXPECT_TRUE(test::wait_until([&] { return node.broker().connection_count() == kMaxBrokerConnections; }, 10s));
  auto extra = LocalSocket::connect(broker_of("src"));
  auto m = extra.receive(5000ms);
  ASSERT_TRUE(m);
  EXPECT_EQ(parse_message(m->bytes)["op"], "error");
  socks.clear();
  EXPECT_TRUE(test::wait_until([&] { return node.broker().connection_count() == 0; }, 10s));
  EXPECT_NO_THROW(client("src"));
}

// Hostile records on a live node: the peer that sends one is dropped, nothing it sent stays open
// in the node, and the node goes on serving everybody else.
TEST_F(Bounds, OversizedOrDescriptorFloodedMessagesCostOnlyTheirSender) {
  Node node(node_opts("src"));
  node.advertise(test::host_spec("frames", 4096));
  auto good = client("src", "good");
  const int fds_before = test::count_open_fds();
  {
    // Over 64 KiB: dropped without a reply.
    auto big = LocalSocket::connect(broker_of("src"));
    std::string over(platform::kMaxMessageBytes + 1, 'x');
    ASSERT_EQ(::send(big.fd(), over.data(), over.size(), MSG_NOSIGNAL), static_cast<ssize_t>(over.size()));
    EXPECT_FALSE(big.receive(5000ms)) << "the oversized sender must be dropped";
    // 17 descriptors (the bound is 16): dropped, and the node closes every one it received.
    std::vector<platform::Segment> segs;
    std::vector<int> fds;
    for (int i = 0; i < 17; ++i) {
      segs.push_back(platform::Segment::create_anonymous("dp-test-flood", 64, false));
      fds.push_back(segs.back().fd().get());
    }
    auto flood = LocalSocket::connect(broker_of("src"));
    std::string body = nlohmann::json{{"op", "hello"}, {"abi", dp::protocol::kAbiVersion}}.dump();
    iovec iov{body.data(), body.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 17)] = {};
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * 17);
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * 17);
    ASSERT_EQ(::sendmsg(flood.fd(), &msg, MSG_NOSIGNAL), static_cast<ssize_t>(body.size())) << std::strerror(errno);
    EXPECT_FALSE(flood.receive(5000ms)) << "the descriptor flooder must be dropped";
  }
  // Node and test share this process: everything the hostile peers brought, and their sockets,
  // is closed again.
  EXPECT_TRUE(test::wait_until([&] { return test::count_open_fds() == fds_before; }, 5s))
      << test::count_open_fds() << " descriptors open, " << fds_before << " before";
  EXPECT_EQ(subscribe(good, "frames"), "subscribed");
}

// A node whose descriptors run out (RLIMIT_NOFILE) while peers keep connecting: its broker
// cannot accept, and the pending connections keep the listener readable. It used to retry at
// once, forever: a core at 100% logging "Too many open files" thousands of times a second.
TEST_F(BoundsMP, BrokerOutOfDescriptorsNeitherSpinsNorStopsBeating) {
  auto child = test::Child::fork([&](test::LineChannel& io) {
    rlimit lim{48, 48};
    if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) return 3;
    Node node(node_opts("src"));
    node.set_running();
    io.write_line("ready");
    io.read_line(-1ms);
    return 0;
  });
  ASSERT_TRUE(child.expect("ready", 10s)) << child.transcript();
  const auto broker = broker_of("src");
  std::vector<LocalSocket> socks;
  for (int i = 0; i < 60; ++i) socks.push_back(LocalSocket::connect(broker));  // more than its descriptors
  std::this_thread::sleep_for(300ms);
  auto cpu_ticks = [&] {
    std::ifstream f("/proc/" + std::to_string(child.pid()) + "/stat");
    std::string line;
    std::getline(f, line);
    std::istringstream rest(line.substr(line.rfind(')') + 2));
    std::string field;
    long long utime = 0, stime = 0;
    for (int i = 3; i <= 13; ++i) rest >> field;
    rest >> utime >> stime;
    return utime + stime;
  };
  const long long t0 = cpu_ticks();
  std::this_thread::sleep_for(1s);
  const long long used = cpu_ticks() - t0;
  const long long hz = ::sysconf(_SC_CLK_TCK);
  EXPECT_LT(used, hz / 2) << "the node used " << used << " of " << hz << " ticks in 1 s while out of descriptors";
  auto r = ManifestReader::open(domain_, "src");
  EXPECT_LT(r.heartbeat_age_ns(), 1000000000) << "the heartbeat must go on";
  // Once the peers leave, it serves again.
  socks.clear();
  EXPECT_TRUE(test::wait_until(
      [&] {
        try {
          client("src");
          return true;
        } catch (const Error&) {
          return false;
        }
      },
      10s));
  child.io().write_line("stop");
  auto st = child.wait(10s);
  ASSERT_TRUE(st);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << test::describe_status(*st) << child.transcript();
}

// A hostile (same-uid) process writes a manifest whose JSON nests 400 000 levels deep: before the
// nesting bound, `directport inspect` died with SIGSEGV copying it; now every tool reports it.
TEST_F(BoundsMP, ToolsSurviveADeeplyNestedManifest) {
  ManifestOptions mo;
  mo.json_capacity = protocol::kMaxJsonBytes;
  auto w = ManifestWriter::create(domain_, "evil", mo);
  w.set_json({{"name", "evil"}, {"type", "x"}, {"broker", "b"}, {"streams", json::array()}});
  // Its text, as the owner may write it (the writer refuses nothing it is given as text).
  auto seg = platform::Segment::open_named(manifest_segment_name(domain_, "evil"), platform::Access::read_write);
  auto* h = static_cast<protocol::ManifestHeader*>(seg.data());
  const std::size_t depth = 400000;
  std::string text = R"({"name":"evil","type":"x","broker":"b","streams":[],"info":)" + std::string(depth, '[') +
                     std::string(depth, ']') + "}";
  ASSERT_LE(text.size(), h->json_capacity);
  h->generation.store(h->generation.load() + 1);
  std::memcpy(static_cast<char*>(seg.data()) + h->json_offset, text.data(), text.size());
  h->json_size.store(text.size());
  h->generation.store(h->generation.load() + 1);
  for (std::vector<std::string> args : {std::vector<std::string>{"inspect", "evil", "-d", domain_, "--json"},
                                        std::vector<std::string>{"inspect", "evil", "-d", domain_},
                                        std::vector<std::string>{"ls", "-d", domain_, "--json"},
                                        std::vector<std::string>{"ls", "-d", domain_},
                                        std::vector<std::string>{"top", "-d", domain_, "--once", "--json", "-i", "0.05"}}) {
    args.insert(args.begin(), DP_CLI);
    auto c = platform::Child::spawn(args, {true, true});
    auto rc = c.wait_for(20s);
    ASSERT_TRUE(rc) << args[1] << " hung";
    EXPECT_GE(*rc, 0) << args[1] << " died with signal " << -*rc << ":\n" << c.output().substr(0, 2000);
    EXPECT_NE(c.output().find("nests deeper than 64 levels"), std::string::npos)
        << args[1] << " must name the problem:\n" << c.output().substr(0, 2000);
  }
}

}  // namespace
}  // namespace dp

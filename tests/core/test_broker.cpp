// The broker and its client: handshake, descriptors, errors, liveness, credentials.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>

#include "directport/core/broker.hpp"
#include "directport/core/error.hpp"
#include "directport/core/names.hpp"
#include "directport/core/protocol.hpp"
#include "directport/platform/shm.hpp"
#include "support/fixtures.hpp"

namespace dp {
namespace {

using namespace std::chrono_literals;
using platform::LocalSocket;
using test::Child;

std::string contents(const platform::UniqueFd& fd, std::size_t n) {
  auto s = platform::Segment::map_fd(fd.dup(), n, platform::Access::read_only);
  return std::string(static_cast<const char*>(s.data()), n);
}

class BrokerTest : public ::testing::Test {
 protected:
  BrokerTest() {
    opts_.socket_name = test::unique_name("dp-test-broker-");
    opts_.node_name = "testnode";
    opts_.tick = 10ms;
  }
  Broker& broker() {
    if (!broker_) broker_ = std::make_unique<Broker>(opts_);
    return *broker_;
  }
  BrokerClient client(const std::string& name = "alice") {
    return BrokerClient::connect(opts_.socket_name, name, platform::self_identity(), 5000ms);
  }
  // A raw connection (no hello), for protocol-level tests.
  LocalSocket raw() { return LocalSocket::connect(opts_.socket_name); }
  static nlohmann::json reply(LocalSocket& s) {
    auto m = s.receive(5000ms);
    if (!m) return nullptr;
    return parse_message(m->bytes);
  }
  void register_memfd(const std::string& name, const std::string& text) {
    auto seg = platform::Segment::create_anonymous("dp-test-" + name, 4096, false);
    std::memcpy(seg.data(), text.data(), text.size());
    broker().register_fd(name, seg.fd());
    segs_.push_back(std::move(seg));
  }
  // Installs a disconnect handler that records the client names it sees; `disconnected()` reads them.
  void record_disconnects() {
    broker().on_disconnect([this](const PeerInfo& p) {
      std::lock_guard<std::mutex> lock(gone_mu_);
      gone_.push_back(p.client_name);
    });
  }
  std::vector<std::string> disconnected() {
    std::lock_guard<std::mutex> lock(gone_mu_);
    return gone_;
  }
  Broker::Options opts_;
  std::unique_ptr<Broker> broker_;
  std::vector<platform::Segment> segs_;
  std::mutex gone_mu_;
  std::vector<std::string> gone_;
};
using BrokerMP = BrokerTest;

TEST(BrokerMessage, ParseMessage) {
  auto j = parse_message(R"({"op":"get","names":["a"]})");
  EXPECT_EQ(j["op"], "get");
  auto expect_bad = [](const std::string& s, const std::string& needle) {
    try {
      parse_message(s);
      FAIL() << "accepted " << s.substr(0, 100);
    } catch (const ValidationError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_bad("", "not valid JSON");
  expect_bad("{op:get}", "not valid JSON");
  expect_bad("[\"op\"]", "JSON object");
  expect_bad("\"hello\"", "JSON object");
  expect_bad("{}", "'op'");
  expect_bad(R"({"op":7})", "'op'");
  expect_bad(R"({"op":null})", "'op'");
  expect_bad(R"({"op":"x","pad":")" + std::string(platform::kMaxMessageBytes, 'p') + "\"}",
             "64 KiB");
  // Within 64 KiB, but nested 30 000 deep: the broker would recurse through it to answer (the
  // "abi" of a hello is quoted in the error reply).
  expect_bad(R"({"op":"hello","abi":)" + std::string(30000, '[') + std::string(30000, ']') + "}",
             "message nests deeper than 64 levels");
}

TEST(BrokerMessage, SocketNamesAreUniquePerInstance) {
  auto a = broker_socket_name("lab", "cam");
  auto b = broker_socket_name("lab", "cam");
  EXPECT_NE(a, b);
  EXPECT_EQ(a.rfind("dp." + std::to_string(::getuid()) + ".", 0), 0u) << a;
  EXPECT_NE(a.find("." + std::to_string(::getpid()) + "."), std::string::npos) << a;
  EXPECT_LT(a.size(), 107u) << "must fit sun_path";
  // The longest valid names still fit, and different nodes get different names.
  auto longest = broker_socket_name(std::string(48, 'd'), std::string(48, 'n'));
  EXPECT_LT(longest.size(), 107u) << longest;
  EXPECT_NO_THROW(platform::LocalSocket::listen(longest));
  EXPECT_NE(broker_socket_name("lab", "cam1").substr(0, 30), broker_socket_name("lab", "cam2").substr(0, 30));
  EXPECT_THROW(broker_socket_name("bad.domain", "cam"), ValidationError);
}

TEST_F(BrokerTest, HelloHandshake) {
  broker().start();
  auto c = client("alice");
  const auto& w = c.welcome();
  EXPECT_EQ(w["op"], "welcome");
  EXPECT_EQ(w["node"], "testnode");
  EXPECT_EQ(w["abi"], protocol::kAbiVersion);
  EXPECT_EQ(w["pid"], ::getpid());
  EXPECT_GE(w["connection"].get<std::uint64_t>(), 1u);
  EXPECT_TRUE(test::wait_until([&] { return broker().connection_count() == 1; }, 5s));
  EXPECT_FALSE(c.peer_gone());
  // A second client gets another connection id.
  auto c2 = client("bob");
  EXPECT_NE(c2.welcome()["connection"], w["connection"]);
  EXPECT_TRUE(test::wait_until([&] { return broker().connection_count() == 2; }, 5s));
}

TEST_F(BrokerTest, GetHandsOutRegisteredDescriptors) {
  register_memfd("mem", "memory-bytes-7f3a");
  register_memfd("page", "fence-page-19c2");
  broker().start();
  auto c = client();
  auto fds = c.get({"page", "mem"});
  ASSERT_EQ(fds.size(), 2u);
  EXPECT_EQ(contents(fds[0], 15), "fence-page-19c2");
  EXPECT_EQ(contents(fds[1], 17), "memory-bytes-7f3a");
  // The received descriptor is the same object: writes show through.
  std::memcpy(segs_[0].data(), "MEMORY", 6);
  EXPECT_EQ(contents(fds[1], 6), "MEMORY");
  // The broker keeps its own duplicate: closing ours changes nothing for the next client.
  segs_.clear();
  auto again = client("carol").get({"mem"});
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(contents(again[0], 6), "MEMORY");
  EXPECT_TRUE(c.get({}).empty());
}

TEST_F(BrokerTest, GetOfAnUnknownNameIsAnErrorAndKeepsTheConnection) {
  register_memfd("mem", "abc");
  broker().start();
  auto c = client();
  try {
    c.get({"mem", "nope"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no descriptor named 'nope'"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(c.request({{"op", "get"}, {"names", "mem"}}), Error);
  EXPECT_THROW(c.request({{"op", "get"}, {"names", {1, 2}}}), Error);
  EXPECT_THROW(c.request({{"op", "get"}, {"names", std::vector<std::string>(17, "mem")}}), Error);
  EXPECT_THROW(c.request({{"op", "get"}}), Error) << "missing 'names'";
  EXPECT_EQ(c.get({"mem"}).size(), 1u) << "the connection survives bad requests";
  EXPECT_EQ(broker().connection_count(), 1u);
}

TEST_F(BrokerTest, UnknownOpIsAnErrorReplyAndKeepsTheConnection) {
  register_memfd("mem", "abc");
  broker().start();
  auto c = client();
  try {
    c.request({{"op", "frobnicate"}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown op 'frobnicate'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(c.get({"mem"}).size(), 1u);
  EXPECT_FALSE(c.peer_gone());
}

TEST_F(BrokerTest, MalformedMessageAfterHelloIsAnErrorReplyAndKeepsTheConnection) {
  register_memfd("mem", "abc");
  broker().start();
  auto s = raw();
  s.send(nlohmann::json{{"op", "hello"}, {"abi", protocol::kAbiVersion}, {"client", "raw"}}.dump());
  EXPECT_EQ(reply(s)["op"], "welcome");
  for (std::string bad : std::vector<std::string>{"not json{", "[1,2]", "{}", R"({"op":5})",
                                                  std::string("\0\0\0", 3)}) {
    s.send(bad);
    auto r = reply(s);
    ASSERT_FALSE(r.is_null()) << "connection dropped after '" << bad << "'";
    EXPECT_EQ(r["op"], "error") << bad;
    EXPECT_FALSE(r.value("message", "").empty());
  }
  s.send(R"({"op":"get","names":["mem"]})");
  auto m = s.receive(5000ms);
  ASSERT_TRUE(m);
  EXPECT_EQ(parse_message(m->bytes)["op"], "fds");
  EXPECT_EQ(m->fds.size(), 1u);
}

TEST_F(BrokerTest, MalformedMessageBeforeHelloIsAnErrorReplyThenDrop) {
  broker().start();
  for (std::string bad :
       {"garbage", "[]", R"({"op":"get","names":["mem"]})", R"({"op":"status"})"}) {
    auto s = raw();
    s.send(bad);
    auto r = reply(s);
    ASSERT_FALSE(r.is_null()) << "no error reply for '" << bad << "'";
    EXPECT_EQ(r["op"], "error");
    EXPECT_TRUE(reply(s).is_null())
        << "a peer that fails the handshake is dropped: '" << bad << "'";
  }
  EXPECT_TRUE(test::wait_until([&] { return broker().connection_count() == 0; }, 5s));
}

TEST_F(BrokerTest, HelloWithMistypedFieldsIsRefusedAndDropped) {
  broker().start();
  for (std::string bad : {std::string(R"({"op":"hello","abi":"x"})"),
                          nlohmann::json{{"op", "hello"}, {"abi", protocol::kAbiVersion}, {"client", 7}}.dump()}) {
    auto s = raw();
    s.send(bad);
    auto r = reply(s);
    ASSERT_FALSE(r.is_null()) << bad;
    EXPECT_EQ(r["op"], "error") << bad;
    EXPECT_TRUE(reply(s).is_null()) << "a peer whose hello is malformed is dropped: " << bad;
  }
}

TEST_F(BrokerTest, HelloWithAnotherAbiIsRefusedAndDropped) {
  broker().start();
  auto s = raw();
  s.send(R"({"op":"hello","abi":999,"client":"future"})");
  auto r = reply(s);
  EXPECT_EQ(r["op"], "error");
  EXPECT_NE(r.value("message", "").find("999"), std::string::npos) << r.dump();
  EXPECT_TRUE(reply(s).is_null());
  auto s2 = raw();
  s2.send(R"({"op":"hello","client":"noabi"})");
  EXPECT_EQ(reply(s2)["op"], "error");
  EXPECT_TRUE(reply(s2).is_null());
  auto s3 = raw();
  s3.send(nlohmann::json{
      {"op", "hello"}, {"abi", protocol::kAbiVersion}, {"client", std::string(200, 'c')}}
              .dump());
  EXPECT_EQ(reply(s3)["op"], "error") << "over-long client name";
}

TEST_F(BrokerTest, HandlersGetTheRequestThePeerAndTheDescriptors) {
  std::mutex mu;
  PeerInfo seen;
  broker().on("echo", [&](const PeerInfo& p, const nlohmann::json& req,
                          std::vector<platform::UniqueFd>& fds) {
    std::lock_guard<std::mutex> lock(mu);
    seen = p;
    BrokerReply r;
    r.body = {{"op", "echoed"}, {"x", req.at("x")}, {"fds", fds.size()}};
    for (auto& f : fds) r.fds.push_back(f.get());  // borrowed until we return
    return r;
  });
  broker().on(
      "refuse",
      [](const PeerInfo&, const nlohmann::json&, std::vector<platform::UniqueFd>&) -> BrokerReply {
        throw ValidationError("refused on purpose");
      });
  broker().start();
  auto c = client("dave");
  auto seg = platform::Segment::create_anonymous("dp-test-echo", 4096, false);
  std::memcpy(seg.data(), "round-trip", 10);
  auto r = c.request({{"op", "echo"}, {"x", 41}}, {seg.fd().get()});
  EXPECT_EQ(r.body["op"], "echoed");
  EXPECT_EQ(r.body["x"], 41);
  EXPECT_EQ(r.body["fds"], 1);
  ASSERT_EQ(r.fds.size(), 1u);
  EXPECT_EQ(contents(r.fds[0], 10), "round-trip");
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(seen.client_name, "dave");
    EXPECT_EQ(seen.credentials.pid, ::getpid());
    EXPECT_EQ(seen.credentials.uid, ::getuid());
    EXPECT_EQ(seen.connection_id, c.welcome()["connection"].get<std::uint64_t>());
  }
  try {
    c.request({{"op", "refuse"}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("refused on purpose"), std::string::npos) << e.what();
  }
  EXPECT_THROW(c.request({{"op", "echo"}}), Error) << "handler's json::at() on a missing key";
  EXPECT_EQ(c.request({{"op", "echo"}, {"x", "again"}}).body["x"], "again");
}

TEST_F(BrokerTest, ClientRefusesAServerWithAnotherPid) {
  broker().start();
  auto me = platform::self_identity();
  platform::ProcessIdentity other{me.pid + 1, me.start_time};
  try {
    BrokerClient::connect(opts_.socket_name, "x", other, 5000ms);
    FAIL() << "trusted a broker whose pid is not the manifest's";
  } catch (const ValidationError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(std::to_string(me.pid)), std::string::npos) << m;
    EXPECT_NE(m.find(std::to_string(other.pid)), std::string::npos) << m;
  }
  // pid 0: no expectation.
  EXPECT_NO_THROW(BrokerClient::connect(opts_.socket_name, "x", {}, 5000ms));
}

TEST_F(BrokerTest, ConnectToNobody) {
  try {
    BrokerClient::connect(test::unique_name("dp-test-none-"), "x", {}, 1000ms);
    FAIL();
  } catch (const SystemError& e) {
    EXPECT_EQ(e.error_code(), ECONNREFUSED);
  }
}

TEST_F(BrokerTest, SilentServerTimesOut) {
  // Listens but never answers: connect() must give up after its timeout.
  auto listener = LocalSocket::listen(opts_.socket_name);
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(BrokerClient::connect(opts_.socket_name, "x", {}, 100ms), TimeoutError);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

TEST_F(BrokerTest, StopClosesEveryConnection) {
  broker().start();
  auto c = client();
  auto c2 = client("second");
  broker().stop();
  EXPECT_TRUE(test::wait_until([&] { return c.peer_gone() && c2.peer_gone(); }, 5s));
  EXPECT_THROW(c.request({{"op", "get"}, {"names", nlohmann::json::array()}}), PeerGoneError);
  broker().stop();  // idempotent
}

TEST_F(BrokerTest, DisconnectHandlerSeesGreetedPeersOnly) {
  record_disconnects();
  broker().start();
  {
    auto c = client("erin");
    auto s = raw();  // never says hello
    s.send("{}");
  }
  EXPECT_TRUE(test::wait_until([&] { return !disconnected().empty(); }, 5s));
  EXPECT_TRUE(test::wait_until([&] { return broker().connection_count() == 0; }, 5s));
  EXPECT_EQ(disconnected(), std::vector<std::string>{"erin"});
}

// disconnect() closes the one connection named, from any thread: the peer sees EOF, the
// disconnect handler runs for it, the others stay.
TEST_F(BrokerTest, DisconnectClosesTheNamedConnectionOnly) {
  std::mutex mu;
  std::vector<std::string> gone;
  broker().on_disconnect([&](const PeerInfo& p) {
    std::lock_guard<std::mutex> lock(mu);
    gone.push_back(p.client_name);
  });
  broker().start();
  auto keep = client("keep");
  auto cut = client("cut");
  broker().disconnect(cut.welcome()["connection"].get<std::uint64_t>());
  broker().disconnect(987654);  // nobody: nothing happens
  EXPECT_TRUE(test::wait_until([&] { return cut.peer_gone(); }, 5s));
  EXPECT_TRUE(test::wait_until([&] { return broker().connection_count() == 1; }, 5s));
  EXPECT_FALSE(keep.peer_gone());
  EXPECT_EQ(keep.request({{"op", "get"}, {"names", nlohmann::json::array()}}).body["op"], "fds");
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(gone, std::vector<std::string>{"cut"});
}

TEST_F(BrokerTest, ManyClientsAtOnce) {
  register_memfd("mem", "shared");
  broker().start();
  std::vector<LocalSocket> socks;
  for (int i = 0; i < 24; ++i) socks.push_back(raw());  // all pending before any hello
  for (auto& s : socks) s.send(nlohmann::json{{"op", "hello"}, {"abi", protocol::kAbiVersion}, {"client", "many"}}.dump());
  for (auto& s : socks) {
    auto r = reply(s);
    ASSERT_FALSE(r.is_null());
    EXPECT_EQ(r["op"], "welcome");
  }
  EXPECT_TRUE(test::wait_until([&] { return broker().connection_count() == 24; }, 5s));
}

// Clients arriving while others leave, round after round: the broker must serve every new one
// (a connection accepted in a poll round has no poll result yet in that round).
TEST_F(BrokerTest, ChurnOfClientsNeverDropsAGoodOne) {
  broker().start();
  std::mt19937_64 rng(test::test_seed());
  std::vector<LocalSocket> live;
  int lost = 0, served = 0;
  std::string first_loss;
  for (int round = 0; round < 150; ++round) {
    std::vector<LocalSocket> fresh;
    for (int i = 0; i < 3; ++i) fresh.push_back(raw());
    // Leave while the new ones arrive.
    for (std::size_t i = 0; i < live.size();) {
      if (rng() % 2) {
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
    for (auto& s : fresh) s.send(nlohmann::json{{"op", "hello"}, {"abi", protocol::kAbiVersion}, {"client", "churn"}}.dump());
    for (auto& s : fresh) {
      auto r = reply(s);
      if (r.is_null() || r["op"] != "welcome") {
        if (++lost == 1)
          first_loss = "round " + std::to_string(round) + ": " + (r.is_null() ? "EOF" : r.dump());
      } else {
        ++served;
        live.push_back(std::move(s));
      }
    }
  }
  EXPECT_EQ(lost, 0) << "well-behaved clients were dropped; first: " << first_loss;
  EXPECT_EQ(served, 450 - lost);
}

TEST_F(BrokerTest, TickRunsPeriodically) {
  std::atomic<int> ticks{0};
  broker().on_tick([&] { ++ticks; });
  broker().start();
  EXPECT_TRUE(test::wait_until([&] { return ticks.load() >= 3; }, 5s));
}

TEST_F(BrokerTest, SocketNameTaken) {
  broker();
  try {
    Broker second(opts_);
    FAIL() << "two brokers on one socket name";
  } catch (const SystemError& e) {
    EXPECT_EQ(e.error_code(), EADDRINUSE);
  }
}

TEST_F(BrokerTest, StartTwiceIsAPrecondition) {
  broker().start();
  EXPECT_THROW(broker().start(), PreconditionError);
}

// ------------------------------------------------------------------ across processes

TEST_F(BrokerMP, DisconnectHandlerRunsWhenTheClientIsKilled) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<PeerInfo> gone;
  broker().on_disconnect([&](const PeerInfo& p) {
    std::lock_guard<std::mutex> lock(mu);
    gone.push_back(p);
    cv.notify_all();
  });
  const auto server = platform::self_identity();
  // Fork before the broker thread exists; the child connects once told to.
  auto child = Child::fork([&](test::LineChannel& io) {
    if (io.read_line(-1ms) != std::optional<std::string>("go")) return 2;
    auto c = BrokerClient::connect(opts_.socket_name, "doomed", server, 5000ms);
    io.write_line("connected " + c.welcome()["connection"].dump());
    io.read_line(-1ms);
    return 0;
  });
  broker().start();
  child.io().write_line("go");
  auto conn = child.expect("connected", 10s);
  ASSERT_TRUE(conn) << child.transcript();
  EXPECT_TRUE(test::wait_until([&] { return broker().connection_count() == 1; }, 5s));
  child.kill(SIGKILL);
  ASSERT_TRUE(child.wait(10s));
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, 5s, [&] { return !gone.empty(); })) << "no disconnect callback";
  EXPECT_EQ(gone.size(), 1u);
  EXPECT_EQ(gone[0].client_name, "doomed");
  EXPECT_EQ(gone[0].credentials.pid, child.pid());
  EXPECT_EQ(std::to_string(gone[0].connection_id), *conn);
  lock.unlock();
  EXPECT_TRUE(test::wait_until([&] { return broker().connection_count() == 0; }, 5s));
}

TEST_F(BrokerMP, ClientSeesEofWhenTheBrokerProcessIsKilled) {
  auto child = Child::fork([&](test::LineChannel& io) {
    Broker b(opts_);
    b.start();
    io.write_line("up");
    io.read_line(-1ms);
    return 0;
  });
  ASSERT_TRUE(child.expect("up", 10s)) << child.transcript();
  auto c = BrokerClient::connect(opts_.socket_name, "watcher", {child.pid(), 0}, 5000ms);
  EXPECT_FALSE(c.peer_gone());
  child.kill(SIGKILL);
  ASSERT_TRUE(child.wait(10s));
  EXPECT_TRUE(c.peer_gone());
  EXPECT_THROW(c.request({{"op", "get"}, {"names", nlohmann::json::array()}}), PeerGoneError);
}

// A handler that throws something other than dp::Error or a JSON error (a bug in the handler,
// std::bad_alloc, ...) must cost that request, not the whole node.
TEST_F(BrokerMP, HandlerThrowingAStdExceptionDoesNotKillTheNode) {
  auto child = Child::fork([&](test::LineChannel& io) {
    Broker b(opts_);
    b.on("boom",
         [](const PeerInfo&, const nlohmann::json&, std::vector<platform::UniqueFd>&)
             -> BrokerReply { throw std::out_of_range("vector::at"); });
    b.start();
    io.write_line("up");
    io.read_line(-1ms);
    return 0;
  });
  ASSERT_TRUE(child.expect("up", 10s)) << child.transcript();
  auto c = BrokerClient::connect(opts_.socket_name, "x", {child.pid(), 0}, 5000ms);
  try {
    c.request({{"op", "boom"}}, {}, 5000ms);
    ADD_FAILURE() << "no error reply";
  } catch (const PeerGoneError& e) {
    auto st = child.wait(5s);
    ADD_FAILURE() << "the broker process died serving a throwing handler: "
                  << (st ? test::describe_status(*st) : std::string("still running"));
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("boom"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(child.wait(0ms).has_value()) << "the broker process must still run";
}

TEST_F(BrokerMP, PeerWithAnotherUidIsRefusedUnlessAllowed) {
  if (::getuid() != 0) GTEST_SKIP() << "needs root to run a client under another uid";
  const uid_t stranger = 65534;
  for (bool allowed : {false, true}) {
    SCOPED_TRACE(allowed ? "allowed" : "not allowed");
    opts_.socket_name = test::unique_name("dp-test-broker-");
    opts_.allow_uids =
        allowed ? std::vector<std::uint32_t>{7, stranger} : std::vector<std::uint32_t>{};
    broker_.reset();
    auto child = Child::fork([&](test::LineChannel& io) {
      if (io.read_line(-1ms) != std::optional<std::string>("go")) return 2;
      if (::setgid(stranger) != 0 || ::setuid(stranger) != 0) return 3;
      // The client side refuses a broker of another uid by itself...
      try {
        BrokerClient::connect(opts_.socket_name, "stranger", {}, 5000ms);
        io.write_line("client trusted a broker of another uid");
      } catch (const ValidationError&) {
        io.write_line("client refused");
      }
      // ...and the broker decides on its own whether to serve us.
      std::string got = "EOF";
      try {
        auto s = LocalSocket::connect(opts_.socket_name);
        s.send(nlohmann::json{{"op", "hello"}, {"abi", protocol::kAbiVersion}, {"client", "stranger"}}.dump());
        if (auto m = s.receive(5000ms)) got = m->bytes;
      } catch (const SystemError&) {
        // EPIPE/ECONNRESET: the broker closed the refused connection before our hello went out.
      }
      io.write_line("reply " + got);
      return 0;
    });
    broker().start();
    child.io().write_line("go");
    EXPECT_EQ(child.expect("client", 10s), std::optional<std::string>("refused"))
        << child.transcript();
    auto r = child.expect("reply", 10s);
    ASSERT_TRUE(r) << child.transcript();
    if (allowed) {
      EXPECT_NE(r->find("welcome"), std::string::npos) << *r;
      EXPECT_EQ(broker().refused_count(), 0u);
    } else {
      // The broker answers with the reason, then closes. The reason can be lost: closing a unix
      // socket with our unread hello in it makes our next read ECONNRESET. Either way: no welcome.
      EXPECT_TRUE(r->find("uid 65534 is not allowed") != std::string::npos || *r == "EOF") << *r;
      EXPECT_GE(broker().refused_count(), 1u);
    }
    ASSERT_TRUE(child.wait(10s));
    broker_.reset();
  }
}

}  // namespace
}  // namespace dp

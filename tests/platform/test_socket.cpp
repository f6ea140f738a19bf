// platform::LocalSocket: messages, descriptor passing, EOF, credentials; authorize_peer.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "directport/core/error.hpp"
#include "directport/platform/process.hpp"
#include "directport/platform/shm.hpp"
#include "directport/platform/socket.hpp"
#include "support/test_support.hpp"

namespace dp::platform {
namespace {

using namespace std::chrono_literals;
using dp::test::unique_name;

std::string random_text(std::size_t n) {
  std::mt19937_64 rng(dp::test::test_seed() + n);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>('a' + rng() % 26);
  return s;
}

// Sends `fd` through `from`, writes through the original and reads through the received one.
void check_fd_passing(LocalSocket& from, LocalSocket& to) {
  Segment seg = Segment::create_anonymous("dp-test-pass", 4096, false);
  std::string tag = random_text(32);
  from.send("take this", {seg.fd().get()});
  auto m = to.receive(5s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->bytes, "take this");
  ASSERT_EQ(m->fds.size(), 1u);
  EXPECT_NE(m->fds[0].get(), seg.fd().get()) << "a received descriptor is a new number";
  Segment peer = Segment::map_fd(std::move(m->fds[0]), 4096, Access::read_write);
  std::memcpy(seg.data(), tag.data(), tag.size());
  EXPECT_EQ(std::string(static_cast<const char*>(peer.data()), tag.size()), tag);
  std::string back = random_text(40);
  std::memcpy(static_cast<char*>(peer.data()) + 100, back.data(), back.size());
  EXPECT_EQ(std::string(static_cast<const char*>(seg.data()) + 100, back.size()), back);
}

TEST(Socket, PassesDescriptorsOverAPair) {
  auto [a, b] = LocalSocket::pair();
  check_fd_passing(a, b);
  check_fd_passing(b, a);
}

TEST(Socket, PassesDescriptorsOverListenAndConnect) {
  std::string name = unique_name("dp-test-sock-");
  LocalSocket server = LocalSocket::listen(name);
  LocalSocket client = LocalSocket::connect(name);
  std::optional<LocalSocket> conn;
  ASSERT_TRUE(dp::test::wait_until([&] { return (conn = server.accept()).has_value(); }, 5s));
  check_fd_passing(client, *conn);
  check_fd_passing(*conn, client);
}

TEST(SocketMP, AcceptDoesNotBlockAfterTheLastPendingConnection) {
  // The broker drains pending connections with `while (accept())`; the call after the last one
  // must return nullopt at once, not wait for the next client.
  std::string name = unique_name("dp-test-sock-");
  LocalSocket server = LocalSocket::listen(name);
  LocalSocket c1 = LocalSocket::connect(name);
  LocalSocket c2 = LocalSocket::connect(name);
  auto child = dp::test::Child::fork([&](dp::test::LineChannel& io) {
    int n = 0;
    while (server.accept()) ++n;
    io.write_line("drained " + std::to_string(n));
    return 0;
  });
  auto r = child.expect("drained", 3s);
  EXPECT_TRUE(r) << "LocalSocket::accept() blocked on a listener with no pending connection "
                    "(the listening socket is not non-blocking)";
  if (r) {
    EXPECT_EQ(*r, "2");
  }
}

TEST(Socket, MultipleDescriptorsArriveInOrder) {
  auto [a, b] = LocalSocket::pair();
  std::vector<Segment> segs;
  std::vector<int> fds;
  for (int i = 0; i < 16; ++i) {
    segs.push_back(Segment::create_anonymous("dp-test-n", 64, false));
    static_cast<unsigned char*>(segs.back().data())[0] = static_cast<unsigned char>(i + 1);
    fds.push_back(segs.back().fd().get());
  }
  a.send("", fds);  // an empty body with descriptors is a message, not EOF
  auto m = b.receive(5s);
  ASSERT_TRUE(m);
  ASSERT_EQ(m->fds.size(), 16u);
  for (int i = 0; i < 16; ++i) {
    Segment s = Segment::map_fd(std::move(m->fds[i]), 64, Access::read_only);
    EXPECT_EQ(static_cast<const unsigned char*>(s.data())[0], i + 1);
  }
}

TEST(Socket, MessageBounds) {
  auto [a, b] = LocalSocket::pair();
  // Exactly 64 KiB passes intact.
  std::string big = random_text(kMaxMessageBytes);
  a.send(big);
  auto m = b.receive(5s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->bytes, big);
  // One more byte is refused by the sender...
  EXPECT_THROW(a.send(big + "x"), PreconditionError);
  // ...and by the receiver, when a peer sends it anyway; the connection stays usable.
  std::string over = big + "x";
  ASSERT_EQ(::send(a.fd(), over.data(), over.size(), 0), static_cast<ssize_t>(over.size()));
  EXPECT_THROW(b.receive(5s), ValidationError);
  std::string way_over = random_text(2 * kMaxMessageBytes);
  ASSERT_EQ(::send(a.fd(), way_over.data(), way_over.size(), 0),
            static_cast<ssize_t>(way_over.size()));
  EXPECT_THROW(b.receive(5s), ValidationError);
  a.send("after");
  m = b.receive(5s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->bytes, "after");
}

TEST(Socket, TooManyDescriptorsAreRefusedWithoutLeaking) {
  auto [a, b] = LocalSocket::pair();
  std::vector<Segment> segs;
  std::vector<int> fds;
  for (int i = 0; i < 17; ++i) {
    segs.push_back(Segment::create_anonymous("dp-test-many", 64, false));
    fds.push_back(segs.back().fd().get());
  }
  EXPECT_THROW(a.send("x", fds), PreconditionError);
  // A raw sender that ignores the bound: the receiver refuses and closes what it got.
  msghdr msg{};
  char body = 'x';
  iovec iov{&body, 1};
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
  ASSERT_EQ(::sendmsg(a.fd(), &msg, 0), 1) << std::strerror(errno);
  int before = dp::test::count_open_fds();
  EXPECT_THROW(b.receive(5s), ValidationError);
  EXPECT_EQ(dp::test::count_open_fds(), before) << "descriptors of a refused message leaked";
}

TEST(Socket, ReceiveTimesOut) {
  auto [a, b] = LocalSocket::pair();
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(b.receive(50ms), TimeoutError);
  auto dt = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(dt, 45ms);
  EXPECT_LT(dt, 5s);
  EXPECT_THROW(b.receive(0ms), TimeoutError);
}

TEST(Socket, EofIsDetected) {
  auto [a, b] = LocalSocket::pair();
  EXPECT_FALSE(b.peer_closed());
  a.send("pending");
  EXPECT_FALSE(b.peer_closed()) << "a pending message is not EOF";
  auto m = b.receive(5s);
  ASSERT_TRUE(m);
  a = LocalSocket();  // close
  EXPECT_TRUE(b.peer_closed());
  EXPECT_FALSE(b.receive(5s).has_value());
  EXPECT_FALSE(b.receive(5s).has_value()) << "EOF stays EOF";
  // Sending to a closed peer raises (no SIGPIPE).
  EXPECT_THROW(b.send("anyone?"), SystemError);
}

TEST(Socket, PendingMessagesAreReadBeforeEof) {
  auto [a, b] = LocalSocket::pair();
  a.send("one");
  a.send("two");
  a = LocalSocket();
  auto m1 = b.receive(5s);
  auto m2 = b.receive(5s);
  ASSERT_TRUE(m1 && m2);
  EXPECT_EQ(m1->bytes, "one");
  EXPECT_EQ(m2->bytes, "two");
  EXPECT_FALSE(b.receive(5s));
}

TEST(SocketMP, PeerCredentialsNameTheOtherProcess) {
  std::string name = unique_name("dp-test-sock-");
  LocalSocket server = LocalSocket::listen(name);
  auto child = dp::test::Child::fork([&](dp::test::LineChannel& io) {
    LocalSocket c = LocalSocket::connect(name);
    auto cred = c.peer_credentials();
    io.write_line("server " + std::to_string(cred.pid));
    io.read_line(std::chrono::milliseconds(-1));
    return 0;
  });
  auto server_pid = child.expect("server", 10s);
  ASSERT_TRUE(server_pid) << child.transcript();
  EXPECT_EQ(*server_pid, std::to_string(::getpid())) << "a client sees the listener's pid";
  std::optional<LocalSocket> conn;
  ASSERT_TRUE(dp::test::wait_until([&] { return (conn = server.accept()).has_value(); }, 5s));
  auto cred = conn->peer_credentials();
  EXPECT_EQ(cred.pid, child.pid());
  EXPECT_EQ(cred.uid, ::getuid());
  EXPECT_EQ(cred.gid, ::getgid());
  // The connection is the liveness signal: killing the peer is EOF at once.
  EXPECT_FALSE(conn->peer_closed());
  child.kill(SIGKILL);
  ASSERT_TRUE(child.wait(10s));
  EXPECT_TRUE(conn->peer_closed());
  EXPECT_FALSE(conn->receive(5s));
}

TEST(Socket, PeerCredentialsOfAPairAreOurs) {
  auto [a, b] = LocalSocket::pair();
  auto cred = a.peer_credentials();
  EXPECT_EQ(cred.pid, ::getpid());
  EXPECT_EQ(cred.uid, ::getuid());
  EXPECT_EQ(cred.gid, ::getgid());
}

TEST(Socket, ListenTwiceOnOneNameFails) {
  std::string name = unique_name("dp-test-sock-");
  LocalSocket a = LocalSocket::listen(name);
  try {
    LocalSocket::listen(name);
    FAIL() << "two listeners on one abstract name";
  } catch (const SystemError& e) {
    EXPECT_EQ(e.error_code(), EADDRINUSE);
  }
}

TEST(Socket, ConnectToNobodyIsECONNREFUSED) {
  try {
    LocalSocket::connect(unique_name("dp-test-nobody-"));
    FAIL() << "connected to a name nobody listens on";
  } catch (const SystemError& e) {
    EXPECT_EQ(e.error_code(), ECONNREFUSED);
  }
}

TEST(Socket, BadNamesArePreconditions) {
  EXPECT_THROW(LocalSocket::listen(""), PreconditionError);
  EXPECT_THROW(LocalSocket::connect(std::string(200, 'a')), PreconditionError);
}

TEST(Socket, AuthorizePeerDecision) {
  const std::uint32_t me = 1000;
  EXPECT_TRUE(authorize_peer({42, me, 1000}, me, {}));
  EXPECT_FALSE(authorize_peer({42, 1001, 1001}, me, {})) << "another uid is refused";
  EXPECT_FALSE(authorize_peer({42, 0, 0}, me, {})) << "even root, unless allowed";
  EXPECT_TRUE(authorize_peer({42, 1001, 5}, me, {7, 1001})) << "an allowed uid is accepted";
  EXPECT_FALSE(authorize_peer({42, 1002, 5}, me, {7, 1001}));
  EXPECT_FALSE(authorize_peer({0, me, me}, me, {})) << "pid 0: no credentials, never trusted";
  EXPECT_FALSE(authorize_peer({-1, me, me}, me, {me}));
  EXPECT_FALSE(authorize_peer({0, 1001, 0}, me, {1001}));
}

}  // namespace
}  // namespace dp::platform

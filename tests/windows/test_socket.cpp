// Windows platform::LocalSocket: message pipes, handle passing between processes, peer identity,
// EOF, timeouts, bounds, and the pipe's security descriptor.
#include <windows.h>
#include <aclapi.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "directport/core/error.hpp"
#include "directport/platform/child.hpp"
#include "directport/platform/process.hpp"
#include "directport/platform/shm.hpp"
#include "directport/platform/socket.hpp"
#include "support.hpp"

namespace dp::platform {
namespace {

using namespace std::chrono_literals;

std::optional<LocalSocket> accept_within(LocalSocket& listener, std::chrono::milliseconds t) {
  std::optional<LocalSocket> c;
  wintest::wait_until([&] { return (c = listener.accept()).has_value(); }, t);
  return c;
}

TEST(WinSocket, PairKeepsMessageBoundaries) {
  auto [a, b] = LocalSocket::pair();
  a.send("one");
  a.send("");
  a.send(std::string(1000, 'z'));
  auto m1 = b.receive(5s);
  auto m2 = b.receive(5s);
  auto m3 = b.receive(5s);
  ASSERT_TRUE(m1 && m2 && m3);
  EXPECT_EQ(m1->bytes, "one");
  EXPECT_EQ(m2->bytes, "");
  EXPECT_EQ(m3->bytes, std::string(1000, 'z'));
  b.send("back");
  auto r = a.receive(5s);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->bytes, "back");
}

TEST(WinSocket, LargestMessageAndBounds) {
  auto [a, b] = LocalSocket::pair();
  std::string big(kMaxMessageBytes, 'q');
  big[12345] = 'r';
  std::thread t([&, &a = a] { a.send(big); });  // larger than what the pipe buffers at once
  auto m = b.receive(10s);
  t.join();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->bytes, big);
  EXPECT_THROW(a.send(std::string(kMaxMessageBytes + 1, 'x')), PreconditionError);
  std::vector<NativeHandle> too_many(kMaxMessageFds + 1, ::GetCurrentProcess());
  EXPECT_THROW(a.send("x", too_many), PreconditionError);
}

TEST(WinSocket, ReceiveTimesOutThenStillWorks) {
  auto [a, b] = LocalSocket::pair();
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(b.receive(50ms), TimeoutError);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 40ms);
  a.send("after");
  auto m = b.receive(5s);
  ASSERT_TRUE(m) << "a cancelled read must not eat the next message";
  EXPECT_EQ(m->bytes, "after");
}

TEST(WinSocket, ClosedPeerIsEOF) {
  auto [a, b] = LocalSocket::pair();
  a.send("last words");
  EXPECT_FALSE(b.peer_closed());
  a = LocalSocket();
  auto m = b.receive(5s);
  ASSERT_TRUE(m) << "what was sent before closing still arrives";
  EXPECT_EQ(m->bytes, "last words");
  EXPECT_EQ(b.receive(5s), std::nullopt);
  EXPECT_TRUE(b.peer_closed());
  EXPECT_THROW(b.send("into the void"), SystemError);
}

TEST(WinSocket, HandlesPassWithinAProcess) {
  auto [a, b] = LocalSocket::pair();
  Segment s = Segment::create_anonymous("dp-test-pass", 4096, false);
  std::memcpy(s.data(), "hello", 6);
  a.send("seg", {s.fd().get()});
  auto m = b.receive(5s);
  ASSERT_TRUE(m);
  ASSERT_EQ(m->fds.size(), 1u);
  EXPECT_NE(m->fds[0].get(), s.fd().get()) << "the receiver owns a handle of its own";
  Segment r = Segment::map_fd(std::move(m->fds[0]), 4096, Access::read_write);
  EXPECT_STREQ(static_cast<const char*>(r.data()), "hello");
  static_cast<char*>(r.data())[0] = 'j';
  EXPECT_EQ(static_cast<const char*>(s.data())[0], 'j');
}

TEST(WinSocket, ListenConnectAcceptAndNames) {
  const std::string name = wintest::unique_name("dp-test-sock-");
  try {
    LocalSocket::connect(name);
    FAIL() << "connect with nobody listening succeeded";
  } catch (const SystemError& e) {
    EXPECT_EQ(e.error_code(), ECONNREFUSED) << e.what();
  }
  LocalSocket l = LocalSocket::listen(name);
  EXPECT_FALSE(l.accept()) << "nothing pending";
  try {
    LocalSocket::listen(name);
    FAIL() << "a second listener on a taken name succeeded";
  } catch (const SystemError& e) {
    EXPECT_EQ(e.error_code(), EADDRINUSE) << e.what();
  }
  // Several clients, one after another without accept() in between: each gets served.
  LocalSocket c1 = LocalSocket::connect(name);
  auto s1 = accept_within(l, 5s);
  ASSERT_TRUE(s1);
  LocalSocket c2 = LocalSocket::connect(name);
  auto s2 = accept_within(l, 5s);
  ASSERT_TRUE(s2);
  c1.send("from 1");
  c2.send("from 2");
  EXPECT_EQ(s2->receive(5s)->bytes, "from 2");
  EXPECT_EQ(s1->receive(5s)->bytes, "from 1");
  // Both ends see this process as the peer, with our uid.
  auto cred = s1->peer_credentials();
  EXPECT_EQ(cred.pid, static_cast<std::int64_t>(::GetCurrentProcessId()));
  EXPECT_EQ(cred.uid, current_uid());
  EXPECT_TRUE(authorize_peer(cred, current_uid(), {}));
  EXPECT_EQ(c1.peer_credentials().pid, static_cast<std::int64_t>(::GetCurrentProcessId()));
}

// Writes one raw pipe message, bypassing LocalSocket::send (a peer that does not follow the format).
void write_raw(NativeHandle pipe, const std::string& bytes) {
  OVERLAPPED ov{};
  ov.hEvent = ::CreateEventW(nullptr, TRUE, FALSE, nullptr);
  DWORD n = 0;
  if (!::WriteFile(pipe, bytes.data(), static_cast<DWORD>(bytes.size()), nullptr, &ov)) {
    ASSERT_EQ(::GetLastError(), static_cast<DWORD>(ERROR_IO_PENDING));
  }
  ASSERT_TRUE(::GetOverlappedResult(pipe, &ov, &n, TRUE));
  ::CloseHandle(ov.hEvent);
}

std::string wire(std::uint32_t magic, std::uint32_t count, const std::vector<std::uint64_t>& handles,
                 const std::string& payload) {
  std::string w(8 + 8 * handles.size(), '\0');
  std::memcpy(w.data(), &magic, 4);
  std::memcpy(w.data() + 4, &count, 4);
  if (!handles.empty()) std::memcpy(w.data() + 8, handles.data(), 8 * handles.size());
  return w + payload;
}

TEST(WinSocket, ReceiveValidatesWhatThePeerSent) {
  auto [a, b] = LocalSocket::pair();
  const std::uint32_t magic = 0x31575044;
  write_raw(a.fd(), "tiny");
  EXPECT_THROW(b.receive(5s), ValidationError) << "shorter than the header";
  write_raw(a.fd(), wire(0x12345678, 0, {}, "x"));
  EXPECT_THROW(b.receive(5s), ValidationError) << "no magic";
  {
    // More than the pipe buffers: written from another thread while this one reads.
    std::thread t([&, h = a.fd()] { write_raw(h, wire(magic, 0, {}, std::string(kMaxMessageBytes + 500, 'o'))); });
    EXPECT_THROW(b.receive(5s), ValidationError) << "over 64 KiB";
    t.join();
  }
  write_raw(a.fd(), wire(magic, 3, {0x4, 0x8}, ""));
  EXPECT_THROW(b.receive(5s), ValidationError) << "fewer handles than it says";
  write_raw(a.fd(), wire(magic, 1, {0x7ffffff0}, "p"));
  EXPECT_THROW(b.receive(5s), ValidationError) << "a value that is no open handle of ours";
  write_raw(a.fd(), wire(magic, 17, std::vector<std::uint64_t>(17, 0x7ffffff0), ""));
  EXPECT_THROW(b.receive(5s), ValidationError) << "more than 16 handles";
  // After all that, the stream of messages is still intact.
  a.send("fine");
  auto m = b.receive(5s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->bytes, "fine");
}

TEST(WinSocket, AuthorizePeerDecisions) {
  EXPECT_TRUE(authorize_peer({10, 1000, 0}, 1000, {}));
  EXPECT_FALSE(authorize_peer({10, 1001, 0}, 1000, {}));
  EXPECT_TRUE(authorize_peer({10, 1001, 0}, 1000, {1001}));
  EXPECT_FALSE(authorize_peer({0, 1000, 0}, 1000, {})) << "unavailable credentials are never trusted";
  EXPECT_FALSE(authorize_peer({10, 0xFFFFFFFEu, 0}, 1000, {0xFFFFFFFEu})) << "a foreign SID is never allowed";
}

TEST(WinSocket, NonblockingSendToAPeerThatDoesNotReadIsEAGAIN) {
  auto [a, b] = LocalSocket::pair();
  std::string chunk(60 * 1024, 'f');
  int sent = 0;
  bool eagain = false;
  for (; sent < 200 && !eagain; ++sent) {
    try {
      a.send(chunk, {}, /*nonblocking=*/true);
    } catch (const SystemError& e) {
      ASSERT_EQ(e.error_code(), EAGAIN) << e.what();
      eagain = true;
    }
  }
  EXPECT_TRUE(eagain) << "200 x 60 KiB went into a pipe nobody reads";
  // What was accepted arrives whole, and nothing of the refused message does.
  for (int i = 0; i + 1 < sent; ++i) {
    auto m = b.receive(5s);
    ASSERT_TRUE(m);
    ASSERT_EQ(m->bytes.size(), chunk.size());
  }
  EXPECT_THROW(b.receive(100ms), TimeoutError);
}

TEST(WinSocket, PipeSecurityDescriptorGrantsTheCurrentUserOnly) {
  LocalSocket l = LocalSocket::listen(wintest::unique_name("dp-test-sd-"));
  PACL dacl = nullptr;
  PSECURITY_DESCRIPTOR sd = nullptr;
  ASSERT_EQ(::GetSecurityInfo(l.fd(), SE_KERNEL_OBJECT, DACL_SECURITY_INFORMATION, nullptr, nullptr, &dacl,
                              nullptr, &sd),
            static_cast<DWORD>(ERROR_SUCCESS));
  ASSERT_NE(dacl, nullptr);
  ASSERT_EQ(dacl->AceCount, 1);
  void* ace = nullptr;
  ASSERT_TRUE(::GetAce(dacl, 0, &ace));
  auto* allowed = static_cast<ACCESS_ALLOWED_ACE*>(ace);
  HANDLE token = nullptr;
  ASSERT_TRUE(::OpenProcessToken(::GetCurrentProcess(), TOKEN_QUERY, &token));
  unsigned char buf[256];
  DWORD len = 0;
  ASSERT_TRUE(::GetTokenInformation(token, TokenUser, buf, sizeof buf, &len));
  ::CloseHandle(token);
  EXPECT_TRUE(::EqualSid(&allowed->SidStart, reinterpret_cast<TOKEN_USER*>(buf)->User.Sid));
  ::LocalFree(sd);
}

TEST(WinSocketMP, HandlePassingBetweenTwoProcesses) {
  const std::string name = wintest::unique_name("dp-test-mp-");
  LocalSocket l = LocalSocket::listen(name);
  auto child = Child::spawn({wintest::helper_path(), "pipe-client", name}, {true, true});
  auto conn = accept_within(l, 20s);
  ASSERT_TRUE(conn) << "helper never connected: " << (child.wait_for(0ms), child.output());

  // Peer identity: the helper's pid and our user, as SO_PEERCRED would say.
  auto cred = conn->peer_credentials();
  EXPECT_EQ(cred.pid, child.pid());
  EXPECT_EQ(cred.uid, current_uid());
  EXPECT_TRUE(authorize_peer(cred, current_uid(), {}));

  // Send a sealed segment; the helper maps it read-only, sums it, and fails to map it writable.
  Segment seg = Segment::create_anonymous("dp-test-mp", 4096, /*seal_writes=*/true);
  unsigned long long sum = 0;
  for (std::size_t i = 0; i < seg.size(); ++i) {
    static_cast<unsigned char*>(seg.data())[i] = static_cast<unsigned char>(i * 31 + 1);
    sum += static_cast<unsigned char>(i * 31 + 1);
  }
  conn->send("size=4096", {seg.fd().get()});
  auto reply = conn->receive(20s);
  ASSERT_TRUE(reply) << "helper: " << (child.wait_for(0ms), child.output());
  EXPECT_NE(reply->bytes.find("sum=" + std::to_string(sum) + " "), std::string::npos) << reply->bytes;
  EXPECT_NE(reply->bytes.find("rw=EPERM"), std::string::npos) << reply->bytes;
  EXPECT_NE(reply->bytes.find("server_pid=" + std::to_string(::GetCurrentProcessId()) + " "), std::string::npos)
      << reply->bytes;
  EXPECT_NE(reply->bytes.find("server_uid=" + std::to_string(current_uid()) + " "), std::string::npos)
      << reply->bytes;

  // Its segment came back the other way, as a handle of ours, with its bytes.
  ASSERT_EQ(reply->fds.size(), 1u);
  Segment theirs = Segment::map_fd(std::move(reply->fds[0]), 8192, Access::read_only);
  bool same = true;
  for (std::size_t i = 0; i < theirs.size(); ++i) {
    same &= static_cast<const unsigned char*>(theirs.data())[i] == static_cast<unsigned char>(i * 7 + 3);
  }
  EXPECT_TRUE(same);
  EXPECT_THROW(Segment::map_fd(theirs.fd().dup(), 8192, Access::read_write), SystemError)
      << "the helper sealed it: read-only here too";

  conn = std::nullopt;  // EOF for the helper, which then exits 0
  EXPECT_EQ(child.wait_for(20s), 0) << child.output();
  // The helper is gone; the memory it created is still mapped here and intact.
  EXPECT_EQ(static_cast<const unsigned char*>(theirs.data())[100], static_cast<unsigned char>(100 * 7 + 3));
}

TEST(WinSocketMP, PeerDeathIsEOF) {
  const std::string name = wintest::unique_name("dp-test-death-");
  LocalSocket l = LocalSocket::listen(name);
  auto child = Child::spawn({wintest::helper_path(), "connect-exit", name}, {true});
  auto conn = accept_within(l, 20s);
  ASSERT_TRUE(conn) << child.output();
  EXPECT_EQ(conn->receive(20s), std::nullopt) << "the dead peer's pipe reads as EOF";
  EXPECT_TRUE(conn->peer_closed());
  EXPECT_EQ(child.wait_for(20s), 0);
}

}  // namespace
}  // namespace dp::platform

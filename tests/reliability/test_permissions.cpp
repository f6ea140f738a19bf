// Permissions: everything a node creates is its user's alone. Named and anonymous segments are
// mode 0600 and owned by the user; the broker socket lives in the abstract namespace (no file, so
// no mode: peers are checked by SO_PEERCRED instead); another user can neither open the manifest,
// nor reopen the node's memory through /proc, nor get anything from its broker. The unit tests of
// the pieces: Shm.CreatedWithMode0600, Socket.AuthorizePeerDecision,
// BrokerMP.PeerWithAnotherUidIsRefusedUnlessAllowed, Manifest.HeaderNamingAnotherUidIsRefused,
// Manifest.SegmentOwnedByAnotherUserIsRefusedAndNotRemoved.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "directport/core/broker.hpp"
#include "directport/core/manifest.hpp"
#include "directport/core/names.hpp"
#include "directport/core/node.hpp"
#include "directport/platform/shm.hpp"
#include "directport/platform/socket.hpp"
#include "support/fixtures.hpp"
#include "support/frames.hpp"
#include "support/system_probe.hpp"

namespace dp {
namespace {

using namespace std::chrono_literals;

NodeOptions node_opts(const std::string& domain, const std::string& name) {
  NodeOptions o;
  o.name = name;
  o.domain = domain;
  o.type = "test";
  return o;
}

std::string mode_and_owner(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return std::string("fstat: ") + std::strerror(errno);
  char buf[64];
  std::snprintf(buf, sizeof buf, "mode %04o uid %u", st.st_mode & 07777, st.st_uid);
  return buf;
}

class Permissions : public test::DomainTest {};
using PermissionsMP = Permissions;

TEST_F(Permissions, EverySegmentOfANodeIsMode0600AndOurs) {
  const std::string mine = "mode 0600 uid " + std::to_string(::getuid());
  Node node(node_opts(domain_, "src"));
  node.advertise(test::host_spec("frames", 4096));
  // The manifest, by its name in /dev/shm.
  auto path = "/dev/shm" + manifest_segment_name(domain_, "src");
  int mfd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(mfd, 0) << path;
  EXPECT_EQ(mode_and_owner(mfd), mine) << path;
  ::close(mfd);
  // What a subscriber is handed (stream memory, ready page) and what it hands over (its
  // release page): anonymous, but reachable through /proc/PID/fd by whoever may ptrace us.
  auto r = ManifestReader::open(domain_, "src");
  auto c = BrokerClient::connect(r.json()["broker"].get<std::string>(), "probe", r.owner());
  auto page = platform::Segment::create_anonymous("dp-release-probe", protocol::kFencePageBytes, false);
  EXPECT_EQ(mode_and_owner(page.fd().get()), mine) << "release page";
  auto reply = c.request({{"op", "subscribe"}, {"stream", "frames"}}, {page.fd().get()});
  ASSERT_EQ(reply.fds.size(), 2u);
  EXPECT_EQ(mode_and_owner(reply.fds[0].get()), mine) << "stream memory";
  EXPECT_EQ(mode_and_owner(reply.fds[1].get()), mine) << "ready page";
}

TEST_F(Permissions, TheBrokerSocketIsAbstractAndGoesWithTheNode) {
  const auto prefix = test::broker_socket_prefix(domain_, "src");
  {
    Node node(node_opts(domain_, "src"));
    auto name = node.broker().socket_name();
    EXPECT_EQ(name.rfind(prefix, 0), 0u) << name;
    auto listed = test::abstract_sockets(prefix);
    EXPECT_NE(std::find(listed.begin(), listed.end(), name), listed.end())
        << "/proc/net/unix lists @" << name << " (abstract: no file in any directory)";
    struct stat st {};
    EXPECT_NE(::stat(name.c_str(), &st), 0) << "no file named like the socket";
  }
  EXPECT_TRUE(test::abstract_sockets(prefix).empty()) << "the socket ends with the node";
}

// Runs as root only: a child drops to another uid and tries everything a stranger could.
TEST_F(PermissionsMP, AnotherUserCanNeitherOpenNorUseANode) {
  if (::getuid() != 0) GTEST_SKIP() << "needs root to run a process under another uid";
  const uid_t stranger = 65534;
  // Forked before the node's broker thread exists; told where to look once it does.
  auto child = test::Child::fork([&](test::LineChannel& io) {
    auto manifest = io.read_line(-1ms), memfd = io.read_line(-1ms), broker = io.read_line(-1ms);
    if (!manifest || !memfd || !broker) return 2;
    if (::setgid(stranger) != 0 || ::setuid(stranger) != 0) return 3;
    int fd = ::open(manifest->c_str(), O_RDONLY | O_CLOEXEC);
    io.write_line(std::string("manifest ") + (fd >= 0 ? "opened" : std::strerror(errno)));
    fd = ::open(memfd->c_str(), O_RDONLY | O_CLOEXEC);
    io.write_line(std::string("memfd ") + (fd >= 0 ? "opened" : std::strerror(errno)));
    try {
      // The broker answers at accept, before any request (sending one could race its close).
      auto s = platform::LocalSocket::connect(*broker);
      auto first = s.receive(5000ms);
      auto second = first ? s.receive(5000ms) : std::nullopt;
      io.write_line("broker " + (first ? first->bytes : std::string("eof")) + (second ? " then more" : " then eof"));
    } catch (const std::exception& e) {
      io.write_line(std::string("broker exception ") + e.what());
    }
    return 0;
  });
  Node node(node_opts(domain_, "src"));
  node.advertise(test::host_spec("frames", 4096));
  // The node's stream memory, by its descriptor in this process.
  std::string memfd;
  for (int fd = 0; fd < 1024 && memfd.empty(); ++fd) {
    char link[PATH_MAX] = {};
    auto proc = "/proc/self/fd/" + std::to_string(fd);
    if (::readlink(proc.c_str(), link, sizeof link - 1) > 0 && std::strstr(link, "memfd:dp-mem-src.frames")) {
      memfd = "/proc/" + std::to_string(::getpid()) + "/fd/" + std::to_string(fd);
    }
  }
  ASSERT_FALSE(memfd.empty()) << "the stream memory's descriptor was not found";
  ASSERT_EQ(::access(memfd.c_str(), R_OK), 0) << "we, its owner, can reopen it";
  child.io().write_line("/dev/shm" + manifest_segment_name(domain_, "src"));
  child.io().write_line(memfd);
  child.io().write_line(node.broker().socket_name());
  auto m = child.expect("manifest", 10s), f = child.expect("memfd", 10s), b = child.expect("broker", 10s);
  ASSERT_TRUE(m && f && b) << child.transcript();
  EXPECT_EQ(*m, std::strerror(EACCES)) << "another user opened the manifest";
  EXPECT_EQ(*f, std::strerror(EACCES)) << "another user reopened the stream memory through /proc";
  EXPECT_EQ(b->rfind(R"({"message":"uid 65534 is not allowed by this broker","op":"error"} then eof)", 0), 0u) << *b;
  auto st = child.wait(10s);
  ASSERT_TRUE(st);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << test::describe_status(*st);
  EXPECT_GE(node.broker().refused_count(), 1u);
}

}  // namespace
}  // namespace dp

// Discovery: live and dead nodes, removal of litter, reuse of a dead node's name.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "directport/core/discovery.hpp"
#include "directport/core/error.hpp"
#include "directport/core/names.hpp"
#include "directport/core/node.hpp"
#include "support/fixtures.hpp"

namespace dp {
namespace {

using namespace std::chrono_literals;
using test::Child;

class Discovery : public test::DomainTest {
 protected:
  NodeOptions opts(const std::string& name) {
    NodeOptions o;
    o.name = name;
    o.domain = domain_;
    o.type = "test";
    return o;
  }
  const NodeEntry* find(const std::vector<NodeEntry>& v, const std::string& name) {
    for (auto& e : v) {
      if (e.name == name) return &e;
    }
    return nullptr;
  }
  // A dp::Node in a helper process; returns once its manifest is up.
  Child start_node(const std::string& name) {
    auto c = Child::helper({"node", domain_, name});
    auto r = c.expect("ready", 10s);
    EXPECT_TRUE(r) << "helper node did not start: " << c.transcript();
    return c;
  }
};
using DiscoveryMP = Discovery;

TEST_F(Discovery, EmptyDomain) {
  EXPECT_TRUE(list_nodes(domain_).empty());
  EXPECT_TRUE(remove_stale(domain_, 0s).empty());
}

TEST_F(Discovery, LiveNodeIsListedAsLive) {
  {
    Node n(opts("cam"));
    auto v = list_nodes(domain_);
    ASSERT_EQ(v.size(), 1u);
    const auto& e = v[0];
    EXPECT_EQ(e.name, "cam");
    EXPECT_EQ(e.segment, manifest_segment_name(domain_, "cam"));
    ASSERT_TRUE(e.liveness.has_value()) << e.problem;
    EXPECT_EQ(*e.liveness, Liveness::live);
    EXPECT_TRUE(e.problem.empty()) << e.problem;
    EXPECT_EQ(e.owner, platform::self_identity());
    EXPECT_EQ(e.state, protocol::NodeState::starting);
    EXPECT_EQ(e.doc.value("name", ""), "cam");
    EXPECT_EQ(e.doc.value("type", ""), "test");
    n.set_running();
    EXPECT_EQ(list_nodes(domain_).at(0).state, protocol::NodeState::running);
    EXPECT_TRUE(remove_stale(domain_, 0s).empty()) << "a live node is never removed";
    EXPECT_EQ(list_nodes(domain_).size(), 1u);
  }
  EXPECT_TRUE(list_nodes(domain_).empty()) << "a node withdraws its manifest";
}

TEST_F(Discovery, SeveralNodesAndDomainsStayApart) {
  std::string other = test::unique_domain();
  Node a(opts("a")), b(opts("b"));
  NodeOptions oc = opts("a");
  oc.domain = other;
  Node c(oc);
  auto v = list_nodes(domain_);
  std::vector<std::string> names;
  for (auto& e : v) names.push_back(e.name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(list_nodes(other).size(), 1u);
}

TEST_F(Discovery, SecondNodeWithTheSameNameInOneProcess) {
  Node a(opts("twin"));
  try {
    Node b(opts("twin"));
    FAIL() << "two live nodes with one name";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pid " + std::to_string(::getpid())), std::string::npos)
        << e.what();
  }
  ASSERT_EQ(list_nodes(domain_).size(), 1u);
  EXPECT_EQ(*list_nodes(domain_)[0].liveness, Liveness::live);
}

TEST_F(Discovery, InvalidManifestIsReportedAndRemovedOnlyAfterTheGrace) {
  auto name = manifest_segment_name(domain_, "junk");
  {
    auto s = platform::Segment::create_named(name, 4096);
    std::memset(s.data(), 0x5a, 4096);
    s.disown_name();
  }
  auto v = list_nodes(domain_);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].name, "junk");
  EXPECT_FALSE(v[0].problem.empty());
  EXPECT_NE(v[0].problem.find("magic"), std::string::npos) << v[0].problem;
  ASSERT_TRUE(v[0].liveness.has_value()) << "nobody holds its lock: its writer is gone";
  EXPECT_EQ(*v[0].liveness, Liveness::dead);
  // Young: it may be a manifest being created right now.
  EXPECT_TRUE(remove_stale(domain_, 3600s).empty());
  EXPECT_EQ(test::shm_entries(domain_).size(), 1u);
  EXPECT_EQ(remove_stale(domain_, 0s), std::vector<std::string>{"junk"});
  EXPECT_TRUE(test::shm_entries(domain_).empty());
}

TEST_F(Discovery, UnparsableNamesAreNotListed) {
  auto prefix = manifest_prefix(domain_);
  {
    auto s = platform::Segment::create_named("/" + prefix + "not.a.node", 64);
    s.disown_name();
  }
  EXPECT_TRUE(list_nodes(domain_).empty());
  platform::Segment::unlink("/" + prefix + "not.a.node");
}

TEST_F(DiscoveryMP, HelperNodeIsLiveWithItsPid) {
  auto child = start_node("far");
  auto v = list_nodes(domain_);
  auto* e = find(v, "far");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->owner.pid, child.pid());
  ASSERT_TRUE(e->liveness);
  EXPECT_EQ(*e->liveness, Liveness::live);
  // A clean stop withdraws the manifest.
  child.io().write_line("stop");
  auto st = child.wait(10s);
  ASSERT_TRUE(st);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << test::describe_status(*st);
  EXPECT_TRUE(list_nodes(domain_).empty());
}

TEST_F(DiscoveryMP, KilledNodeIsDeadAndRemoveStaleCleansUp) {
  auto child = start_node("victim");
  pid_t pid = child.pid();
  child.kill(SIGKILL);
  ASSERT_TRUE(child.wait(10s));
  auto v = list_nodes(domain_);
  auto* e = find(v, "victim");
  ASSERT_NE(e, nullptr) << "SIGKILL leaves the manifest behind";
  EXPECT_EQ(e->owner.pid, pid);
  ASSERT_TRUE(e->liveness);
  EXPECT_EQ(*e->liveness, Liveness::dead);
  EXPECT_TRUE(e->problem.empty()) << e->problem;
  EXPECT_EQ(remove_stale(domain_), std::vector<std::string>{"victim"});
  EXPECT_TRUE(test::shm_entries(domain_).empty());
  EXPECT_TRUE(list_nodes(domain_).empty());
}

TEST_F(DiscoveryMP, NameOfANodeKilledWithSigkillCanBeReused) {
  auto first = start_node("phoenix");
  first.kill(SIGKILL);
  ASSERT_TRUE(first.wait(10s));
  ASSERT_EQ(test::shm_entries(domain_).size(), 1u);
  {
    Node again(opts("phoenix"));  // removes the litter itself
    auto v = list_nodes(domain_);
    ASSERT_EQ(v.size(), 1u);
    EXPECT_EQ(v[0].owner, platform::self_identity());
    EXPECT_EQ(*v[0].liveness, Liveness::live);
  }
  // And once more across processes.
  auto second = start_node("phoenix");
  second.kill(SIGKILL);
  ASSERT_TRUE(second.wait(10s));
  auto third = start_node("phoenix");
  auto v = list_nodes(domain_);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].owner.pid, third.pid());
  third.io().write_line("stop");
  ASSERT_TRUE(third.wait(10s));
}

TEST_F(DiscoveryMP, NameOfALiveNodeIsRefusedNamingItsPid) {
  auto child = start_node("owner");
  try {
    Node dup(opts("owner"));
    FAIL() << "took the name of a live node";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("pid " + std::to_string(child.pid())), std::string::npos) << m;
    EXPECT_NE(m.find("'owner'"), std::string::npos) << m;
  }
  auto v = list_nodes(domain_);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].owner.pid, child.pid()) << "the live node's manifest is untouched";
  EXPECT_EQ(*v[0].liveness, Liveness::live);
  child.io().write_line("stop");
  ASSERT_TRUE(child.wait(10s));
}

// `directport ls` (list_nodes) probes a manifest's lock to tell whether its owner is gone; while
// it holds the probe, a restart of the dead node must not be refused as "in use by" a dead pid.
TEST_F(DiscoveryMP, RestartIsNotRefusedWhileAProbeHoldsADeadNodesLock) {
  auto first = start_node("busy");
  pid_t dead = first.pid();
  first.kill(SIGKILL);
  ASSERT_TRUE(first.wait(10s));
  auto probe = platform::Segment::open_named(manifest_segment_name(domain_, "busy"),
                                             platform::Access::read_only);
  ASSERT_TRUE(probe.try_lock_exclusive()) << "the owner is dead: its lock is free";
  try {
    Node again(opts("busy"));
    EXPECT_EQ(list_nodes(domain_).size(), 1u);
  } catch (const Error& e) {
    ADD_FAILURE() << "restart refused while a discovery probe held the dead node's lock (dead pid "
                  << dead << "): " << e.what();
  }
}

}  // namespace
}  // namespace dp

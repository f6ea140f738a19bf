// Names cannot escape their namespace. Every object a node makes is named from (uid, domain, node,
// stream) and every one of those names is checked before it is used: path separators, '.', '..',
// empty, overlong and non-ASCII names are refused by every entry point (Node, advertise,
// Subscriber, a peer's subscribe request), and a refused name leaves nothing behind, in /dev/shm
// or anywhere else. The longest valid names work end to end. The rule itself is tested in
// tests/core/test_names.cpp (Names.*), configs in tests/core/test_graph.cpp
// (GraphConfig.InvalidNodeNames, BadDomain, PublishedStreamNamesAreValidated), the command line in
// tests/cli/test_cli.cpp (CliMP.NodeWithABadNameNamesTheRule), manifests from other processes in
// tests/core/test_manifest.cpp (ManifestJson.BadNames) and tests/core/test_discovery.cpp
// (Discovery.UnparsableNamesAreNotListed).
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <set>

#include "directport/core/broker.hpp"
#include "directport/core/error.hpp"
#include "directport/core/manifest.hpp"
#include "directport/core/names.hpp"
#include "directport/core/node.hpp"
#include "directport/core/stream.hpp"
#include "support/fixtures.hpp"
#include "support/frames.hpp"

namespace dp {
namespace {

using namespace std::chrono_literals;

std::set<std::string> listing(const std::string& dir) {
  std::set<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) out.insert(e->d_name);
    ::closedir(d);
  }
  return out;
}

const std::vector<std::string>& bad_names() {
  static const std::vector<std::string> names{"..",
                                              ".",
                                              "../x",
                                              "../../tmp/dp-escape",
                                              "a/b",
                                              "/abs",
                                              "x/..",
                                              "a.b",
                                              "",
                                              std::string(49, 'n'),
                                              std::string(300, 'n'),
                                              "a b",
                                              std::string("a\0b", 3),
                                              "caf\xc3\xa9",
                                              "-lead",
                                              "a\\b",
                                              "a\nb"};
  return names;
}

class Namespaces : public test::DomainTest {
 protected:
  NodeOptions node_opts(const std::string& domain, const std::string& name) {
    NodeOptions o;
    o.name = name;
    o.domain = domain;
    o.type = "test";
    return o;
  }
};

TEST_F(Namespaces, BadNamesAreRefusedEverywhereAndLeaveNothingBehind) {
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& bad : bad_names()) {
    SCOPED_TRACE("name '" + bad + "'");
    EXPECT_THROW(Node(node_opts(domain_, bad)), ValidationError);
    if (!bad.empty()) {  // "": the default
      EXPECT_THROW(Node(node_opts(bad, "node")), ValidationError);
    }
    EXPECT_THROW(ManifestWriter::create(domain_, bad), ValidationError);
    EXPECT_THROW(ManifestWriter::create(bad, "node"), ValidationError);
    EXPECT_THROW(broker_socket_name(bad, "node"), ValidationError);
    EXPECT_THROW(broker_socket_name(domain_, bad), ValidationError);
    SubscribeOptions so;
    so.domain = domain_;
    EXPECT_THROW(Subscriber(bad, "frames", so), ValidationError);
    EXPECT_THROW(Subscriber("node", bad, so), ValidationError);
    so.domain = bad;
    if (!bad.empty()) {  // "": the default
      EXPECT_THROW(Subscriber("node", "frames", so), ValidationError);
    }
  }
  // At once: a bad name is no reason to wait for a producer (SubscribeOptions::wait_for_producer).
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  {
    Node node(node_opts(domain_, "src"));
    for (auto& bad : bad_names()) {
      EXPECT_THROW(node.advertise(test::host_spec(bad, 64)), ValidationError) << "stream '" << bad << "'";
      EXPECT_THROW(node.subscribe("src/" + bad), ValidationError) << "stream '" << bad << "'";
    }
    EXPECT_EQ(node.find(".."), nullptr);
  }
  // (Other tests may run meanwhile: look for what ours could have made, not for any change.)
  for (auto& e : listing("/dev/shm")) {
    EXPECT_EQ(e.find(domain_), std::string::npos) << "a refused name created /dev/shm/" << e;
    EXPECT_EQ(e.find("escape"), std::string::npos) << "a refused name created /dev/shm/" << e;
  }
  struct stat st {};
  EXPECT_NE(::stat("/tmp/dp-escape", &st), 0) << "a name escaped to /tmp";
  EXPECT_NE(::stat("/dev/dp-escape", &st), 0) << "a name escaped to /dev";
}

// A peer asks a live node for streams outside it: refused by name, the connection kept, the
// node unharmed.
TEST_F(Namespaces, PeersCannotSubscribeOutsideTheNode) {
  Node node(node_opts(domain_, "src"));
  node.advertise(test::host_spec("frames", 4096));
  auto r = ManifestReader::open(domain_, "src");
  auto c = BrokerClient::connect(r.json()["broker"].get<std::string>(), "peer", r.owner());
  for (auto& bad : bad_names()) {
    auto page = platform::Segment::create_anonymous("dp-test-release", protocol::kFencePageBytes, false);
    try {
      c.request({{"op", "subscribe"}, {"stream", bad}}, {page.fd().get()});
      ADD_FAILURE() << "subscribed to stream '" << bad << "'";
    } catch (const PeerGoneError&) {
      FAIL() << "the node dropped the peer (or died) on stream '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("stream name"), std::string::npos) << e.what();
    }
  }
  auto page = platform::Segment::create_anonymous("dp-test-release", protocol::kFencePageBytes, false);
  EXPECT_EQ(c.request({{"op", "subscribe"}, {"stream", "frames"}}, {page.fd().get()}).body["op"], "subscribed");
}

// 48 characters for the domain, the node and the stream: every OS name derived from them fits
// (the manifest under NAME_MAX, the broker socket in sun_path), and a frame goes through.
TEST_F(Namespaces, TheLongestNamesWorkEndToEnd) {
  const std::string domain = "L" + domain_ + std::string(kMaxNameLength - 1 - domain_.size(), 'd');
  const std::string node_name(kMaxNameLength, 'n'), stream(kMaxNameLength, 's');
  ASSERT_EQ(domain.size(), kMaxNameLength);
  {
    Node node(node_opts(domain, node_name));
    auto& pub = node.advertise(test::host_spec(stream, 4096));
    node.set_running();
    SubscribeOptions so;
    so.domain = domain;
    Subscriber sub(node_name, stream, so);
    test::PublishStats ps;
    ASSERT_TRUE(test::publish_one(pub, 7, 1, ps));
    test::FrameVerifier v(7, 1, 4096);
    auto f = sub.next(2s);
    ASSERT_TRUE(f);
    EXPECT_TRUE(v.check(*f)) << v.to_json();
    sub.release(*f);
    struct stat st {};
    EXPECT_EQ(::stat(("/dev/shm" + manifest_segment_name(domain, node_name)).c_str(), &st), 0);
  }
  EXPECT_TRUE(test::shm_entries(domain).empty());
}

}  // namespace
}  // namespace dp

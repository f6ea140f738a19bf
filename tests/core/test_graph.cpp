// Graph configs: parse_graph_config validates a whole document before anything starts and
// reports every problem at once, each naming its JSON path; load_graph_config adds the file.
// The node types are test-only: "t-source" publishes params.stream, "t-sink" subscribes to
// params.from, "t-relay" does both.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <mutex>

#include "directport/core/error.hpp"
#include "directport/core/graph.hpp"
#include "directport/core/runtime.hpp"
#include "support/test_support.hpp"

namespace dp {
namespace {

using nlohmann::json;

void ensure_types() {
  static std::once_flag once;
  std::call_once(once, [] {
    using T = ParamType;
    auto none = [](const json&) { return std::vector<std::string>{}; };
    auto publishes_stream = [](const json& p) { return std::vector<std::string>{p["stream"].get<std::string>()}; };
    auto subscribes_from = [](const json& p) { return std::vector<std::string>{p["from"].get<std::string>()}; };
    auto body = [](NodeContext&) { return 0; };
    auto& reg = NodeRegistry::instance();

    NodeType src;
    src.type = "t-source";
    src.help = "test-only: publishes params.stream";
    src.params = {{"stream", T::string, "out", false, "the stream"}, {"rate", T::number, 10.0, false, "per second"}};
    src.publishes = publishes_stream;
    src.subscribes = none;
    src.run = body;
    reg.add(src);

    NodeType sink;
    sink.type = "t-sink";
    sink.help = "test-only: subscribes to params.from";
    sink.params = {{"from", T::string, nullptr, true, "NODE/STREAM"}, {"frames", T::integer, 0, false, "count"}};
    sink.publishes = none;
    sink.subscribes = subscribes_from;
    sink.run = body;
    reg.add(sink);

    NodeType relay;
    relay.type = "t-relay";
    relay.help = "test-only: subscribes to params.from, publishes params.stream";
    relay.params = {{"from", T::string, nullptr, true, "NODE/STREAM"}, {"stream", T::string, "relayed", false, "out"}};
    relay.publishes = publishes_stream;
    relay.subscribes = subscribes_from;
    relay.run = body;
    reg.add(relay);
  });
}

json source(const std::string& name, json params = json::object()) {
  return {{"name", name}, {"type", "t-source"}, {"params", params}};
}
json sink(const std::string& name, const std::string& from) {
  return {{"name", name}, {"type", "t-sink"}, {"params", {{"from", from}}}};
}
json graph(json nodes) { return {{"nodes", nodes}}; }

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// The ValidationError's message for `config` (a test failure if it parses).
std::string problems(const json& config) {
  ensure_types();
  try {
    parse_graph_config(config);
  } catch (const ValidationError& e) {
    return e.what();
  }
  ADD_FAILURE() << "parse_graph_config accepted " << config.dump();
  return "";
}

// Every problem line of a message ("config has N problems:\n  a\n  b").
std::vector<std::string> problem_lines(const std::string& msg) {
  std::vector<std::string> out;
  std::size_t start = msg.find('\n');
  while (start != std::string::npos) {
    auto end = msg.find('\n', start + 1);
    auto line = msg.substr(start + 1, end == std::string::npos ? std::string::npos : end - start - 1);
    if (line.rfind("  ", 0) == 0) line.erase(0, 2);
    out.push_back(line);
    start = end;
  }
  return out;
}

// Exactly one problem, which starts with `path` and contains every one of `parts`.
void expect_one_problem(const json& config, const std::string& path, std::vector<std::string> parts = {}) {
  auto msg = problems(config);
  SCOPED_TRACE(msg);
  EXPECT_EQ(msg.rfind("config has 1 problem:", 0), 0u) << "expected one problem";
  auto lines = problem_lines(msg);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].rfind(path, 0), 0u) << "the problem must start with its JSON path '" << path << "'";
  for (auto& p : parts) EXPECT_TRUE(has(lines[0], p)) << "missing '" << p << "'";
}

// A temporary file, removed at the end of the test.
class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    char tmpl[] = "/tmp/dp_test_graph_XXXXXX";
    int fd = ::mkstemp(tmpl);
    if (fd < 0) throw std::runtime_error("mkstemp failed");
    ::close(fd);
    path_ = tmpl;
    std::ofstream(path_) << content;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ------------------------------------------------------------------ the document

TEST(GraphConfig, DocumentMustBeAnObject) {
  for (json bad : {json::array(), json(1), json("nodes"), json(nullptr)}) {
    auto msg = problems(bad);
    EXPECT_TRUE(has(msg, "config")) << msg;
    EXPECT_TRUE(has(msg, "JSON object")) << msg;
  }
}

TEST(GraphConfig, UnknownTopLevelKey) {
  auto c = graph({source("src")});
  c["domian"] = "x";
  expect_one_problem(c, "domian: unknown key", {"known: domain, nodes, description"});
}

TEST(GraphConfig, DescriptionIsAllowed) {
  auto c = graph({source("src")});
  c["description"] = "free text";
  ensure_types();
  EXPECT_NO_THROW(parse_graph_config(c));
}

TEST(GraphConfig, NodesMissingEmptyOrNotAnArray) {
  expect_one_problem(json::object(), "nodes: required");
  expect_one_problem({{"domain", "d"}}, "nodes: required");
  expect_one_problem(graph(json::array()), "nodes: required", {"non-empty array"});
  expect_one_problem(graph(json::object()), "nodes: required");
  expect_one_problem(graph("src"), "nodes: required");
}

TEST(GraphConfig, BadDomain) {
  auto c = graph({source("src")});
  c["domain"] = "a b";
  expect_one_problem(c, "domain:", {"'a b'", "not a valid name"});
  c["domain"] = 5;
  expect_one_problem(c, "domain:", {"expected string", "5"});
  c["domain"] = "../etc";
  expect_one_problem(c, "domain:", {"'../etc'"});
}

// ------------------------------------------------------------------ one node

TEST(GraphConfig, NodeNotAnObject) {
  expect_one_problem(graph({source("src"), 3}), "nodes[1]: expected an object");
  expect_one_problem(graph({"src"}), "nodes[0]: expected an object");
}

TEST(GraphConfig, UnknownNodeKey) {
  auto n = source("src");
  n["colour"] = "blue";
  expect_one_problem(graph({n}), "nodes[0]",
                     {".colour: unknown key", "known: name, type, params, restart, required, max_restarts"});
}

TEST(GraphConfig, MissingOrMistypedName) {
  expect_one_problem(graph({json{{"type", "t-source"}}}), "nodes[0].name: required");
  expect_one_problem(graph({json{{"name", 7}, {"type", "t-source"}}}), "nodes[0].name: required", {"string"});
}

TEST(GraphConfig, MissingOrMistypedType) {
  expect_one_problem(graph({source("src"), json{{"name", "k"}}}), "nodes[1] (k).type: required");
  expect_one_problem(graph({json{{"name", "k"}, {"type", 1}}}), "nodes[0] (k).type: required", {"string"});
}

TEST(GraphConfig, InvalidNodeNames) {
  for (std::string bad : std::vector<std::string>{"../x", "a/b", "a.b", "", "-a", "a b", std::string(49, 'x')}) {
    json n{{"name", bad}, {"type", "t-source"}};
    expect_one_problem(graph({n}), "nodes[0].name:", {"'" + bad + "'", "not a valid node name"});
  }
}

TEST(GraphConfig, DuplicateNames) {
  auto msg = problems(graph({source("src"), sink("src", "src/out")}));
  EXPECT_TRUE(has(msg, "nodes[1].name: duplicate node name 'src'")) << msg;
  EXPECT_FALSE(has(msg, "nodes[0].name")) << "the first one is not the duplicate: " << msg;
}

TEST(GraphConfig, UnknownTypeListsTheKnownTypes) {
  json n{{"name", "k"}, {"type", "t-nope"}};
  auto msg = problems(graph({n}));
  SCOPED_TRACE(msg);
  auto lines = problem_lines(msg);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].rfind("nodes[0] (k).type: unknown node type 't-nope'", 0), 0u);
  auto known = lines[0].find("known: ");
  ASSERT_NE(known, std::string::npos);
  for (auto t : {"t-relay", "t-sink", "t-source"}) EXPECT_TRUE(has(lines[0].substr(known), t)) << t;
}

TEST(GraphConfig, UnknownParam) {
  expect_one_problem(graph({source("src", {{"rat", 5}})}), "nodes[0] (src).params.rat:",
                     {"'t-source'", "'rat'", "known: stream, rate"});
}

TEST(GraphConfig, MistypedParam) {
  expect_one_problem(graph({source("src", {{"rate", "fast"}})}), "nodes[0] (src).params.rate:",
                     {"expected number", "\"fast\""});
  expect_one_problem(graph({source("src"), json{{"name", "k"}, {"type", "t-sink"}, {"params", {{"from", 3}}}}}),
                     "nodes[1] (k).params.from:", {"expected string", "3"});
}

TEST(GraphConfig, MissingRequiredParam) {
  expect_one_problem(graph({source("src"), json{{"name", "k"}, {"type", "t-sink"}}}), "nodes[1] (k).params.from:",
                     {"required"});
}

TEST(GraphConfig, ParamsNotAnObject) {
  auto n = source("src");
  n["params"] = json::array();
  expect_one_problem(graph({n}), "nodes[0] (src).params:", {"object"});
}

TEST(GraphConfig, BadRestartValue) {
  for (json bad : {json("sometimes"), json("on_failure"), json(1), json(true), json(nullptr)}) {
    auto n = source("src");
    n["restart"] = bad;
    expect_one_problem(graph({n}), "nodes[0] (src).restart:",
                       {"expected \"never\", \"on-failure\" or \"always\"", "got " + bad.dump()});
  }
}

TEST(GraphConfig, RequiredMustBeBoolean) {
  for (json bad : {json("yes"), json(1), json(nullptr)}) {
    auto n = source("src");
    n["required"] = bad;
    expect_one_problem(graph({n}), "nodes[0] (src).required:", {"expected boolean", "got " + bad.dump()});
  }
}

TEST(GraphConfig, MaxRestartsOutOfRange) {
  for (json bad : {json(-1), json(1001), json(1.5), json("3"), json(5000000000LL)}) {
    auto n = source("src");
    n["max_restarts"] = bad;
    expect_one_problem(graph({n}), "nodes[0] (src).max_restarts:", {"expected an integer 0..1000", "got " + bad.dump()});
  }
  ensure_types();
  for (int ok : {0, 1000}) {
    auto n = source("src");
    n["max_restarts"] = ok;
    EXPECT_EQ(parse_graph_config(graph({n})).nodes[0].max_restarts, ok);
  }
}

// ------------------------------------------------------------------ across nodes

TEST(GraphConfig, SubscriptionToANodeNotInTheGraph) {
  expect_one_problem(graph({source("src"), sink("k", "zz/out")}), "nodes[1] (k).params:",
                     {"'zz/out'", "no node 'zz'"});
}

TEST(GraphConfig, SubscriptionToAStreamTheNodeDoesNotPublish) {
  expect_one_problem(graph({source("src"), sink("k", "src/nope")}), "nodes[1] (k).params:",
                     {"'src/nope'", "node 'src' publishes out"});
  // Published streams follow the producer's params.
  expect_one_problem(graph({source("src", {{"stream", "video"}}), sink("k", "src/out")}), "nodes[1] (k).params:",
                     {"'src/out'", "publishes video"});
}

TEST(GraphConfig, SubscriptionToANodeThatPublishesNothing) {
  // BUG (core/src/graph.cpp): `published` only gets an entry for a node that publishes something,
  // so a subscription to a node of the graph that publishes nothing is reported as "the graph has
  // no node 'k'" -- false -- and the "publishes nothing" branch can never run.
  expect_one_problem(graph({source("src"), sink("k", "src/out"), sink("k2", "k/out")}), "nodes[2] (k2).params:",
                     {"'k/out'", "node 'k' publishes nothing"});
}

TEST(GraphConfig, SubscriptionToANodeWithItsOwnProblemIsNotMisreported) {
  // BUG (core/src/graph.cpp): when the producer's params (or type) are invalid, what it publishes
  // is unknown, and its own problem is reported already; the subscriber must not get a second,
  // false problem ("the graph has no node 'src'": the graph has it).
  auto msg = problems(graph({source("src", {{"rat", 5}}), sink("k", "src/out")}));
  EXPECT_TRUE(has(msg, "nodes[0] (src).params.rat:")) << msg;
  EXPECT_FALSE(has(msg, "no node 'src'")) << msg;
  EXPECT_EQ(problem_lines(msg).size(), 1u) << msg;
  msg = problems(graph({json{{"name", "src"}, {"type", "t-nope"}}, sink("k", "src/out")}));
  EXPECT_TRUE(has(msg, "nodes[0] (src).type: unknown node type")) << msg;
  EXPECT_FALSE(has(msg, "no node 'src'")) << msg;
}

TEST(GraphConfig, PublishedStreamNamesAreValidated) {
  // BUG (core/src/graph.cpp): the names a type publishes (here t-source's params.stream) are not
  // checked, so a config that can never run passes `launch --check` and fails only at run time
  // (after every restart). The whole config is meant to be validated before anything starts.
  for (std::string bad : std::vector<std::string>{"../x", "a.b", "a/b", ""}) {
    expect_one_problem(graph({source("src", {{"stream", bad}})}), "nodes[0] (src).params", {"'" + bad + "'"});
  }
}

TEST(GraphConfig, CrossNodeProblemsNameTheIndexInTheFile) {
  // BUG (core/src/graph.cpp): the cross-node check numbers nodes by their index in
  // GraphConfig::nodes, which skips entries that are not objects, so after such an entry the
  // path points at the wrong element of "nodes".
  auto msg = problems(graph({5, source("src"), sink("k", "zz/out")}));
  SCOPED_TRACE(msg);
  auto lines = problem_lines(msg);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].rfind("nodes[0]: expected an object", 0), 0u);
  EXPECT_EQ(lines[1].rfind("nodes[2] (k).params: subscribes to 'zz/out'", 0), 0u);
}

TEST(GraphConfig, MalformedSubscriptionAddress) {
  expect_one_problem(graph({source("src"), sink("k", "src")}), "nodes[1] (k).params:", {"'src'", "NODE/STREAM"});
  for (std::string bad : std::vector<std::string>{"src/a/b", "src/../x", "../src/out", "/out", "src/", ""}) {
    auto msg = problems(graph({source("src"), sink("k", bad)}));
    SCOPED_TRACE(msg);
    auto lines = problem_lines(msg);
    ASSERT_EQ(lines.size(), 1u) << bad;
    EXPECT_EQ(lines[0].rfind("nodes[1] (k).params:", 0), 0u) << bad;
  }
}

TEST(GraphConfig, RelayChainsAreChecked) {
  ensure_types();
  json relay{{"name", "r"}, {"type", "t-relay"}, {"params", {{"from", "src/out"}}}};
  auto g = parse_graph_config(graph({source("src"), relay, sink("k", "r/relayed")}));
  ASSERT_EQ(g.nodes.size(), 3u);
  EXPECT_EQ(g.nodes[1].publishes, std::vector<std::string>{"relayed"});
  EXPECT_EQ(g.nodes[1].subscribes, std::vector<std::string>{"src/out"});
  // Order in the file does not matter: the consumer may come first.
  EXPECT_NO_THROW(parse_graph_config(graph({sink("k", "r/relayed"), relay, source("src")})));
}

TEST(GraphConfig, SeveralProblemsAreReportedTogether) {
  auto bad_restart = source("a");
  bad_restart["restart"] = "sometimes";
  json c{{"domain", "d"},
         {"colour", 1},
         {"nodes", {bad_restart, json{{"name", "b"}, {"type", "t-nope"}}, sink("k", "zz/out"), 5}}};
  auto msg = problems(c);
  SCOPED_TRACE(msg);
  EXPECT_EQ(msg.rfind("config has 5 problems:", 0), 0u);
  auto lines = problem_lines(msg);
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0].rfind("colour: unknown key", 0), 0u);
  EXPECT_EQ(lines[1].rfind("nodes[0] (a).restart:", 0), 0u);
  EXPECT_EQ(lines[2].rfind("nodes[1] (b).type:", 0), 0u);
  EXPECT_EQ(lines[3].rfind("nodes[3]: expected an object", 0), 0u);
  EXPECT_EQ(lines[4].rfind("nodes[2] (k).params: subscribes to 'zz/out'", 0), 0u);
}

// ------------------------------------------------------------------ valid configs

TEST(GraphConfig, ValidConfigFillsDefaults) {
  ensure_types();
  auto s = sink("k", "src/out");
  s["restart"] = "always";
  s["required"] = false;
  s["max_restarts"] = 2;
  auto n = source("src");
  n["restart"] = "never";
  auto g = parse_graph_config({{"domain", "graph1"}, {"nodes", {n, s, sink("k2", "src/out")}}});
  EXPECT_EQ(g.domain, "graph1");
  ASSERT_EQ(g.nodes.size(), 3u);
  EXPECT_EQ(g.nodes[0].name, "src");
  EXPECT_EQ(g.nodes[0].type, "t-source");
  EXPECT_EQ(g.nodes[0].params, json({{"stream", "out"}, {"rate", 10.0}}));
  EXPECT_EQ(g.nodes[0].restart, RestartPolicy::never);
  EXPECT_TRUE(g.nodes[0].required);
  EXPECT_EQ(g.nodes[0].max_restarts, 5);
  EXPECT_EQ(g.nodes[0].publishes, std::vector<std::string>{"out"});
  EXPECT_TRUE(g.nodes[0].subscribes.empty());

  EXPECT_EQ(g.nodes[1].params, json({{"from", "src/out"}, {"frames", 0}}));
  EXPECT_EQ(g.nodes[1].restart, RestartPolicy::always);
  EXPECT_FALSE(g.nodes[1].required);
  EXPECT_EQ(g.nodes[1].max_restarts, 2);
  EXPECT_TRUE(g.nodes[1].publishes.empty());
  EXPECT_EQ(g.nodes[1].subscribes, std::vector<std::string>{"src/out"});

  EXPECT_EQ(g.nodes[2].restart, RestartPolicy::on_failure) << "the default restart policy";
  EXPECT_TRUE(g.nodes[2].required);
  EXPECT_EQ(g.nodes[2].max_restarts, 5);
}

TEST(GraphConfig, NodeWithoutParamsGetsAllDefaults) {
  ensure_types();
  auto g = parse_graph_config(graph({json{{"name", "src"}, {"type", "t-source"}}}));
  EXPECT_EQ(g.nodes[0].params, json({{"stream", "out"}, {"rate", 10.0}}));
}

TEST(GraphConfig, DomainDefaultsToTheEnvironmentThenDefault) {
  ensure_types();
  {
    test::ScopedEnv env("DIRECTPORT_DOMAIN", nullptr);
    EXPECT_EQ(parse_graph_config(graph({source("src")})).domain, "default");
  }
  {
    test::ScopedEnv env("DIRECTPORT_DOMAIN", "fromenv");
    EXPECT_EQ(parse_graph_config(graph({source("src")})).domain, "fromenv");
    auto c = graph({source("src")});
    c["domain"] = "given";
    EXPECT_EQ(parse_graph_config(c).domain, "given") << "the config's domain wins over the environment";
  }
}

TEST(GraphConfig, RestartPolicyNames) {
  EXPECT_STREQ(restart_policy_name(RestartPolicy::never), "never");
  EXPECT_STREQ(restart_policy_name(RestartPolicy::on_failure), "on-failure");
  EXPECT_STREQ(restart_policy_name(RestartPolicy::always), "always");
  ensure_types();
  for (auto p : {RestartPolicy::never, RestartPolicy::on_failure, RestartPolicy::always}) {
    auto n = source("src");
    n["restart"] = restart_policy_name(p);
    EXPECT_EQ(parse_graph_config(graph({n})).nodes[0].restart, p);
  }
}

// ------------------------------------------------------------------ files

TEST(GraphConfig, LoadMissingFile) {
  std::string path = "/tmp/dp_test_graph_missing_" + test::unique_name("f") + ".json";
  try {
    load_graph_config(path);
    ADD_FAILURE() << "a missing file loaded";
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), path)) << e.what();
    EXPECT_TRUE(has(e.what(), "No such file")) << e.what();
  }
}

TEST(GraphConfig, LoadInvalidJson) {
  TempFile f("{\"nodes\": [ {\"name\": \"src\", }");
  try {
    load_graph_config(f.path());
    ADD_FAILURE() << "invalid JSON loaded";
  } catch (const ValidationError& e) {
    EXPECT_TRUE(has(e.what(), f.path())) << e.what();
    EXPECT_TRUE(has(e.what(), "not valid JSON")) << e.what();
  }
}

// A config whose value is nested 200 000 levels deep: writing "got <value>" into the error
// message recursed through it and `directport launch --check` died with SIGSEGV.
TEST(GraphConfig, DeeplyNestedConfigIsRefusedNotCrashedOn) {
  ensure_types();
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  for (auto& text : {R"({"nodes":[{"name":"a","type":"t-source","restart":)" + deep + "}]}",
                     R"({"nodes":[{"name":"a","type":"t-source","params":{"stream":)" + deep + "}}]}",
                     R"({"domain":)" + deep + R"(,"nodes":[]})"}) {
    try {
      parse_graph_config_text(text, "deep.json");
      ADD_FAILURE() << "accepted";
    } catch (const ValidationError& e) {
      EXPECT_EQ(std::string(e.what()), "deep.json: config nests deeper than 64 levels");
    }
  }
  TempFile f(R"({"nodes":[{"name":"a","type":"t-source","required":)" + deep + "}]}");
  EXPECT_THROW(load_graph_config(f.path()), ValidationError);
}

TEST(GraphConfig, ConfigsLargerThan4MiBAreRefused) {
  ensure_types();
  auto big = json{{"description", std::string(kMaxConfigBytes, 'x')}, {"nodes", {source("src")}}}.dump();
  TempFile f(big);
  try {
    load_graph_config(f.path());
    ADD_FAILURE() << "a config of " << big.size() << " bytes loaded";
  } catch (const ValidationError& e) {
    EXPECT_TRUE(has(e.what(), "config larger than 4 MiB")) << e.what();
  }
  EXPECT_THROW(parse_graph_config_text(big, "big.json"), ValidationError);
}

TEST(GraphConfig, LoadReportsProblemsWithTheFileName) {
  ensure_types();
  TempFile f(graph({source("src", {{"rat", 1}})}).dump());
  try {
    load_graph_config(f.path());
    ADD_FAILURE() << "a bad config loaded";
  } catch (const ValidationError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind(f.path() + ": config has 1 problem:", 0), 0u) << msg;
    EXPECT_TRUE(has(msg, "nodes[0] (src).params.rat:")) << msg;
  }
}

TEST(GraphConfig, LoadValidFile) {
  ensure_types();
  TempFile f(json{{"domain", "filed"}, {"nodes", {source("src"), sink("k", "src/out")}}}.dump(2));
  auto g = load_graph_config(f.path());
  EXPECT_EQ(g.domain, "filed");
  ASSERT_EQ(g.nodes.size(), 2u);
  EXPECT_EQ(g.nodes[1].subscribes, std::vector<std::string>{"src/out"});
}

}  // namespace
}  // namespace dp

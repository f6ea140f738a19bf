// The node runtime: params validated against a type's ParamSpecs (errors name the JSON path and
// what was expected), defaults filled in, the registry of node types, and run_node in a process
// of its own. The node types here are test-only ("t-runtime*"), never the CLI's built-in ones.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>

#include "directport/core/discovery.hpp"
#include "directport/core/error.hpp"
#include "directport/core/runtime.hpp"
#include "support/fixtures.hpp"

namespace dp {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

// A type with one param of every kind; `count` is required.
NodeType runtime_type(const std::string& type = "t-runtime") {
  using T = ParamType;
  NodeType t;
  t.type = type;
  t.help = "test-only node type of test_runtime.cpp";
  t.params = {{"label", T::string, "cam", false, "a string"},
              {"count", T::integer, nullptr, true, "how many (required)"},
              {"rate", T::number, 2.5, false, "a number"},
              {"on", T::boolean, false, false, "a flag"},
              {"extra", T::object, json::object(), false, "an object"},
              {"list", T::array, json::array(), false, "an array"}};
  t.publishes = [](const json& p) { return std::vector<std::string>{p["label"].get<std::string>()}; };
  t.subscribes = [](const json&) { return std::vector<std::string>{}; };
  // The body of RuntimeMP: reports what it got through its exit code, or idles until stopped.
  t.run = [](NodeContext& ctx) -> int {
    const auto& p = ctx.params();
    if (ctx.param<std::string>("label") != "cam" || p["rate"].get<double>() != 2.5 || p["on"].get<bool>() ||
        !p["extra"].is_object() || !p["list"].is_array()) {
      return 90;  // defaults not filled in
    }
    bool listed = false;
    for (auto& n : list_nodes(ctx.domain())) listed = listed || n.name == ctx.name();
    if (!listed) return 91;  // the runtime did not create the Node before the body
    if (ctx.param<int>("count") == 0) {
      while (NodeContext::sleep_for(10s)) {
      }
      return NodeContext::stop_requested() ? 7 : 92;
    }
    return ctx.param<int>("count");
  };
  return t;
}

// Registers "t-runtime" in the process-wide registry once (the suites share one process when the
// binary runs whole).
void ensure_registered() {
  static std::once_flag once;
  std::call_once(once, [] { NodeRegistry::instance().add(runtime_type()); });
}

std::string validation_message(const NodeType& t, const json& params, const std::string& path) {
  try {
    validate_params(t, params, path);
  } catch (const ValidationError& e) {
    return e.what();
  }
  ADD_FAILURE() << "validate_params accepted " << params.dump();
  return "";
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(Runtime, ParamTypeNames) {
  EXPECT_STREQ(param_type_name(ParamType::string), "string");
  EXPECT_STREQ(param_type_name(ParamType::integer), "integer");
  EXPECT_STREQ(param_type_name(ParamType::number), "number");
  EXPECT_STREQ(param_type_name(ParamType::boolean), "boolean");
  EXPECT_STREQ(param_type_name(ParamType::object), "object");
  EXPECT_STREQ(param_type_name(ParamType::array), "array");
}

TEST(Runtime, DefaultsAreFilledIn) {
  auto t = runtime_type();
  auto out = validate_params(t, {{"count", 3}}, "nodes[0].params");
  EXPECT_EQ(out, json({{"label", "cam"}, {"count", 3}, {"rate", 2.5}, {"on", false}, {"extra", json::object()},
                       {"list", json::array()}}));
}

TEST(Runtime, GivenValuesAreKeptAsGiven) {
  auto t = runtime_type();
  json in{{"label", "x"}, {"count", -4}, {"rate", 0.125}, {"on", true}, {"extra", {{"k", 1}}}, {"list", {1, "a"}}};
  EXPECT_EQ(validate_params(t, in, "p"), in);
}

TEST(Runtime, IntegerIsAcceptedForNumber) {
  auto t = runtime_type();
  auto out = validate_params(t, {{"count", 1}, {"rate", 500}}, "p");
  ASSERT_TRUE(out["rate"].is_number());
  EXPECT_EQ(out["rate"].get<double>(), 500.0);
}

TEST(Runtime, NumberIsNotAcceptedForInteger) {
  auto t = runtime_type();
  auto msg = validation_message(t, {{"count", 1.5}}, "nodes[1].params");
  EXPECT_TRUE(has(msg, "nodes[1].params.count")) << msg;
  EXPECT_TRUE(has(msg, "expected integer")) << msg;
  EXPECT_TRUE(has(msg, "1.5")) << msg;
}

TEST(Runtime, UnknownKeyNamesTheKeyAndTheKnownOnes) {
  auto t = runtime_type();
  auto msg = validation_message(t, {{"count", 1}, {"rat", 2}}, "nodes[2].params");
  EXPECT_TRUE(has(msg, "nodes[2].params.rat:")) << msg;
  EXPECT_TRUE(has(msg, "'rat'")) << msg;
  EXPECT_TRUE(has(msg, "'t-runtime'")) << msg;
  EXPECT_TRUE(has(msg, "known: label, count, rate, on, extra, list")) << msg;
}

TEST(Runtime, WrongTypeNamesTheExpectedTypeAndThePath) {
  auto t = runtime_type();
  struct Case {
    json params;
    std::string key, expected;
  };
  for (auto& c : std::vector<Case>{{{{"count", 1}, {"rate", "fast"}}, "rate", "expected number, got \"fast\""},
                                   {{{"count", "3"}}, "count", "expected integer, got \"3\""},
                                   {{{"count", 1}, {"label", 5}}, "label", "expected string, got 5"},
                                   {{{"count", 1}, {"on", 1}}, "on", "expected boolean, got 1"},
                                   {{{"count", 1}, {"extra", json::array()}}, "extra", "expected object, got []"},
                                   {{{"count", 1}, {"list", json::object()}}, "list", "expected array, got {}"},
                                   {{{"count", nullptr}}, "count", "expected integer, got null"}}) {
    auto msg = validation_message(t, c.params, "nodes[0] (cam).params");
    EXPECT_TRUE(has(msg, "nodes[0] (cam).params." + c.key + ": ")) << msg;
    EXPECT_TRUE(has(msg, c.expected)) << msg;
  }
}

TEST(Runtime, MissingRequiredParamIsAnError) {
  auto t = runtime_type();
  auto msg = validation_message(t, json::object(), "nodes[3].params");
  EXPECT_TRUE(has(msg, "nodes[3].params.count")) << msg;
  EXPECT_TRUE(has(msg, "required")) << msg;
  EXPECT_TRUE(has(msg, "how many (required)")) << "the message should carry the param's help: " << msg;
}

TEST(Runtime, ParamsMustBeAnObject) {
  auto t = runtime_type();
  for (json bad : {json::array(), json(3), json("x"), json(nullptr)}) {
    auto msg = validation_message(t, bad, "nodes[4].params");
    EXPECT_TRUE(has(msg, "nodes[4].params")) << msg;
    EXPECT_TRUE(has(msg, "object")) << msg;
  }
}

TEST(Runtime, RegistryFindsATestTypeAndListsIt) {
  ensure_registered();
  auto& reg = NodeRegistry::instance();
  const NodeType* t = reg.find("t-runtime");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->type, "t-runtime");
  EXPECT_EQ(t->params.size(), 6u);
  EXPECT_EQ(reg.find("t-runtime-nope"), nullptr);
  auto types = reg.types();
  EXPECT_NE(std::find(types.begin(), types.end(), "t-runtime"), types.end());
  EXPECT_TRUE(std::is_sorted(types.begin(), types.end()));
}

TEST(Runtime, DuplicateTypeIsAPrecondition) {
  ensure_registered();
  try {
    NodeRegistry::instance().add(runtime_type());
    ADD_FAILURE() << "a second 't-runtime' was accepted";
  } catch (const PreconditionError& e) {
    EXPECT_TRUE(has(e.what(), "'t-runtime'")) << e.what();
  }
  // The first registration is intact.
  ASSERT_NE(NodeRegistry::instance().find("t-runtime"), nullptr);
  EXPECT_EQ(NodeRegistry::instance().find("t-runtime")->params.size(), 6u);

  NodeRegistry local;  // a registry of its own, too
  local.add(runtime_type("t-local"));
  EXPECT_THROW(local.add(runtime_type("t-local")), PreconditionError);
  EXPECT_EQ(local.types(), std::vector<std::string>{"t-local"});
}

TEST(Runtime, TypeWithoutNameOrBodyIsAPrecondition) {
  NodeRegistry local;
  auto nameless = runtime_type("");
  EXPECT_THROW(local.add(nameless), PreconditionError);
  auto bodiless = runtime_type("t-bodiless");
  bodiless.run = nullptr;
  EXPECT_THROW(local.add(bodiless), PreconditionError);
  EXPECT_TRUE(local.types().empty());
}

// run_node's checks come before it touches signals or creates a Node, so they run in-process.
class RuntimeRun : public test::DomainTest {};

TEST_F(RuntimeRun, UnknownTypeListsTheKnownOnes) {
  ensure_registered();
  try {
    run_node("t-runtime-nope", "n", domain_, json::object());
    ADD_FAILURE() << "an unknown type was run";
  } catch (const ValidationError& e) {
    std::string msg = e.what();
    EXPECT_TRUE(has(msg, "'t-runtime-nope'")) << msg;
    auto known = msg.find("known: ");
    ASSERT_NE(known, std::string::npos) << msg;
    EXPECT_TRUE(has(msg.substr(known), "t-runtime")) << msg;
  }
  EXPECT_TRUE(list_nodes(domain_).empty());
}

TEST_F(RuntimeRun, BadParamsAreRejectedBeforeTheNodeExists) {
  ensure_registered();
  try {
    run_node("t-runtime", "n", domain_, {{"count", "many"}});
    ADD_FAILURE() << "bad params were accepted";
  } catch (const ValidationError& e) {
    EXPECT_TRUE(has(e.what(), "params.count: expected integer")) << e.what();
  }
  EXPECT_TRUE(list_nodes(domain_).empty());
}

// run_node in a process of its own: the body gets validated params with defaults, runs with its
// Node created, returns the exit code, and SIGTERM makes stop_requested() true.
class RuntimeMP : public test::DomainTest {};

TEST_F(RuntimeMP, BodyRunsWithDefaultsAndItsExitCodeIsReturned) {
  ensure_registered();
  auto c = test::Child::fork([&](test::LineChannel&) { return run_node("t-runtime", "n1", domain_, {{"count", 5}}); });
  auto st = c.wait(10s);
  ASSERT_TRUE(st) << "run_node did not return";
  ASSERT_TRUE(WIFEXITED(*st)) << test::describe_status(*st);
  EXPECT_EQ(WEXITSTATUS(*st), 5) << "90: defaults missing, 91: no Node while the body ran";
  EXPECT_TRUE(list_nodes(domain_).empty()) << "the Node must withdraw its manifest when the body returns";
}

TEST_F(RuntimeMP, SigtermRequestsAStopAndTheNodeWithdraws) {
  ensure_registered();
  const std::string name = "idle";
  auto c = test::Child::fork([&](test::LineChannel&) { return run_node("t-runtime", name, domain_, {{"count", 0}}); });
  ASSERT_TRUE(test::wait_until([&] { return !list_nodes(domain_).empty(); }, 10s, 5ms)) << "the node never appeared";
  auto nodes = list_nodes(domain_);
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(nodes[0].name, name);
  EXPECT_EQ(nodes[0].owner.pid, c.pid());
  EXPECT_EQ(nodes[0].doc.value("type", ""), "t-runtime");
  c.kill(SIGTERM);
  auto st = c.wait(10s);
  ASSERT_TRUE(st) << "SIGTERM did not stop the node";
  ASSERT_TRUE(WIFEXITED(*st)) << "SIGTERM must be handled by the runtime, not kill: " << test::describe_status(*st);
  EXPECT_EQ(WEXITSTATUS(*st), 7) << "the body must see stop_requested()";
  EXPECT_TRUE(list_nodes(domain_).empty());
}

}  // namespace
}  // namespace dp

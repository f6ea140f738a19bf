// libFuzzer target: graph configs as `directport launch` reads them (parse_graph_config_text:
// the 4 MiB bound, JSON nested at most 64 levels, then parse_graph_config).
//
// Only ValidationError may come out (anything else ends `launch` with "unexpected error", or
// worse). Every accepted config is checked against what the launcher relies on: valid, unique
// names; registered types; params validated (validating them again changes nothing); restart
// policy and max_restarts in range; every subscription resolved to a stream a node of the graph
// publishes; and the config written back as JSON parses to the same graph. A violation traps.
//
// The node types are registered here, mirroring the built-in ones of cli/nodes_builtin.cpp
// (same names and params, so that configs/ and the corpus parse), plus a relay (subscribes and
// publishes) and a type with a param of every kind. Their publishes/subscribes only read params
// of the validated type, as the built-in ones do.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <set>
#include <string>

#include "directport/core/error.hpp"
#include "directport/core/graph.hpp"
#include "directport/core/names.hpp"
#include "directport/core/runtime.hpp"

namespace {

using nlohmann::json;

[[noreturn]] void violated(const char* what) {
  std::fprintf(stderr, "invariant violated: %s\n", what);
  __builtin_trap();
}

void register_types() {
  using T = dp::ParamType;
  auto none = [](const json&) { return std::vector<std::string>{}; };
  auto stream = [](const json& p) { return std::vector<std::string>{p["stream"].get<std::string>()}; };
  auto from = [](const json& p) { return std::vector<std::string>{p["from"].get<std::string>()}; };
  auto body = [](dp::NodeContext&) { return 0; };
  auto& reg = dp::NodeRegistry::instance();

  dp::NodeType src;
  src.type = "pattern-source";
  src.params = {{"stream", T::string, "frames", false, ""},       {"bytes", T::integer, 1 << 20, false, ""},
                {"slots", T::integer, 3, false, ""},              {"memory", T::string, "auto", false, ""},
                {"rate_hz", T::number, 200.0, false, ""},         {"frames", T::integer, 0, false, ""},
                {"wait_subscribers", T::integer, 0, false, ""}};
  src.publishes = stream;
  src.subscribes = none;
  src.run = body;
  reg.add(src);

  dp::NodeType sink;
  sink.type = "checksum-sink";
  sink.params = {{"from", T::string, nullptr, true, ""},   {"frames", T::integer, 0, false, ""},
                 {"timeout_s", T::number, 10.0, false, ""}, {"hold_ms", T::number, 0.0, false, ""},
                 {"write_probe", T::boolean, false, false, ""}};
  sink.publishes = none;
  sink.subscribes = from;
  sink.run = body;
  reg.add(sink);

  dp::NodeType relay;
  relay.type = "relay";
  relay.params = {{"from", T::string, nullptr, true, ""}, {"stream", T::string, "out", false, ""}};
  relay.publishes = stream;
  relay.subscribes = from;
  relay.run = body;
  reg.add(relay);

  // Every param type; publishes the strings of its "outputs" array, subscribes to those of "inputs".
  dp::NodeType kinds;
  kinds.type = "kinds";
  kinds.params = {{"outputs", T::array, json::array(), false, ""}, {"inputs", T::array, json::array(), false, ""},
                  {"options", T::object, json::object(), false, ""}, {"flag", T::boolean, true, false, ""},
                  {"count", T::integer, 1, false, ""},              {"scale", T::number, 1.5, false, ""}};
  auto strings = [](const json& a) {
    std::vector<std::string> out;
    for (auto& e : a) {
      if (e.is_string()) out.push_back(e.get<std::string>());
    }
    return out;
  };
  kinds.publishes = [strings](const json& p) { return strings(p["outputs"]); };
  kinds.subscribes = [strings](const json& p) { return strings(p["inputs"]); };
  kinds.run = body;
  reg.add(kinds);
}

json to_json(const dp::GraphConfig& g) {
  json nodes = json::array();
  for (auto& n : g.nodes) {
    nodes.push_back({{"name", n.name},
                     {"type", n.type},
                     {"params", n.params},
                     {"restart", dp::restart_policy_name(n.restart)},
                     {"required", n.required},
                     {"max_restarts", n.max_restarts}});
  }
  return {{"domain", g.domain}, {"nodes", nodes}};
}

void check_accepted(const dp::GraphConfig& g) {
  if (!dp::is_valid_name(g.domain)) violated("valid domain");
  if (g.nodes.empty()) violated("at least one node");
  std::map<std::string, std::set<std::string>> published;
  for (auto& n : g.nodes) {
    if (!dp::is_valid_name(n.name)) violated("valid node name");
    if (published.count(n.name)) violated("unique node names");
    const dp::NodeType* t = dp::NodeRegistry::instance().find(n.type);
    if (!t) violated("registered type");
    if (!n.params.is_object()) violated("params an object");
    if (dp::validate_params(*t, n.params, "again") != n.params) violated("params validated (idempotent)");
    if (n.max_restarts < 0 || n.max_restarts > 1000) violated("max_restarts in 0..1000");
    if (n.restart != dp::RestartPolicy::never && n.restart != dp::RestartPolicy::on_failure &&
        n.restart != dp::RestartPolicy::always) {
      violated("restart policy");
    }
    for (auto& s : n.publishes) {
      if (!dp::is_valid_name(s)) violated("valid published stream names");
    }
    published[n.name].insert(n.publishes.begin(), n.publishes.end());
  }
  for (auto& n : g.nodes) {
    for (auto& addr : n.subscribes) {
      auto a = dp::parse_stream_address(addr);  // must not throw: it was checked
      auto it = published.find(a.node);
      if (a.stream.empty() || it == published.end() || !it->second.count(a.stream)) {
        violated("subscriptions resolve to a stream of the graph");
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  register_types();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  dp::GraphConfig g;
  try {
    g = dp::parse_graph_config_text(text, "fuzz.json");
  } catch (const dp::ValidationError& e) {
    if (std::string(e.what()).rfind("fuzz.json: ", 0) != 0) violated("every message names the file");
    return 0;
  }
  check_accepted(g);
  // Written back, the config means the same graph.
  auto again = dp::parse_graph_config_text(to_json(g).dump(), "again.json");
  if (to_json(again) != to_json(g)) violated("round trip");
  return 0;
}

// The node runtime (DESIGN §8): node types register once under their `type`, declare their
// params, the streams they publish and the streams they consume, and are built from JSON. The
// runtime owns the Node (manifest, broker, heartbeat), signals and clean shutdown, so that a
// node type's own code is only its loop.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/core/node.hpp"

namespace dp {

enum class ParamType { string, integer, number, boolean, object, array };
const char* param_type_name(ParamType t);

struct ParamSpec {
  std::string name;
  ParamType type = ParamType::string;
  nlohmann::json fallback;  // used when absent; null with required = true means "must be given"
  bool required = false;
  std::string help;
};

class NodeContext;

struct NodeType {
  std::string type;
  std::string help;
  std::vector<ParamSpec> params;
  // Stream names this node publishes, from its validated params (for config validation).
  std::function<std::vector<std::string>(const nlohmann::json& params)> publishes;
  // "NODE/STREAM" addresses it subscribes to, from its validated params.
  std::function<std::vector<std::string>(const nlohmann::json& params)> subscribes;
  // The node's body; returns the process exit code. Should return soon after stop_requested().
  std::function<int(NodeContext&)> run;
  // Instead of `run`: the program, next to this one, whose `node` command runs this type (the
  // LibTorch node types run in `directport-torch`, so that every other node starts without
  // loading LibTorch). Configs are validated with the description alone.
  std::string runner;
};

// What a running node gets from the runtime.
class NodeContext {
 public:
  NodeContext(Node& node, nlohmann::json params) : node_(node), params_(std::move(params)) {}
  Node& node() { return node_; }
  const nlohmann::json& params() const { return params_; }
  template <typename T>
  T param(const std::string& key) const {
    return params_.at(key).get<T>();
  }
  const std::string& name() const { return node_.name(); }
  const std::string& domain() const { return node_.domain(); }
  // True once SIGINT or SIGTERM arrived.
  static bool stop_requested() noexcept;
  // Sleeps up to `d`, returning early (false) when a stop is requested.
  static bool sleep_for(std::chrono::nanoseconds d);

 private:
  Node& node_;
  nlohmann::json params_;
};

class NodeRegistry {
 public:
  static NodeRegistry& instance();
  void add(NodeType t);  // throws PreconditionError on a duplicate type
  const NodeType* find(const std::string& type) const;
  std::vector<std::string> types() const;

 private:
  std::map<std::string, NodeType> types_;
};

// Checks `params` against the type's ParamSpecs and fills in defaults. Errors are
// ValidationErrors naming `path` + the key ("nodes[2].params.rate_hz: expected number, got
// \"fast\""), unknown keys included.
nlohmann::json validate_params(const NodeType& t, const nlohmann::json& params, const std::string& path);

// Runs one node of `type` in this process: validates params, installs SIGINT/SIGTERM handlers,
// creates the Node, calls the body (which marks the node running once its streams are set up:
// Node::set_running), and withdraws the node cleanly.
int run_node(const std::string& type, const std::string& name, const std::string& domain,
             const nlohmann::json& params);

}  // namespace dp

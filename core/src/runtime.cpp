#include "directport/core/runtime.hpp"

#include <signal.h>

#include <thread>

#include "directport/core/error.hpp"
#include "directport/core/names.hpp"

namespace dp {
namespace {

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

bool has_type(const nlohmann::json& v, ParamType t) {
  switch (t) {
    case ParamType::string: return v.is_string();
    case ParamType::integer: return v.is_number_integer();
    case ParamType::number: return v.is_number();
    case ParamType::boolean: return v.is_boolean();
    case ParamType::object: return v.is_object();
    case ParamType::array: return v.is_array();
  }
  return false;
}

}  // namespace

const char* param_type_name(ParamType t) {
  switch (t) {
    case ParamType::string: return "string";
    case ParamType::integer: return "integer";
    case ParamType::number: return "number";
    case ParamType::boolean: return "boolean";
    case ParamType::object: return "object";
    case ParamType::array: return "array";
  }
  return "?";
}

bool NodeContext::stop_requested() noexcept { return g_stop.load(); }

bool NodeContext::sleep_for(std::chrono::nanoseconds d) {
  auto until = std::chrono::steady_clock::now() + d;
  while (!g_stop.load()) {
    auto now = std::chrono::steady_clock::now();
    if (now >= until) return true;
    std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(until - now, std::chrono::milliseconds(20)));
  }
  return false;
}

NodeRegistry& NodeRegistry::instance() {
  static NodeRegistry r;
  return r;
}

void NodeRegistry::add(NodeType t) {
  DP_EXPECTS(!t.type.empty() && (t.run || !t.runner.empty()), "a node type needs a name and a body or a runner");
  if (types_.count(t.type)) throw PreconditionError("node type '" + t.type + "' is registered twice");
  auto name = t.type;
  types_.emplace(std::move(name), std::move(t));
}

const NodeType* NodeRegistry::find(const std::string& type) const {
  auto it = types_.find(type);
  return it == types_.end() ? nullptr : &it->second;
}

std::vector<std::string> NodeRegistry::types() const {
  std::vector<std::string> out;
  for (auto& [k, v] : types_) out.push_back(k);
  return out;
}

nlohmann::json validate_params(const NodeType& t, const nlohmann::json& params, const std::string& path) {
  if (!params.is_object()) throw ValidationError(path + ": params must be a JSON object, got " + params.dump());
  nlohmann::json out = nlohmann::json::object();
  for (auto& [k, v] : params.items()) {
    const ParamSpec* spec = nullptr;
    for (auto& p : t.params) spec = p.name == k ? &p : spec;
    if (!spec) {
      std::string known;
      for (auto& p : t.params) known += (known.empty() ? "" : ", ") + p.name;
      throw ValidationError(path + "." + k + ": node type '" + t.type + "' has no param '" + k + "' (known: " + known + ")");
    }
    if (!has_type(v, spec->type)) {
      throw ValidationError(path + "." + k + ": expected " + param_type_name(spec->type) + ", got " + v.dump());
    }
    out[k] = v;
  }
  for (auto& p : t.params) {
    if (out.contains(p.name)) continue;
    if (p.required) throw ValidationError(path + "." + p.name + ": required by node type '" + t.type + "' (" + p.help + ")");
    out[p.name] = p.fallback;
  }
  return out;
}

int run_node(const std::string& type, const std::string& name, const std::string& domain,
             const nlohmann::json& params) {
  const NodeType* t = NodeRegistry::instance().find(type);
  if (!t) {
    std::string known;
    for (auto& k : NodeRegistry::instance().types()) known += (known.empty() ? "" : ", ") + k;
    throw ValidationError("unknown node type '" + type + "' (known: " + known + ")");
  }
  if (!t->run) {
    throw Error("node type '" + type + "' runs in " + t->runner + ", not in this program: run `" + t->runner +
                " node " + type + " ...`");
  }
  auto checked = validate_params(*t, params, "params");
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  NodeOptions opts;
  opts.name = name;
  opts.type = type;
  opts.domain = domain;
  opts.cancelled = &NodeContext::stop_requested;  // a consumer waiting for its producer stops too
  Node node(std::move(opts));
  node.set_info("params", checked);
  NodeContext ctx(node, checked);
  return t->run(ctx);  // the Node withdraws its manifest on the way out
}

}  // namespace dp

// Graphs from JSON (DESIGN §8): the config format, its validation, and the launcher that runs a
// graph as one process per node and supervises it. docs/CONFIG.md describes the format.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dp {

enum class RestartPolicy { never, on_failure, always };
const char* restart_policy_name(RestartPolicy p);

struct NodeConfig {
  std::string name, type;
  nlohmann::json params;  // validated, defaults filled in
  RestartPolicy restart = RestartPolicy::on_failure;
  bool required = true;        // a required node that fails for good stops the graph (non-zero exit)
  int max_restarts = 5;        // restarts before the node has failed for good
  std::vector<std::string> publishes;   // stream names
  std::vector<std::string> subscribes;  // NODE/STREAM
};

struct GraphConfig {
  std::string domain;
  std::vector<NodeConfig> nodes;
};

// Validates a whole config before anything starts. Throws ValidationError listing every problem,
// each naming its JSON path: unknown keys, unknown node types, unknown or mistyped params,
// duplicate names, bad names, subscriptions to streams no node of the graph publishes.
GraphConfig parse_graph_config(const nlohmann::json& j);
// The text of a config: at most kMaxConfigBytes, JSON nested at most kMaxJsonDepth levels
// (json_input.hpp), then parse_graph_config. Every message starts with `origin` (the path).
inline constexpr std::size_t kMaxConfigBytes = 4u << 20;
GraphConfig parse_graph_config_text(const std::string& text, const std::string& origin);
GraphConfig load_graph_config(const std::string& path);  // reads the file (bounded), then parse

struct LaunchOptions {
  std::string self_exe;                             // the `directport` binary that runs `node`
  std::optional<std::chrono::milliseconds> duration;  // stop cleanly after this long
  std::chrono::milliseconds stop_grace{5000};       // SIGTERM, then SIGKILL after this
  std::chrono::milliseconds restart_backoff{250};   // first restart delay; doubles, max 8 s
  // A node that ran at least this long before it stopped starts its back-off over: the delay
  // doubles only over a streak of short runs, so a long-lived node that fails once a day is
  // restarted after restart_backoff, not after the longest delay it ever reached.
  std::chrono::milliseconds stable_run{10000};
  bool progress = true;                             // a status line on stderr every second
  std::function<void(const std::string&)> log;      // receives "[node] line"; default stdout
};

// Runs the graph until Ctrl-C/SIGTERM, `duration`, or a required node failing for good.
// Returns 0 on a clean stop, 1 if a required node failed. Leaves no process and no manifest.
int launch_graph(const GraphConfig& g, const LaunchOptions& opts);

}  // namespace dp

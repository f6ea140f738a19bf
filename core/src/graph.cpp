#include "directport/core/graph.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "directport/core/discovery.hpp"
#include "directport/core/error.hpp"
#include "directport/core/json_input.hpp"
#include "directport/core/names.hpp"
#include "directport/core/runtime.hpp"
#include "directport/platform/child.hpp"
#include "directport/platform/shm.hpp"

namespace dp {

const char* restart_policy_name(RestartPolicy p) {
  switch (p) {
    case RestartPolicy::never: return "never";
    case RestartPolicy::on_failure: return "on-failure";
    case RestartPolicy::always: return "always";
  }
  return "?";
}

// ---------------------------------------------------------------- config

GraphConfig parse_graph_config(const nlohmann::json& j) {
  std::vector<std::string> errors;
  auto err = [&](const std::string& e) { errors.push_back(e); };
  GraphConfig g;
  if (!j.is_object()) throw ValidationError("config: the document must be a JSON object with \"nodes\"");
  for (auto& [k, v] : j.items()) {
    if (k != "domain" && k != "nodes" && k != "description") err(k + ": unknown key (known: domain, nodes, description)");
  }
  if (j.contains("domain")) {
    if (!j["domain"].is_string()) {
      err("domain: expected string, got " + j["domain"].dump());
    } else if (!is_valid_name(j["domain"].get<std::string>())) {
      err("domain: '" + j["domain"].get<std::string>() + "' is not a valid name (A-Z a-z 0-9 _ -, 1..48)");
    } else {
      g.domain = j["domain"].get<std::string>();
    }
  }
  if (!j.contains("nodes") || !j["nodes"].is_array() || j["nodes"].empty()) {
    err("nodes: required, a non-empty array of node objects");
  }
  std::set<std::string> names;
  std::map<std::string, std::set<std::string>> published;  // node -> streams
  std::vector<std::size_t> index_in_file;                  // of each entry of g.nodes
  const auto& reg = NodeRegistry::instance();
  if (j.contains("nodes") && j["nodes"].is_array()) {
    for (std::size_t i = 0; i < j["nodes"].size(); ++i) {
      const auto& n = j["nodes"][i];
      std::string path = "nodes[" + std::to_string(i) + "]";
      if (!n.is_object()) {
        err(path + ": expected an object");
        continue;
      }
      static const std::set<std::string> keys{"name", "type", "params", "restart", "required", "max_restarts"};
      for (auto& [k, v] : n.items()) {
        if (!keys.count(k)) err(path + "." + k + ": unknown key (known: name, type, params, restart, required, max_restarts)");
      }
      NodeConfig c;
      if (!n.contains("name") || !n["name"].is_string()) {
        err(path + ".name: required, a string");
      } else {
        c.name = n["name"].get<std::string>();
        if (!is_valid_name(c.name)) err(path + ".name: '" + c.name + "' is not a valid node name (A-Z a-z 0-9 _ -, 1..48)");
        else if (!names.insert(c.name).second) err(path + ".name: duplicate node name '" + c.name + "'");
        path = "nodes[" + std::to_string(i) + "] (" + c.name + ")";
      }
      const NodeType* t = nullptr;
      if (!n.contains("type") || !n["type"].is_string()) {
        err(path + ".type: required, a string");
      } else {
        c.type = n["type"].get<std::string>();
        t = reg.find(c.type);
        if (!t) {
          std::string known;
          for (auto& k : reg.types()) known += (known.empty() ? "" : ", ") + k;
          err(path + ".type: unknown node type '" + c.type + "' (known: " + known + ")");
        }
      }
      if (n.contains("restart")) {
        auto r = n["restart"].is_string() ? n["restart"].get<std::string>() : "";
        if (r == "never") c.restart = RestartPolicy::never;
        else if (r == "on-failure") c.restart = RestartPolicy::on_failure;
        else if (r == "always") c.restart = RestartPolicy::always;
        else err(path + ".restart: expected \"never\", \"on-failure\" or \"always\", got " + n["restart"].dump());
      }
      if (n.contains("required")) {
        if (n["required"].is_boolean()) c.required = n["required"].get<bool>();
        else err(path + ".required: expected boolean, got " + n["required"].dump());
      }
      if (n.contains("max_restarts")) {
        if (n["max_restarts"].is_number_integer() && n["max_restarts"].get<long long>() >= 0 &&
            n["max_restarts"].get<long long>() <= 1000) {
          c.max_restarts = n["max_restarts"].get<int>();
        } else {
          err(path + ".max_restarts: expected an integer 0..1000, got " + n["max_restarts"].dump());
        }
      }
      if (t) {
        try {
          c.params = validate_params(*t, n.contains("params") ? n["params"] : nlohmann::json::object(), path + ".params");
          try {
            c.publishes = t->publishes(c.params);
            c.subscribes = t->subscribes(c.params);
          } catch (const ValidationError& e) {
            // The node type's own checks of its params name the key ("teachers[1].from: ...").
            throw ValidationError(path + ".params." + e.what());
          }
          bool names_ok = true;
          for (auto& s : c.publishes) {
            if (!is_valid_name(s)) {
              err(path + ".params: publishes a stream named '" + s +
                  "', which is not a valid name (A-Z a-z 0-9 _ -, 1..48)");
              names_ok = false;
            }
          }
          // Only nodes whose own entry is sound take part in the cross-node check below.
          if (names_ok && !c.name.empty()) published[c.name].insert(c.publishes.begin(), c.publishes.end());
        } catch (const ValidationError& e) {
          err(e.what());
        }
      }
      g.nodes.push_back(std::move(c));
      index_in_file.push_back(i);
    }
  }
  // Every subscription must name a stream some node of this graph publishes.
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    for (auto& addr : g.nodes[i].subscribes) {
      std::string path = "nodes[" + std::to_string(index_in_file[i]) + "] (" + g.nodes[i].name + ").params";
      try {
        auto a = parse_stream_address(addr);
        auto it = published.find(a.node);
        if (a.stream.empty()) {
          err(path + ": '" + addr + "' must be NODE/STREAM");
        } else if (it == published.end() && names.count(a.node)) {
          // The node exists but its own entry has problems, already reported: say nothing more.
        } else if (it == published.end()) {
          err(path + ": subscribes to '" + addr + "' but the graph has no node '" + a.node + "'");
        } else if (!it->second.count(a.stream)) {
          std::string has;
          for (auto& s : it->second) has += (has.empty() ? "" : ", ") + s;
          err(path + ": subscribes to '" + addr + "' but node '" + a.node + "' publishes " +
              (has.empty() ? "nothing" : has));
        }
      } catch (const ValidationError& e) {
        err(path + ": " + e.what());
      }
    }
  }
  if (!errors.empty()) {
    std::string msg = "config has " + std::to_string(errors.size()) + " problem" + (errors.size() > 1 ? "s" : "") + ":";
    for (auto& e : errors) msg += "\n  " + e;
    throw ValidationError(msg);
  }
  if (g.domain.empty()) g.domain = default_domain();
  return g;
}

GraphConfig parse_graph_config_text(const std::string& text, const std::string& origin) {
  if (text.size() > kMaxConfigBytes) throw ValidationError(origin + ": config larger than 4 MiB");
  std::string syntax;
  nlohmann::json j;
  try {
    j = parse_json_input(text, "config", &syntax);
  } catch (const ValidationError& e) {
    throw ValidationError(origin + ": " + e.what());
  }
  if (j.is_discarded()) throw ValidationError(origin + ": not valid JSON: " + syntax);
  try {
    return parse_graph_config(j);
  } catch (const ValidationError& e) {
    throw ValidationError(origin + ": " + e.what());
  }
}

GraphConfig load_graph_config(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw ValidationError("cannot read config '" + path + "': " + std::strerror(errno));
  std::string text;
  char buf[65536];
  while (f.read(buf, sizeof buf) || f.gcount() > 0) {
    text.append(buf, static_cast<std::size_t>(f.gcount()));
    if (text.size() > kMaxConfigBytes) throw ValidationError(path + ": config larger than 4 MiB");
  }
  return parse_graph_config_text(text, path);
}

// ---------------------------------------------------------------- launcher

namespace {

std::atomic<int> g_signal{0};
void on_signal(int sig) { g_signal = sig; }

struct Running {
  const NodeConfig* cfg;
  platform::Child child;
  int restarts = 0;
  int streak = 0;  // restarts since the node last ran for LaunchOptions::stable_run
  std::chrono::steady_clock::time_point started{};
  bool failed_for_good = false;
  bool done = false;  // exited and will not be restarted
  std::chrono::steady_clock::time_point restart_at{};
  bool waiting_restart = false;
};

}  // namespace

int launch_graph(const GraphConfig& g, const LaunchOptions& opts) {
  DP_EXPECTS(!opts.self_exe.empty(), "launch_graph needs the directport binary");
  auto log = opts.log ? opts.log : [](const std::string& s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
  };
  struct sigaction sa {}, old_int {}, old_term {};
  sa.sa_handler = on_signal;
  g_signal = 0;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  remove_stale(g.domain);  // litter of an earlier run of this graph
  auto start_node = [&](Running& r) {
    r.child = platform::Child::spawn({opts.self_exe, "node", r.cfg->type, "--name", r.cfg->name, "--domain", g.domain,
                                      "--params-json", r.cfg->params.dump()},
                                     {/*capture_stdout=*/true, /*merge_stderr=*/true});
    r.started = std::chrono::steady_clock::now();
    r.waiting_restart = false;
  };
  std::vector<Running> nodes;
  nodes.reserve(g.nodes.size());
  for (auto& c : g.nodes) nodes.push_back(Running{&c, {}});
  // Producers first, so that consumers find their streams (they also retry on their own).
  for (auto& r : nodes) if (!r.cfg->publishes.empty()) start_node(r);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  for (auto& r : nodes) if (r.cfg->publishes.empty()) start_node(r);
  log("[launch] domain '" + g.domain + "': started " + std::to_string(nodes.size()) + " nodes");

  const auto t0 = std::chrono::steady_clock::now();
  auto last_progress = t0;
  int exit_code = 0;
  std::string stop_reason;
  const bool tty = ::isatty(2);
  while (stop_reason.empty()) {
    if (int s = g_signal.load()) stop_reason = std::string("received ") + (s == SIGINT ? "SIGINT" : "SIGTERM");
    if (opts.duration && std::chrono::steady_clock::now() - t0 >= *opts.duration) stop_reason = "duration reached";
    // Output of every node, prefixed.
    std::vector<pollfd> pf;
    for (auto& r : nodes) {
      if (r.child.output_fd() >= 0) pf.push_back({r.child.output_fd(), POLLIN, 0});
    }
    ::poll(pf.data(), pf.size(), 50);
    for (auto& r : nodes) {
      if (r.child.output_fd() >= 0) r.child.pump();
      for (auto& line : r.child.take_lines()) log("[" + r.cfg->name + "] " + line);
    }
    // Exits and restarts.
    auto now = std::chrono::steady_clock::now();
    for (auto& r : nodes) {
      if (r.done) continue;
      if (r.waiting_restart) {
        if (now >= r.restart_at && stop_reason.empty()) {
          log("[launch] restarting " + r.cfg->name + " (restart " + std::to_string(r.restarts) + " of " +
              std::to_string(r.cfg->max_restarts) + ")");
          start_node(r);
        }
        continue;
      }
      if (r.child.pid() <= 0) continue;
      auto rc = r.child.wait_for(std::chrono::milliseconds(0));
      if (!rc) continue;
      for (auto& line : r.child.take_lines()) log("[" + r.cfg->name + "] " + line);
      std::string how = *rc >= 0 ? "exited with " + std::to_string(*rc) : "was killed by signal " + std::to_string(-*rc);
      bool failed = *rc != 0;
      bool again = r.cfg->restart == RestartPolicy::always || (failed && r.cfg->restart == RestartPolicy::on_failure);
      if (again && r.restarts < r.cfg->max_restarts) {
        if (now - r.started >= opts.stable_run) r.streak = 0;
        auto delay = opts.restart_backoff * (1 << std::min(r.streak, 5));
        delay = std::min<std::chrono::milliseconds>(delay, std::chrono::seconds(8));
        ++r.restarts;
        ++r.streak;
        r.waiting_restart = true;
        r.restart_at = now + delay;
        log("[launch] " + r.cfg->name + " " + how + "; restarting in " + std::to_string(delay.count()) + " ms");
        continue;
      }
      r.done = true;
      r.failed_for_good = failed || (again && r.restarts >= r.cfg->max_restarts);
      log("[launch] " + r.cfg->name + " " + how + (r.failed_for_good ? ": failed for good" : ": finished"));
      if (r.failed_for_good && r.cfg->required) {
        exit_code = 1;
        stop_reason = "required node '" + r.cfg->name + "' failed";
      }
    }
    bool all_done = true;
    for (auto& r : nodes) all_done = all_done && r.done;
    if (all_done && stop_reason.empty()) stop_reason = "every node finished";
    if (opts.progress && now - last_progress >= std::chrono::seconds(1)) {
      last_progress = now;
      int up = 0, restarts = 0;
      for (auto& r : nodes) {
        up += r.child.running() && !r.waiting_restart;
        restarts += r.restarts;
      }
      char line[160];
      std::snprintf(line, sizeof line, "[launch] %.0f s: %d/%zu nodes running, %d restarts", 
                    std::chrono::duration<double>(now - t0).count(), up, nodes.size(), restarts);
      if (tty) std::fprintf(stderr, "\r%s   ", line);
      else std::fprintf(stderr, "%s\n", line);
    }
  }
  if (tty && opts.progress) std::fprintf(stderr, "\n");
  log("[launch] stopping: " + stop_reason);
  // Clean shutdown: SIGTERM everyone, SIGKILL whoever outstays the grace period.
  for (auto& r : nodes) r.child.signal(SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + opts.stop_grace;
  for (auto& r : nodes) {
    if (r.child.pid() <= 0 || !r.child.running()) continue;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    auto rc = r.child.wait_for(std::max(left, std::chrono::milliseconds(0)));
    if (!rc) {
      log("[launch] " + r.cfg->name + " did not stop within the grace period: SIGKILL");
      r.child.signal(SIGKILL);
      r.child.wait_for(std::chrono::seconds(5));
    }
    for (auto& line : r.child.take_lines()) log("[" + r.cfg->name + "] " + line);
  }
  auto removed = remove_stale(g.domain, std::chrono::seconds(0));
  for (auto& n : removed) log("[launch] removed the manifest left by " + n);
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  log(std::string("[launch] ") + (exit_code ? "graph failed" : "graph stopped cleanly"));
  return exit_code;
}

}  // namespace dp

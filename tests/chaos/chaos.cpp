#include "chaos.hpp"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "directport/core/broker.hpp"
#include "directport/core/discovery.hpp"
#include "directport/core/error.hpp"
#include "directport/core/manifest.hpp"
#include "directport/core/names.hpp"
#include "directport/cuda/device.hpp"
#include "directport/platform/child.hpp"
#include "directport/platform/shm.hpp"
#include "directport/platform/socket.hpp"
#include "support/system_probe.hpp"
#include "support/test_support.hpp"

namespace dp::chaos {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using namespace std::chrono_literals;

constexpr auto kObservePeriod = 50ms;     // manifests, brokers, launcher output
constexpr auto kArmedPeriod = 2ms;        // /proc scan while a set-up kill waits for its target
constexpr auto kAimPeriod = 100us;        // once the target is there, until its delay is over
constexpr double kDeathReportBound = 3;   // s for the launcher to report a death we caused

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

std::string secs(double s) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", s);
  return b;
}

// Nearest-rank percentile of a sorted sample.
double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size(), std::max<std::size_t>(rank, 1)) - 1];
}

json distribution(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  json j{{"count", v.size()}};
  if (!v.empty()) {
    j["p50"] = percentile(v, 50);
    j["p99"] = percentile(v, 99);
    j["max"] = v.back();
  } else {
    j["p50"] = j["p99"] = j["max"] = nullptr;
  }
  return j;
}

struct Kill {
  std::string node;
  bool source = false;
  std::string mode;              // "mid-stream" or "set-up"
  std::string stage;             // set-up kills: what the instance had done (manifest state)
  double t = 0;                  // s since the launcher started
  pid_t pid = -1;
  double after_appeared_ms = -1; // set-up kills: delay after the new process was first seen
  std::optional<double> restart_delay_ms;  // the launcher's announced back-off
  double reported_t = -1;        // when we read the launcher's report of the death
  bool restart_seen = false;     // "[launch] restarting NODE" followed
  std::optional<double> reconnected_t;
  bool superseded = false;       // killed again before it had recovered
  bool failed = false;           // missed its bound (reported once)
  std::string old_key;           // sinks: their subscription at kill time
  // When the last restart it waits for was due: its own (kill + announced back-off) or that of a
  // node on the other side of its links that was down meanwhile.
  double due_t = -1;
};

struct NodeInfo {
  std::string name;
  bool source = false;
  std::string producer;                // sinks: their source
  std::vector<std::string> consumers;  // sources: their sinks
  // Process and manifest.
  pid_t pid = -1;
  bool listed = false;
  std::optional<Liveness> liveness;
  protocol::NodeState state = protocol::NodeState::starting;
  platform::ProcessIdentity owner;
  std::string broker;
  double stuck_since = -1;
  int extra_process_rounds = 0;
  // Sources: broker connection and publish progress of the current instance.
  std::unique_ptr<BrokerClient> client;
  platform::ProcessIdentity client_owner;
  std::unique_ptr<ManifestReader> reader;
  platform::ProcessIdentity reader_owner;
  std::uint64_t published = 0;
  double publish_progress_t = -1;
  double status_ok_t = -1;
  // Sinks: their subscription as the producer's broker sees it.
  std::string sub_key;           // "<producer pid>:<connection id>"
  std::int64_t sub_producer = -1;
  std::uint64_t last_taken = 0;
  double progress_t = -1;        // last time it took a new frame
  // Chaos.
  int pending = -1;              // index of the kill it has not recovered from
  double recovered_t = 0;        // when it last recovered (or the warm-up ended)
  bool armed = false;            // a set-up kill waits for its next instance
  bool spared = false;           // never killed (--fault stall-sink)
  std::set<pid_t> killed_pids;
  double armed_delay_ms = 0, armed_seen_t = -1;
  pid_t armed_pid = -1;
  // Output.
  std::deque<std::string> recent;  // its last lines, for failure messages
  json final_line;
  int final_lines = 0;
};

class Run {
 public:
  explicit Run(Options o) : o_(std::move(o)), rng_(o_.seed) {}
  int go();

 private:
  double now() const { return std::chrono::duration<double>(Clock::now() - t0_).count(); }
  void fail(const std::string& key, const std::string& msg);
  void setup();
  void observe();
  void pump_output();
  void handle_line(const std::string& line);
  void on_death(NodeInfo& n, const std::string& how, double delay_ms, bool by_sigkill);
  void observe_processes();
  void observe_manifests();
  void observe_source(NodeInfo& s);
  void check_pending();
  void check_hangs();
  void maybe_kill();
  void handle_armed();
  bool restart_imminent(const NodeInfo& n) const;
  void arm_setup_kills();
  void kill_now(NodeInfo& n, pid_t pid, const std::string& mode, const std::string& stage, double after_ms);
  double deadline_of(const Kill& k) const;
  bool graph_up() const;
  void stop_launcher();
  json leaks();
  void inject_fault();
  void corrupt_source(const NodeInfo& src);
  json summary(const json& leak_report);
  NodeInfo& node(const std::string& name) { return nodes_.at(index_.at(name)); }
  const NodeInfo* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &nodes_[it->second];
  }

  Options o_;
  std::mt19937_64 rng_;
  std::vector<NodeInfo> nodes_;
  std::map<std::string, std::size_t> index_;
  std::vector<Kill> kills_;
  std::vector<std::string> failures_;
  std::set<std::string> failure_keys_;
  platform::Child launcher_;
  platform::Child decoy_;                 // --fault leak
  platform::Segment decoy_segment_;       // --fault leak
  platform::LocalSocket decoy_socket_;    // --fault leak
  std::optional<int> launcher_rc_;
  std::ofstream log_;
  std::string config_path_, log_path_;
  Clock::time_point t0_;
  double next_scan_ = 0;
  double chaos_start_ = -1, chaos_end_ = -1, chaos_over_ = -1, next_kill_ = 0, last_output_t_ = 0, stop_t_ = -1;
  bool stopping_ = false;
  bool stopped_cleanly_ = false;
  int restarts_ = 0, unexpected_exits_ = 0, skipped_kills_ = 0, verification_lines_ = 0, owed_setup_kills_ = 0;
  std::uint64_t verified_ = 0, bad_ = 0, invalidated_ = 0, published_ = 0, sink_reconnects_ = 0;
  // GPU memory in use on device 0 (NVML), for GPU streams: before the launch, at the start of
  // the chaos phase, once the graph has settled after it, and after the stop.
  json gpu_memory_ = json::object();
  void sample_gpu_memory(const char* when);
  void check_gpu_memory();
};

void Run::fail(const std::string& key, const std::string& msg) {
  if (!failure_keys_.insert(key).second) return;  // each problem once
  char t[32];
  std::snprintf(t, sizeof t, "[%7.2f s] ", now());
  failures_.push_back(t + msg);
  std::fprintf(stderr, "dp_chaos: FAIL %s%s\n", t, msg.c_str());
}

// ---------------------------------------------------------------- set-up

void Run::setup() {
  if (o_.seed == 0) {
    std::random_device rd;
    o_.seed = (std::uint64_t(rd()) << 32 | rd()) | 1;
    rng_.seed(o_.seed);
  }
  if (o_.domain.empty()) o_.domain = test::unique_name("chaos");
  validate_name("domain", o_.domain);
  if (o_.workdir.empty()) {
    char tmpl[] = "/tmp/dp_chaos_XXXXXX";
    if (!::mkdtemp(tmpl)) throw SystemError("mkdtemp", errno);
    o_.workdir = tmpl;
  } else {
    std::filesystem::create_directories(o_.workdir);
  }
  json cfg{{"description", "dp_chaos: sources and checksum sinks, restarted on failure"},
           {"domain", o_.domain},
           {"nodes", json::array()}};
  for (int s = 0; s < o_.sources; ++s) {
    NodeInfo src;
    src.name = "src" + std::to_string(s);
    src.source = true;
    cfg["nodes"].push_back({{"name", src.name},
                            {"type", "pattern-source"},
                            {"restart", "on-failure"},
                            {"max_restarts", 1000},
                            {"params",
                             {{"stream", "frames"},
                              {"bytes", o_.bytes},
                              {"memory", o_.memory},
                              {"rate_hz", o_.rate_hz},
                              {"slots", 3}}}});
    for (int k = 0; k < o_.sinks_per_source; ++k) {
      NodeInfo sink;
      sink.name = "sink" + std::to_string(s) + "_" + std::to_string(k);
      sink.producer = src.name;
      src.consumers.push_back(sink.name);
      // Sinks wait long for a frame: a source may be down for its whole back-off (up to 8 s).
      cfg["nodes"].push_back({{"name", sink.name},
                              {"type", "checksum-sink"},
                              {"restart", "on-failure"},
                              {"max_restarts", 1000},
                              {"params",
                               {{"from", src.name + "/frames"},
                                {"timeout_s", 120.0},
                                {"hold_ms", k % 2 == 1 ? 2.0 : 0.0}}}});
      nodes_.push_back(std::move(sink));
    }
    nodes_.push_back(std::move(src));
  }
  for (std::size_t i = 0; i < nodes_.size(); ++i) index_[nodes_[i].name] = i;
  config_path_ = o_.workdir + "/graph.json";
  log_path_ = o_.workdir + "/launch.log";
  std::ofstream(config_path_) << cfg.dump(2) << "\n";
  log_.open(log_path_);
  if (!log_) throw Error("cannot write " + log_path_);
}

// ---------------------------------------------------------------- observation

void Run::pump_output() {
  for (int i = 0; i < 256 && launcher_.output_fd() >= 0; ++i) {
    auto before = launcher_.output().size();
    launcher_.pump();
    if (launcher_.output().size() == before) break;
  }
  for (auto& line : launcher_.take_lines()) handle_line(line);
}

void Run::handle_line(const std::string& line) {
  char t[32];
  std::snprintf(t, sizeof t, "%8.3f ", now());
  log_ << t << line << "\n";
  if (o_.verbose) std::printf("%s%s\n", t, line.c_str());
  last_output_t_ = now();
  if (line == "[launch] graph stopped cleanly") stopped_cleanly_ = true;
  if (starts_with(line, "[launch] ")) {
    const std::string rest = line.substr(9);
    if (rest.find(" nodes running, ") != std::string::npos) return;  // the progress line
    auto sp = rest.find(' ');
    std::string first = rest.substr(0, sp);
    std::string after = sp == std::string::npos ? "" : rest.substr(sp + 1);
    if (first == "restarting") {
      auto name = after.substr(0, after.find(' '));
      if (index_.count(name)) {
        ++restarts_;
        auto& n = node(name);
        if (n.pending >= 0) kills_[n.pending].restart_seen = true;
      }
      return;
    }
    if (!index_.count(first)) return;
    auto& n = node(first);
    auto in = after.find("; restarting in ");
    if (in != std::string::npos) {
      double delay = std::atof(after.c_str() + in + 16);
      on_death(n, after.substr(0, in), delay, starts_with(after, "was killed by signal 9"));
    } else if (after.find("did not stop within the grace period") != std::string::npos) {
      fail("grace:" + n.name, n.name + " ignored SIGTERM: " + line);
    } else if (after.find("failed for good") != std::string::npos) {
      fail("good:" + n.name, "the launcher gave " + n.name + " up: " + line);
    } else if (!stopping_ && (starts_with(after, "exited") || starts_with(after, "was killed"))) {
      fail("exit:" + n.name, n.name + " ended and was not restarted: " + line);
    }
    return;
  }
  if (line.size() > 2 && line[0] == '[') {
    auto close = line.find("] ");
    if (close == std::string::npos) return;
    auto name = line.substr(1, close - 1);
    if (!index_.count(name)) return;
    auto& n = node(name);
    std::string text = line.substr(close + 2);
    n.recent.push_back(text);
    if (n.recent.size() > 8) n.recent.pop_front();
    if (text.find("failed verification") != std::string::npos) {
      ++verification_lines_;
      fail("corrupt:" + name + ":" + std::to_string(verification_lines_),
           name + " received a corrupt frame: " + text);
    }
    if (!text.empty() && text[0] == '{') {
      auto j = json::parse(text, nullptr, false);
      if (j.is_object() && j.value("node", "") == name) {
        n.final_line = j;
        ++n.final_lines;
        if (n.source) {
          published_ += j.value("published", 0ull);
        } else {
          verified_ += j.value("verified", 0ull);
          bad_ += j.value("bad", 0ull);
          invalidated_ += j.value("invalidated", 0ull);
          sink_reconnects_ += j.value("reconnects", 0ull);
          if (j.value("bad", 0ull) > 0) {
            fail("bad:" + name + ":" + std::to_string(n.final_lines),
                 name + " reports " + std::to_string(j.value("bad", 0ull)) + " bad frames: " + text);
          }
        }
      }
    }
  }
}

void Run::on_death(NodeInfo& n, const std::string& how, double delay_ms, bool by_sigkill) {
  if (by_sigkill && n.pending >= 0 && !kills_[n.pending].restart_delay_ms) {
    kills_[n.pending].restart_delay_ms = delay_ms;
    kills_[n.pending].reported_t = now();
    return;
  }
  ++unexpected_exits_;
  std::string recent;
  for (auto& l : n.recent) recent += "\n      | " + l;
  fail("unexpected:" + n.name + ":" + std::to_string(unexpected_exits_),
       n.name + " " + how + " without being killed by dp_chaos (restarting in " +
           std::to_string(static_cast<long>(delay_ms)) + " ms); its last lines:" + recent);
}

void Run::observe_processes() {
  std::map<std::string, std::vector<pid_t>> seen;
  for (auto& p : test::node_processes(o_.domain)) seen[p.name].push_back(p.pid);
  for (auto& n : nodes_) {
    auto& pids = seen[n.name];
    // The launcher reaps an instance before it starts the next: never two at once.
    if (pids.size() > 1) {
      if (++n.extra_process_rounds >= 3) {
        fail("two:" + n.name, n.name + " has " + std::to_string(pids.size()) + " processes at once");
      }
    } else {
      n.extra_process_rounds = 0;
    }
    n.pid = -1;
    for (pid_t p : pids) {
      if (!n.killed_pids.count(p)) n.pid = p;
    }
  }
}

void Run::observe_manifests() {
  for (auto& n : nodes_) n.listed = false;
  for (auto& e : list_nodes(o_.domain)) {
    if (!index_.count(e.name)) continue;
    auto& n = node(e.name);
    n.listed = true;
    n.liveness = e.liveness;
    n.state = e.state;
    n.owner = e.owner;
    n.broker = e.doc.is_object() ? e.doc.value("broker", "") : "";
    // A live process whose heartbeat is stale: its broker thread is stuck.
    if (e.liveness == Liveness::stuck && n.pending < 0) {
      if (n.stuck_since < 0) n.stuck_since = now();
      if (now() - n.stuck_since > o_.hang_bound_s) {
        fail("stuck:" + n.name, n.name + " (pid " + std::to_string(e.owner.pid) + ") is stuck: heartbeat " +
                                    std::to_string(e.heartbeat_age_ns / 1000000) + " ms old");
      }
    } else {
      n.stuck_since = -1;
    }
  }
}

void Run::observe_source(NodeInfo& s) {
  if (!s.listed || s.liveness != Liveness::live || s.state != protocol::NodeState::running || s.broker.empty()) return;
  // Publish progress, from the control block of this instance.
  try {
    if (!s.reader || s.reader_owner != s.owner) {
      s.reader = std::make_unique<ManifestReader>(ManifestReader::open(o_.domain, s.name));
      s.reader_owner = s.reader->owner();
      s.published = 0;
    }
    if (s.reader_owner == s.owner) {
      auto doc = s.reader->json();
      if (!doc["streams"].empty()) {
        auto p = s.reader->control(doc["streams"][0]["control_index"].get<std::uint32_t>()).published.load();
        if (p != s.published) {
          s.published = p;
          s.publish_progress_t = now();
        }
      }
    }
  } catch (const Error&) {
    s.reader.reset();
  }
  // Consumers, live, from the broker of this instance.
  json consumers;
  try {
    if (!s.client || s.client_owner != s.owner) {
      s.client.reset();
      s.client = std::make_unique<BrokerClient>(BrokerClient::connect(s.broker, "dp-chaos", s.owner, 1000ms));
      s.client_owner = s.owner;
    }
    consumers = s.client->request({{"op", "status"}}, {}, 1000ms).body["consumers"]["frames"];
    s.status_ok_t = now();
  } catch (const Error&) {
    s.client.reset();  // gone, or not answering: tried again next round
    return;
  }
  if (!consumers.is_array()) return;
  for (auto& sink_name : s.consumers) {
    auto& k = node(sink_name);
    const json* newest = nullptr;
    for (auto& c : consumers) {
      if (c.value("client", "") != sink_name) continue;
      if (!newest || c.value("connection", 0ull) > newest->value("connection", 0ull)) newest = &c;
    }
    if (!newest) continue;
    std::string key = std::to_string(s.owner.pid) + ":" + std::to_string(newest->value("connection", 0ull));
    std::uint64_t taken = newest->value("last_taken", 0ull);
    if (key != k.sub_key) {
      k.sub_key = key;
      k.sub_producer = s.owner.pid;
      k.last_taken = taken;
      if (taken > 0) k.progress_t = now();
    } else if (taken > k.last_taken) {
      k.last_taken = taken;
      k.progress_t = now();
    }
  }
}

void Run::observe() {
  pump_output();
  if (!launcher_rc_) {
    launcher_rc_ = launcher_.wait_for(0ms);
    if (launcher_rc_ && !stopping_) {
      fail("launcher-exit", "the launcher exited on its own with " + std::to_string(*launcher_rc_));
    }
  }
  observe_processes();
  observe_manifests();
  for (auto& n : nodes_) {
    if (n.source) observe_source(n);
  }
  if (chaos_start_ >= 0 && !stopping_) {
    check_pending();
    check_hangs();
  }
}

// ---------------------------------------------------------------- checks

double Run::deadline_of(const Kill& k) const {
  // Until the launcher has said how long it waits, allow it kDeathReportBound to notice.
  double own = k.restart_delay_ms ? k.t + *k.restart_delay_ms / 1000 + o_.reconnect_bound_s
                                  : k.t + kDeathReportBound + o_.reconnect_bound_s;
  // A kill on the other side of the link delays this one's recovery too.
  auto& n = nodes_[index_.at(k.node)];
  std::vector<std::string> linked = n.source ? n.consumers : std::vector<std::string>{n.producer};
  for (auto& name : linked) {
    auto& other = nodes_[index_.at(name)];
    if (other.pending >= 0 && other.pending != static_cast<int>(&k - kills_.data())) {
      const auto& ok = kills_[other.pending];
      double d = ok.restart_delay_ms ? ok.t + *ok.restart_delay_ms / 1000 + o_.reconnect_bound_s
                                     : ok.t + kDeathReportBound + o_.reconnect_bound_s;
      own = std::max(own, d);
    }
  }
  return own;
}

void Run::check_pending() {
  const double t = now();
  for (std::size_t i = 0; i < kills_.size(); ++i) {
    auto& k = kills_[i];
    auto& n = node(k.node);
    if (n.pending != static_cast<int>(i)) continue;
    if (!k.restart_delay_ms && t - k.t > kDeathReportBound) {
      fail("unreported:" + std::to_string(i), "the launcher did not report the death of " + k.node + " (pid " +
                                                  std::to_string(k.pid) + ", killed at " + secs(k.t) +
                                                  " s) within " + secs(kDeathReportBound) + " s");
    }
    if (k.restart_delay_ms) k.due_t = std::max(k.due_t, k.t + *k.restart_delay_ms / 1000);
    for (auto& name : n.source ? n.consumers : std::vector<std::string>{n.producer}) {
      const auto& other = node(name);
      if (other.pending >= 0 && kills_[other.pending].restart_delay_ms) {
        const auto& ok = kills_[other.pending];
        k.due_t = std::max(k.due_t, ok.t + *ok.restart_delay_ms / 1000);
      }
    }
    bool done;
    if (n.source) {
      // Every consumer took a frame from a new instance after the kill.
      done = true;
      for (auto& c : n.consumers) {
        auto& s = node(c);
        done = done && s.sub_producer > 0 && s.sub_producer != k.pid && s.progress_t > k.t;
      }
    } else {
      done = !n.sub_key.empty() && n.sub_key != k.old_key && n.progress_t > k.t;
    }
    if (done) {
      k.reconnected_t = t;
      n.pending = -1;
      n.recovered_t = t;
      if (n.source) {
        for (auto& c : n.consumers) node(c).recovered_t = std::max(node(c).recovered_t, t);
      }
      continue;
    }
    if (!k.failed && t > deadline_of(k)) {
      k.failed = true;
      std::string recent;
      for (auto& l : n.recent) recent += "\n      | " + l;
      fail("bound:" + std::to_string(i),
           k.node + " killed at " + secs(k.t) + " s (" + k.mode + "): " +
               (n.source ? "its consumers took no frame from a new instance" : "no new instance took a frame") +
               " within the bound (restart delay " +
               (k.restart_delay_ms ? std::to_string(static_cast<long>(*k.restart_delay_ms)) + " ms" : "never announced") +
               " + " + secs(o_.reconnect_bound_s) + " s); restart seen: " + (k.restart_seen ? "yes" : "no") +
               "; its last lines:" + recent);
    }
  }
}

void Run::check_hangs() {
  const double t = now();
  if (t - last_output_t_ > o_.hang_bound_s) {
    fail("launcher-silent", "the launcher printed nothing (not even its progress line) for " +
                                secs(t - last_output_t_) + " s");
  }
  for (auto& n : nodes_) {
    if (n.pending >= 0 || n.armed) continue;
    double since = std::max(n.recovered_t, chaos_start_);
    if (n.source) {
      if (t - since < o_.hang_bound_s) continue;
      if (t - std::max(since, n.publish_progress_t) > o_.hang_bound_s) {
        fail("hang-pub:" + n.name + ":" + std::to_string(static_cast<long>(since)),
             n.name + " (pid " + std::to_string(n.pid) + ") published nothing for " +
                 secs(o_.hang_bound_s) + " s");
      }
      if (t - std::max(since, n.status_ok_t) > o_.hang_bound_s) {
        fail("hang-broker:" + n.name + ":" + std::to_string(static_cast<long>(since)),
             "the broker of " + n.name + " answered no status request for " + secs(o_.hang_bound_s) + " s");
      }
    } else {
      const auto& p = node(n.producer);
      if (p.pending >= 0 || p.armed) continue;
      since = std::max(since, p.recovered_t);
      if (t - since < o_.hang_bound_s) continue;
      if (t - std::max(since, n.progress_t) > o_.hang_bound_s) {
        fail("hang-sink:" + n.name + ":" + std::to_string(static_cast<long>(since)),
             n.name + " (pid " + std::to_string(n.pid) + ") took no frame for " + secs(o_.hang_bound_s) +
                 " s while " + n.producer + " was up");
      }
    }
  }
}

bool Run::graph_up() const {
  for (auto& n : nodes_) {
    if (!n.listed || n.liveness != Liveness::live || n.state != protocol::NodeState::running) return false;
    if (!n.source && n.progress_t < 0) return false;
    if (n.source && n.publish_progress_t < 0) return false;
  }
  return true;
}

// ---------------------------------------------------------------- kills

void Run::kill_now(NodeInfo& n, pid_t pid, const std::string& mode, const std::string& stage, double after_ms) {
  if (::kill(pid, SIGKILL) != 0) return;  // gone meanwhile: nothing was killed
  Kill k;
  k.node = n.name;
  k.source = n.source;
  k.mode = mode;
  k.stage = stage;
  k.t = now();
  k.pid = pid;
  k.after_appeared_ms = after_ms;
  k.old_key = n.sub_key;
  if (n.pending >= 0) kills_[n.pending].superseded = true;
  kills_.push_back(k);
  n.pending = static_cast<int>(kills_.size()) - 1;
  n.killed_pids.insert(pid);
  n.pid = -1;
  log_ << "         [dp-chaos] SIGKILL " << n.name << " pid " << pid << " (" << mode
       << (stage.empty() ? "" : ", " + stage) << ")\n";
}

void Run::maybe_kill() {
  if (o_.kill_rate <= 0 || now() < next_kill_ || now() >= chaos_end_) return;
  next_kill_ += std::exponential_distribution<double>(o_.kill_rate)(rng_);
  std::uniform_real_distribution<double> u(0, 1);
  // Set-up kills: the next node that goes down is killed again right after its new instance
  // appears, at a random point of its set-up (see arm_setup_kills).
  if (u(rng_) < o_.setup_fraction) {
    owed_setup_kills_ = std::min(owed_setup_kills_ + 1, 2);  // no burst after a quiet spell
    arm_setup_kills();
    return;
  }
  // Mid-stream: any node that runs normally, each as likely.
  std::vector<NodeInfo*> steady;
  for (auto& n : nodes_) {
    if (n.pending < 0 && !n.armed && !n.spared && n.pid > 0) steady.push_back(&n);
  }
  if (steady.empty()) {
    ++skipped_kills_;
    return;
  }
  auto* n = steady[std::uniform_int_distribution<std::size_t>(0, steady.size() - 1)(rng_)];
  kill_now(*n, n->pid, "mid-stream", "", -1);
  arm_setup_kills();
}

void Run::arm_setup_kills() {
  while (owed_setup_kills_ > 0) {
    // Killed mid-stream, and not restarted yet. (Not one killed during set-up already: chains
    // of set-up kills, each after a longer back-off, would keep a node down for minutes.)
    std::vector<NodeInfo*> down;
    for (auto& n : nodes_) {
      if (n.pending >= 0 && !n.armed && !kills_[n.pending].restart_seen && kills_[n.pending].mode == "mid-stream") {
        down.push_back(&n);
      }
    }
    if (down.empty()) return;
    auto* n = down[std::uniform_int_distribution<std::size_t>(0, down.size() - 1)(rng_)];
    n->armed = true;
    // A node sets itself up in a few milliseconds (exec to "running": ~2-10 ms here).
    n->armed_delay_ms = std::uniform_real_distribution<double>(0, 4)(rng_);
    n->armed_seen_t = -1;
    n->armed_pid = -1;
    --owed_setup_kills_;
  }
}

// An armed node whose restart is due within 200 ms, or was due less than 300 ms ago, and whose
// new instance has not been seen yet.
bool Run::restart_imminent(const NodeInfo& n) const {
  if (!n.armed || n.armed_pid >= 0 || n.pending < 0) return false;
  const auto& k = kills_[n.pending];
  if (!k.restart_delay_ms) return false;
  const double due = k.reported_t + *k.restart_delay_ms / 1000;
  return now() >= due - 0.2 && now() < due + 0.3;  // we read the report up to ~0.1 s late
}

void Run::handle_armed() {
  bool any = false;
  for (auto& n : nodes_) any = any || (n.armed && (n.armed_pid >= 0 || restart_imminent(n) || now() >= next_scan_));
  if (!any) return;
  if (now() >= chaos_end_) {
    for (auto& n : nodes_) n.armed = false;
    return;
  }
  next_scan_ = now() + 0.02;  // outside the imminent window, a scan every 20 ms is enough
  pump_output();
  auto procs = test::node_processes(o_.domain);
  const double t = now();
  for (auto& n : nodes_) {
    if (!n.armed) continue;
    if (n.armed_pid < 0) {
      for (auto& p : procs) {
        if (p.name == n.name && !n.killed_pids.count(p.pid)) {
          n.armed_pid = p.pid;
          n.armed_seen_t = t;
        }
      }
    }
    if (n.armed_pid < 0 || (now() - n.armed_seen_t) * 1000 < n.armed_delay_ms) continue;
    const double after_ms = (now() - n.armed_seen_t) * 1000;
    const pid_t pid = n.armed_pid;
    n.armed = false;
    kill_now(n, pid, "set-up", "", after_ms);
    // What the instance had got to (read after the kill: a dead process changes nothing): no
    // manifest of its own yet (none, or its dead predecessor's), "starting" (set-up,
    // subscriptions), or "running".
    std::string stage = "before its manifest";
    try {
      auto r = ManifestReader::open(o_.domain, n.name);
      if (r.owner().pid == pid) stage = r.state() == protocol::NodeState::running ? "running" : "starting";
    } catch (const Error&) {
    }
    if (n.pending >= 0 && kills_[n.pending].pid == pid) kills_[n.pending].stage = stage;
  }
}

// ---------------------------------------------------------------- end

void Run::stop_launcher() {
  stopping_ = true;
  stop_t_ = now();
  if (launcher_rc_) return;
  launcher_.signal(SIGTERM);
  while (now() - stop_t_ < o_.stop_bound_s) {
    pump_output();
    launcher_rc_ = launcher_.wait_for(50ms);
    if (launcher_rc_) break;
  }
  if (!launcher_rc_) {
    fail("launcher-stop", "the launcher did not stop within " + secs(o_.stop_bound_s) +
                              " s of SIGTERM: killed");
    launcher_.signal(SIGKILL);
    launcher_rc_ = launcher_.wait_for(5000ms);
  }
  pump_output();
  for (auto& l : launcher_.take_lines()) handle_line(l);
  if (launcher_rc_ && *launcher_rc_ != 0) {
    fail("launcher-rc", "the launcher exited with " + std::to_string(*launcher_rc_) + " after SIGTERM, not 0");
  }
  // Our own connections and mappings of the last instances go before the leak check.
  for (auto& n : nodes_) {
    n.client.reset();
    n.reader.reset();
  }
  if (!stopped_cleanly_) fail("launcher-clean", "the launcher never said \"graph stopped cleanly\"");
}

// ---------------------------------------------------------------- deliberate faults

void Run::corrupt_source(const NodeInfo& src) {
  // The source's own (writable) mapping of its stream memory, found by the memfd's name.
  std::ifstream maps("/proc/" + std::to_string(src.pid) + "/maps");
  std::uintptr_t lo = 0, hi = 0;
  for (std::string line; std::getline(maps, line);) {
    if (line.find("/memfd:dp-mem-" + src.name + ".") == std::string::npos) continue;
    std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi);
  }
  int fd = ::open(("/proc/" + std::to_string(src.pid) + "/mem").c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0 || hi <= lo) {
    fail("fault", "--fault corrupt: cannot reach the stream memory of " + src.name);
    if (fd >= 0) ::close(fd);
    return;
  }
  std::uint64_t junk[8];
  const auto until = Clock::now() + 1s;
  while (Clock::now() < until) {
    for (std::uintptr_t at = lo; at + 4096 <= hi; at += 4096) {
      for (auto& w : junk) w = rng_();
      if (::pwrite(fd, junk, sizeof junk, static_cast<off_t>(at + 64)) < 0) break;
    }
    std::this_thread::sleep_for(1ms);
    pump_output();
  }
  ::close(fd);
}

void Run::inject_fault() {
  if (o_.fault == "stall-sink") {
    for (auto& n : nodes_) {
      if (!n.source && n.pid > 0) {
        ::kill(n.pid, SIGSTOP);
        n.spared = true;  // never picked for a kill: it must stay stalled
        log_ << "         [dp-chaos] fault: SIGSTOP " << n.name << " pid " << n.pid << "\n";
        return;
      }
    }
  } else if (o_.fault == "corrupt") {
    for (auto& n : nodes_) {
      if (n.source && n.pid > 0) return corrupt_source(n);
    }
  }
}

json Run::leaks() {
  if (o_.fault == "leak") {
    // What a careless tool or node would leave: a process of the domain, its manifest, a socket.
    decoy_ = platform::Child::spawn({o_.directport, "top", "--domain", o_.domain, "--interval", "1"},
                                    {/*capture_stdout=*/true, /*merge_stderr=*/true});
    decoy_segment_ = platform::Segment::create_named(manifest_segment_name(o_.domain, "decoy"), 4096);
    decoy_socket_ = platform::LocalSocket::listen(test::broker_socket_prefix(o_.domain, nodes_[0].name) + "decoy");
    std::this_thread::sleep_for(200ms);  // the decoy process is exec'd
  }
  json out{{"shm", json::array()}, {"sockets", json::array()}, {"processes", json::array()}};
  // The launcher reaps every node before it exits; allow the kernel a moment to tear down.
  const auto give_up = Clock::now() + 3s;
  for (;;) {
    out["shm"] = platform::Segment::list(manifest_prefix(o_.domain));
    json socks = json::array();
    for (auto& n : nodes_) {
      for (auto& s : test::abstract_sockets(test::broker_socket_prefix(o_.domain, n.name))) socks.push_back(s);
    }
    out["sockets"] = socks;
    json procs = json::array();
    for (pid_t p : test::processes_with_arg(o_.domain)) {
      std::string argv;
      for (auto& a : test::process_argv(p)) argv += (argv.empty() ? "" : " ") + a;
      procs.push_back({{"pid", p}, {"argv", argv}});
    }
    out["processes"] = procs;
    bool clean = out["shm"].empty() && out["sockets"].empty() && out["processes"].empty();
    if (clean || Clock::now() >= give_up) break;
    std::this_thread::sleep_for(100ms);
  }
  if (!out["shm"].empty()) fail("leak-shm", "leaked /dev/shm entries: " + out["shm"].dump());
  if (!out["sockets"].empty()) fail("leak-sock", "leaked abstract sockets: " + out["sockets"].dump());
  if (!out["processes"].empty()) fail("leak-proc", "leaked processes: " + out["processes"].dump());
  return out;
}

json Run::summary(const json& leak_report) {
  std::vector<double> reconnect, beyond_delay;
  json kill_log = json::array();
  int mid = 0, setup = 0, src = 0, superseded = 0;
  std::map<std::string, int> stages;
  for (auto& k : kills_) {
    (k.mode == "set-up" ? setup : mid)++;
    src += k.source;
    superseded += k.superseded;
    if (k.mode == "set-up") ++stages[k.stage];
    json e{{"t_s", k.t}, {"node", k.node}, {"pid", k.pid}, {"mode", k.mode}};
    if (!k.stage.empty()) e["stage"] = k.stage;
    if (k.after_appeared_ms >= 0) e["after_appeared_ms"] = k.after_appeared_ms;
    if (k.restart_delay_ms) e["restart_delay_ms"] = *k.restart_delay_ms;
    if (k.reconnected_t) {
      double ms = (*k.reconnected_t - k.t) * 1000;
      e["reconnect_ms"] = ms;
      reconnect.push_back(ms);
      if (k.due_t >= 0) {
        e["after_restart_due_ms"] = (*k.reconnected_t - k.due_t) * 1000;
        beyond_delay.push_back((*k.reconnected_t - k.due_t) * 1000);
      }
    }
    if (k.superseded) e["superseded"] = true;
    if (k.failed) e["missed_bound"] = true;
    kill_log.push_back(e);
  }
  json sinks = json::object(), sources = json::object();
  for (auto& n : nodes_) (n.source ? sources : sinks)[n.name] = n.final_line;
  double chaos_s = chaos_start_ >= 0 ? chaos_over_ - chaos_start_ : 0;
  return {{"passed", failures_.empty()},
          {"failures", failures_},
          {"seed", o_.seed},
          {"fault", o_.fault},
          {"domain", o_.domain},
          {"duration_s", std::max(0.0, chaos_s)},
          {"total_s", now()},
          {"kill_rate_per_s", o_.kill_rate},
          {"graph", {{"sources", o_.sources}, {"sinks", o_.sources * o_.sinks_per_source}, {"memory", o_.memory},
                     {"rate_hz", o_.rate_hz}, {"bytes", o_.bytes}}},
          {"kills", {{"total", kills_.size()}, {"mid_stream", mid}, {"set_up", setup}, {"sources", src},
                     {"sinks", static_cast<int>(kills_.size()) - src}, {"superseded", superseded},
                     {"skipped", skipped_kills_}, {"set_up_stages", stages}}},
          {"restarts", restarts_},
          {"unexpected_exits", unexpected_exits_},
          {"reconnect_ms", distribution(reconnect)},
          {"reconnect_after_restart_due_ms", distribution(beyond_delay)},
          {"observation_period_ms", kObservePeriod.count()},
          {"frames", {{"verified", verified_}, {"bad", bad_}, {"invalidated", invalidated_},
                      {"failed_verification_lines", verification_lines_}, {"published", published_}}},
          {"final_lines", {{"sources", sources}, {"sinks", sinks}}},
          {"leaks", leak_report},
          {"launcher", {{"exit_code", launcher_rc_ ? json(*launcher_rc_) : json(nullptr)},
                        {"stopped_cleanly", stopped_cleanly_}}},
          {"kill_log", kill_log},
          {"workdir", o_.workdir}};
}

void Run::sample_gpu_memory(const char* when) {
  if (o_.memory == "host") return;
  auto m = cuda::device_gpu_memory(0);
  if (!m.ok) {
    gpu_memory_["why"] = m.why;
    return;
  }
  gpu_memory_[std::string(when) + "_mib"] = static_cast<double>(m.used) / (1 << 20);
}

// GPU memory that outlived its processes: a consumer that kept the mapping of every dead
// producer instance, or an export the driver never freed. Two comparisons, each of states with
// the same processes: the graph up at the start of the chaos phase against the graph up again
// after it (every killed node restarted), and the device before the launch against after the
// stop.
void Run::check_gpu_memory() {
  if (o_.memory == "host") {
    gpu_memory_ = {{"measured", false}, {"why", "host memory: no GPU memory to account for"}};
    return;
  }
  auto& g = gpu_memory_;
  auto grown = [&](const char* a, const char* b, const std::string& what, const char* between) {
    if (!g.contains(a) || !g.contains(b)) return;
    const double d = g[b].get<double>() - g[a].get<double>();
    g["grown_" + what + "_mib"] = d;
    if (d > o_.gpu_leak_mib) {
      char m[256];
      std::snprintf(m, sizeof m, "GPU memory grew by %.0f MiB %s (more than --gpu-leak-mib %.0f)", d, between,
                    o_.gpu_leak_mib);
      fail("leak-gpu-" + what, m);
    }
  };
  grown("chaos_start_mib", "settled_mib", "running", "from the start of the chaos phase to the settled graph after it");
  grown("idle_mib", "stopped_mib", "stopped", "from before the launch to after the stop");
  g["measured"] = g.contains("grown_running_mib") || g.contains("grown_stopped_mib");
  if (!g["measured"].get<bool>() && !g.contains("why")) g["why"] = "the graph was not up at both sampling points";
}

int Run::go() {
  setup();
  sample_gpu_memory("idle");
  std::printf("dp_chaos: domain %s, seed %llu, %d sources x %d sinks (%s, %.0f Hz, %llu B), %.1f s at %.2f kills/s\n",
              o_.domain.c_str(), static_cast<unsigned long long>(o_.seed), o_.sources, o_.sinks_per_source,
              o_.memory.c_str(), o_.rate_hz, static_cast<unsigned long long>(o_.bytes), o_.duration_s, o_.kill_rate);
  std::printf("dp_chaos: config %s, launcher log %s\n", config_path_.c_str(), log_path_.c_str());
  std::fflush(stdout);
  // The launcher's own --duration is a safety net only: dp_chaos stops it with SIGTERM.
  const double safety = o_.warmup_bound_s + o_.duration_s + 60 + o_.reconnect_bound_s + o_.stop_bound_s;
  t0_ = Clock::now();
  launcher_ = platform::Child::spawn({o_.directport, "launch", config_path_, "--domain", o_.domain, "--duration",
                                      std::to_string(safety)},
                                     {/*capture_stdout=*/true, /*merge_stderr=*/true});
  // Warm-up: every node running, every source publishing, every sink taking frames.
  while (!graph_up() && now() < o_.warmup_bound_s && !launcher_rc_) {
    observe();
    std::this_thread::sleep_for(kObservePeriod);
  }
  if (!graph_up()) {
    fail("warmup", "the graph did not come up within " + secs(o_.warmup_bound_s) + " s");
  } else {
    chaos_start_ = now();
    sample_gpu_memory("chaos_start");
    chaos_end_ = chaos_start_ + o_.duration_s;
    for (auto& n : nodes_) n.recovered_t = chaos_start_;
    next_kill_ = chaos_start_ + (o_.kill_rate > 0 ? std::exponential_distribution<double>(o_.kill_rate)(rng_) : 0);
    std::printf("dp_chaos: graph up after %.2f s; chaos phase\n", chaos_start_);
    std::fflush(stdout);
    inject_fault();
    auto last_observe = Clock::now() - kObservePeriod;
    while (now() < chaos_end_ && !launcher_rc_) {
      // Around the moment a set-up kill's target is due to be restarted, look for it only: an
      // observation round (manifests, brokers) takes milliseconds, and a node sets itself up
      // in a few.
      bool watching = false;
      for (auto& n : nodes_) watching = watching || restart_imminent(n) || (n.armed && n.armed_pid >= 0);
      if (!watching && Clock::now() - last_observe >= kObservePeriod) {
        last_observe = Clock::now();
        observe();
      }
      maybe_kill();
      handle_armed();
      bool aiming = false;  // a set-up kill's target is there: its delay is a few milliseconds
      for (auto& n : nodes_) aiming = aiming || (n.armed && n.armed_pid >= 0);
      std::this_thread::sleep_for(aiming ? kAimPeriod : kArmedPeriod);
    }
    chaos_over_ = now();
    // Settle: every kill recovered (each within its own bound), then a quiet window in which
    // everything must make progress.
    for (auto& n : nodes_) n.armed = false;
    auto pending = [&] {
      for (auto& n : nodes_) {
        if (n.pending >= 0 && !kills_[n.pending].failed) return true;
      }
      return false;
    };
    std::printf("dp_chaos: chaos phase over after %zu kills; waiting for recovery\n", kills_.size());
    std::fflush(stdout);
    while (pending() && !launcher_rc_) {
      observe();
      std::this_thread::sleep_for(kObservePeriod);
    }
    const double quiet_until = now() + o_.hang_bound_s + 1;
    while (now() < quiet_until && !launcher_rc_) {
      observe();
      std::this_thread::sleep_for(kObservePeriod);
    }
    if (graph_up()) sample_gpu_memory("settled");
  }
  stop_launcher();
  for (auto& n : nodes_) {
    if (n.final_line.is_null()) {
      fail("final:" + n.name, n.name + " printed no final line: its last instance did not stop cleanly");
    }
  }
  if (static_cast<int>(kills_.size()) < o_.min_kills) {
    fail("min-kills", "only " + std::to_string(kills_.size()) + " kills, fewer than --min-kills " +
                          std::to_string(o_.min_kills));
  }
  if (verified_ == 0 && o_.sources > 0 && o_.sinks_per_source > 0) {
    fail("verified", "no sink verified any frame");
  }
  auto leak_report = leaks();
  sample_gpu_memory("stopped");
  check_gpu_memory();
  leak_report["gpu_memory"] = gpu_memory_;
  auto s = summary(leak_report);
  log_.flush();

  // Human summary.
  auto num = [](const json& v) {
    if (v.is_null()) return std::string("-");
    char b[32];
    std::snprintf(b, sizeof b, "%.0f", v.get<double>());
    return std::string(b);
  };
  std::printf("\ndp_chaos summary (seed %llu, domain %s)\n", static_cast<unsigned long long>(o_.seed), o_.domain.c_str());
  std::printf("  chaos phase        %.1f s, %zu kills (%d mid-stream, %d set-up; %d of sources), %d skipped\n",
              s["duration_s"].get<double>(), kills_.size(), s["kills"]["mid_stream"].get<int>(),
              s["kills"]["set_up"].get<int>(), s["kills"]["sources"].get<int>(), skipped_kills_);
  std::printf("  set-up stages      %s\n", s["kills"]["set_up_stages"].dump().c_str());
  std::printf("  restarts           %d (launcher), %d unexpected exits\n", restarts_, unexpected_exits_);
  std::printf("  reconnect ms       n=%zu p50 %s p99 %s max %s (kill -> first frame of the new instance, "
              "resolution %lld ms)\n",
              s["reconnect_ms"]["count"].get<std::size_t>(), num(s["reconnect_ms"]["p50"]).c_str(),
              num(s["reconnect_ms"]["p99"]).c_str(), num(s["reconnect_ms"]["max"]).c_str(),
              static_cast<long long>(kObservePeriod.count()));
  std::printf("  after back-off ms  p50 %s p99 %s max %s (from when the launcher's back-off let the last "
              "restart it waited for happen)\n",
              num(s["reconnect_after_restart_due_ms"]["p50"]).c_str(),
              num(s["reconnect_after_restart_due_ms"]["p99"]).c_str(),
              num(s["reconnect_after_restart_due_ms"]["max"]).c_str());
  std::printf("  frames             %llu verified, %llu bad, %llu invalidated (final lines of clean exits), "
              "%d \"failed verification\" lines\n",
              static_cast<unsigned long long>(verified_), static_cast<unsigned long long>(bad_),
              static_cast<unsigned long long>(invalidated_), verification_lines_);
  std::printf("  leaks              %zu shm, %zu sockets, %zu processes\n", leak_report["shm"].size(),
              leak_report["sockets"].size(), leak_report["processes"].size());
  if (gpu_memory_.value("measured", false)) {
    auto mib = [&](const char* k) { return gpu_memory_.contains(k) ? num(gpu_memory_[k]) + " MiB" : std::string("-"); };
    std::printf("  GPU memory         %s at the start of the chaos phase, %s settled after it (grown %s); "
                "%s before the launch, %s after the stop (grown %s)\n",
                mib("chaos_start_mib").c_str(), mib("settled_mib").c_str(), mib("grown_running_mib").c_str(),
                mib("idle_mib").c_str(), mib("stopped_mib").c_str(), mib("grown_stopped_mib").c_str());
  } else {
    std::printf("  GPU memory         not measured: %s\n", gpu_memory_.value("why", std::string("?")).c_str());
  }
  std::printf("  launcher           exit %s, %s\n",
              launcher_rc_ ? std::to_string(*launcher_rc_).c_str() : "-",
              stopped_cleanly_ ? "stopped cleanly" : "did NOT stop cleanly");
  if (failures_.empty()) {
    std::printf("dp_chaos: PASS\n");
  } else {
    std::printf("dp_chaos: FAIL (%zu problems):\n", failures_.size());
    for (auto& f : failures_) std::printf("  - %s\n", f.c_str());
    std::printf("dp_chaos: launcher log kept in %s\n", log_path_.c_str());
  }
  if (!o_.json_path.empty()) {
    std::ofstream out(o_.json_path);
    out << s.dump(2) << "\n";
    if (!out) std::fprintf(stderr, "dp_chaos: cannot write %s\n", o_.json_path.c_str());
  }
  if (failures_.empty() && !o_.keep_workdir) {
    log_.close();
    std::error_code ec;
    std::filesystem::remove_all(o_.workdir, ec);
  }
  return failures_.empty() ? 0 : 1;
}

}  // namespace

int run(const Options& opts) {
  Run r(opts);
  return r.go();
}

}  // namespace dp::chaos

// `directport top`: a live table of a domain's nodes and streams, refreshed in place.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <thread>

#include "commands.hpp"
#include "directport/core/broker.hpp"
#include "directport/core/discovery.hpp"
#include "directport/core/error.hpp"
#include "directport/core/names.hpp"
#include "directport/cuda/device.hpp"
#include "directport/platform/process.hpp"

namespace dp::cli {
namespace {

struct CpuSample {
  std::uint64_t ticks = 0;
  std::int64_t t_ns = 0;
};

std::uint64_t cpu_ticks(std::int64_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(f, line);
  auto close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  std::uint64_t utime = 0, stime = 0;
  for (int i = 3; i <= 13; ++i) rest >> field;  // fields 3..13
  rest >> utime >> stime;                        // fields 14, 15
  return utime + stime;
}

std::uint64_t rss_bytes(std::int64_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/statm");
  std::uint64_t size = 0, rss = 0;
  f >> size >> rss;
  return rss * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

struct StreamSample {
  std::uint64_t published = 0;
  std::int64_t t_ns = 0;
};

class Sampler {
 public:
  explicit Sampler(std::string domain) : domain_(std::move(domain)) {}

  nlohmann::json sample() {
    nlohmann::json nodes = nlohmann::json::array();
    const std::int64_t now = platform::monotonic_ns();
    // Each process's whole GPU memory (its own allocations, LibTorch's, the streams it maps),
    // where NVML can tell; the streams it publishes are counted apart (gpu_stream_mib).
    const auto gpu = cuda::gpu_available() ? cuda::process_gpu_memory()
                                           : cuda::ProcessGpuMemory{false, "no usable GPU here", {}};
    const double hz = static_cast<double>(::sysconf(_SC_CLK_TCK));
    for (auto& n : list_nodes(domain_)) {
      nlohmann::json node{{"name", n.name},
                          {"pid", n.owner.pid},
                          {"liveness", n.liveness ? liveness_name(*n.liveness) : "invalid"},
                          {"type", n.doc.is_object() ? n.doc.value("type", "?") : "?"}};
      if (!n.problem.empty()) node["problem"] = n.problem;
      // A node's own one-line status (the student's losses, the compositor's counts), if it has one.
      if (n.doc.is_object() && n.doc.contains("info") && n.doc["info"].is_object() && n.doc["info"].contains("status") &&
          n.doc["info"]["status"].is_string()) {
        node["status"] = n.doc["info"]["status"];
      }
      if (n.liveness != Liveness::dead && n.owner.pid > 0) {
        auto key = std::to_string(n.owner.pid) + "/" + std::to_string(n.owner.start_time);
        CpuSample cur{cpu_ticks(n.owner.pid), now};
        auto it = cpu_.find(key);
        if (it != cpu_.end() && cur.t_ns > it->second.t_ns) {
          node["cpu_percent"] = 100.0 * static_cast<double>(cur.ticks - it->second.ticks) / hz /
                                (static_cast<double>(cur.t_ns - it->second.t_ns) / 1e9);
        }
        cpu_[key] = cur;
        node["rss_mib"] = static_cast<double>(rss_bytes(n.owner.pid)) / (1 << 20);
        if (gpu.ok) {
          auto it = gpu.bytes.find(n.owner.pid);
          node["gpu_mib"] = it == gpu.bytes.end() ? 0.0 : static_cast<double>(it->second) / (1 << 20);
        }
      }
      nlohmann::json streams = nlohmann::json::array();
      std::uint64_t gpu_bytes = 0;
      nlohmann::json consumers;
      if (n.doc.is_object() && n.liveness == Liveness::live) {
        try {  // live consumer state comes from the node's broker
          auto c = BrokerClient::connect(n.doc["broker"].get<std::string>(), "top", n.owner,
                                         std::chrono::milliseconds(500));
          consumers = c.request({{"op", "status"}}, {}, std::chrono::milliseconds(500)).body["consumers"];
        } catch (const Error&) {
        }
      }
      if (n.doc.is_object()) {
        std::unique_ptr<ManifestReader> r;
        try {
          r = std::make_unique<ManifestReader>(ManifestReader::open(domain_, n.name));
        } catch (const Error&) {
        }
        for (auto& s : n.doc["streams"]) {
          auto name = s["name"].get<std::string>();
          nlohmann::json row{{"name", name}, {"memory", s.value("memory", "?")}, {"frame_bytes", s.value("frame_bytes", 0)}};
          if (s.value("memory", "host") != "host") gpu_bytes += s.value("memory_bytes", 0ull);
          if (r) {
            const auto& cb = r->control(s["control_index"].get<std::uint32_t>());
            auto published = cb.published.load();
            auto key = n.name + "/" + name + "@" + std::to_string(n.owner.pid);
            auto it = streams_.find(key);
            if (it != streams_.end() && now > it->second.t_ns) {
              row["rate_hz"] = static_cast<double>(published - it->second.published) / ((now - it->second.t_ns) / 1e9);
            }
            streams_[key] = {published, now};
            row["published"] = published;
            row["dropped"] = cb.dropped.load();
            row["subscribers"] = cb.subscribers.load();
            auto slot = cb.latest_slot.load();
            if (slot < protocol::kMaxSlots && cb.latest_seq.load()) {
              const auto& m = cb.slots[slot];
              auto pub_ns = static_cast<std::int64_t>(m.t_publish_ns.load());
              row["latency_us"] = static_cast<double>(pub_ns - static_cast<std::int64_t>(m.t_source_ns.load())) / 1e3;
              row["age_ms"] = static_cast<double>(now - pub_ns) / 1e6;
            }
          }
          if (consumers.is_object() && consumers.contains(name)) {
            std::uint64_t held = 0, lag = 0;
            for (auto& c : consumers[name]) {
              held += c["holding"].size();
              lag = std::max<std::uint64_t>(lag, c.value("lag", 0ull));
            }
            row["consumers"] = consumers[name];
            row["slots_held"] = held;
            row["max_lag"] = lag;
          }
          streams.push_back(row);
        }
      }
      node["gpu_stream_mib"] = static_cast<double>(gpu_bytes) / (1 << 20);
      node["streams"] = streams;
      nodes.push_back(node);
    }
    nlohmann::json out{{"domain", domain_}, {"nodes", nodes}};
    if (!gpu.ok) out["gpu_memory_unavailable"] = gpu.why;
    return out;
  }

 private:
  std::string domain_;
  std::map<std::string, CpuSample> cpu_;
  std::map<std::string, StreamSample> streams_;
};

std::string fmt(const nlohmann::json& j, const char* key, const char* f) {
  if (!j.contains(key) || j[key].is_null()) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, j[key].get<double>());
  return buf;
}

void print_table(const nlohmann::json& s) {
  std::printf("directport top — domain %s — %zu nodes\n", s["domain"].get<std::string>().c_str(), s["nodes"].size());
  std::printf("%-18s %8s %-8s %6s %8s %9s %10s\n", "NODE", "PID", "LIVE", "CPU%", "RSS MiB", "GPU MiB", "STREAM MiB");
  for (auto& n : s["nodes"]) {
    std::printf("%-18s %8lld %-8s %6s %8s %9s %10s  %s\n", n["name"].get<std::string>().c_str(),
                n["pid"].get<long long>(), n["liveness"].get<std::string>().c_str(),
                fmt(n, "cpu_percent", "%.1f").c_str(), fmt(n, "rss_mib", "%.1f").c_str(),
                fmt(n, "gpu_mib", "%.1f").c_str(), fmt(n, "gpu_stream_mib", "%.1f").c_str(),
                n.value("problem", "").c_str());
  }
  if (s.contains("gpu_memory_unavailable")) {
    std::printf("(GPU MiB: %s)\n", s["gpu_memory_unavailable"].get<std::string>().c_str());
  }
  bool any_status = false;
  for (auto& n : s["nodes"]) any_status = any_status || n.contains("status");
  if (any_status) {
    std::printf("\n%-18s %s\n", "NODE", "STATUS");
    for (auto& n : s["nodes"]) {
      if (n.contains("status")) std::printf("%-18s %s\n", n["name"].get<std::string>().c_str(), n["status"].get<std::string>().c_str());
    }
  }
  std::printf("\n%-26s %-9s %10s %10s %9s %8s %6s %5s %6s\n", "STREAM", "MEMORY", "RATE Hz", "PUBLISHED", "LAT us",
              "DROPPED", "SUBS", "HELD", "LAG");
  for (auto& n : s["nodes"]) {
    for (auto& st : n["streams"]) {
      auto addr = n["name"].get<std::string>() + "/" + st["name"].get<std::string>();
      std::printf("%-26s %-9s %10s %10llu %9s %8llu %6llu %5llu %6llu\n", addr.c_str(),
                  st["memory"].get<std::string>().c_str(), fmt(st, "rate_hz", "%.1f").c_str(),
                  st.value("published", 0ull), fmt(st, "latency_us", "%.1f").c_str(), st.value("dropped", 0ull),
                  st.value("subscribers", 0ull), st.value("slots_held", 0ull), st.value("max_lag", 0ull));
    }
  }
}

}  // namespace

void add_top(CLI::App& app, int& exit_code) {
  struct Opts {
    std::string domain;
    double interval = 1.0;
    int iterations = 0;
    bool json = false, once = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("top", "Live table of a domain: per stream rate, latency, lag, drops, slots held; per node CPU and memory");
  cmd->add_option("--domain,-d", o->domain, "Domain (default: $DIRECTPORT_DOMAIN or 'default')");
  cmd->add_option("--interval,-i", o->interval, "Seconds between refreshes")->check(CLI::Range(0.05, 3600.0));
  cmd->add_option("--iterations,-n", o->iterations, "Stop after this many refreshes (0: until Ctrl-C)")->check(CLI::Range(0, 1000000));
  cmd->add_flag("--once", o->once, "Print one sample (rates over one interval) and exit");
  cmd->add_flag("--json", o->json, "Print JSON samples, one per line");
  cmd->callback([o, &exit_code] {
    std::string domain = o->domain.empty() ? default_domain() : o->domain;
    validate_name("domain", domain);
    Sampler sampler(domain);
    int n = o->once ? 1 : o->iterations;
    bool tty = ::isatty(1) && !o->json;
    auto period = std::chrono::duration<double>(o->interval);
    sampler.sample();  // baseline for rates
    for (int i = 0; n == 0 || i < n; ++i) {
      std::this_thread::sleep_for(period);
      auto s = sampler.sample();
      if (o->json) {
        std::cout << s.dump() << std::endl;
      } else {
        if (tty) std::printf("\033[H\033[2J");
        print_table(s);
        std::fflush(stdout);
      }
    }
    exit_code = 0;
  });
}

}  // namespace dp::cli

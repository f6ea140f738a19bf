// `directport node TYPE` (run one node) and `directport demo` (the smallest real graph: one
// pattern source and N checksum sinks, each its own process).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <thread>

#include "commands.hpp"
#include "directport/core/discovery.hpp"
#include "directport/core/error.hpp"
#include "directport/core/names.hpp"
#include "directport/core/node.hpp"
#include "directport/cuda/device.hpp"
#include "directport/kernels/checksum.hpp"
#include "directport/kernels/frame_check.hpp"
#include "directport/platform/child.hpp"
#include "directport/platform/process.hpp"
#if DIRECTPORT_HAS_CUDA
#include <cuda_runtime_api.h>

#include "directport/cuda/driver.hpp"
#endif

namespace dp::cli {
namespace {

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }
void install_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// Typed access to a node's params with errors that name the key.
class Params {
 public:
  explicit Params(nlohmann::json j) : j_(std::move(j)) {}
  template <typename T>
  T get(const std::string& key, T fallback) {
    used_.push_back(key);
    auto it = j_.find(key);
    if (it == j_.end()) return fallback;
    try {
      return it->get<T>();
    } catch (const nlohmann::json::exception&) {
      throw ValidationError("param '" + key + "' has the wrong type (got " + it->dump() + ")");
    }
  }
  void reject_unknown(const std::string& type) {
    for (auto& [k, v] : j_.items()) {
      if (std::find(used_.begin(), used_.end(), k) == used_.end()) {
        std::string known;
        for (auto& u : used_) known += (known.empty() ? "" : ", ") + u;
        throw ValidationError("node type '" + type + "' has no param '" + k + "' (known: " + known + ")");
      }
    }
  }

 private:
  nlohmann::json j_;
  std::vector<std::string> used_;
};

MemoryKind choose_memory(const std::string& m) {
  if (m == "auto") return cuda::gpu_available() ? MemoryKind::cuda_vmm : MemoryKind::host;
  try {
    return parse_memory_kind(m);
  } catch (const ValidationError& e) {
    throw ValidationError(std::string(e.what()) + "; or 'auto' (GPU if there is one)");
  }
}

#if DIRECTPORT_HAS_CUDA
struct GpuScratch {
  cudaStream_t stream = nullptr;
  std::uint64_t* host = nullptr;  // mapped: [0] scratch, [8] result
  std::uint64_t* dev = nullptr;
  GpuScratch() {
    DP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    DP_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host), 128, cudaHostAllocMapped));
    DP_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dev), host, 0));
  }
  ~GpuScratch() {
    if (stream) cudaStreamDestroy(stream);
    if (host) cudaFreeHost(host);
  }
  GpuStream gs() const { return reinterpret_cast<GpuStream>(stream); }
};
#endif

int run_pattern_source(const std::string& name, Params p) {
  StreamSpec spec;
  spec.name = p.get<std::string>("stream", "frames");
  auto bytes = p.get<std::uint64_t>("bytes", 1 << 20);
  if (bytes % 8 || bytes < kernels::kMinStampedBytes) {
    throw ValidationError("param 'bytes' must be a multiple of 8 and at least 24, got " + std::to_string(bytes));
  }
  spec.dtype = DType::u64;
  spec.shape = {static_cast<std::int64_t>(bytes / 8)};
  spec.slots = p.get<std::uint32_t>("slots", 3);
  spec.memory = choose_memory(p.get<std::string>("memory", "auto"));
  spec.fence = spec.memory == MemoryKind::host ? FenceKind::host_futex : FenceKind::cuda_memop;
  double rate = p.get<double>("rate_hz", 200.0);
  auto frames = p.get<std::uint64_t>("frames", 0);
  auto wait_subs = p.get<std::uint64_t>("wait_subscribers", 0);
  auto domain = p.get<std::string>("domain", "");
  p.reject_unknown("pattern-source");

  Node node({name, "pattern-source", domain});
  auto& pub = node.advertise(spec);
  node.set_running();
  std::fprintf(stderr, "[%s] publishing %s/%s: %llu bytes, %s memory\n", name.c_str(), name.c_str(), spec.name.c_str(),
               static_cast<unsigned long long>(bytes), memory_kind_name(spec.memory));
  while (!g_stop && pub.counters().subscribers < wait_subs) std::this_thread::sleep_for(std::chrono::milliseconds(5));
#if DIRECTPORT_HAS_CUDA
  std::unique_ptr<GpuScratch> gpu;
  if (spec.memory != MemoryKind::host) gpu = std::make_unique<GpuScratch>();
#endif
  auto period = std::chrono::nanoseconds(rate > 0 ? static_cast<std::int64_t>(1e9 / rate) : 0);
  auto next = std::chrono::steady_clock::now();
  std::uint64_t n = 0;
  while (!g_stop && (frames == 0 || n < frames)) {
    auto lease = [&] {
#if DIRECTPORT_HAS_CUDA
      if (gpu) return pub.acquire(gpu->gs());
#endif
      return pub.acquire();
    }();
    if (!lease) continue;  // dropped (counted); try again
    std::uint64_t seed = lease->seq * 7919 + 17;
#if DIRECTPORT_HAS_CUDA
    if (gpu) {
      kernels::stamp_frame_gpu(lease->data, lease->bytes, lease->seq, seed, gpu->dev, gpu->gs());
      pub.publish(*lease, {lease->seq, 0, 0}, gpu->gs());
    } else
#endif
    {
      kernels::stamp_frame_cpu(lease->data, lease->bytes, lease->seq, seed);
      pub.publish(*lease, {lease->seq, 0, 0});
    }
    ++n;
    if (period.count()) {
      next += period;
      std::this_thread::sleep_until(next);
    }
  }
#if DIRECTPORT_HAS_CUDA
  if (gpu) cudaStreamSynchronize(gpu->stream);
#endif
  auto c = pub.counters();
  std::cout << nlohmann::json{{"node", name}, {"type", "pattern-source"}, {"published", c.published}, {"dropped", c.dropped}}.dump()
            << std::endl;
  return 0;
}

int run_checksum_sink(const std::string& name, Params p) {
  auto from = p.get<std::string>("from", "");
  if (from.empty()) throw ValidationError("node type 'checksum-sink' needs param 'from' (NODE/STREAM)");
  auto frames = p.get<std::uint64_t>("frames", 0);
  auto timeout_s = p.get<double>("timeout_s", 10.0);
  auto hold_ms = p.get<double>("hold_ms", 0.0);
  auto domain = p.get<std::string>("domain", "");
  // Test hook: write into the first frame received, which must fault (read-only mapping).
  auto write_probe = p.get<bool>("write_probe", false);
  p.reject_unknown("checksum-sink");

  Node node({name, "checksum-sink", domain});
  auto sub = node.subscribe(from);
  node.set_running();
  const bool on_gpu = sub.spec().memory != MemoryKind::host;
#if DIRECTPORT_HAS_CUDA
  std::unique_ptr<GpuScratch> gpu;
  if (on_gpu) gpu = std::make_unique<GpuScratch>();
#else
  if (on_gpu) throw Error("stream " + from + " is on the GPU but this build has no CUDA");
#endif
  std::uint64_t ok = 0, bad = 0;
  auto last_frame = std::chrono::steady_clock::now();
  while (!g_stop && (frames == 0 || ok + bad < frames)) {
    GpuStream gs = nullptr;
#if DIRECTPORT_HAS_CUDA
    if (gpu) gs = gpu->gs();
#endif
    auto f = sub.next(std::chrono::milliseconds(100), gs);
    if (!f) {
      if (std::chrono::steady_clock::now() - last_frame > std::chrono::duration<double>(timeout_s)) {
        std::fprintf(stderr, "[%s] no frame from %s for %.1f s: giving up\n", name.c_str(), from.c_str(), timeout_s);
        break;
      }
      continue;
    }
    last_frame = std::chrono::steady_clock::now();
    std::uint64_t result;
    if (write_probe) {
#if DIRECTPORT_HAS_CUDA
      if (gpu) {
        kernels::poke_gpu(const_cast<void*>(f->data), 42, gs);
        cudaError_t rc = cudaStreamSynchronize(gpu->stream);
        std::fprintf(stderr, "[%s] write into the read-only mapping: %s\n", name.c_str(), cudaGetErrorName(rc));
        // A faulted CUDA context cannot be torn down reliably: leave at once and let the OS
        // reclaim everything (the producer sees EOF and releases our holds).
        std::fflush(nullptr);
        _exit(rc == cudaSuccess ? 4 : 3);
      }
#endif
      throw Error("write_probe needs a GPU stream");
    }
#if DIRECTPORT_HAS_CUDA
    if (gpu) {
      kernels::verify_frame_gpu(f->data, f->bytes, f->seq, gpu->dev, gpu->dev + 8, gs);
      if (hold_ms > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(hold_ms));
      sub.release(*f, gs);
      DP_CUDA_CHECK(cudaStreamSynchronize(gpu->stream));
      result = gpu->host[8];
    } else
#endif
    {
      result = kernels::verify_frame_cpu(f->data, f->bytes, f->seq);
      if (hold_ms > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(hold_ms));
      sub.release(*f);
    }
    if (!sub.is_valid(*f)) {
      continue;  // the producer died before completing it: counted as invalidated, never accepted
    }
    if (result == kernels::kFrameOk) {
      ++ok;
    } else {
      ++bad;
      std::fprintf(stderr, "[%s] frame seq %llu failed verification (code %llu)\n", name.c_str(),
                   static_cast<unsigned long long>(f->seq), static_cast<unsigned long long>(result));
    }
  }
  auto c = sub.counters();
  std::cout << nlohmann::json{{"node", name},         {"type", "checksum-sink"}, {"from", from},
                              {"verified", ok},       {"bad", bad},              {"missed", c.missed},
                              {"dropped", c.dropped}, {"invalidated", c.invalidated}, {"reconnects", c.reconnects}}
                   .dump()
            << std::endl;
  return bad == 0 && (frames == 0 || ok >= frames) ? 0 : 2;
}

}  // namespace

void add_node(CLI::App& app, int& exit_code) {
  struct Opts {
    std::string type, name, params_json, domain;
    std::vector<std::string> params;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("node", "Run one node of a graph in this process");
  cmd->add_option("type", o->type, "Node type: pattern-source | checksum-sink")->required();
  cmd->add_option("--domain,-d", o->domain, "Domain (default: $DIRECTPORT_DOMAIN or 'default'; same as -p domain=)");
  cmd->footer(
      "Params (-p KEY=VALUE):\n"
      "  pattern-source: stream=frames  bytes=1048576 (multiple of 8, >= 24)  slots=3\n"
      "                  memory=auto|host|cuda-vmm|cuda-ipc  rate_hz=200 (0: unpaced)  frames=0 (0: until stopped)\n"
      "                  wait_subscribers=0  domain=\n"
      "  checksum-sink:  from=NODE/STREAM (required)  frames=0 (0: until stopped)  timeout_s=10  hold_ms=0\n"
      "                  write_probe=false (test hook: write into the read-only mapping)  domain=");
  cmd->add_option("--name,-n", o->name, "Node name, unique in its domain")->required();
  cmd->add_option("--param,-p", o->params, "KEY=VALUE (VALUE parsed as JSON if it parses, else a string)");
  cmd->add_option("--params-json", o->params_json, "All params as one JSON object");
  cmd->callback([o, &exit_code] {
    validate_name("node name", o->name);
    nlohmann::json params = nlohmann::json::object();
    if (!o->params_json.empty()) {
      try {
        params = nlohmann::json::parse(o->params_json);
      } catch (const nlohmann::json::parse_error& e) {
        throw ValidationError(std::string("--params-json does not parse: ") + e.what());
      }
      if (!params.is_object()) throw ValidationError("--params-json must be a JSON object, got " + params.dump());
    }
    if (!o->domain.empty()) params["domain"] = o->domain;
    for (auto& kv : o->params) {
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) throw ValidationError("--param '" + kv + "' is not KEY=VALUE");
      auto v = nlohmann::json::parse(kv.substr(eq + 1), nullptr, false);
      params[kv.substr(0, eq)] = v.is_discarded() ? nlohmann::json(kv.substr(eq + 1)) : v;
    }
    install_signals();
    if (o->type == "pattern-source") {
      exit_code = run_pattern_source(o->name, Params(params));
    } else if (o->type == "checksum-sink") {
      exit_code = run_checksum_sink(o->name, Params(params));
    } else {
      throw ValidationError("unknown node type '" + o->type + "' (known: pattern-source, checksum-sink)");
    }
  });
}

void add_demo(CLI::App& app, int& exit_code) {
  struct Opts {
    int consumers = 2;
    std::uint64_t frames = 1000, bytes = 1 << 20;
    std::string memory = "auto", domain;
    double rate = 500;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand(
      "demo", "Run the smallest real graph: one pattern source and N checksum sinks, each its own process");
  cmd->add_option("--consumers,-c", o->consumers, "Number of sink processes")->check(CLI::Range(1, 64));
  cmd->add_option("--frames,-f", o->frames, "Frames each sink verifies")->check(CLI::Range(1ull, 100000000ull));
  cmd->add_option("--bytes,-b", o->bytes, "Frame size in bytes (multiple of 8)")->check(CLI::Range(24ull, 1ull << 32));
  cmd->add_option("--memory,-m", o->memory, "host | cuda-vmm | cuda-ipc | auto (GPU if there is one)");
  cmd->add_option("--rate", o->rate, "Frames per second published (0 = as fast as possible)");
  cmd->add_option("--domain,-d", o->domain, "Domain to run in (default: a fresh one, demo<pid>)");
  cmd->callback([o, &exit_code] {
    choose_memory(o->memory);  // validate early
    if (o->bytes % 8) throw ValidationError("--bytes must be a multiple of 8");
    std::string domain = o->domain.empty() ? "demo" + std::to_string(::getpid()) : o->domain;
    validate_name("domain", domain);
    char self[4096] = {};
    if (::readlink("/proc/self/exe", self, sizeof self - 1) < 0) throw SystemError("readlink /proc/self/exe", errno);
    auto spawn = [&](std::vector<std::string> args) {
      args.insert(args.begin(), self);
      return platform::Child::spawn(args);
    };
    std::printf("demo: domain %s, 1 source -> %d sinks, %llu frames of %llu bytes, memory %s\n", domain.c_str(),
                o->consumers, static_cast<unsigned long long>(o->frames), static_cast<unsigned long long>(o->bytes),
                o->memory.c_str());
    std::fflush(stdout);
    auto dom = "domain=" + domain;
    auto src = spawn({"node", "pattern-source", "--name", "source", "-p", dom, "-p", "bytes=" + std::to_string(o->bytes),
                      "-p", "memory=" + o->memory, "-p", "rate_hz=" + std::to_string(o->rate), "-p",
                      "wait_subscribers=" + std::to_string(o->consumers)});
    // Wait until the source announces itself, bounded.
    bool up = false;
    for (int i = 0; i < 500 && !up && src.running(); ++i) {
      for (auto& n : list_nodes(domain)) up = up || (n.name == "source" && n.state == protocol::NodeState::running);
      if (!up && !src.wait_for(std::chrono::milliseconds(10))) continue;
    }
    if (!up) throw Error("the source node did not come up within 5 s (see its messages above)");
    std::vector<platform::Child> sinks;
    for (int i = 0; i < o->consumers; ++i) {
      sinks.push_back(spawn({"node", "checksum-sink", "--name", "sink" + std::to_string(i), "-p", dom, "-p",
                             "from=source/frames", "-p", "frames=" + std::to_string(o->frames)}));
    }
    int failures = 0;
    for (auto& p : sinks) failures += p.wait_for(std::chrono::milliseconds(-1)) != 0;
    src.signal(SIGTERM);
    failures += src.wait_for(std::chrono::seconds(30)) != 0;
    auto left = list_nodes(domain);
    std::printf("demo: %s (%d of %d processes failed); %zu manifests left behind\n", failures ? "FAILED" : "ok", failures,
                o->consumers + 1, left.size());
    exit_code = failures || !left.empty() ? 1 : 0;
  });
}

}  // namespace dp::cli

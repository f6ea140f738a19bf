// dp_bench_handoff (behind `directport bench`): the same handoff of a tensor from one process to
// K others, done six ways, measured in one run on one card, beside the floor (no handoff).
//
//   directport  DirectPort, cuda-vmm memory and mem-op fences: the producer writes into the slot,
//               the consumers read the same VRAM (zero copies)
//   d2d         copy-on-publish: the producer writes its own buffer and copies it device-to-device
//               into a DirectPort slot before publishing (what bridges that copy do)
//   staging     host staging, its best version: D2H into pinned POSIX shm, then H2D in each
//               consumer
//   ipc-open    legacy CUDA IPC opened per message: the producer sends a cudaIpcMemHandle with
//               each frame; the consumer opens, reads and closes it every time
//   torch       a CUDA tensor sent through torch.multiprocessing queues (bench/handoff_torch.py)
//   host        DirectPort's host backend (CPU memory, futex fences), no GPU involved
//   floor       no handoff at all: one process launches the producer's kernel and the consumer's
//               on one stream and synchronises (K = 1 only): the least a GPU method's CPU-clock
//               latency can be on this card and driver, against which the others are read
//
// Every method runs the same two phases with the same pacing (a shared "acks" word, futex
// waits): a paced phase, one frame at a time (the producer waits for every consumer to finish a
// frame before the next: one-way latency without queueing), and an unpaced phase with at most
// two frames in flight (frames per second of a lossless handoff).
//   - latency (CPU clock, every method): from the producer starting to write the frame to the
//     consumer having read it (its stream synchronised): CLOCK_MONOTONIC on both sides;
//   - latency (GPU clock, every GPU method): %globaltimer stamped by the producer's kernel into
//     the frame, read by the consumer's kernel once it can read the frame (torch runs the same two
//     kernels through bench/clock_module.cpp);
//   - CPU time per frame: process CPU time (user + system) over the paced phase / frames.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>
#include <nlohmann/json.hpp>

#include "directport/core/discovery.hpp"
#include "directport/core/fence.hpp"
#include "directport/core/node.hpp"
#include "directport/cuda/device.hpp"
#include "directport/cuda/driver.hpp"
#include "directport/kernels/timing.hpp"
#include "directport/platform/child.hpp"
#include "directport/platform/process.hpp"
#include "common.hpp"
#include "records.hpp"
#include "directport/platform/shm.hpp"

using namespace dp;
using dp::bench::parse_size;
using dp::bench::pct;
using dp::bench::Records;
using dp::bench::drop_warmup;
using dp::bench::split;
using json = nlohmann::json;

namespace {

constexpr std::uint64_t kRing = 3;
const std::vector<std::string> kMethods{"directport", "d2d", "staging", "ipc-open", "torch", "host", "floor"};

// kMethods joined with `sep`.
std::string method_list(const char* sep) {
  std::string out;
  for (const auto& m : kMethods) out += (out.empty() ? "" : sep) + m;
  return out;
}

// The bench's own shared page: pacing and, for staging and ipc-open, the handoff itself.
struct Page {
  protocol::AtomicU64 acks[64];          // frames finished, per consumer
  protocol::AtomicU64 ready;             // seq of the newest frame handed over (staging, ipc-open)
  protocol::AtomicU64 up;                // consumers ready to start
  protocol::AtomicU64 t_write_ns[kRing];  // CLOCK_MONOTONIC when the producer began frame seq (slot seq % kRing)
  cudaIpcMemHandle_t ipc[kRing];          // ipc-open: the handle of the frame's buffer
};
constexpr std::size_t kPageBytes = 4096;
static_assert(sizeof(Page) <= kPageBytes);



double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

std::string page_name(const std::string& domain) {
  return "/dp-bench." + std::to_string(::getuid()) + "." + domain;
}

struct Role {
  std::string method, domain;
  std::uint64_t bytes = 0, frames = 0, k = 1;
  int index = 0;
  std::uint64_t spin_us = 0;  // consumers poll this long for a frame before sleeping
};

// Pacing: before frame `seq` (1-based), wait until every consumer has at most `window` - 1
// frames unfinished (so at most `window` are in flight once it is handed over).
void wait_acks(Page& pg, std::uint64_t k, std::uint64_t seq, std::uint64_t window) {
  const std::uint64_t need = seq > window ? seq - window : 0;
  for (std::uint64_t i = 0; i < k; ++i) {
    while (pg.acks[i].load(std::memory_order_acquire) < need) {
      if (!fence::host_wait(pg.acks[i], need, std::chrono::seconds(30))) {
        throw TimeoutError("consumer " + std::to_string(i) + " stopped acknowledging frames");
      }
    }
  }
}

void ack(Page& pg, int index) { fence::host_signal(pg.acks[index], pg.acks[index].load() + 1); }

struct Cuda {
  cudaStream_t s = nullptr;
  Cuda() {
    cuda::use_device(0);
    DP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  }
  ~Cuda() {
    if (s) cudaStreamDestroy(s);
  }
  GpuStream gs() const { return reinterpret_cast<GpuStream>(s); }
};

int producer(const Role& r) {
  auto seg = platform::Segment::open_named(page_name(r.domain), platform::Access::read_write);
  auto& pg = *static_cast<Page*>(seg.data());
  const bool dp_stream = r.method == "directport" || r.method == "d2d" || r.method == "host";
  const bool gpu = r.method != "host";
  std::unique_ptr<Cuda> cu;
  if (gpu) cu = std::make_unique<Cuda>();
  std::unique_ptr<Node> node;
  Publisher* pub = nullptr;
  if (dp_stream) {
    StreamSpec spec{"bench", DType::u8, {static_cast<std::int64_t>(r.bytes)}, 3,
                    gpu ? MemoryKind::cuda_vmm : MemoryKind::host, gpu ? FenceKind::cuda_memop : FenceKind::host_futex};
    spec.acquire_timeout = std::chrono::milliseconds(200);
    NodeOptions no;
    no.name = "producer";
    no.type = "bench-producer";
    no.domain = r.domain;
    node = std::make_unique<Node>(no);
    pub = &node->advertise(spec);
    node->set_running();
  }
  // Private device buffers: d2d's source, staging's source, ipc-open's ring.
  std::vector<void*> bufs;
  if (r.method == "d2d" || r.method == "staging") bufs.resize(1);
  if (r.method == "ipc-open") bufs.resize(kRing);
  for (auto& b : bufs) DP_CUDA_CHECK(cudaMalloc(&b, r.bytes));
  // Staging: the slots are the page's tail, pinned here.
  auto* staging = static_cast<std::uint8_t*>(seg.data()) + kPageBytes;
  if (r.method == "staging") DP_CUDA_CHECK(cudaHostRegister(staging, kRing * r.bytes, cudaHostRegisterPortable));

  while (pg.up.load() < r.k) fence::host_wait(pg.up, r.k, std::chrono::seconds(60));

  auto one = [&](std::uint64_t seq) {
    const std::size_t slot = seq % kRing;
    pg.t_write_ns[slot].store(static_cast<std::uint64_t>(platform::monotonic_ns()), std::memory_order_release);
    if (pub) {
      std::optional<SlotLease> lease;
      while (!(lease = pub->acquire(gpu ? cu->gs() : nullptr))) {
      }
      if (r.method == "host") {
        static_cast<std::uint64_t*>(lease->data)[0] = static_cast<std::uint64_t>(platform::monotonic_ns());
        static_cast<std::uint64_t*>(lease->data)[1] = seq;
      } else if (r.method == "directport") {
        kernels::stamp_time_gpu(static_cast<std::uint64_t*>(lease->data), seq, cu->gs());
      } else {  // d2d
        kernels::stamp_time_gpu(static_cast<std::uint64_t*>(bufs[0]), seq, cu->gs());
        DP_CUDA_CHECK(cudaMemcpyAsync(lease->data, bufs[0], r.bytes, cudaMemcpyDeviceToDevice, cu->s));
      }
      pub->publish(*lease, {seq, 0, 0}, gpu ? cu->gs() : nullptr);
      return;
    }
    if (r.method == "staging") {
      kernels::stamp_time_gpu(static_cast<std::uint64_t*>(bufs[0]), seq, cu->gs());
      DP_CUDA_CHECK(cudaMemcpyAsync(staging + slot * r.bytes, bufs[0], r.bytes, cudaMemcpyDeviceToHost, cu->s));
      DP_CUDA_CHECK(cudaStreamSynchronize(cu->s));  // the CPU must know the copy is done to hand it over
    } else {  // ipc-open: a handle per message, as naive IPC code sends it
      kernels::stamp_time_gpu(static_cast<std::uint64_t*>(bufs[slot]), seq, cu->gs());
      DP_CUDA_CHECK(cudaStreamSynchronize(cu->s));
      DP_CUDA_CHECK(cudaIpcGetMemHandle(&pg.ipc[slot], bufs[slot]));
    }
    fence::host_signal(pg.ready, seq);
  };

  const double c0 = cpu_seconds();
  for (std::uint64_t seq = 1; seq <= r.frames; ++seq) {
    wait_acks(pg, r.k, seq, 1);
    one(seq);
  }
  wait_acks(pg, r.k, r.frames + 1, 1);
  const double cpu_per_frame_us = (cpu_seconds() - c0) / double(r.frames) * 1e6;
  const auto t0 = platform::monotonic_ns();
  for (std::uint64_t seq = r.frames + 1; seq <= 2 * r.frames; ++seq) {
    wait_acks(pg, r.k, seq, 2);
    one(seq);
  }
  wait_acks(pg, r.k, 2 * r.frames + 1, 1);
  const double secs = double(platform::monotonic_ns() - t0) / 1e9;
  std::cout << json{{"role", "producer"}, {"cpu_us_per_frame", cpu_per_frame_us}, {"frames_per_s", double(r.frames) / secs}}.dump()
            << std::endl;
  if (pub) {
    while (pub->counters().subscribers > 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  if (r.method == "staging") cudaHostUnregister(staging);
  for (auto b : bufs) cudaFree(b);
  return 0;
}

int consumer(const Role& r) {
  auto seg = platform::Segment::open_named(page_name(r.domain), platform::Access::read_write);
  auto& pg = *static_cast<Page*>(seg.data());
  const bool gpu = r.method != "host";
  const bool dp_stream = r.method == "directport" || r.method == "d2d" || r.method == "host";
  std::unique_ptr<Cuda> cu;
  if (gpu) cu = std::make_unique<Cuda>();
  const std::uint64_t n = 2 * r.frames;
  Records rec(n, gpu);
  std::optional<Subscriber> sub;
  if (dp_stream) {
    SubscribeOptions o;
    o.domain = r.domain;
    o.client_name = "consumer" + std::to_string(r.index);
    o.spin = std::chrono::microseconds(r.spin_us);
    for (int i = 0; !sub; ++i) {
      try {
        sub.emplace("producer", "bench", o);
      } catch (const std::exception&) {
        if (i > 3000) throw;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }
  void* dst = nullptr;  // staging: the consumer's own copy
  auto* staging = static_cast<std::uint8_t*>(seg.data()) + kPageBytes;
  if (r.method == "staging") {
    DP_CUDA_CHECK(cudaMalloc(&dst, r.bytes));
    DP_CUDA_CHECK(cudaHostRegister(staging, kRing * r.bytes, cudaHostRegisterPortable));
  }
  pg.up.fetch_add(1);
  fence::host_wake(pg.up);

  std::vector<double> lat_cpu;
  double c0 = cpu_seconds(), cpu_per_frame_us = 0;
  std::uint64_t bad = 0;
  for (std::uint64_t seq = 1; seq <= n; ++seq) {
    const std::size_t slot = seq % kRing;
    if (dp_stream) {
      auto f = sub->next(std::chrono::seconds(30), gpu ? cu->gs() : nullptr);
      if (!f) {
        auto c = sub->counters();
        throw TimeoutError("no frame for 30 s, waiting for seq " + std::to_string(seq) + " (received " +
                           std::to_string(c.received) + ", missed " + std::to_string(c.missed) + ")");
      }
      if (f->seq != seq) ++bad;
      if (gpu) {
        kernels::measure_since_gpu(static_cast<const std::uint64_t*>(f->data), rec.dev(seq), cu->gs());
        sub->release(*f, cu->gs());
        DP_CUDA_CHECK(cudaStreamSynchronize(cu->s));
      } else {
        const auto* w = static_cast<const std::uint64_t*>(f->data);
        rec.host(seq)[0] = static_cast<std::uint64_t>(platform::monotonic_ns()) - w[0];
        rec.host(seq)[1] = w[1];
        sub->release(*f);
      }
    } else {
      const auto spin_until = platform::monotonic_ns() + static_cast<std::int64_t>(r.spin_us) * 1000;
      while (pg.ready.load(std::memory_order_acquire) < seq && platform::monotonic_ns() < spin_until) {
      }
      while (pg.ready.load(std::memory_order_acquire) < seq) fence::host_wait(pg.ready, seq, std::chrono::seconds(30));
      if (r.method == "staging") {
        DP_CUDA_CHECK(cudaMemcpyAsync(dst, staging + slot * r.bytes, r.bytes, cudaMemcpyHostToDevice, cu->s));
        kernels::measure_since_gpu(static_cast<const std::uint64_t*>(dst), rec.dev(seq), cu->gs());
        DP_CUDA_CHECK(cudaStreamSynchronize(cu->s));
      } else {  // ipc-open
        void* p = nullptr;
        DP_CUDA_CHECK(cudaIpcOpenMemHandle(&p, pg.ipc[slot], cudaIpcMemLazyEnablePeerAccess));
        kernels::measure_since_gpu(static_cast<const std::uint64_t*>(p), rec.dev(seq), cu->gs());
        DP_CUDA_CHECK(cudaStreamSynchronize(cu->s));
        DP_CUDA_CHECK(cudaIpcCloseMemHandle(p));
      }
    }
    const auto t_write = pg.t_write_ns[slot].load(std::memory_order_acquire);
    if (seq <= r.frames) lat_cpu.push_back(double(static_cast<std::uint64_t>(platform::monotonic_ns()) - t_write) / 1e3);
    if (seq == r.frames) cpu_per_frame_us = (cpu_seconds() - c0) / double(r.frames) * 1e6;
    ack(pg, r.index);
  }
  const std::vector<double> lat_gpu = rec.latencies_us(r.frames, bad);
  drop_warmup(lat_cpu);
  json out{{"role", "consumer"},
           {"index", r.index},
           {"lat_cpu_us_p50", pct(lat_cpu, 0.5)},
           {"lat_cpu_us_p99", pct(lat_cpu, 0.99)},
           {"cpu_us_per_frame", cpu_per_frame_us},
           {"bad", bad}};
  if (gpu) {
    out["lat_gpu_us_p50"] = pct(lat_gpu, 0.5);
    out["lat_gpu_us_p99"] = pct(lat_gpu, 0.99);
  }
  std::cout << out.dump() << std::endl;
  sub.reset();
  if (r.method == "staging") {
    cudaHostUnregister(staging);
    cudaFree(dst);
  }
  return 0;
}

// floor: the producer's stamp kernel and the consumer's read kernel, one after the other on one
// stream of one process, then a synchronisation, frame after frame. Nothing is handed over, so
// this is what every GPU method's CPU-clock latency contains before its handoff costs anything.
int floor_role(const Role& r) {
  Cuda cu;
  void* buf = nullptr;
  DP_CUDA_CHECK(cudaMalloc(&buf, r.bytes));
  Records rec(r.frames, true);
  std::vector<double> lat_cpu;
  const double c0 = cpu_seconds();
  const auto t0 = platform::monotonic_ns();
  for (std::uint64_t seq = 1; seq <= r.frames; ++seq) {
    const auto t_write = platform::monotonic_ns();
    kernels::stamp_time_gpu(static_cast<std::uint64_t*>(buf), seq, cu.gs());
    kernels::measure_since_gpu(static_cast<const std::uint64_t*>(buf), rec.dev(seq), cu.gs());
    DP_CUDA_CHECK(cudaStreamSynchronize(cu.s));
    lat_cpu.push_back(double(platform::monotonic_ns() - t_write) / 1e3);
  }
  const double secs = double(platform::monotonic_ns() - t0) / 1e9;
  const double cpu_per_frame_us = (cpu_seconds() - c0) / double(r.frames) * 1e6;
  std::uint64_t bad = 0;
  const std::vector<double> lat_gpu = rec.latencies_us(r.frames, bad);
  drop_warmup(lat_cpu);
  std::cout << json{{"lat_cpu_us_p50", pct(lat_cpu, 0.5)}, {"lat_cpu_us_p99", pct(lat_cpu, 0.99)},
                    {"lat_gpu_us_p50", pct(lat_gpu, 0.5)}, {"lat_gpu_us_p99", pct(lat_gpu, 0.99)},
                    {"frames_per_s", double(r.frames) / secs}, {"cpu_us_per_frame", cpu_per_frame_us}, {"bad", bad}}
                   .dump()
            << std::endl;
  cudaFree(buf);
  return 0;
}

// ------------------------------------------------------------------------------------- driver

json run_native(const std::string& method, std::uint64_t bytes, std::uint64_t k, std::uint64_t frames, std::uint64_t spin_us) {
  const std::string domain = "hb" + std::to_string(::getpid()) + "-" + method + "-" + std::to_string(bytes) + "-" + std::to_string(k);
  const std::size_t page_bytes = kPageBytes + (method == "staging" ? kRing * bytes : 0);
  auto page = platform::Segment::create_named(page_name(domain), page_bytes);
  new (page.data()) Page{};
  std::vector<std::string> common{"--method", method, "--domain", domain, "--bytes", std::to_string(bytes),
                                  "--frames", std::to_string(frames), "--k", std::to_string(k),
                                  "--spin-us", std::to_string(spin_us)};
  auto spawn = [&](std::vector<std::string> args) {
    args.insert(args.begin(), "/proc/self/exe");
    args.insert(args.end(), common.begin(), common.end());
    return platform::Child::spawn(args, {/*capture_stdout=*/true});
  };
  auto prod = spawn({"--role", "producer"});
  std::vector<platform::Child> cons;
  for (std::uint64_t i = 0; i < k; ++i) cons.push_back(spawn({"--role", "consumer", "--index", std::to_string(i)}));
  bool ok = true;
  auto collect = [&](platform::Child& c) { return bench::collect_json(c, ok, std::chrono::seconds(300)); };
  std::vector<json> cj;
  for (auto& c : cons) cj.push_back(collect(c));
  if (!ok) prod.signal(SIGKILL);
  json pj = collect(prod);
  platform::Segment::unlink(page_name(domain));
  // A producer killed after a failure leaves its manifest behind: the bench cleans up after itself.
  if (!ok) remove_stale(domain, std::chrono::seconds(0));
  json row{{"method", method}, {"bytes", bytes}, {"consumers", k}, {"frames", frames}};
  if (!ok || pj.is_null()) {
    row["ok"] = false;
    return row;
  }
  auto agg = [&](const char* key, bool worst) {
    std::vector<double> v;
    for (auto& c : cj) {
      if (c.contains(key)) v.push_back(c[key].get<double>());
    }
    if (v.empty()) return json();
    return json(worst ? *std::max_element(v.begin(), v.end()) : pct(v, 0.5));
  };
  std::uint64_t bad = 0;
  for (auto& c : cj) bad += c.value("bad", std::uint64_t(0));
  row["ok"] = bad == 0;
  row["bad"] = bad;
  row["lat_cpu_us_p50"] = agg("lat_cpu_us_p50", false);
  row["lat_cpu_us_p99"] = agg("lat_cpu_us_p99", true);
  row["lat_gpu_us_p50"] = agg("lat_gpu_us_p50", false);
  row["lat_gpu_us_p99"] = agg("lat_gpu_us_p99", true);
  row["frames_per_s"] = pj["frames_per_s"];
  row["cpu_us_per_frame_producer"] = pj["cpu_us_per_frame"];
  row["cpu_us_per_frame_consumer"] = agg("cpu_us_per_frame", false);
  return row;
}

json run_floor(std::uint64_t bytes, std::uint64_t frames) {
  json row{{"method", "floor"}, {"bytes", bytes}, {"consumers", 1}, {"frames", frames}};
  auto c = platform::Child::spawn({"/proc/self/exe", "--role", "floor", "--bytes", std::to_string(bytes), "--frames", std::to_string(frames)},
                                  {/*capture_stdout=*/true});
  bool ok = true;
  json j = bench::collect_json(c, ok, std::chrono::seconds(300));
  if (!ok || !j.is_object()) {
    row["ok"] = false;
    return row;
  }
  for (auto& [key, v] : j.items()) row[key == "cpu_us_per_frame" ? "cpu_us_per_frame_producer" : key] = v;
  row["ok"] = j.value("bad", std::uint64_t(1)) == 0;
  return row;
}

json run_torch(const std::string& python, std::uint64_t bytes, std::uint64_t k, std::uint64_t frames, std::uint64_t spin_us) {
  json row{{"method", "torch"}, {"bytes", bytes}, {"consumers", k}, {"frames", frames}};
  try {
    auto c = platform::Child::spawn({python, DP_BENCH_DIR "/handoff_torch.py", "--bytes", std::to_string(bytes), "--consumers",
                                     std::to_string(k), "--frames", std::to_string(frames), "--clock-lib", DP_BENCH_CLOCK_LIB, "--spin-us", std::to_string(spin_us)},
                                    {true, false});
    auto rc = c.wait_for(std::chrono::seconds(600));
    if (!rc) {
      c.signal(SIGKILL);
      c.wait_for(std::chrono::seconds(5));
    }
    const auto& out = c.output();
    auto j = json::parse(out.substr(std::min(out.size(), out.rfind('{') == std::string::npos ? 0 : out.rfind('{'))), nullptr, false);
    if (!rc || *rc != 0 || j.is_discarded() || j.contains("error")) {
      row["ok"] = false;
      row["skipped"] = j.is_object() && j.contains("error") ? j["error"].get<std::string>()
                                                            : "the PyTorch peer failed (exit " + (rc ? std::to_string(*rc) : std::string("timeout")) + ")";
      return row;
    }
    for (auto& [key, v] : j.items()) row[key] = v;
    row["ok"] = j.value("bad", std::uint64_t(1)) == 0;
  } catch (const std::exception& e) {
    row["ok"] = false;
    row["skipped"] = std::string("could not run ") + python + ": " + e.what();
  }
  return row;
}


std::string fmt(const json& v, int prec = 1) {
  if (!v.is_number()) return "-";
  char b[32];
  std::snprintf(b, sizeof b, "%.*f", prec, v.get<double>());
  return b;
}

int driver(const std::vector<std::string>& methods, const std::vector<std::string>& sizes, const std::vector<std::string>& ks,
           std::uint64_t frames, std::uint64_t spin_us, const std::string& json_path, const std::string& csv_path,
           const std::string& python) {
  const bool need_gpu = std::any_of(methods.begin(), methods.end(), [](auto& m) { return m != "host"; });
  std::string card = "no GPU";
  auto probe = cuda::probe(false);
  if (probe.value("usable", false)) {
    card = probe["devices"][0]["name"].get<std::string>();
  } else if (need_gpu) {
    std::fprintf(stderr, "dp_bench_handoff: no usable GPU (%s); only --methods host runs here\n",
                 probe.value("reason", std::string("?")).c_str());
    return 2;
  }
  std::printf("handoff of one tensor from 1 producer to K consumers, on %s; %llu frames per phase; consumers spin %llu us\n",
              card.c_str(), static_cast<unsigned long long>(frames), static_cast<unsigned long long>(spin_us));
  std::printf("%-11s %8s %3s %10s %10s %10s %10s %10s %9s %9s\n", "method", "size", "K", "cpu p50us", "cpu p99us",
              "gpu p50us", "gpu p99us", "frames/s", "cpu/f P", "cpu/f C");
  // Written after every row, so a run stopped early (a time limit) still leaves what it measured;
  // "complete" says whether every row ran.
  // Each file is written whole beside its name and renamed over it, so a run killed mid-write
  // leaves the previous version, never half a file.
  auto replace = [](const std::string& path, const std::string& text) {
    if (path.empty()) return;
    const std::string tmp = path + ".tmp";
    std::ofstream(tmp) << text;
    if (std::rename(tmp.c_str(), path.c_str()) != 0) std::perror(("dp_bench_handoff: writing " + path).c_str());
  };
  auto save = [&](const json& rows, const json& ratios, bool complete) {
    json doc{{"benchmark", "handoff"}, {"card", card}, {"frames", frames}, {"spin_us", spin_us}, {"complete", complete},
           {"rows", rows}, {"ratios", ratios}};
    replace(json_path, doc.dump(2) + "\n");
    if (csv_path.empty()) return;
    std::ostringstream csv;
    const std::vector<std::string> cols{"method", "bytes", "consumers", "frames", "ok", "lat_cpu_us_p50", "lat_cpu_us_p99",
                                        "lat_gpu_us_p50", "lat_gpu_us_p99", "frames_per_s", "cpu_us_per_frame_producer",
                                        "cpu_us_per_frame_consumer", "card"};
    for (std::size_t i = 0; i < cols.size(); ++i) csv << (i ? "," : "") << cols[i];
    csv << "\n";
    for (auto& r : rows) {
      for (std::size_t i = 0; i < cols.size(); ++i) {
        const auto& v = r.contains(cols[i]) ? r[cols[i]] : json();
        csv << (i ? "," : "") << (v.is_string() ? "\"" + v.get<std::string>() + "\"" : v.is_null() ? std::string() : v.dump());
      }
      csv << "\n";
    }
    replace(csv_path, csv.str());
  };
  json rows = json::array();
  for (auto& kstr : ks) {
    for (auto& ss : sizes) {
      const std::uint64_t bytes = parse_size(ss), k = parse_size(kstr);
      // Large frames cost staging and the copies tens of ms each: fewer frames there.
      const std::uint64_t f = bytes >= (1u << 30)    ? std::min<std::uint64_t>(frames, 30)
                              : bytes >= (256u << 20) ? std::min<std::uint64_t>(frames, 60)
                              : bytes >= (64u << 20)  ? std::min<std::uint64_t>(frames, 300)
                                                      : frames;
      for (auto& m : methods) {
        if (m == "floor" && k != 1) continue;  // one process: no consumers to count
        json row = m == "torch" ? run_torch(python, bytes, k, f, spin_us) : m == "floor" ? run_floor(bytes, f) : run_native(m, bytes, k, f, spin_us);
        row["card"] = card;
        row["size"] = ss;
        if (!row.value("ok", false)) {
          std::printf("%-11s %8s %3s %s\n", m.c_str(), ss.c_str(), kstr.c_str(),
                      row.contains("skipped") ? ("skipped: " + row["skipped"].get<std::string>()).c_str() : "FAILED");
        } else {
          std::printf("%-11s %8s %3s %10s %10s %10s %10s %10s %9s %9s\n", m.c_str(), ss.c_str(), kstr.c_str(),
                      fmt(row["lat_cpu_us_p50"]).c_str(), fmt(row["lat_cpu_us_p99"]).c_str(), fmt(row["lat_gpu_us_p50"]).c_str(),
                      fmt(row["lat_gpu_us_p99"]).c_str(), fmt(row["frames_per_s"], 0).c_str(),
                      fmt(row["cpu_us_per_frame_producer"]).c_str(), fmt(row["cpu_us_per_frame_consumer"]).c_str());
        }
        std::fflush(stdout);
        rows.push_back(row);
        save(rows, json::array(), false);
      }
    }
  }
  // Ratios: each peer's latency over DirectPort's, at each size and K (CPU clock: all have it).
  json ratios = json::array();
  std::printf("\nlatency ratio peer / directport (CPU-clock p50; GPU-clock p50 in brackets)\n");
  for (auto& r : rows) {
    if (r["method"] == "directport" || r["method"] == "floor" || !r.value("ok", false)) continue;
    for (auto& d : rows) {
      if (d["method"] != "directport" || !d.value("ok", false) || d["bytes"] != r["bytes"] || d["consumers"] != r["consumers"]) continue;
      json q{{"method", r["method"]}, {"bytes", r["bytes"]}, {"consumers", r["consumers"]},
             {"lat_cpu_ratio", r["lat_cpu_us_p50"].get<double>() / d["lat_cpu_us_p50"].get<double>()}};
      if (r["lat_gpu_us_p50"].is_number()) q["lat_gpu_ratio"] = r["lat_gpu_us_p50"].get<double>() / d["lat_gpu_us_p50"].get<double>();
      std::printf("  %-11s %8s K=%-3s %8.1fx  [%s]\n", r["method"].get<std::string>().c_str(), r["size"].get<std::string>().c_str(),
                  std::to_string(r["consumers"].get<int>()).c_str(), q["lat_cpu_ratio"].get<double>(),
                  q.contains("lat_gpu_ratio") ? (fmt(q["lat_gpu_ratio"]) + "x").c_str() : "-");
      ratios.push_back(q);
    }
  }
  save(rows, ratios, true);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dp_bench_handoff: one tensor from a producer process to K consumer processes, six ways and the floor (no handoff), one run"};
  std::string methods = method_list(","), sizes = "4K,64K,1M,16M,64M,256M,1G", consumers = "1,8";
  std::string json_path, csv_path, python = "python3";
  std::uint64_t frames = 1000;
  Role role;
  std::string role_name;
  app.add_option("--methods", methods, "comma list of: " + method_list(", "));
  app.add_option("--sizes", sizes, "comma list of sizes: N, NK, NM, NG");
  app.add_option("--consumers", consumers, "comma list of consumer counts");
  app.add_option("--frames", frames, "frames per phase (paced, then unpaced); at most 300 from 64M, 60 from 256M, 30 at 1G")->check(CLI::Range(20, 10000000));
  app.add_option("--json", json_path, "write every row and ratio here");
  app.add_option("--csv", csv_path, "write every row here");
  app.add_option("--python", python, "python with torch, for the torch method");
  app.add_option("--spin-us", role.spin_us,
                 "consumers poll for a frame this many microseconds before they sleep (default 0: every method "
                 "sleeps in a futex; the torch method's consumers poll their queue as long, then block in it)")
      ->check(CLI::Range(0, 1000000));
  // Internal: the processes the driver starts.
  app.add_option("--role", role_name)->group("");
  app.add_option("--method", role.method)->group("");
  app.add_option("--domain", role.domain)->group("");
  app.add_option("--bytes", role.bytes)->group("");
  app.add_option("--k", role.k)->group("");
  app.add_option("--index", role.index)->group("");
  if (auto rc = dp::bench::parse_args(app, argc, argv)) return *rc;
  try {
    if (!role_name.empty()) {
      role.frames = frames;
      if (role_name == "producer") return producer(role);
      if (role_name == "consumer") return consumer(role);
      if (role_name == "floor") return floor_role(role);
      throw ValidationError("unknown role '" + role_name + "'");
    }
    auto ms = split(methods);
    for (auto& m : ms) {
      if (std::find(kMethods.begin(), kMethods.end(), m) == kMethods.end()) {
        throw ValidationError("--methods: unknown method '" + m + "' (known: " + method_list(", ") + ")");
      }
    }
    auto ss = split(sizes);
    for (auto& s : ss) parse_size(s);
    auto ks = split(consumers);
    for (auto& k : ks) {
      if (parse_size(k) > 64) throw ValidationError("--consumers: at most 64, got " + k);
    }
    if (ms.empty() || ss.empty() || ks.empty()) throw ValidationError("--methods, --sizes and --consumers need at least one entry");
    return driver(ms, ss, ks, frames, role.spin_us, json_path, csv_path, python);
  } catch (const ValidationError& e) {
    std::fprintf(stderr, "dp_bench_handoff: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dp_bench_handoff%s: %s\n", role_name.empty() ? "" : (" (" + role_name + ")").c_str(), e.what());
    return 1;
  }
}

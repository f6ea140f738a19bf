// dp_bench_transport: DirectPort's GPU handoff between processes, measured in one run on one card.
//
//   dp_bench_transport [--sizes 4K,1M,...] [--consumers 1,8] [--frames N] [--fences KINDS]
//                      [--ready-words device,host] [--waits gpu,cpu] [--slots 3,8]
//                      [--mechanisms directport,raw] [--json FILE]
//
// --ready-words measures where the ready words of cuda-memop fences live (DIRECTPORT_READY_WORDS:
// the host page, the default, or device memory) and --waits where the consumers wait on
// them (DIRECTPORT_GPU_WAITS: on their GPU stream, the default, or polled on their CPU), each
// value in the same run; --slots sets the ring's slots (default 3), which bound publishes/s.
//
// --fences cuda-memop,vulkan-timeline measures the `vulkan-timeline` fence kind (docs/VULKAN.md:
// a Vulkan timeline semaphore signalled and waited on CUDA streams) against the mem-op fences,
// in the same run, on cuda-vmm memory.
//
// --mechanisms directport,raw adds, for each consumer count and --waits value, the mechanism alone
// with no DirectPort in it: the same processes, pacing and stamp/read kernels, but the producer's
// stream writes one host-mapped word (cuStreamWriteValue64) after its stamp kernel, and each
// consumer waits for that word on its stream (cuStreamWaitValue64, enqueued ahead: `gpu`) or on
// its CPU (`cpu`) before its read kernel; the unpaced phase keeps at most 3 frames in flight
// (acks written by the consumers' streams, polled by the producer's CPU). Its latency is the
// least a handoff through these fences can cost on this card with K consumers: what is left of
// DirectPort's figure above it is the protocol's own.
//
// For each size and consumer count it starts one producer and K consumer processes (this binary,
// re-executed with --role). The producer stamps %globaltimer into each frame with a kernel just
// before publish(); each consumer's kernel, enqueued after next() on its own stream, reads the
// clock again: the difference is the publish -> consumer-can-read one-way latency from GPU
// timestamps. A paced phase gives latency; an unpaced phase gives publishes per second. CPU time
// per acquire/publish/next/release is measured with the monotonic clock around each call.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <cuda_runtime_api.h>
#include <nlohmann/json.hpp>

#include "directport/core/discovery.hpp"
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
using dp::bench::split;

namespace {

struct Args {
  std::string role = "driver", domain, sizes = "4K,64K,1M,16M,64M,256M,1G", consumers = "1,8", json;
  std::string fences = "cuda-memop", fence = "cuda-memop", ready_words = "host", waits = "gpu", slot_counts = "3";
  std::string mechanisms = "directport";
  std::uint64_t bytes = 0, frames = 2000, k = 1, slots = 3;
  int index = 0;
};

int producer(const Args& a) {
  cuda::use_device(0);
  StreamSpec spec{"bench", DType::u8, {static_cast<std::int64_t>(a.bytes)}, static_cast<std::uint32_t>(a.slots),
                  MemoryKind::cuda_vmm, parse_fence_kind(a.fence)};
  spec.acquire_timeout = std::chrono::milliseconds(50);
  Node node({"producer", "bench-producer", a.domain});
  auto& pub = node.advertise(spec);
  node.set_running();
  cudaStream_t s;
  DP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto gs = reinterpret_cast<GpuStream>(s);
  for (int i = 0; pub.counters().subscribers < a.k; ++i) {
    if (i > 30000) throw Error("consumers did not subscribe within 30 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::vector<double> acq_us, pub_us;
  auto one = [&](bool timed) {
    auto t0 = platform::monotonic_ns();
    auto lease = pub.acquire(gs);
    auto t1 = platform::monotonic_ns();
    if (!lease) return false;
    kernels::stamp_time_gpu(static_cast<std::uint64_t*>(lease->data), lease->seq, gs);
    auto t2 = platform::monotonic_ns();
    pub.publish(*lease, {lease->seq, 0, 0}, gs);
    auto t3 = platform::monotonic_ns();
    if (timed) {
      acq_us.push_back((t1 - t0) / 1e3);
      pub_us.push_back((t3 - t2) / 1e3);
    }
    return true;
  };
  // Phase 1, paced: one frame every 200 us, so that each is seen alone (latency).
  for (std::uint64_t i = 0; i < a.frames; ++i) {
    one(true);
    auto until = platform::monotonic_ns() + 200000;
    while (platform::monotonic_ns() < until) {
    }
  }
  DP_CUDA_CHECK(cudaStreamSynchronize(s));
  // Phase 2, unpaced: publishes per second with the consumers keeping up as they can.
  auto published0 = pub.counters().published;
  auto t0 = platform::monotonic_ns();
  for (std::uint64_t i = 0; i < a.frames; ++i) one(false);
  DP_CUDA_CHECK(cudaStreamSynchronize(s));
  double secs = (platform::monotonic_ns() - t0) / 1e9;
  auto c = pub.counters();
  std::cout << nlohmann::json{{"role", "producer"},
                              {"acquire_cpu_us_p50", pct(acq_us, 0.5)},
                              {"publish_cpu_us_p50", pct(pub_us, 0.5)},
                              {"publishes_per_s", (c.published - published0) / secs},
                              {"dropped", c.dropped}}
                   .dump()
            << std::endl;
  // Stay until the consumers are done with our memory (they hold the last frames).
  while (pub.counters().subscribers > 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  cudaStreamDestroy(s);
  return 0;
}

int consumer(const Args& a) {
  cuda::use_device(0);
  cudaStream_t s;
  DP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto gs = reinterpret_cast<GpuStream>(s);
  const std::size_t n = a.frames * 2;
  dp::bench::Records rec(n, true);  // by the order received (the newest-frame policy skips frames)
  SubscribeOptions o;
  o.domain = a.domain;
  o.client_name = "consumer" + std::to_string(a.index);
  o.spin = std::chrono::microseconds(2000);
  Subscriber sub("producer", "bench", o);
  std::vector<double> next_us, rel_us;
  std::size_t got = 0;
  std::vector<std::uint64_t> paced_seq;
  while (got < n) {
    auto t0 = platform::monotonic_ns();
    auto f = sub.next(std::chrono::seconds(5), gs);
    auto t1 = platform::monotonic_ns();
    if (!f) break;
    kernels::measure_since_gpu(static_cast<const std::uint64_t*>(f->data), rec.dev(got), gs);
    auto t2 = platform::monotonic_ns();
    sub.release(*f, gs);
    auto t3 = platform::monotonic_ns();
    if (f->seq <= a.frames) {
      next_us.push_back((t1 - t0) / 1e3);
      rel_us.push_back((t3 - t2) / 1e3);
      paced_seq.push_back(got);
    }
    ++got;
  }
  DP_CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<double> lat;
  for (auto i : paced_seq) lat.push_back(rec.host(i)[0] / 1e3);
  dp::bench::drop_warmup(lat);  // the first frames touch the mapping first
  auto c = sub.counters();
  std::cout << nlohmann::json{{"role", "consumer"},           {"index", a.index},
                              {"frames", got},                {"latency_us_p50", pct(lat, 0.5)},
                              {"latency_us_p99", pct(lat, 0.99)}, {"next_cpu_us_p50", pct(next_us, 0.5)},
                              {"release_cpu_us_p50", pct(rel_us, 0.5)}, {"missed", c.missed}}
                   .dump()
            << std::endl;
  cudaStreamDestroy(s);
  return 0;
}

// ------------------------------------------------------------------ the mechanism alone (raw)

constexpr std::uint64_t kRawRing = 64;      // stamps in the producer's buffer (a frame's is seq % kRawRing)
constexpr std::uint64_t kRawInFlight = 3;   // unpaced: frames in flight, as DirectPort's default slots

struct alignas(64) Word {
  protocol::AtomicU64 v;
};
struct RawPage {
  Word ready;           // the newest frame stamped (written by the producer's stream)
  Word up;              // consumers ready to start
  Word handle_set;      // 1 once `stamps` is valid
  Word acks[64];        // per consumer: the newest frame it read (written by its stream)
  cudaIpcMemHandle_t stamps;
};
constexpr std::size_t kRawPageBytes = 8192;
static_assert(sizeof(RawPage) <= kRawPageBytes);

std::string raw_page_name(const std::string& domain) { return "/dp-bench-raw." + std::to_string(::getuid()) + "." + domain; }

// The page registered with the driver for the calling process's device: its device address.
struct RawMapping {
  platform::Segment seg;
  RawPage* page = nullptr;
  CUdeviceptr dev = 0;
  explicit RawMapping(const std::string& domain)
      : seg(platform::Segment::open_named(raw_page_name(domain), platform::Access::read_write)) {
    page = static_cast<RawPage*>(seg.data());
    DP_CU_CHECK(cuMemHostRegister, seg.data(), kRawPageBytes, CU_MEMHOSTREGISTER_DEVICEMAP);
    DP_CU_CHECK(cuMemHostGetDevicePointer, &dev, seg.data(), 0);
  }
  ~RawMapping() { cuda::driver().cuMemHostUnregister(seg.data()); }
  CUdeviceptr word(const Word& w) const {
    return dev + static_cast<CUdeviceptr>(reinterpret_cast<const char*>(&w) - reinterpret_cast<const char*>(page));
  }
};

// Spins until `reached()`; a peer that never gets there (dead, or its stream faulted) ends this
// process after 30 s with an error naming what it waited for.
template <typename F>
void spin_until(F&& reached, const char* what, std::uint64_t value) {
  if (reached()) return;
  const auto deadline = platform::monotonic_ns() + 30'000'000'000LL;
  while (!reached()) {
    platform::cpu_relax();
    if (platform::monotonic_ns() > deadline) {
      throw TimeoutError(std::string("raw: no ") + what + " " + std::to_string(value) + " within 30 s");
    }
  }
}
void spin_until(const protocol::AtomicU64& w, std::uint64_t value, const char* what) {
  spin_until([&] { return w.load(std::memory_order_acquire) >= value; }, what, value);
}

int raw_producer(const Args& a) {
  cuda::use_device(0);
  RawMapping m(a.domain);
  RawPage& pg = *m.page;
  cudaStream_t s;
  DP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto gs = reinterpret_cast<GpuStream>(s);
  std::uint64_t* stamps = nullptr;
  DP_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&stamps), kRawRing * 2 * sizeof(std::uint64_t)));
  DP_CUDA_CHECK(cudaMemsetAsync(stamps, 0, kRawRing * 2 * sizeof(std::uint64_t), s));
  DP_CUDA_CHECK(cudaStreamSynchronize(s));
  DP_CUDA_CHECK(cudaIpcGetMemHandle(&pg.stamps, stamps));
  pg.handle_set.v.store(1, std::memory_order_release);
  spin_until(pg.up.v, a.k, "consumers up");
  auto min_ack = [&] {
    std::uint64_t v = UINT64_MAX;
    for (std::uint64_t i = 0; i < a.k; ++i) v = std::min(v, pg.acks[i].v.load(std::memory_order_acquire));
    return v;
  };
  std::vector<double> pub_us;
  auto one = [&](std::uint64_t seq) {
    const auto t0 = platform::monotonic_ns();
    kernels::stamp_time_gpu(stamps + 2 * (seq % kRawRing), seq, gs);
    DP_CU_CHECK(cuStreamWriteValue64, reinterpret_cast<CUstream>(s), m.word(pg.ready), seq, CU_STREAM_WRITE_VALUE_DEFAULT);
    return (platform::monotonic_ns() - t0) / 1e3;
  };
  auto acked = [&](std::uint64_t seq) { spin_until([&] { return min_ack() >= seq; }, "ack of frame", seq); };
  // Paced, as the DirectPort producer: one frame every 200 us, each once every consumer has read
  // the one before (they have, unless one stalls: then the stamps' ring cannot wrap under it).
  for (std::uint64_t seq = 1; seq <= a.frames; ++seq) {
    acked(seq - 1);
    pub_us.push_back(one(seq));
    const auto until = platform::monotonic_ns() + 200000;
    while (platform::monotonic_ns() < until) {
    }
  }
  acked(a.frames);
  // Unpaced: at most kRawInFlight frames ahead of the slowest consumer.
  const auto t0 = platform::monotonic_ns();
  for (std::uint64_t seq = a.frames + 1; seq <= 2 * a.frames; ++seq) {
    if (seq > kRawInFlight) acked(seq - kRawInFlight);
    one(seq);
  }
  acked(2 * a.frames);
  const double secs = (platform::monotonic_ns() - t0) / 1e9;
  std::cout << nlohmann::json{{"role", "producer"},
                              {"acquire_cpu_us_p50", 0.0},
                              {"publish_cpu_us_p50", pct(pub_us, 0.5)},
                              {"publishes_per_s", double(a.frames) / secs},
                              {"dropped", 0}}
                   .dump()
            << std::endl;
  // The consumers have read every frame; they unmap the stamps before they exit.
  spin_until(pg.up.v, 2 * a.k, "consumers done");
  DP_CUDA_CHECK(cudaStreamSynchronize(s));
  cudaFree(stamps);
  cudaStreamDestroy(s);
  return 0;
}

int raw_consumer(const Args& a) {
  cuda::use_device(0);
  RawMapping m(a.domain);
  RawPage& pg = *m.page;
  const bool gpu_waits = a.waits == "gpu";
  cudaStream_t s;
  DP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto gs = reinterpret_cast<GpuStream>(s);
  auto cs = reinterpret_cast<CUstream>(s);
  spin_until(pg.handle_set.v, 1, "stamp buffer");
  void* p = nullptr;
  DP_CUDA_CHECK(cudaIpcOpenMemHandle(&p, pg.stamps, cudaIpcMemLazyEnablePeerAccess));
  const auto* stamps = static_cast<const std::uint64_t*>(p);
  const std::uint64_t n = 2 * a.frames;
  dp::bench::Records rec(n, true);
  Word& ack = pg.acks[a.index];
  // The read kernel once before the first frame (its module loads here, not in frame 1's latency).
  kernels::measure_since_gpu(stamps, rec.dev(0), gs);
  DP_CUDA_CHECK(cudaStreamSynchronize(s));
  pg.up.v.fetch_add(1);
  std::vector<double> next_us;
  for (std::uint64_t seq = 1; seq <= n; ++seq) {
    // Ahead of the frames it has read by at most kRawInFlight (a bounded queue on the stream).
    if (seq > kRawInFlight) spin_until(ack.v, seq - kRawInFlight, "own ack of frame");
    const auto t0 = platform::monotonic_ns();
    if (gpu_waits) {
      DP_CU_CHECK(cuStreamWaitValue64, cs, m.word(pg.ready), seq, CU_STREAM_WAIT_VALUE_GEQ);
    } else {
      spin_until(pg.ready.v, seq, "frame");
    }
    const auto t1 = platform::monotonic_ns();
    kernels::measure_since_gpu(stamps + 2 * (seq % kRawRing), rec.dev(seq), gs);
    DP_CU_CHECK(cuStreamWriteValue64, cs, m.word(ack), seq, CU_STREAM_WRITE_VALUE_DEFAULT);
    if (seq <= a.frames) next_us.push_back((t1 - t0) / 1e3);
  }
  DP_CUDA_CHECK(cudaStreamSynchronize(s));
  std::uint64_t bad = 0;
  const auto lat = rec.latencies_us(a.frames, bad);
  std::cout << nlohmann::json{{"role", "consumer"},
                              {"index", a.index},
                              {"frames", n},
                              {"latency_us_p50", pct(lat, 0.5)},
                              {"latency_us_p99", pct(lat, 0.99)},
                              {"next_cpu_us_p50", pct(next_us, 0.5)},
                              {"release_cpu_us_p50", 0.0},
                              {"missed", 0},
                              {"bad", bad}}
                   .dump()
            << std::endl;
  DP_CUDA_CHECK(cudaIpcCloseMemHandle(p));
  cudaStreamDestroy(s);
  pg.up.v.fetch_add(1);
  return 0;
}

// Runs this binary with `args`, capturing its stdout.
platform::Child spawn(std::vector<std::string> args) {
  args.insert(args.begin(), "/proc/self/exe");
  return platform::Child::spawn(args, {/*capture_stdout=*/true});
}

int driver_main(const Args& a) {
  auto probe = cuda::probe(false);
  if (!probe.value("usable", false)) {
    std::fprintf(stderr, "dp_bench_transport: no usable GPU: %s\n", probe.value("reason", std::string("?")).c_str());
    return 2;
  }
  std::string card = probe["devices"][0]["name"];
  // Every value is checked before the first process starts.
  struct Variant {
    std::string fence, words, waits, label;
    std::uint64_t slots;
    bool raw = false;
  };
  std::vector<Variant> variants;
  bool with_dp = false, with_raw = false;
  for (auto& mech : split(a.mechanisms)) {
    if (mech == "directport") {
      with_dp = true;
    } else if (mech == "raw") {
      with_raw = true;
    } else {
      throw ValidationError("--mechanisms: '" + mech + "' is not directport or raw");
    }
  }
  // Every list is checked whichever mechanisms run.
  for (auto& waits : split(a.waits)) {
    if (waits != "gpu" && waits != "cpu") throw ValidationError("--waits: '" + waits + "' is not gpu or cpu");
  }
  for (auto& fence : split(a.fences)) {
    parse_fence_kind(fence);
    for (auto& words : split(a.ready_words)) {
      if (words != "device" && words != "host") throw ValidationError("--ready-words: '" + words + "' is not device or host");
      // Device ready words come with cuda-memop fences only.
      if (words == "device" && fence != "cuda-memop") continue;
      for (auto& waits : split(a.waits)) {
        for (auto& sl : split(a.slot_counts)) {
          std::uint64_t slots = parse_size(sl);
          if (slots < 2 || slots > protocol::kMaxSlots) {
            throw ValidationError("--slots " + sl + ": use 2.." + std::to_string(protocol::kMaxSlots));
          }
          std::string label = fence == "cuda-memop" ? "memop" : "vk-timeline";
          if (with_dp) variants.push_back({fence, words, waits,
                              label + "/" + (words == "device" ? "dev" : "host") + "/" + waits + "/" + sl, slots});
        }
      }
    }
  }
  if (!with_dp && !with_raw) throw ValidationError("--mechanisms: name directport, raw or both");
  for (auto& ks : split(a.consumers)) {
    const auto k = parse_size(ks);
    if (k < 1 || k > 64) throw ValidationError("--consumers " + ks + ": use 1..64");
  }
  if (with_raw) {
    for (auto& waits : split(a.waits)) {
      variants.push_back({"raw", "host", waits, "raw/host/" + waits + "/" + std::to_string(kRawInFlight), kRawInFlight, true});
    }
  }
  if (variants.empty()) throw ValidationError("--fences and --ready-words leave nothing to measure");
  std::printf("DirectPort transport benchmark on %s (cuda-vmm memory; variant = fence/ready words/waits/slots)\n",
              card.c_str());
  std::printf("%22s %10s %4s %10s %10s %12s %10s %10s %10s %10s\n", "variant", "size", "K", "p50 us", "p99 us",
              "publish/s", "acq cpu", "pub cpu", "next cpu", "rel cpu");
  nlohmann::json rows = nlohmann::json::array();
  for (auto& v : variants) {
    const std::string& fence = v.fence;
    // The children inherit these: the producer decides where its ready words live, each
    // consumer where it waits.
    ::setenv("DIRECTPORT_READY_WORDS", v.words.c_str(), 1);
    ::setenv("DIRECTPORT_GPU_WAITS", v.waits.c_str(), 1);
    for (auto& ks : split(a.consumers)) {
      // The mechanism alone moves a 16-byte stamp: one row per consumer count.
      for (auto& ss : v.raw ? std::vector<std::string>{"16"} : split(a.sizes)) {
        std::uint64_t bytes = parse_size(ss), k = parse_size(ks);
        std::uint64_t frames = bytes >= (256u << 20) ? std::min<std::uint64_t>(a.frames, 500) : a.frames;
        std::string domain = "bench" + std::to_string(getpid()) + "-" + ss + "-" + ks + "-" + fence.substr(0, 1) +
                             v.words.substr(0, 1) + v.waits.substr(0, 1) + std::to_string(v.slots);
        std::vector<std::string> common{"--domain", domain, "--bytes", std::to_string(bytes), "--frames",
                                        std::to_string(frames), "--k", ks, "--fence", fence, "--slots",
                                        std::to_string(v.slots), "--waits", v.waits};
        std::optional<platform::Segment> raw_page;
        if (v.raw) {
          platform::Segment::unlink(raw_page_name(domain));
          raw_page.emplace(platform::Segment::create_named(raw_page_name(domain), kRawPageBytes));
        }
        auto pa = common;
        pa.insert(pa.begin(), {"--role", v.raw ? "raw-producer" : "producer"});
        auto prod = spawn(pa);
        bool up = v.raw;  // the raw processes meet in their page
        for (int i = 0; i < 500 && !up && prod.running(); ++i) {
          for (auto& nd : list_nodes(domain)) up = up || nd.state == protocol::NodeState::running;
          if (!up) prod.wait_for(std::chrono::milliseconds(10));
        }
        std::vector<platform::Child> cons;
        for (std::uint64_t i = 0; up && i < k; ++i) {
          auto ca = common;
          ca.insert(ca.begin(), {"--role", v.raw ? "raw-consumer" : "consumer", "--index", std::to_string(i)});
          cons.push_back(spawn(ca));
        }
        std::vector<nlohmann::json> cj;
        bool ok = up;
        for (auto& c : cons) {
          auto j = bench::collect_json(c, ok, std::chrono::seconds(120));
          if (!j.is_null()) cj.push_back(j);
          if (!ok) {  // the others may wait for the one that failed: end them all now
            for (auto& o : cons) o.signal(SIGKILL);
            prod.signal(SIGKILL);
          }
        }
        if (!ok) prod.signal(SIGKILL);  // it may still wait for consumers that are gone
        auto pj = bench::collect_json(prod, ok, std::chrono::seconds(120));
        if (raw_page) platform::Segment::unlink(raw_page_name(domain));
        ok = ok && !pj.is_null() && cj.size() == k;
        std::uint64_t bad = 0;
        for (auto& c : cj) bad += c.value("bad", std::uint64_t{0});
        if (!ok || bad > 0) {
          const std::string why = !ok ? "a process exited badly or did not start"
                                      : std::to_string(bad) + " frames read a stamp other than their own";
          std::printf("%22s %10s %4s FAILED (%s)\n", v.label.c_str(), ss.c_str(), ks.c_str(), why.c_str());
          rows.push_back({{"bytes", bytes}, {"consumers", k}, {"fence", fence}, {"ready_words", v.words},
                          {"waits", v.waits}, {"slots", v.slots}, {"mechanism", v.raw ? "raw" : "directport"},
                          {"ok", false}, {"bad", bad}, {"why", why}});
          continue;
        }
        std::vector<double> p50, p99, nx, rl;
        for (auto& c : cj) {
          p50.push_back(c["latency_us_p50"]);
          p99.push_back(c["latency_us_p99"]);
          nx.push_back(c["next_cpu_us_p50"]);
          rl.push_back(c["release_cpu_us_p50"]);
        }
        nlohmann::json row{{"bytes", bytes},
                           {"consumers", k},
                           {"fence", fence},
                           {"ready_words", v.words},
                           {"waits", v.waits},
                           {"slots", v.slots},
                           {"mechanism", v.raw ? "raw" : "directport"},
                           {"ok", true},
                           {"card", card},
                           {"latency_us_p50", pct(p50, 0.5)},
                           {"latency_us_p99", *std::max_element(p99.begin(), p99.end())},
                           {"publishes_per_s", pj["publishes_per_s"]},
                           {"acquire_cpu_us_p50", pj["acquire_cpu_us_p50"]},
                           {"publish_cpu_us_p50", pj["publish_cpu_us_p50"]},
                           {"next_cpu_us_p50", pct(nx, 0.5)},
                           {"release_cpu_us_p50", pct(rl, 0.5)},
                           {"dropped", pj["dropped"]},
                           {"per_consumer", cj}};
        std::printf("%22s %10s %4s %10.2f %10.2f %12.0f %10.2f %10.2f %10.2f %10.2f\n", v.label.c_str(), ss.c_str(), ks.c_str(),
                    row["latency_us_p50"].get<double>(), row["latency_us_p99"].get<double>(),
                    row["publishes_per_s"].get<double>(), row["acquire_cpu_us_p50"].get<double>(),
                    row["publish_cpu_us_p50"].get<double>(), row["next_cpu_us_p50"].get<double>(),
                    row["release_cpu_us_p50"].get<double>());
        std::fflush(stdout);
        rows.push_back(row);
      }
    }
  }
  if (!a.json.empty()) {
    std::ofstream(a.json) << nlohmann::json{{"card", card}, {"benchmark", "transport"}, {"rows", rows}}.dump(2) << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"dp_bench_transport: DirectPort's GPU handoff between processes (latency from GPU timestamps, "
               "publishes/s, CPU per call), one run on one card"};
  std::string frames = "2000";
  app.add_option("--sizes", a.sizes, "comma list of frame sizes: N, NK, NM, NG");
  app.add_option("--consumers", a.consumers, "comma list of consumer counts");
  app.add_option("--frames", frames, "frames per phase (paced, then unpaced)");
  app.add_option("--json", a.json, "write the rows here");
  app.add_option("--fences", a.fences, "comma list of fence kinds: cuda-memop, vulkan-timeline (docs/VULKAN.md)");
  app.add_option("--ready-words", a.ready_words,
                 "comma list of where cuda-memop ready words live: host (default), device (DIRECTPORT_READY_WORDS)");
  app.add_option("--waits", a.waits, "comma list of where consumers wait: gpu (default), cpu (DIRECTPORT_GPU_WAITS)");
  app.add_option("--slots", a.slot_counts, "comma list of the stream ring's slot counts (2..16)");
  app.add_option("--mechanisms", a.mechanisms,
                 "comma list: directport (default), raw (the fences alone, no DirectPort: the floor under "
                 "DirectPort's latency, for each --waits value)");
  // Internal: the processes the driver starts.
  std::string bytes, k, index;
  app.add_option("--role", a.role)->group("");
  app.add_option("--domain", a.domain)->group("");
  app.add_option("--bytes", bytes)->group("");
  app.add_option("--k", k)->group("");
  app.add_option("--index", index)->group("");
  app.add_option("--fence", a.fence)->group("");
  if (auto rc = dp::bench::parse_args(app, argc, argv)) return *rc;
  try {
    a.frames = parse_size(frames);
    if (a.role != "driver") a.slots = parse_size(a.slot_counts);
    if (!bytes.empty()) a.bytes = parse_size(bytes);
    if (!k.empty()) a.k = parse_size(k);
    if (!index.empty()) a.index = static_cast<int>(std::stoi(index));
    if (a.role == "producer") return producer(a);
    if (a.role == "consumer") return consumer(a);
    if (a.role == "raw-producer") return raw_producer(a);
    if (a.role == "raw-consumer") return raw_consumer(a);
    return driver_main(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dp_bench_transport (%s): %s\n", a.role.c_str(), e.what());
    return 1;
  }
}

// The built-in node types: `pattern-source` publishes self-verifying frames (seq, seeded random
// fill, checksum) and `checksum-sink` verifies every frame it takes. They are the smallest real
// graph, and the probes of the tests, the chaos runs and the demo.
#include <signal.h>
#include <unistd.h>

#include <algorithm>

#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "directport/core/error.hpp"
#include "directport/core/names.hpp"
#include "directport/core/runtime.hpp"
#include "directport/cuda/device.hpp"
#include "directport/kernels/checksum.hpp"
#include "directport/kernels/frame_check.hpp"
#include "directport/kernels/pattern.hpp"
#include "directport/kernels/timing.hpp"
#include "directport/platform/process.hpp"
#include "nodes.hpp"
#if DIRECTPORT_HAS_CUDA
#include <cuda_runtime_api.h>

#include "directport/cuda/driver.hpp"
#endif

namespace dp::cli {
namespace {

MemoryKind choose_memory(const std::string& m) {
  if (m == "auto") return cuda::gpu_available() ? MemoryKind::cuda_vmm : MemoryKind::host;
  try {
    return parse_memory_kind(m);
  } catch (const ValidationError& e) {
    throw ValidationError(std::string(e.what()) + "; or 'auto' (GPU if there is one)");
  }
}

// "auto": the fence that goes with `memory` (host-futex, cuda-memop, vulkan-timeline for vulkan).
FenceKind choose_fence(const std::string& f, MemoryKind memory) {
  if (f == "auto") {
    return memory == MemoryKind::host     ? FenceKind::host_futex
           : memory == MemoryKind::vulkan ? FenceKind::vulkan_timeline
                                          : FenceKind::cuda_memop;
  }
  try {
    return parse_fence_kind(f);
  } catch (const ValidationError& e) {
    throw ValidationError(std::string(e.what()) + "; or 'auto' (the one that goes with the memory)");
  }
}

#if DIRECTPORT_HAS_CUDA
struct GpuScratch {
  cudaStream_t stream = nullptr;
  std::uint64_t* host = nullptr;     // mapped: [8] the verification result, read on the CPU
  std::uint64_t* dev = nullptr;      // the same, as the GPU addresses it
  std::uint64_t* reduce = nullptr;   // device memory for the checksum's atomics
  GpuScratch() {
    DP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    DP_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host), 128, cudaHostAllocMapped));
    DP_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dev), host, 0));
    DP_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&reduce), 64));
  }
  ~GpuScratch() {
    if (stream) cudaStreamDestroy(stream);
    if (host) cudaFreeHost(host);
    if (reduce) cudaFree(reduce);
  }
  GpuStream gs() const { return reinterpret_cast<GpuStream>(stream); }
};

// The stall test hooks' step: says so, and holds `stream` for `ms` before what comes next on it.
void stall_stream(double ms, const char* before, std::uint64_t seq, GpuStream stream) {
  std::fprintf(stderr, "stalling our stream for %.0f ms before %s frame %llu\n", ms, before,
               static_cast<unsigned long long>(seq));
  kernels::hold_stream(static_cast<std::uint64_t>(ms * 1e6), stream);
}
#endif

int run_pattern_source(NodeContext& ctx) {
  const auto& name = ctx.name();
  const auto& p = ctx.params();
  StreamSpec spec = stamped_frames_spec(p);
  const std::uint64_t bytes = spec.frame_bytes();
  spec.memory = choose_memory(p["memory"].get<std::string>());
  spec.fence = choose_fence(p["fence"].get<std::string>(), spec.memory);
  double rate = p["rate_hz"].get<double>();
  auto frames = p["frames"].get<std::uint64_t>();
  auto wait_subs = p["wait_subscribers"].get<std::uint64_t>();
  // Test hook: before writing frame number `stall_after` (1-based), hold our stream for
  // `stall_ms` (the GPU left free): the frames announced meanwhile are not written, and
  // consumers' GPU waits on their ready words stay pending (a producer killed then leaves them
  // for the survivors to raise).
  const auto stall_after = p["stall_after"].get<std::uint64_t>();
  const auto stall_ms = p["stall_ms"].get<double>();

  Node& node = ctx.node();
  auto& pub = node.advertise(spec);
  node.set_running();
  std::fprintf(stderr, "publishing %s/%s: %llu bytes, %s memory, %s fences\n", name.c_str(), spec.name.c_str(),
               static_cast<unsigned long long>(bytes), memory_kind_name(spec.memory), fence_kind_name(spec.fence));
  while (pub.counters().subscribers < wait_subs && NodeContext::sleep_for(std::chrono::milliseconds(5))) {
  }
#if DIRECTPORT_HAS_CUDA
  std::unique_ptr<GpuScratch> gpu;
  if (spec.memory != MemoryKind::host) gpu = std::make_unique<GpuScratch>();
#endif
  auto period = std::chrono::nanoseconds(rate > 0 ? static_cast<std::int64_t>(1e9 / rate) : 0);
  auto next = std::chrono::steady_clock::now();
  std::uint64_t n = 0;
  std::vector<double> acquire_us;
  std::uint64_t acquire_seen = 0;
  while (!NodeContext::stop_requested() && (frames == 0 || n < frames)) {
    const auto t_acq = std::chrono::steady_clock::now();
    auto lease = [&] {
#if DIRECTPORT_HAS_CUDA
      if (gpu) return pub.acquire(gpu->gs());
#endif
      return pub.acquire();
    }();
    sample(acquire_us, acquire_seen, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t_acq).count());
    if (!lease) continue;  // dropped (counted); try again
    const std::uint64_t seed = kernels::stamp_seed(lease->seq);
#if DIRECTPORT_HAS_CUDA
    if (gpu) {
      if (n + 1 == stall_after && stall_ms > 0) {
        stall_stream(stall_ms, "writing", lease->seq, gpu->gs());
      }
      kernels::stamp_frame_gpu(lease->data, lease->bytes, lease->seq, seed, gpu->reduce, gpu->gs());
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
  std::cout << nlohmann::json{{"node", name}, {"type", "pattern-source"}, {"published", c.published}, {"dropped", c.dropped},
                            {"cut_off", c.cut_off},
                            {"acquire_us", percentiles(acquire_us)}}.dump()
            << std::endl;
  return 0;
}

int run_checksum_sink(NodeContext& ctx) {
  const auto& name = ctx.name();
  const auto& p = ctx.params();
  auto from = p["from"].get<std::string>();
  auto frames = p["frames"].get<std::uint64_t>();
  auto timeout_s = p["timeout_s"].get<double>();
  auto hold_ms = p["hold_ms"].get<double>();
  // Test hook: write into the first frame received, which must fault (read-only mapping).
  auto write_probe = p["write_probe"].get<bool>();
  // Test hook: before releasing frame number `stall_after` (1-based), hold our stream for
  // `stall_ms` (the GPU left free), and stop synchronising it: the release runs that much later
  // while we go on taking frames (a consumer whose stream stalls). Once the producer has cut us off
  // (PROTOCOL.md §10.3) we wait the stall out and go on as before; the frames taken meanwhile
  // are not verified (`unchecked`).
  const auto stall_after = p["stall_after"].get<std::uint64_t>();
  const auto stall_ms = p["stall_ms"].get<double>();
  std::uint64_t taken = 0, unchecked = 0;
  bool stalling = false;
  const auto forward = p["forward"].get<std::string>();

  Node& node = ctx.node();
  auto sub = node.subscribe(from);
  const bool on_gpu = sub.spec().memory != MemoryKind::host;
  // Relay: every frame taken is copied, as it is, into a stream of ours (frame_id = its seq).
  Publisher* relay = nullptr;
  if (!forward.empty()) {
    if (!on_gpu) throw ValidationError("param 'forward' relays GPU streams only; " + from + " is in host memory");
    StreamSpec out = sub.spec();
    out.name = forward;
    out.memory = choose_memory(p["forward_memory"].get<std::string>());
    out.fence = choose_fence(p["forward_fence"].get<std::string>(), out.memory);
    out.layout = nullptr;
    relay = &node.advertise(out, GpuApi::cuda);
  }
  node.set_running();
#if DIRECTPORT_HAS_CUDA
  std::unique_ptr<GpuScratch> gpu;
  if (on_gpu) gpu = std::make_unique<GpuScratch>();
#else
  if (on_gpu) throw Error("stream " + from + " is on the GPU but this build has no CUDA");
#endif
  std::uint64_t ok = 0, bad = 0;
  FrameWaiter waiter(sub, from, timeout_s);
  // Where a frame's time goes, for the report: waiting in next() (the waiter), and (GPU) the
  // stream sync.
  std::vector<double> sync_us;
  std::uint64_t sync_seen = 0;
  while (!NodeContext::stop_requested() && (frames == 0 || ok + bad < frames)) {
    GpuStream gs = nullptr;
#if DIRECTPORT_HAS_CUDA
    if (gpu) gs = gpu->gs();
#endif
    auto f = waiter.next(gs);
#if DIRECTPORT_HAS_CUDA
    if (stalling && sub.counters().cuts > 0) {
      std::fprintf(stderr, "cut off after %llu frames taken: waiting out our stall\n",
                   static_cast<unsigned long long>(taken));
      DP_CUDA_CHECK(cudaStreamSynchronize(gpu->stream));
      stalling = false;
    } else if (stalling && cudaStreamQuery(gpu->stream) == cudaSuccess) {
      std::fprintf(stderr, "our stall ended without a cut\n");
      stalling = false;
    }
#endif
    if (!f) {
      if (waiter.gave_up()) break;
      continue;
    }
    ++taken;
    std::uint64_t result;
    if (write_probe) {
#if DIRECTPORT_HAS_CUDA
      if (gpu) {
        kernels::poke_gpu(const_cast<void*>(f->data), 42, gs);
        cudaError_t rc = cudaStreamSynchronize(gpu->stream);
        std::fprintf(stderr, "write into the read-only mapping: %s\n", cudaGetErrorName(rc));
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
      kernels::verify_frame_gpu(f->data, f->bytes, f->seq, gpu->reduce, gpu->dev + 8, gs);
      std::optional<SlotLease> out;
      if (relay && (out = relay->acquire(gs))) {
        DP_CUDA_CHECK(cudaMemcpyAsync(out->data, f->data, f->bytes, cudaMemcpyDeviceToDevice, gpu->stream));
      }
      if (hold_ms > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(hold_ms));
      if (taken == stall_after && stall_ms > 0) {
        stall_stream(stall_ms, "releasing", f->seq, gs);
        stalling = true;
      }
      sub.release(*f, gs);
      if (stalling) {
        ++unchecked;
        if (out) relay->abandon(*out);
        continue;
      }
      const auto t_sync = std::chrono::steady_clock::now();
      DP_CUDA_CHECK(cudaStreamSynchronize(gpu->stream));
      sample(sync_us, sync_seen, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t_sync).count());
      result = gpu->host[8];
      // Relay only a frame known to be whole: one whose producer died before completing it
      // (its wait released by the watchdog) is not passed on.
      if (out) {
        if (sub.is_valid(*f)) {
          relay->publish(*out, {f->seq, f->t_source_ns, 0}, gs);
        } else {
          relay->abandon(*out);
        }
      }
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
      std::fprintf(stderr, "frame seq %llu failed verification (code %llu)\n",
                   static_cast<unsigned long long>(f->seq), static_cast<unsigned long long>(result));
    }
  }
  auto c = sub.counters();
  nlohmann::json report{{"node", name},         {"type", "checksum-sink"}, {"from", from},
                        {"verified", ok},       {"bad", bad},              {"missed", c.missed},
                        {"dropped", c.dropped}, {"invalidated", c.invalidated}, {"reconnects", c.reconnects},
                        {"cuts", c.cuts},       {"unchecked", unchecked},
                        {"next_us", waiter.next_us()}, {"sync_us", percentiles(sync_us)}};
  if (relay) report["forwarded"] = relay->counters().published;
  std::cout << report.dump() << std::endl;
  // Giving up for lack of frames is a failure: the launcher's restart policy decides what next.
  return bad == 0 && !waiter.gave_up() && (frames == 0 || ok >= frames) ? 0 : 2;
}

// A stand-in teacher: publishes a tensor of any shape per frame, its values a function of
// (seed, frame_id) alone (kernels/pattern.hpp). With clock ids, frames are published on the
// ticks of the wall clock (multiples of the period since the epoch) and frame_id is the tick's
// time in milliseconds: sources started apart (or restarted) stamp the same id on the same
// instant, and sources at different rates agree wherever their ticks coincide.
int run_tensor_source(NodeContext& ctx) {
  const auto& name = ctx.name();
  const auto& p = ctx.params();
  StreamSpec spec;
  spec.name = p["stream"].get<std::string>();
  spec.dtype = parse_dtype(p["dtype"].get<std::string>());
  if (spec.dtype != DType::f32 && spec.dtype != DType::f16 && spec.dtype != DType::bf16) {
    throw ValidationError("param 'dtype' must be f32, f16 or bf16, got " + p["dtype"].get<std::string>());
  }
  const auto& shape = p["shape"];
  for (const auto& d : shape) {
    if (!d.is_number_integer()) throw ValidationError("param 'shape' must be an array of integers, got " + shape.dump());
  }
  spec.shape = shape.get<std::vector<std::int64_t>>();
  spec.slots = p["slots"].get<std::uint32_t>();
  spec.memory = choose_memory(p["memory"].get<std::string>());
  spec.fence = spec.memory == MemoryKind::host ? FenceKind::host_futex : FenceKind::cuda_memop;
  spec.validate();
  const double rate = p["rate_hz"].get<double>();
  if (!(rate > 0 && rate <= 100000)) throw ValidationError("param 'rate_hz' must be in (0, 100000], got " + std::to_string(rate));
  const auto seed = p["seed"].get<std::uint64_t>();
  const auto frames = p["frames"].get<std::uint64_t>();
  const auto skip_every = p["skip_every"].get<std::uint64_t>();
  const bool clock_ids = p["clock_ids"].get<bool>();
  const std::uint64_t plane = spec.shape.size() >= 3
                                  ? static_cast<std::uint64_t>(spec.shape[spec.shape.size() - 1] * spec.shape[spec.shape.size() - 2])
                                  : 1;
  const std::size_t elements = spec.frame_bytes() / dtype_size(spec.dtype);

  Node& node = ctx.node();
  auto& pub = node.advertise(spec);
  node.set_running();
  std::fprintf(stderr, "publishing %s/%s: %s %s at %.1f Hz, %s memory\n", name.c_str(), spec.name.c_str(),
               dtype_name(spec.dtype), nlohmann::json(spec.shape).dump().c_str(), rate, memory_kind_name(spec.memory));
  std::vector<std::uint8_t> staging(spec.frame_bytes());
#if DIRECTPORT_HAS_CUDA
  std::unique_ptr<GpuScratch> gpu;
  if (spec.memory != MemoryKind::host) gpu = std::make_unique<GpuScratch>();
#endif
  const auto period_ns = static_cast<std::int64_t>(1e9 / rate);
  std::uint64_t n = 0, id = 0;
  while (!NodeContext::stop_requested() && (frames == 0 || n < frames)) {
    // Wait for the next tick; its id is the tick's number.
    const auto now = platform::realtime_ns();
    const std::uint64_t tick = static_cast<std::uint64_t>(now / period_ns) + 1;
    if (!NodeContext::sleep_for(std::chrono::nanoseconds(static_cast<std::int64_t>(tick) * period_ns - now))) break;
    id = clock_ids ? tick * static_cast<std::uint64_t>(period_ns) / 1'000'000 : id + 1;
    if (skip_every && id % skip_every == 0) continue;  // test hook: this id never comes
    const auto t_source = platform::realtime_ns();
    GpuStream gs = nullptr;
#if DIRECTPORT_HAS_CUDA
    if (gpu) gs = gpu->gs();
#endif
    auto lease = pub.acquire(gs);
    if (!lease) continue;  // dropped (counted)
#if DIRECTPORT_HAS_CUDA
    if (gpu) {
      // Make the frame on the CPU, then one copy into the slot, ordered on the stream.
      DP_CUDA_CHECK(cudaStreamSynchronize(gpu->stream));  // staging is reused
      kernels::fill_pattern_cpu(staging.data(), spec.dtype, elements, plane, seed, id);
      DP_CUDA_CHECK(cudaMemcpyAsync(lease->data, staging.data(), staging.size(), cudaMemcpyHostToDevice, gpu->stream));
    } else
#endif
    {
      kernels::fill_pattern_cpu(lease->data, spec.dtype, elements, plane, seed, id);
    }
    pub.publish(*lease, {id, t_source, 0}, gs);
    ++n;
  }
#if DIRECTPORT_HAS_CUDA
  if (gpu) cudaStreamSynchronize(gpu->stream);
#endif
  auto c = pub.counters();
  std::cout << nlohmann::json{{"node", name}, {"type", "tensor-source"}, {"published", c.published}, {"dropped", c.dropped},
                              {"last_frame_id", id}}
                   .dump()
            << std::endl;
  return 0;
}

}  // namespace

MemoryKind parse_memory_choice(const std::string& m) { return choose_memory(m); }

StreamSpec stamped_frames_spec(const nlohmann::json& p) {
  StreamSpec spec;
  spec.name = p["stream"].get<std::string>();
  const auto bytes = p["bytes"].get<std::uint64_t>();
  if (bytes % 8 || bytes < kernels::kMinStampedBytes) {
    throw ValidationError("param 'bytes' must be a multiple of 8 and at least 24, got " + std::to_string(bytes));
  }
  spec.dtype = DType::u64;
  spec.shape = {static_cast<std::int64_t>(bytes / 8)};
  spec.slots = p["slots"].get<std::uint32_t>();
  spec.release_timeout = std::chrono::milliseconds(p["release_timeout_ms"].get<std::int64_t>());
  return spec;
}

std::vector<ParamSpec> stamped_source_params(std::vector<ParamSpec> kind_params) {
  using T = ParamType;
  std::vector<ParamSpec> p{{"stream", T::string, "frames", false, "name of the published stream"},
                           {"bytes", T::integer, 1 << 20, false, "frame size in bytes, a multiple of 8, >= 24"},
                           {"slots", T::integer, 3, false, "slots in the ring (2..16)"},
                           {"release_timeout_ms", T::integer, 5000, false,
                            "GPU streams: cut off a consumer whose release holds our stream this long (1..3600000)"}};
  p.insert(p.end(), kind_params.begin(), kind_params.end());
  p.insert(p.end(), {{"rate_hz", T::number, 200.0, false, "frames per second (0: unpaced)"},
                     {"frames", T::integer, 0, false, "stop after this many frames (0: until stopped)"},
                     {"wait_subscribers", T::integer, 0, false, "publish only once this many consumers are there"}});
  return p;
}

void sample(std::vector<double>& v, std::uint64_t& seen, double x) {
  if (v.size() < kMaxSamples) v.push_back(x);
  else v[seen % kMaxSamples] = x;
  ++seen;
}

std::optional<Frame> FrameWaiter::next(GpuStream stream) {
  const auto t0 = std::chrono::steady_clock::now();
  auto f = sub_.next(std::chrono::milliseconds(100), stream);
  const auto now = std::chrono::steady_clock::now();
  sample(next_us_, next_seen_, std::chrono::duration<double, std::micro>(now - t0).count());
  if (f) {
    last_ = now;
  } else if (now - last_ > std::chrono::duration<double>(timeout_s_)) {
    std::fprintf(stderr, "no frame from %s for %.1f s: giving up\n", from_.c_str(), timeout_s_);
    gave_up_ = true;
  }
  return f;
}

nlohmann::json percentiles(std::vector<double> v) {
  if (v.empty()) return nlohmann::json::object();
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[static_cast<std::size_t>(q * (v.size() - 1))]; };
  return {{"p50", at(0.5)}, {"p99", at(0.99)}, {"max", v.back()}, {"n", v.size()}};
}

void register_builtin_nodes(NodeRegistry& r) {
  using T = ParamType;
  NodeType src;
  src.type = "pattern-source";
  src.help = "publishes self-verifying frames (seq, seeded random fill, checksum)";
  src.params = stamped_source_params(
      {{"memory", T::string, "auto", false, "auto | host | cuda-vmm | cuda-ipc | vulkan"},
       {"fence", T::string, "auto", false, "auto | host-futex | cuda-memop | vulkan-timeline (for Vulkan readers)"},
       {"stall_after", T::integer, 0, false, "test hook: stall our GPU stream before writing this frame (1-based; 0: never)"},
       {"stall_ms", T::number, 0.0, false, "test hook: how long that stall lasts"}});
  src.publishes = [](const nlohmann::json& p) { return std::vector<std::string>{p["stream"].get<std::string>()}; };
  src.subscribes = [](const nlohmann::json&) { return std::vector<std::string>{}; };
  src.run = run_pattern_source;
  r.add(std::move(src));

  NodeType sink;
  sink.type = "checksum-sink";
  sink.help = "verifies every frame of a pattern-source stream";
  sink.params = {{"from", T::string, nullptr, true, "the stream to verify, NODE/STREAM"},
                 {"frames", T::integer, 0, false, "stop after verifying this many (0: until stopped)"},
                 {"timeout_s", T::number, 10.0, false, "give up after this long without a frame"},
                 {"hold_ms", T::number, 0.0, false, "hold each frame this long (a slow consumer)"},
                 {"write_probe", T::boolean, false, false, "test hook: write into the read-only mapping"},
                 {"stall_after", T::integer, 0, false, "test hook: stall our GPU stream before releasing this frame (1-based; 0: never)"},
                 {"stall_ms", T::number, 0.0, false, "test hook: how long that stall lasts"},
                 {"forward", T::string, "", false, "relay: publish a copy of every frame as this stream (GPU streams)"},
                 {"forward_memory", T::string, "vulkan", false, "memory of the relayed stream (cuda-vmm | cuda-ipc | vulkan)"},
                 {"forward_fence", T::string, "auto", false, "fence of the relayed stream (auto | cuda-memop | vulkan-timeline)"}};
  sink.publishes = [](const nlohmann::json& p) {
    auto f = p["forward"].get<std::string>();
    return f.empty() ? std::vector<std::string>{} : std::vector<std::string>{f};
  };
  sink.subscribes = [](const nlohmann::json& p) { return std::vector<std::string>{p["from"].get<std::string>()}; };
  sink.run = run_checksum_sink;
  r.add(std::move(sink));

  NodeType ts;
  ts.type = "tensor-source";
  ts.help = "publishes a deterministic f32/f16/bf16 tensor per frame (a stand-in teacher for tests and demos)";
  ts.params = {{"stream", T::string, "out", false, "name of the published stream"},
               {"shape", T::array, nullptr, true, "the tensor's shape, e.g. [C, H, W] or [C]"},
               {"dtype", T::string, "f32", false, "f32 | f16 | bf16"},
               {"rate_hz", T::number, 30.0, false, "frames per second"},
               {"seed", T::integer, 1, false, "values are a function of (seed, frame_id)"},
               {"clock_ids", T::boolean, true, false, "frame_id = the wall-clock tick in ms: sources agree on ids"},
               {"skip_every", T::integer, 0, false, "test hook: never publish ids divisible by this (0: none)"},
               {"slots", T::integer, 3, false, "slots in the ring (2..16)"},
               {"memory", T::string, "auto", false, "auto | host | cuda-vmm | cuda-ipc"},
               {"frames", T::integer, 0, false, "stop after this many frames (0: until stopped)"}};
  ts.publishes = [](const nlohmann::json& p) { return std::vector<std::string>{p["stream"].get<std::string>()}; };
  ts.subscribes = [](const nlohmann::json&) { return std::vector<std::string>{}; };
  ts.run = run_tensor_source;
  r.add(std::move(ts));

  register_vulkan_nodes(r);
}

}  // namespace dp::cli

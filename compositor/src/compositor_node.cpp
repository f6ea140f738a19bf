// The compositor node: teachers -> aligned by frame_id -> fused -> one published stream.
#include <cstdio>
#include <iostream>
#include <memory>
#include <thread>

#include "directport/compositor/aligner.hpp"
#include "directport/compositor/compositor.hpp"
#include "directport/core/error.hpp"
#include "directport/core/names.hpp"
#include "directport/core/slab.hpp"
#include "directport/cuda/device.hpp"
#include "directport/platform/process.hpp"
#if DIRECTPORT_HAS_CUDA
#include <cuda_runtime_api.h>

#include "directport/cuda/driver.hpp"
#endif

namespace dp::compositor {

using nlohmann::json;

std::vector<TeacherConfig> parse_teachers(const json& teachers, kernels::NormMode default_norm) {
  if (!teachers.is_array() || teachers.empty()) {
    throw ValidationError("teachers: expected a non-empty array of {\"from\": \"NODE/STREAM\", ...}");
  }
  if (teachers.size() > kernels::FusionLayout::kMaxTeachers) {
    throw ValidationError("teachers: at most " + std::to_string(kernels::FusionLayout::kMaxTeachers) + " teachers, got " +
                          std::to_string(teachers.size()));
  }
  std::vector<TeacherConfig> out;
  for (std::size_t i = 0; i < teachers.size(); ++i) {
    const auto& t = teachers[i];
    const std::string at = "teachers[" + std::to_string(i) + "]";
    if (!t.is_object()) throw ValidationError(at + ": expected an object, got " + t.dump());
    for (auto& [k, v] : t.items()) {
      if (k != "from" && k != "name" && k != "norm" && k != "dtype" && k != "shape") {
        throw ValidationError(at + "." + k + ": unknown key (known: from, name, norm, dtype, shape)");
      }
      (void)v;
    }
    TeacherConfig c;
    if (!t.contains("from") || !t["from"].is_string()) throw ValidationError(at + ".from: expected \"NODE/STREAM\"");
    c.from = t["from"].get<std::string>();
    auto addr = parse_stream_address(c.from);
    if (addr.stream.empty()) throw ValidationError(at + ".from: expected \"NODE/STREAM\", got \"" + c.from + "\"");
    c.name = addr.node;
    if (t.contains("name")) {
      if (!t["name"].is_string() || !is_valid_name(t["name"].get<std::string>())) {
        throw ValidationError(at + ".name: expected a name (A-Z a-z 0-9 _ -, 1..48), got " + t["name"].dump());
      }
      c.name = t["name"].get<std::string>();
    }
    c.norm = default_norm;
    try {
      if (t.contains("norm")) {
        if (!t["norm"].is_string()) throw ValidationError("expected a string");
        c.norm = kernels::parse_norm_mode(t["norm"].get<std::string>());
      }
    } catch (const ValidationError& e) {
      throw ValidationError(at + ".norm: " + e.what());
    }
    if (t.contains("dtype") != t.contains("shape")) {
      throw ValidationError(at + ": give both 'dtype' and 'shape' (to start without waiting for the teacher) or neither");
    }
    if (t.contains("dtype")) {
      try {
        if (!t["dtype"].is_string()) throw ValidationError("expected a string");
        c.dtype = parse_dtype(t["dtype"].get<std::string>());
      } catch (const ValidationError& e) {
        throw ValidationError(at + ".dtype: " + e.what());
      }
      const auto& s = t["shape"];
      bool ok = s.is_array() && !s.empty();
      for (const auto& d : s) ok = ok && d.is_number_integer();
      if (!ok) throw ValidationError(at + ".shape: expected [C, H, W] or [C], got " + s.dump());
      c.shape = fusion_shape(s.get<std::vector<std::int64_t>>(), at + ".shape");
    }
    for (const auto& prev : out) {
      if (prev.name == c.name) {
        throw ValidationError(at + ".name: '" + c.name + "' names another teacher too; give each a distinct 'name'");
      }
    }
    out.push_back(std::move(c));
  }
  return out;
}

std::vector<std::int64_t> fusion_shape(const std::vector<std::int64_t>& s, const std::string& who) {
  if (s.size() == 3 || s.size() == 1) return s;
  if (s.size() == 4 && s[0] == 1) return {s[1], s[2], s[3]};
  if (s.size() == 2 && s[0] == 1) return {s[1]};
  throw ValidationError(who + ": shape " + json(s).dump() + " is neither [C, H, W] nor [C] (nor either with a leading 1)");
}

namespace {

std::int64_t now_ns() { return platform::monotonic_ns(); }

kernels::FusionInput input_of(const TeacherConfig& c, DType dtype, const std::vector<std::int64_t>& shape) {
  return {c.name, dtype, shape, c.norm};
}

struct TeacherState {
  TeacherConfig conf;
  std::optional<Subscriber> sub;
  std::int64_t next_try_ns = 0;
  bool live = false;
  bool announced_missing = false;
  std::uint32_t rejected_generation = 0;
  std::uint64_t received = 0, rejected = 0;
};

struct Held {
  std::size_t teacher = 0;
  Frame frame;
};

#if DIRECTPORT_HAS_CUDA
struct CudaStream {
  cudaStream_t s = nullptr;
  CudaStream() { DP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~CudaStream() {
    if (s) {
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
  }
};
#endif

MemoryKind choose_memory(const std::string& m) {
  if (m == "auto") return cuda::gpu_available() ? MemoryKind::cuda_vmm : MemoryKind::host;
  try {
    return parse_memory_kind(m);
  } catch (const ValidationError& e) {
    throw ValidationError(std::string("param 'memory': ") + e.what() + "; or 'auto' (GPU if there is one)");
  }
}

int run_compositor(NodeContext& ctx) {
  const auto& p = ctx.params();
  const auto default_norm = kernels::parse_norm_mode(p["norm"].get<std::string>());
  auto confs = parse_teachers(p["teachers"], default_norm);
  const DType out_dtype = parse_dtype(p["dtype"].get<std::string>());
  const MemoryKind memory = choose_memory(p["memory"].get<std::string>());
  const bool on_gpu = memory != MemoryKind::host;
#if !DIRECTPORT_HAS_CUDA
  if (on_gpu) throw Error("param 'memory' asks for the GPU but this build has no CUDA");
#endif
  const auto wait_ns = static_cast<std::int64_t>(p["wait_ms"].get<double>() * 1e6);
  const auto startup_ns = static_cast<std::int64_t>(p["startup_timeout_s"].get<double>() * 1e9);
  const auto frames_limit = p["frames"].get<std::uint64_t>();
  Node& node = ctx.node();

  std::vector<TeacherState> teachers;
  for (auto& c : confs) teachers.push_back(TeacherState{c, std::nullopt, 0, false, false, 0, 0, 0});

  SubscribeOptions sub_opts;
  sub_opts.connect_timeout = std::chrono::milliseconds(500);
  auto try_subscribe = [&](TeacherState& t, std::int64_t now) {
    if (t.sub || now < t.next_try_ns) return;
    t.next_try_ns = now + 200'000'000;
    // Any failure is retried (the address was checked with the params): a teacher not started
    // yet, restarting, or caught mid-way through writing its manifest.
    try {
      t.sub.emplace(node.subscribe(t.conf.from, sub_opts));
      std::fprintf(stderr, "teacher '%s' (%s): subscribed\n", t.conf.name.c_str(), t.conf.from.c_str());
    } catch (const std::exception& e) {
      if (!t.announced_missing) {
        std::fprintf(stderr, "teacher '%s' (%s) is not there yet (%s): its slice is masked until it is\n",
                     t.conf.name.c_str(), t.conf.from.c_str(), e.what());
        t.announced_missing = true;
      }
    }
  };

  // The layout: declared shapes, or learnt from the teachers' manifests (bounded wait).
  const auto t_start = now_ns();
  for (;;) {
    bool all = true;
    for (auto& t : teachers) {
      if (t.conf.shape) continue;
      try_subscribe(t, now_ns());
      if (!t.sub) all = false;
    }
    if (all) break;
    if (NodeContext::stop_requested()) return 0;
    if (now_ns() - t_start > startup_ns) {
      std::string missing;
      for (auto& t : teachers) {
        if (!t.conf.shape && !t.sub) missing += (missing.empty() ? "" : ", ") + t.conf.from;
      }
      throw Error("teachers not there after " + std::to_string(p["startup_timeout_s"].get<double>()) + " s: " + missing +
                  ". Start them, raise 'startup_timeout_s', or declare each teacher's 'dtype' and 'shape' so that "
                  "the compositor starts without them");
    }
    NodeContext::sleep_for(std::chrono::milliseconds(50));
  }
  std::vector<kernels::FusionInput> inputs;
  for (auto& t : teachers) {
    if (t.conf.shape) {
      inputs.push_back(input_of(t.conf, *t.conf.dtype, *t.conf.shape));
    } else {
      const auto& s = t.sub->spec();
      inputs.push_back(input_of(t.conf, s.dtype, fusion_shape(s.shape, "teacher '" + t.conf.name + "' (" + t.conf.from + ")")));
    }
  }
  std::int64_t grid_h = 0, grid_w = 0;
  const auto& grid = p["grid"];
  if (grid.is_array() && grid.size() == 2 && grid[0].is_number_integer() && grid[1].is_number_integer()) {
    grid_h = grid[0].get<std::int64_t>();
    grid_w = grid[1].get<std::int64_t>();
  } else if (!grid.empty()) {
    throw ValidationError("param 'grid': expected [H, W], got " + grid.dump());
  } else {
    for (auto& in : inputs) {  // default: the finest spatial teacher's grid
      if (in.spatial() && in.shape[1] * in.shape[2] > grid_h * grid_w) {
        grid_h = in.shape[1];
        grid_w = in.shape[2];
      }
    }
    if (!grid_h) grid_h = grid_w = 1;
  }
  kernels::FusionLayout layout(inputs, grid_h, grid_w, out_dtype, p["momentum"].get<double>(), p["eps"].get<double>());

  StreamSpec spec;
  spec.name = p["stream"].get<std::string>();
  spec.dtype = out_dtype;
  spec.shape = {static_cast<std::int64_t>(layout.total_elements())};
  spec.slots = p["slots"].get<std::uint32_t>();
  spec.memory = memory;
  spec.fence = on_gpu ? FenceKind::cuda_memop : FenceKind::host_futex;
  spec.layout = layout.to_json();
  auto& pub = node.advertise(spec);

  std::unique_ptr<kernels::FusionCpu> cpu;
  std::unique_ptr<kernels::FusionGpu> gpu;
  GpuStream gs = nullptr;
#if DIRECTPORT_HAS_CUDA
  std::unique_ptr<CudaStream> stream;
  if (on_gpu) {
    stream = std::make_unique<CudaStream>();
    gs = reinterpret_cast<GpuStream>(stream->s);
    gpu = std::make_unique<kernels::FusionGpu>(layout);
  }
#endif
  if (!on_gpu) cpu = std::make_unique<kernels::FusionCpu>(layout);
  node.set_running();
  const auto wait_subs = p["wait_subscribers"].get<std::uint64_t>();
  while (pub.counters().subscribers < wait_subs && NodeContext::sleep_for(std::chrono::milliseconds(5))) {
  }
  std::fprintf(stderr, "fusing %zu teachers into %s/%s: %zu %s elements (grid %lldx%lld), %s memory\n", teachers.size(),
               ctx.name().c_str(), spec.name.c_str(), layout.total_elements(), dtype_name(out_dtype),
               static_cast<long long>(grid_h), static_cast<long long>(grid_w), memory_kind_name(memory));

  // Frames held between arrival and fusion, named by their handle in the aligner.
  Slab<Held> held;
  auto hold = [&](std::size_t t, const Frame& f) { return held.put(Held{t, f}); };
  auto give_back = [&](std::size_t h) {
    const Held x = held.take(h);
    auto& t = teachers[x.teacher];
    if (t.sub) t.sub->release(x.frame, gs);
  };

  Aligner aligner(teachers.size(), wait_ns, 1);  // per teacher: its ring minus one, once subscribed
  std::vector<std::size_t> release;
  std::uint64_t fused = 0, dropped_output = 0;
  auto last_info = now_ns();

  auto report = [&] {
    json per = json::array();
    for (auto& t : teachers) {
      per.push_back({{"name", t.conf.name}, {"from", t.conf.from}, {"live", t.live}, {"received", t.received},
                     {"rejected", t.rejected}});
    }
    const auto& c = aligner.counters();
    return json{{"fused", fused}, {"complete", c.complete}, {"late", c.late}, {"evicted", c.evicted},
                {"output_dropped", dropped_output}, {"teachers", per}};
  };

  while (!NodeContext::stop_requested() && (frames_limit == 0 || fused < frames_limit)) {
    const auto now = now_ns();
    for (std::size_t i = 0; i < teachers.size(); ++i) {
      auto& t = teachers[i];
      try_subscribe(t, now);
      const bool live = t.sub && t.sub->state() == Subscriber::State::connected;
      if (live != t.live) {
        std::fprintf(stderr, "teacher '%s' (%s) %s\n", t.conf.name.c_str(), t.conf.from.c_str(),
                     live ? "is live: its slice is fused" : "is gone: its slice is masked");
        t.live = live;
      }
      aligner.set_live(i, live);
      if (!t.sub) continue;
      aligner.set_max_pending(i, std::max<std::uint32_t>(t.sub->spec().slots, 2) - 1);
      while (auto f = t.sub->next(std::chrono::nanoseconds(0), gs)) {
        const auto& s = t.sub->spec();
        const auto& want = layout.inputs()[i];
        bool fits = s.dtype == want.dtype && (s.memory != MemoryKind::host) == on_gpu;
        try {
          fits = fits && fusion_shape(s.shape, t.conf.from) == want.shape;
        } catch (const ValidationError&) {
          fits = false;
        }
        if (!fits) {
          ++t.rejected;
          if (t.rejected_generation != f->generation) {
            t.rejected_generation = f->generation;
            std::fprintf(stderr,
                         "teacher '%s' (%s) now publishes %s %s in %s memory; the layout expects %s %s in %s memory: "
                         "its frames are refused and its slice stays masked\n",
                         t.conf.name.c_str(), t.conf.from.c_str(), dtype_name(s.dtype), json(s.shape).dump().c_str(),
                         memory_kind_name(s.memory), dtype_name(want.dtype), json(want.shape).dump().c_str(),
                         on_gpu ? "GPU" : "host");
          }
          t.sub->release(*f, gs);
          continue;
        }
        ++t.received;
        aligner.add(i, f->frame_id, now, hold(i, *f), release);
      }
    }
    for (auto h : release) give_back(h);
    release.clear();

    bool did = false;
    while (auto d = aligner.poll(now_ns())) {
      did = true;
      std::vector<const void*> in(teachers.size(), nullptr);
      std::int64_t t_source = 0;
      for (std::size_t i = 0; i < teachers.size(); ++i) {
        if (!d->frames[i]) continue;
        const auto& x = held[*d->frames[i]];
        if (!teachers[i].sub || !teachers[i].sub->is_valid(x.frame)) continue;  // its producer died mid-frame
        in[i] = x.frame.data;
        if (!t_source || (x.frame.t_source_ns && x.frame.t_source_ns < t_source)) t_source = x.frame.t_source_ns;
      }
      if (auto lease = pub.acquire(gs)) {
        if (gpu) {
          gpu->fuse(in, lease->data, gs);
        } else {
          cpu->fuse(in, lease->data);
        }
        pub.publish(*lease, FrameInfo{d->frame_id, t_source, 0}, gs);
        ++fused;
      } else {
        ++dropped_output;  // every output slot held by consumers: counted by the publisher too
      }
      for (auto& h : d->frames) {
        if (h) give_back(*h);
      }
      if (frames_limit && fused >= frames_limit) break;
    }
    if (now - last_info > 1'000'000'000) {
      const auto& c = aligner.counters();
      std::string live;
      for (auto& t : teachers) live += (live.empty() ? "" : " ") + t.conf.name + (t.live ? "+" : "-");
      char line[256];
      std::snprintf(line, sizeof line, "fused %llu (complete %llu), late %llu, evicted %llu; teachers %s",
                    static_cast<unsigned long long>(fused), static_cast<unsigned long long>(c.complete),
                    static_cast<unsigned long long>(c.late), static_cast<unsigned long long>(c.evicted), live.c_str());
      node.set_info("status", line);
      node.set_info("compositor", report());
      last_info = now;
    }
    if (!did) {
      // Nothing due: sleep until the next deadline, at most 200 us (arrivals are polled).
      std::int64_t nap = 200'000;
      if (auto dl = aligner.deadline()) nap = std::clamp<std::int64_t>(*dl - now_ns(), 0, nap);
      if (nap > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(nap));
    }
  }
  for (auto h : aligner.drain()) give_back(h);
#if DIRECTPORT_HAS_CUDA
  if (stream) cudaStreamSynchronize(stream->s);
#endif
  auto r = report();
  node.set_info("compositor", r);
  r["node"] = ctx.name();
  r["type"] = "compositor";
  std::cout << r.dump() << std::endl;
  return 0;
}

}  // namespace

void register_compositor_node(NodeRegistry& r) {
  using T = ParamType;
  NodeType c;
  c.type = "compositor";
  c.help = "aligns its teachers' frames by frame_id and fuses them into one tensor with a validity mask";
  c.params = {
      {"teachers", T::array, nullptr, true,
       "[{\"from\": \"NODE/STREAM\", \"name\", \"norm\", \"dtype\", \"shape\"}, ...]: the teachers, in segment order"},
      {"stream", T::string, "fused", false, "name of the fused stream"},
      {"grid", T::array, json::array(), false, "[H, W] of the common grid (default: the finest teacher's)"},
      {"dtype", T::string, "f32", false, "fused dtype: f32 | f16 | bf16"},
      {"norm", T::string, "channel", false, "default standardisation: channel | isotropic | none"},
      {"momentum", T::number, 0.01, false, "EMA momentum of the running statistics, (0, 1]"},
      {"eps", T::number, 1e-5, false, "added to the variance before the square root"},
      {"wait_ms", T::number, 20.0, false, "how long a frame_id waits for late teachers before it is fused without them"},
      {"startup_timeout_s", T::number, 30.0, false, "how long to wait for teachers whose dtype and shape are not declared"},
      {"slots", T::integer, 3, false, "slots of the fused stream's ring (2..16)"},
      {"memory", T::string, "auto", false, "auto | host | cuda-vmm | cuda-ipc (the teachers must be on the same side)"},
      {"frames", T::integer, 0, false, "stop after fusing this many (0: until stopped)"},
      {"wait_subscribers", T::integer, 0, false, "fuse only once this many consumers are there"}};
  c.publishes = [](const json& p) { return std::vector<std::string>{p["stream"].get<std::string>()}; };
  c.subscribes = [](const json& p) {
    std::vector<std::string> from;
    for (auto& t : parse_teachers(p["teachers"], kernels::parse_norm_mode(p["norm"].get<std::string>()))) {
      from.push_back(t.from);
    }
    return from;
  };
  c.run = run_compositor;
  r.add(std::move(c));
}

}  // namespace dp::compositor

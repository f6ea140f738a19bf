// The student node: sensor frames + fused targets -> paired by frame_id -> one training step
// each, on the frames in place -> prediction published; reports, checkpoints, growth.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include "directport/core/error.hpp"
#include "directport/core/slab.hpp"
#include "directport/cuda/device.hpp"
#include "directport/platform/process.hpp"
#include "directport/student/pairer.hpp"
#include "directport/student/student.hpp"
#include "directport/student/student_type.hpp"
#include "directport/student/trainer.hpp"
#if DIRECTPORT_HAS_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "directport/cuda/driver.hpp"
#endif

namespace dp::student {
namespace {

using nlohmann::json;

torch::ScalarType scalar_type(DType t, const std::string& who) {
  switch (t) {
    case DType::f32: return torch::kFloat32;
    case DType::f16: return torch::kFloat16;
    case DType::bf16: return torch::kBFloat16;
    default: throw ValidationError(who + " has dtype " + dtype_name(t) + "; the student takes f32, f16 or bf16");
  }
}

std::int64_t now_ns() { return platform::monotonic_ns(); }

struct Held {
  Pairer::Side side;
  Frame frame;
};

int run_student(NodeContext& ctx) {
  const auto& p = ctx.params();
  Node& node = ctx.node();
  const auto input_addr = p["input"].get<std::string>();
  const auto target_addr = p["target"].get<std::string>();

  // Both streams, waited for (bounded, ended by SIGTERM): the student starts with the graph.
  SubscribeOptions so;
  so.connect_timeout = std::chrono::milliseconds(500);
  so.wait_for_producer = std::chrono::milliseconds(static_cast<std::int64_t>(p["startup_timeout_s"].get<double>() * 1e3));
  std::optional<Subscriber> subs[2];
  const std::string addr[2] = {input_addr, target_addr};
  for (int side = 0; side < 2; ++side) {
    try {
      subs[side].emplace(node.subscribe(addr[side], so));
    } catch (const std::exception& e) {
      if (NodeContext::stop_requested()) return 0;
      throw Error("param '" + std::string(side ? "target" : "input") + "': " + addr[side] + ": " + e.what());
    }
  }
  auto& in_sub = *subs[0];
  auto& tg_sub = *subs[1];
  const auto& in_spec = in_sub.spec();
  const auto& tg_spec = tg_sub.spec();
  if (in_spec.shape.size() != 3) {
    throw ValidationError("param 'input': " + input_addr + " publishes " + json(in_spec.shape).dump() +
                          "; the student takes a [C, H, W] frame");
  }
  const auto in_type = scalar_type(in_spec.dtype, "param 'input': " + input_addr);
  if (tg_spec.layout.is_null()) {
    throw ValidationError("param 'target': " + target_addr + " carries no layout: it is not a compositor's fused stream");
  }
  kernels::FusionLayout layout = [&] {
    try {
      return kernels::FusionLayout::from_json(tg_spec.layout);
    } catch (const ValidationError& e) {
      throw ValidationError("param 'target': " + target_addr + ": " + e.what());
    }
  }();
  const auto tg_type = scalar_type(tg_spec.dtype, "param 'target': " + target_addr);
  if (tg_spec.frame_bytes() != layout.total_bytes()) {
    throw ValidationError("param 'target': " + target_addr + " frames hold " + std::to_string(tg_spec.frame_bytes()) +
                          " bytes but its layout says " + std::to_string(layout.total_bytes()));
  }
  const bool on_gpu = in_spec.memory != MemoryKind::host;
  if ((tg_spec.memory != MemoryKind::host) != on_gpu) {
    throw ValidationError("params 'input' and 'target': one stream is on the GPU and the other on the host; the student "
                          "trains where both are");
  }
#if !DIRECTPORT_HAS_CUDA
  if (on_gpu) throw Error("the input is on the GPU but this build has no CUDA");
#endif

  TrainerOptions o;
  o.lr = p["lr"].get<double>();
  o.width = p["width"].get<std::int64_t>();
  for (auto& [k, v] : p["weights"].items()) {
    if (!v.is_number()) throw ValidationError("param 'weights." + k + "': expected a number, got " + v.dump());
    o.weights[k] = v.get<double>();
  }
  o.replay = p["replay"].get<std::int64_t>();
  o.replay_batch = p["replay_batch"].get<std::int64_t>();
  o.grow_threshold = p["grow_threshold"].get<double>();
  o.plateau_steps = p["plateau_steps"].get<std::int64_t>();
  o.grow_every = p["grow_every"].get<std::int64_t>();
  o.max_growth = p["max_growth"].get<int>();
  o.seed = p["seed"].get<std::uint64_t>();
  // Intra-op threads on the CPU: one by default, the other nodes of the graph need cores too.
  if (p["threads"].get<int>() > 0) torch::set_num_threads(p["threads"].get<int>());
  GpuStream gs = nullptr;
#if DIRECTPORT_HAS_CUDA
  cudaStream_t cuda_stream = nullptr;
  std::optional<c10::cuda::CUDAStreamGuard> guard;
  if (on_gpu) {
    int dev = 0;
    DP_CUDA_CHECK(cudaGetDevice(&dev));
    DP_CUDA_CHECK(cudaStreamCreateWithFlags(&cuda_stream, cudaStreamNonBlocking));
    gs = reinterpret_cast<GpuStream>(cuda_stream);
    o.device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(dev));
    // Every torch operation of this thread runs on the stream the fence waits are enqueued on.
    guard.emplace(c10::cuda::getStreamFromExternal(cuda_stream, static_cast<c10::DeviceIndex>(dev)));
  }
#endif
  Trainer trainer(layout, in_spec.shape, o);
  const auto checkpoint = p["checkpoint"].get<std::string>();
  if (!checkpoint.empty() && trainer.load(checkpoint)) {
    std::fprintf(stderr, "resumed from checkpoint %s at step %llu\n", checkpoint.c_str(),
                 static_cast<unsigned long long>(trainer.steps()));
  }

  StreamSpec out;
  out.name = p["stream"].get<std::string>();
  out.dtype = layout.out_dtype();
  out.shape = {static_cast<std::int64_t>(layout.total_elements())};
  out.slots = 3;
  out.memory = in_spec.memory == MemoryKind::host ? MemoryKind::host : MemoryKind::cuda_vmm;
  out.fence = on_gpu ? FenceKind::cuda_memop : FenceKind::host_futex;
  out.layout = layout.to_json();
  auto& pub = node.advertise(out);
  node.set_running();
  std::fprintf(stderr, "training on %s (input %s %s) against %s (%zu teachers) on the %s\n", input_addr.c_str(),
               dtype_name(in_spec.dtype), json(in_spec.shape).dump().c_str(), target_addr.c_str(), layout.teachers(),
               on_gpu ? "GPU" : "CPU");

  std::ofstream csv;
  const auto report_path = p["report"].get<std::string>();
  if (!report_path.empty()) {
    const bool fresh = !std::ifstream(report_path).good();
    csv.open(report_path, std::ios::app);
    if (!csv) throw ValidationError("param 'report': cannot write " + report_path);
    if (fresh) {
      csv << "step,time_s,loss";
      for (auto& in : layout.inputs()) csv << ",loss_" << in.name;
      csv << ",steps_per_s,paired,unmatched_input,unmatched_target,wait_share,adapters\n";
    }
  }

  Pairer pairer(std::max<std::uint32_t>(in_spec.slots, 2) - 1, std::max<std::uint32_t>(tg_spec.slots, 2) - 1);
  Slab<Held> held;  // frames held until paired, named by their handle in the pairer
  auto hold = [&](Pairer::Side side, const Frame& f) { return held.put(Held{side, f}); };
  auto give_back = [&](std::size_t h) {
    const Held x = held.take(h);
    subs[x.side]->release(x.frame, gs);
  };

  const auto steps_limit = p["steps"].get<std::uint64_t>();
  const auto checkpoint_every = p["checkpoint_every"].get<std::uint64_t>();
  const auto report_every = std::max<std::uint64_t>(1, p["report_every"].get<std::uint64_t>());
  const auto progress_ns = static_cast<std::int64_t>(p["progress_s"].get<double>() * 1e9);
  std::vector<std::size_t> release;
  std::uint64_t steps_here = 0, rejected = 0;
  double wait_s = 0, step_s = 0;
  StepReport last;
  const auto t0 = now_ns();
  auto last_progress = t0;
  std::uint64_t steps_at_progress = 0;
  auto loss_text = [&](const StepReport& r) {
    std::string s;
    for (std::size_t i = 0; i < r.teacher_loss.size(); ++i) {
      char b[64];
      std::snprintf(b, sizeof b, "%s%s %.4g", i ? ", " : "", layout.inputs()[i].name.c_str(), r.teacher_loss[i]);
      s += b;
    }
    return s;
  };
  auto summary = [&] {
    const auto& c = pairer.counters();
    const double total = wait_s + step_s;
    return json{{"step", trainer.steps()},
                {"steps_here", steps_here},
                {"loss", last.loss},
                {"paired", c.paired},
                {"unmatched_input", c.unmatched_input},
                {"unmatched_target", c.unmatched_target},
                {"rejected", rejected},
                {"wait_share", total > 0 ? wait_s / total : 0.0},
                {"steps_per_s", step_s > 0 ? double(steps_here) / (wait_s + step_s) : 0.0},
                {"trainer", trainer.status()}};
  };

  while (!NodeContext::stop_requested() && (steps_limit == 0 || trainer.steps() < steps_limit)) {
    const auto tw = now_ns();
    for (int side = 0; side < 2; ++side) {
      while (auto f = subs[side]->next(std::chrono::nanoseconds(0), gs)) {
        // A producer that came back with another stream is refused frame by frame.
        const auto& s = subs[side]->spec();
        const bool fits = side == 0 ? s.shape == in_spec.shape && s.dtype == in_spec.dtype
                                    : s.layout == tg_spec.layout && s.dtype == tg_spec.dtype;
        if (!fits || !subs[side]->is_valid(*f)) {
          ++rejected;
          subs[side]->release(*f, gs);
          continue;
        }
        pairer.add(static_cast<Pairer::Side>(side), f->frame_id, hold(static_cast<Pairer::Side>(side), *f), release);
      }
    }
    auto pair = pairer.pop(release);
    for (auto h : release) give_back(h);
    release.clear();
    if (!pair) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      wait_s += double(now_ns() - tw) / 1e9;
    } else {
      const auto ts = now_ns();
      wait_s += double(ts - tw) / 1e9;
      const Frame fi = held[pair->input].frame;
      const Frame ft = held[pair->target].frame;
      auto opts_of = [&](torch::ScalarType t) {
        return torch::TensorOptions().dtype(t).device(on_gpu ? o.device : torch::Device(torch::kCPU));
      };
      // Zero copies: the frames themselves, read in place (never written).
      torch::Tensor x = torch::from_blob(const_cast<void*>(fi.data), in_spec.shape, opts_of(in_type));
      torch::Tensor y = torch::from_blob(const_cast<void*>(ft.data), {static_cast<std::int64_t>(layout.total_elements())},
                                         opts_of(tg_type));
      last = trainer.step(x, y);
      if (auto lease = pub.acquire(gs)) {
        auto dst = torch::from_blob(lease->data, {static_cast<std::int64_t>(layout.total_elements())}, opts_of(tg_type));
        dst.copy_(trainer.predict_flat(x));
        pub.publish(*lease, {pair->frame_id, fi.t_source_ns, 0}, gs);
      }
      // Released once the step is enqueued (backward read the inputs again).
      give_back(pair->input);
      give_back(pair->target);
      ++steps_here;
      step_s += double(now_ns() - ts) / 1e9;
      if (last.grew) {
        std::fprintf(stderr, "step %llu: grew the head of teacher '%s' (adapter %d): its error stayed at %.4g\n",
                     static_cast<unsigned long long>(last.step), layout.inputs()[*last.grew].name.c_str(),
                     trainer.growth()[*last.grew], trainer.error_ema()[*last.grew]);
      }
      if (csv.is_open() && last.step % report_every == 0) {
        const auto s = summary();
        csv << last.step << "," << double(now_ns() - t0) / 1e9 << "," << last.loss;
        for (double l : last.teacher_loss) {
          csv << ",";
          if (!std::isnan(l)) csv << l;
        }
        csv << "," << s["steps_per_s"].get<double>() << "," << s["paired"] << "," << s["unmatched_input"] << ","
            << s["unmatched_target"] << "," << s["wait_share"].get<double>() << ",";
        for (std::size_t i = 0; i < layout.teachers(); ++i) csv << (i ? ";" : "") << trainer.growth()[i];
        csv << "\n" << std::flush;
      }
      if (!checkpoint.empty() && checkpoint_every && last.step % checkpoint_every == 0) trainer.save(checkpoint);
    }
    if (now_ns() - last_progress > progress_ns) {
      const double dt = double(now_ns() - last_progress) / 1e9;
      const auto& c = pairer.counters();
      char line[512];
      std::snprintf(line, sizeof line, "step %llu, %.1f steps/s, loss %.4g (%s), paired %llu, unmatched %llu/%llu, waiting %.0f%%",
                    static_cast<unsigned long long>(trainer.steps()), double(steps_here - steps_at_progress) / dt, last.loss,
                    loss_text(last).c_str(), static_cast<unsigned long long>(c.paired),
                    static_cast<unsigned long long>(c.unmatched_input), static_cast<unsigned long long>(c.unmatched_target),
                    wait_s + step_s > 0 ? 100.0 * wait_s / (wait_s + step_s) : 0.0);
      std::fprintf(stderr, "%s\n", line);
      node.set_info("status", line);
      node.set_info("student", summary());
      last_progress = now_ns();
      steps_at_progress = steps_here;
    }
  }
  for (auto h : pairer.drain()) give_back(h);
#if DIRECTPORT_HAS_CUDA
  if (cuda_stream) cudaStreamSynchronize(cuda_stream);
#endif
  if (!checkpoint.empty() && steps_here > 0) trainer.save(checkpoint);
  auto s = summary();
  node.set_info("student", s);
  s["node"] = ctx.name();
  s["type"] = "student";
  std::cout << s.dump() << std::endl;
#if DIRECTPORT_HAS_CUDA
  guard.reset();
  if (cuda_stream) cudaStreamDestroy(cuda_stream);
#endif
  return 0;
}

}  // namespace

void register_student_node(NodeRegistry& r) {
  NodeType t = student_node_type();
  t.run = run_student;
  r.add(std::move(t));
}

}  // namespace dp::student

// The one node body every teacher runs (teacher.hpp): subscribe to `from`, check the input,
// infer each frame into a slot of the output stream, publish it with the input's frame_id and
// t_source, release the input. On the GPU everything is enqueued on one CUDA stream (the input's
// ready wait, the teacher's kernels, the output's ready fence, the input's release); on the host
// backend the teacher's CPU reference runs.
#include <cstdio>
#include <iostream>
#include <thread>

#include "directport/core/error.hpp"
#include "directport/core/names.hpp"
#include "directport/platform/process.hpp"
#include "directport/teachers/nodes.hpp"
#include "directport/teachers/teacher.hpp"
#include "source_util.hpp"

namespace dp::teachers {

using nlohmann::json;

namespace {

TensorSpec tensor_of(const StreamSpec& s) { return TensorSpec{s.dtype, s.shape, s.layout}; }

// The teacher's own params, out of the node's.
json own_params(const TeacherInfo& info, const json& p) {
  json own = json::object();
  for (auto& ps : info.params) own[ps.name] = p[ps.name];
  return own;
}

// What can be checked without the input: the SDK's params and the teacher's own (configure()).
// Runs when the node starts and when a graph config is validated (`launch --check`).
void check_params(const TeacherInfo& info, const json& p) {
  const auto from = p["from"].get<std::string>();
  StreamAddress a;
  try {
    a = parse_stream_address(from);
  } catch (const ValidationError&) {
  }
  if (a.stream.empty()) throw ValidationError("param 'from': expected NODE/STREAM, got '" + from + "'");
  const auto take = p["take"].get<std::string>();
  if (take != "latest" && take != "next") throw ValidationError("param 'take': expected latest or next, got '" + take + "'");
  const auto memory = p["memory"].get<std::string>();
  if (memory != "auto") detail::choose_memory(memory);
  auto t = info.make();
  t->configure(own_params(info, p));
}

int run_teacher(NodeContext& ctx, const TeacherInfo& info) {
  const auto& p = ctx.params();
  check_params(info, p);  // bad params fail before waiting for the input
  const auto from = p["from"].get<std::string>();
  const bool take_latest = p["take"].get<std::string>() == "latest";
  const auto frames_limit = p["frames"].get<std::uint64_t>();
  const auto startup_s = p["startup_timeout_s"].get<double>();
  const json own = own_params(info, p);
  const auto memory_param = p["memory"].get<std::string>();

  Node& node = ctx.node();
  // The input: its spec decides the output's, so wait for it (bounded).
  std::optional<Subscriber> sub;
  SubscribeOptions so;
  so.connect_timeout = std::chrono::milliseconds(500);
  const auto t0 = platform::monotonic_ns();
  bool said_waiting = false;
  while (!sub) {
    try {
      sub.emplace(node.subscribe(from, so));
    } catch (const ValidationError&) {
      throw;
    } catch (const std::exception& e) {
      if (!said_waiting) {
        std::fprintf(stderr, "waiting for the input %s (%s)\n", from.c_str(), e.what());
        said_waiting = true;
      }
      if (platform::monotonic_ns() - t0 > static_cast<std::int64_t>(startup_s * 1e9)) {
        throw Error("param 'from': " + from + " not there after " + std::to_string(startup_s) +
                    " s: start its producer, or raise 'startup_timeout_s'");
      }
      if (!NodeContext::sleep_for(std::chrono::milliseconds(100))) return 0;
    }
  }
  const StreamSpec in_stream = sub->spec();
  const bool on_gpu = in_stream.memory != MemoryKind::host;
  MemoryKind out_memory = in_stream.memory;
  if (memory_param != "auto") {
    out_memory = detail::choose_memory(memory_param);
    if ((out_memory != MemoryKind::host) != on_gpu) {
      throw ValidationError("param 'memory': " + memory_param + " puts the output on the " + (on_gpu ? "host" : "GPU") +
                            " but the input " + from + " is in " + memory_kind_name(in_stream.memory) +
                            " memory; a teacher runs where its input is (use 'auto')");
    }
  }
#if !DIRECTPORT_HAS_CUDA
  if (on_gpu) throw Error("the input " + from + " is on the GPU but this build has no CUDA");
#endif
  TeacherSession session(info.type, own, tensor_of(in_stream), from);

  StreamSpec spec;
  spec.name = p["stream"].get<std::string>();
  spec.dtype = session.output_spec().dtype;
  spec.shape = session.output_spec().shape;
  spec.slots = p["slots"].get<std::uint32_t>();
  spec.memory = out_memory;
  spec.fence = detail::fence_for(out_memory);
  json layout = session.output_spec().layout.is_object() ? session.output_spec().layout : json::object();
  layout["teacher"] = info.type;
  layout["modality"] = info.modality;
  layout["from"] = from;
  spec.layout = layout;
  spec.validate();
  auto& pub = node.advertise(spec);
  detail::SourceGpu gpu(on_gpu);
  const GpuStream gs = gpu.stream();
  node.set_running();
  std::fprintf(stderr, "teacher %s: %s %s -> %s/%s %s, %s memory\n", info.type.c_str(), from.c_str(),
               session.input_spec().str().c_str(), ctx.name().c_str(), spec.name.c_str(), session.output_spec().str().c_str(),
               memory_kind_name(out_memory));

  std::uint64_t processed = 0, skipped = 0, invalid = 0, dropped = 0;
  std::uint32_t generation = 0;
  std::uint64_t last_id = 0;
  auto last_info = platform::monotonic_ns();
  auto report = [&] {
    auto c = pub.counters();
    auto s = sub->counters();
    return json{{"processed", processed}, {"published", c.published}, {"dropped", dropped}, {"skipped", skipped},
                {"invalid", invalid},     {"missed", s.missed},       {"reconnects", s.reconnects}, {"last_frame_id", last_id}};
  };
  while (!NodeContext::stop_requested() && (frames_limit == 0 || processed < frames_limit)) {
    auto f = sub->next(std::chrono::milliseconds(100), gs);
    if (!f) continue;
    if (take_latest) {
      while (auto g = sub->latest(gs)) {  // a newer frame arrived meanwhile: take that one
        sub->release(*f, gs);
        ++skipped;
        f = g;
      }
    }
    if (f->generation != generation) {
      // A new instance of the producer: it may publish another spec.
      generation = f->generation;
      const auto& now_spec = sub->spec();
      if ((now_spec.memory != MemoryKind::host) != on_gpu) {
        throw Error("the input " + from + " came back in " + memory_kind_name(now_spec.memory) +
                    " memory: restart the teacher to follow it");
      }
      session.input_changed(tensor_of(now_spec));
    }
    auto lease = pub.acquire(gs);
    if (!lease) {  // every slot held by consumers: counted by the publisher
      ++dropped;
      sub->release(*f, gs);
      continue;
    }
    if (on_gpu) {
      session.infer_gpu(f->data, f->frame_id, f->t_source_ns, lease->data, gs);
    } else {
      session.infer_cpu(f->data, f->frame_id, f->t_source_ns, lease->data);
    }
    if (!sub->is_valid(*f)) {  // the producer died before completing the frame: nothing to publish
      pub.abandon(*lease);
      sub->release(*f, gs);
      ++invalid;
      continue;
    }
    pub.publish(*lease, FrameInfo{f->frame_id, f->t_source_ns, 0}, gs);
    sub->release(*f, gs);
    ++processed;
    last_id = f->frame_id;
    const auto now = platform::monotonic_ns();
    if (now - last_info > 1'000'000'000) {
      node.set_info("teacher", report());
      last_info = now;
    }
  }
  gpu.sync();
  auto r = report();
  node.set_info("teacher", r);
  r["node"] = ctx.name();
  r["type"] = info.type;
  std::cout << r.dump() << std::endl;
  return 0;
}

}  // namespace

void register_teacher_node_types(NodeRegistry& r) {
  for (const TeacherInfo* info : TeacherRegistry::instance().all()) {
    NodeType t;
    t.type = info->type;
    t.help = "teacher (" + info->modality + "): " + info->help + "; takes " + info->input + ", gives " + info->output;
    t.params = sdk_params();
    t.params.insert(t.params.end(), info->params.begin(), info->params.end());
    t.publishes = [](const json& p) { return std::vector<std::string>{p["stream"].get<std::string>()}; };
    t.subscribes = [info](const json& p) {
      try {
        check_params(*info, p);
      } catch (const ValidationError& e) {
        detail::rethrow_keyed(e);
      }
      return std::vector<std::string>{p["from"].get<std::string>()};
    };
    t.run = [info](NodeContext& ctx) { return run_teacher(ctx, *info); };
    r.add(std::move(t));
  }
}

void register_teacher_nodes(NodeRegistry& r) {
  register_scene_node(r);
  register_file_source_nodes(r);
  register_teacher_node_types(r);
}

}  // namespace dp::teachers

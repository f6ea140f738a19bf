// The `scene` sensor node: publishes the procedural scene (scene.hpp) as four streams with the
// same frame_id and t_source: rgb, depth, audio and caption. On the GPU the images are rendered
// straight into the slots by a kernel; the sound and the caption are made on the CPU and copied.
#include <cstdio>
#include <iostream>
#include <vector>

#include "directport/core/error.hpp"
#include "directport/teachers/nodes.hpp"
#include "directport/teachers/scene.hpp"
#include "source_util.hpp"

namespace dp::teachers {

using nlohmann::json;

namespace {

// The scene's config from the node's params, checked (errors name the param).
SceneConfig scene_config(const json& p) {
  SceneConfig c;
  auto int_param = [&](const char* key, long long lo, long long hi) {
    const auto v = p[key].get<long long>();
    if (v < lo || v > hi) {
      throw ValidationError(std::string("param '") + key + "': must be in " + std::to_string(lo) + ".." + std::to_string(hi) +
                            ", got " + std::to_string(v));
    }
    return v;
  };
  c.width = static_cast<int>(int_param("width", 8, 8192));
  c.height = static_cast<int>(int_param("height", 8, 8192));
  c.objects = static_cast<int>(int_param("objects", 1, kMaxSceneObjects));
  c.sample_rate = static_cast<int>(int_param("sample_rate", 1000, 192000));
  c.caption_len = static_cast<int>(int_param("caption_len", 16, 65536));
  c.seed = p["seed"].get<std::uint64_t>();
  c.rate_hz = p["rate_hz"].get<double>();
  c.validate();
  return c;
}

int run_scene(NodeContext& ctx) {
  const auto& p = ctx.params();
  const SceneConfig c = scene_config(p);
  const Scene scene(c);
  const auto memory = detail::choose_memory(p["memory"].get<std::string>());
  const auto frames = p["frames"].get<std::uint64_t>();
  const auto slots = p["slots"].get<std::uint32_t>();
  detail::Ticker ticker(c.rate_hz, p["clock_ids"].get<bool>());

  auto make = [&](const char* name, DType dt, std::vector<std::int64_t> shape, json layout) {
    StreamSpec s;
    s.name = name;
    s.dtype = dt;
    s.shape = std::move(shape);
    s.slots = slots;
    s.memory = memory;
    s.fence = detail::fence_for(memory);
    s.layout = std::move(layout);
    s.validate();
    return s;
  };
  const std::int64_t W = c.width, H = c.height;
  const auto n_audio = static_cast<std::int64_t>(c.audio_samples());
  const json source{{"sensor", "scene"}, {"seed", c.seed}, {"objects", c.objects}};
  Node& node = ctx.node();
  auto& rgb = node.advertise(make("rgb", DType::f32, {3, H, W}, {{"kind", "image"}, {"range", {0, 1}}, {"source", source}}));
  auto& depth = node.advertise(make("depth", DType::f32, {1, H, W}, {{"kind", "depth"}, {"unit", "m"}, {"source", source}}));
  auto& audio = node.advertise(make("audio", DType::f32, {n_audio},
                                    {{"kind", "audio"}, {"sample_rate", c.sample_rate}, {"channels", 1}, {"source", source}}));
  auto& caption = node.advertise(
      make("caption", DType::u8, {c.caption_len}, {{"kind", "text"}, {"encoding", "utf-8"}, {"padding", 0}, {"source", source}}));
  detail::SourceGpu gpu(memory != MemoryKind::host);
  const GpuStream gs = gpu.stream();
  node.set_running();
  std::fprintf(stderr, "scene: %dx%d, %d objects, seed %llu, %.1f Hz, audio %lld samples at %d Hz, caption %d bytes, %s memory\n",
               c.width, c.height, c.objects, static_cast<unsigned long long>(c.seed), c.rate_hz,
               static_cast<long long>(n_audio), c.sample_rate, c.caption_len, memory_kind_name(memory));

  std::vector<float> audio_host(static_cast<std::size_t>(n_audio));
  std::vector<std::uint8_t> caption_host(static_cast<std::size_t>(c.caption_len));
  std::uint64_t n = 0, last_id = 0;
  while (!NodeContext::stop_requested() && (frames == 0 || n < frames)) {
    auto tick = ticker.next();
    if (!tick) break;
    const SceneFrame f = scene.frame(tick->t_seconds);
    const FrameInfo info{tick->frame_id, tick->t_source_ns, 0};
    gpu.sync();  // the staging buffers of the previous frame are free again
    {
      // Either image may lack a slot (a drop, counted); the other is still rendered.
      auto l = rgb.acquire(gs);
      auto d = depth.acquire(gs);
      float* rgb_out = l ? static_cast<float*>(l->data) : nullptr;
      float* depth_out = d ? static_cast<float*>(d->data) : nullptr;
      if (gs) {
        if (l || d) Scene::render_gpu(f, rgb_out, depth_out, gs);
      } else {
        Scene::render_cpu(f, rgb_out, depth_out);
      }
      if (l) rgb.publish(*l, info, gs);
      if (d) depth.publish(*d, info, gs);
    }
    if (auto a = audio.acquire(gs)) {
      scene.audio(tick->t_seconds, audio_host.data());
      gpu.upload(*a, audio_host.data(), audio_host.size() * sizeof(float));
      audio.publish(*a, info, gs);
    }
    if (auto t = caption.acquire(gs)) {
      scene.caption_bytes(tick->t_seconds, caption_host.data());
      gpu.upload(*t, caption_host.data(), caption_host.size());
      caption.publish(*t, info, gs);
    }
    ++n;
    last_id = tick->frame_id;
  }
  gpu.sync();
  json out{{"node", ctx.name()}, {"type", "scene"}, {"frames", n}, {"last_frame_id", last_id}};
  for (Publisher* pub : {&rgb, &depth, &audio, &caption}) {
    auto cn = pub->counters();
    out[pub->spec().name] = {{"published", cn.published}, {"dropped", cn.dropped}};
  }
  std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace

void register_scene_node(NodeRegistry& r) {
  using T = ParamType;
  NodeType s;
  s.type = "scene";
  s.help = "sensor: a procedural scene (moving textured discs and squares at known depths over a textured plane, a sound "
           "that follows them, a sentence that describes them); streams rgb f32 [3,H,W], depth f32 [1,H,W], audio f32 [N], "
           "caption u8 [L], one frame_id for all four";
  s.params = {{"width", T::integer, 128, false, "image width W (8..8192)"},
              {"height", T::integer, 96, false, "image height H (8..8192)"},
              {"rate_hz", T::number, 30.0, false, "frames per second"},
              {"seed", T::integer, 1, false, "the scene is a function of (seed, time) alone"},
              {"objects", T::integer, 3, false, "moving objects (1..8)"},
              {"sample_rate", T::integer, 16000, false, "audio samples per second; N = sample_rate / rate_hz a frame"},
              {"caption_len", T::integer, 128, false, "caption bytes L (zero-padded UTF-8)"},
              {"clock_ids", T::boolean, true, false, "frame_id = the wall-clock tick in ms (time = frame_id / 1000 s); "
                                                     "false: 1, 2, ... (time = (frame_id - 1) / rate_hz)"},
              {"slots", T::integer, 3, false, "slots in each ring (2..16)"},
              {"memory", T::string, "auto", false, "auto | host | cuda-vmm | cuda-ipc"},
              {"frames", T::integer, 0, false, "stop after this many frames (0: until stopped)"}};
  s.publishes = [](const json& p) {
    try {
      scene_config(p);
    } catch (const ValidationError& e) {
      detail::rethrow_keyed(e);
    }
    return std::vector<std::string>{"rgb", "depth", "audio", "caption"};
  };
  s.subscribes = [](const json&) { return std::vector<std::string>{}; };
  s.run = run_scene;
  r.add(std::move(s));
}

}  // namespace dp::teachers

// The file sources: `image-folder` (PGM/PPM images or raw u8 video -> f32 [3,H,W] in [0,1]),
// `wav-file` (WAV -> windows of N samples, f32 [N]) and `text-file` (a line a frame -> u8 [L],
// zero-padded UTF-8). Frame ids are wall-clock ticks in ms, as the scene's, unless clock_ids is
// false. At the end of the file they loop, or stop (exit 0) after its last frame.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <vector>

#include "directport/core/error.hpp"
#include "directport/teachers/files.hpp"
#include "directport/teachers/nodes.hpp"
#include "source_util.hpp"

namespace dp::teachers {

using nlohmann::json;

namespace {

// What every file source shares: the stream, its ticks, and the loop.
struct FileSource {
  const nlohmann::json& p;
  NodeContext& ctx;
  Publisher* pub = nullptr;
  std::unique_ptr<detail::SourceGpu> gpu;
  std::unique_ptr<detail::Ticker> ticker;
  std::uint64_t published = 0, last_id = 0;

  FileSource(NodeContext& c) : p(c.params()), ctx(c) {}

  void advertise(DType dt, std::vector<std::int64_t> shape, json layout) {
    StreamSpec s;
    s.name = p["stream"].get<std::string>();
    s.dtype = dt;
    s.shape = std::move(shape);
    s.slots = p["slots"].get<std::uint32_t>();
    s.memory = detail::choose_memory(p["memory"].get<std::string>());
    s.fence = detail::fence_for(s.memory);
    s.layout = std::move(layout);
    s.validate();
    ticker = std::make_unique<detail::Ticker>(p["rate_hz"].get<double>(), p["clock_ids"].get<bool>());
    pub = &ctx.node().advertise(s);
    gpu = std::make_unique<detail::SourceGpu>(s.memory != MemoryKind::host);
    ctx.node().set_running();
  }

  // Runs until stopped, `frames` published or (without loop) `count` items done; `fill(k, dst)`
  // writes item k into host memory of the stream's frame size.
  template <typename Fill>
  int run(std::size_t count, Fill fill, const char* type) {
    const auto frames = p["frames"].get<std::uint64_t>();
    const bool loop = p["loop"].get<bool>();
    std::vector<std::uint8_t> staging(pub->spec().frame_bytes());
    std::size_t k = 0;
    bool ended = false;
    while (!NodeContext::stop_requested() && (frames == 0 || published < frames)) {
      if (k == count) {
        if (!loop) {
          ended = true;
          break;
        }
        k = 0;
      }
      auto tick = ticker->next();
      if (!tick) break;
      gpu->sync();
      fill(k, staging.data());
      ++k;
      auto lease = pub->acquire(gpu->stream());
      if (!lease) continue;  // dropped (counted)
      gpu->upload(*lease, staging.data(), staging.size());
      pub->publish(*lease, FrameInfo{tick->frame_id, tick->t_source_ns, 0}, gpu->stream());
      ++published;
      last_id = tick->frame_id;
    }
    gpu->sync();
    auto c = pub->counters();
    std::cout << json{{"node", ctx.name()}, {"type", type}, {"published", c.published}, {"dropped", c.dropped},
                      {"last_frame_id", last_id}, {"ended", ended}}
                     .dump()
              << std::endl;
    return 0;
  }
};

int run_image_folder(NodeContext& ctx) {
  const auto& p = ctx.params();
  const auto path = p["path"].get<std::string>();
  const ImageSequence seq(path, p["width"].get<int>(), p["height"].get<int>(), p["channels"].get<int>());
  FileSource src(ctx);
  src.advertise(DType::f32, {3, seq.height(), seq.width()},
                {{"kind", "image"}, {"range", {0, 1}}, {"source", {{"file", path}, {"frames", seq.count()}}}});
  std::fprintf(stderr, "image-folder: %s: %zu frames of %dx%d\n", path.c_str(), seq.count(), seq.width(), seq.height());
  return src.run(seq.count(), [&](std::size_t k, std::uint8_t* dst) { seq.load(k, reinterpret_cast<float*>(dst)); },
                 "image-folder");
}

int run_wav_file(NodeContext& ctx) {
  const auto& p = ctx.params();
  const auto path = p["path"].get<std::string>();
  const WavAudio wav = read_wav(path);
  const double rate = p["rate_hz"].get<double>();
  auto window = p["window"].get<long long>();
  if (window < 0 || window > (1 << 24)) throw ValidationError("param 'window': must be in 0..16777216, got " + std::to_string(window));
  if (window == 0) window = std::max<long long>(1, std::llround(wav.sample_rate / (rate > 0 ? rate : 1)));
  const auto n = static_cast<std::size_t>(window);
  const bool loop = p["loop"].get<bool>();
  const std::size_t total = wav.mono.size();
  const std::size_t windows = (total + n - 1) / n;  // the last one zero-padded
  FileSource src(ctx);
  src.advertise(DType::f32, {window},
                {{"kind", "audio"},
                 {"sample_rate", wav.sample_rate},
                 {"channels", 1},
                 {"source", {{"file", path}, {"format", wav.format}, {"bits", wav.bits}, {"channels", wav.channels}}}});
  std::fprintf(stderr, "wav-file: %s: %zu samples at %d Hz (%s %d-bit, %d channels), windows of %zu\n", path.c_str(), total,
               wav.sample_rate, wav.format.c_str(), wav.bits, wav.channels, n);
  // Windows follow each other over the file's samples, repeated when looping (a window may then
  // span the end and the start); without loop the last window is zero-padded.
  std::uint64_t next = 0;
  return src.run(
      windows,
      [&](std::size_t, std::uint8_t* dst) {
        auto* out = reinterpret_cast<float*>(dst);
        const std::uint64_t first = next++ * n;
        for (std::size_t i = 0; i < n; ++i) {
          const std::uint64_t s = first + i;
          out[i] = s < total ? wav.mono[s] : (loop ? wav.mono[s % total] : 0.0f);
        }
      },
      "wav-file");
}

int run_text_file(NodeContext& ctx) {
  const auto& p = ctx.params();
  const auto path = p["path"].get<std::string>();
  const auto len = p["length"].get<long long>();
  if (len < 1 || len > 65536) throw ValidationError("param 'length': must be in 1..65536, got " + std::to_string(len));
  const auto lines = read_text_lines(path);
  std::size_t cut = 0;
  for (auto& l : lines) cut += l.size() > static_cast<std::size_t>(len);
  if (cut) {
    std::fprintf(stderr, "text-file: %s: %zu of %zu lines are longer than %lld bytes: cut at a character boundary\n",
                 path.c_str(), cut, lines.size(), len);
  }
  FileSource src(ctx);
  src.advertise(DType::u8, {len},
                {{"kind", "text"}, {"encoding", "utf-8"}, {"padding", 0}, {"source", {{"file", path}, {"lines", lines.size()}}}});
  std::fprintf(stderr, "text-file: %s: %zu lines, %lld bytes a frame\n", path.c_str(), lines.size(), len);
  return src.run(
      lines.size(),
      [&](std::size_t k, std::uint8_t* dst) {
        const auto s = utf8_prefix(lines[k], static_cast<std::size_t>(len));
        std::memset(dst, 0, static_cast<std::size_t>(len));
        std::memcpy(dst, s.data(), s.size());
      },
      "text-file");
}

std::vector<ParamSpec> common_params(const char* stream) {
  using T = ParamType;
  return {{"path", T::string, nullptr, true, "the file (or folder) to read"},
          {"stream", T::string, stream, false, "name of the published stream"},
          {"rate_hz", T::number, 30.0, false, "frames per second"},
          {"loop", T::boolean, true, false, "start again at the end (false: stop after the last frame, exit 0)"},
          {"clock_ids", T::boolean, true, false, "frame_id = the wall-clock tick in ms (false: 1, 2, ...)"},
          {"slots", T::integer, 3, false, "slots in the ring (2..16)"},
          {"memory", T::string, "auto", false, "auto | host | cuda-vmm | cuda-ipc"},
          {"frames", T::integer, 0, false, "stop after this many frames (0: until stopped or the end)"}};
}

}  // namespace

void register_file_source_nodes(NodeRegistry& r) {
  using T = ParamType;
  auto one = [](const json& p) { return std::vector<std::string>{p["stream"].get<std::string>()}; };
  auto none = [](const json&) { return std::vector<std::string>{}; };

  NodeType img;
  img.type = "image-folder";
  img.help = "sensor: the binary PGM/PPM images (P5/P6) of a folder in name order, or a raw u8 video file (H x W x C "
             "frames), as f32 [3,H,W] in [0,1]";
  img.params = common_params("rgb");
  img.params.push_back({"width", T::integer, 0, false, "raw video only: frame width"});
  img.params.push_back({"height", T::integer, 0, false, "raw video only: frame height"});
  img.params.push_back({"channels", T::integer, 0, false, "raw video only: 1 (gray) or 3 (RGB, interleaved)"});
  img.publishes = one;
  img.subscribes = none;
  img.run = run_image_folder;
  r.add(std::move(img));

  NodeType wav;
  wav.type = "wav-file";
  wav.help = "sensor: a WAV file (PCM 8/16/24/32-bit or float, channels averaged) in consecutive windows of N samples, f32 [N]";
  wav.params = common_params("audio");
  wav.params.push_back({"window", T::integer, 0, false, "samples a frame, N (0: sample rate / rate_hz, i.e. real time)"});
  wav.publishes = one;
  wav.subscribes = none;
  wav.run = run_wav_file;
  r.add(std::move(wav));

  NodeType txt;
  txt.type = "text-file";
  txt.help = "sensor: a UTF-8 text file, one line a frame, as u8 [L] zero-padded (longer lines cut at a character)";
  txt.params = common_params("caption");
  txt.params.push_back({"length", T::integer, 128, false, "bytes a frame, L"});
  txt.publishes = one;
  txt.subscribes = none;
  txt.run = run_text_file;
  r.add(std::move(txt));
}

}  // namespace dp::teachers

// The procedural scene (scene.hpp) on the host: objects drawn from the seed, their motion, the
// CPU renderer, the sound and the caption.
#include "directport/teachers/scene.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "directport/core/error.hpp"
#include "directport/kernels/checksum.hpp"
#include "scene_pixel.cuh"

namespace dp::teachers {

namespace {

constexpr double kPi = 3.14159265358979323846;

struct Color {
  const char* name;
  float r, g, b;
};
constexpr Color kPalette[kMaxSceneObjects] = {
    {"red", 0.90f, 0.15f, 0.10f},    {"green", 0.15f, 0.80f, 0.20f}, {"blue", 0.15f, 0.30f, 0.95f},
    {"yellow", 0.95f, 0.85f, 0.10f}, {"magenta", 0.85f, 0.20f, 0.80f}, {"cyan", 0.10f, 0.85f, 0.85f},
    {"orange", 1.00f, 0.55f, 0.10f}, {"white", 0.95f, 0.95f, 0.95f}};
constexpr const char* kShapeNames[] = {"disc", "square"};
constexpr const char* kTextureNames[] = {"striped", "checkered", "dotted"};

// A seeded stream of uniform numbers (splitmix64).
struct Rng {
  std::uint64_t state;
  std::uint64_t next() { return kernels::mix64(state++); }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  std::uint32_t below(std::uint32_t n) { return static_cast<std::uint32_t>(next() % n); }
};

const char* direction(double vx, double vy) {
  if (std::fabs(vx) >= std::fabs(vy)) return vx < 0 ? "left" : "right";
  return vy < 0 ? "up" : "down";
}

}  // namespace

void SceneConfig::validate() const {
  auto bad = [](const std::string& param, const std::string& what) { throw ValidationError("param '" + param + "': " + what); };
  if (width < 8 || width > 8192) bad("width", "must be in 8..8192, got " + std::to_string(width));
  if (height < 8 || height > 8192) bad("height", "must be in 8..8192, got " + std::to_string(height));
  if (objects < 1 || objects > kMaxSceneObjects) {
    bad("objects", "must be in 1.." + std::to_string(kMaxSceneObjects) + ", got " + std::to_string(objects));
  }
  if (sample_rate < 1000 || sample_rate > 192000) bad("sample_rate", "must be in 1000..192000, got " + std::to_string(sample_rate));
  if (!(rate_hz > 0 && rate_hz <= 1000)) bad("rate_hz", "must be in (0, 1000], got " + std::to_string(rate_hz));
  if (audio_samples() < 1) bad("sample_rate", "gives no sample per frame at rate_hz " + std::to_string(rate_hz));
  if (caption_len < 16 || caption_len > 65536) bad("caption_len", "must be in 16..65536, got " + std::to_string(caption_len));
}

std::size_t SceneConfig::audio_samples() const {
  return static_cast<std::size_t>(std::llround(static_cast<double>(sample_rate) / rate_hz));
}

float Scene::background_depth(int y, int height) { return detail::scene_background_depth(y, height); }

Scene::Scene(SceneConfig c) : c_(c) {
  c_.validate();
  Rng rng{c_.seed * 0x9E3779B97F4A7C15ull + 0x5CE4E};
  int colors[kMaxSceneObjects];
  for (int i = 0; i < kMaxSceneObjects; ++i) colors[i] = i;
  for (int i = kMaxSceneObjects - 1; i > 0; --i) std::swap(colors[i], colors[rng.below(static_cast<std::uint32_t>(i + 1))]);
  const double n = c_.objects;
  const double small = std::min(c_.width, c_.height);
  for (int i = 0; i < c_.objects; ++i) {
    SceneObject o;
    const Color& col = kPalette[colors[i]];
    o.r = col.r;
    o.g = col.g;
    o.b = col.b;
    o.shape = static_cast<std::int32_t>(rng.below(2));
    o.texture = static_cast<std::int32_t>(rng.below(3));
    // Nearest first, each in its own slice of [1.5, 5.5): distinct depths.
    o.depth = static_cast<float>(1.5 + (i + 0.2 + 0.6 * rng.uniform()) * 4.0 / n);
    o.half = static_cast<float>(std::max(3.0, 0.33 * small / o.depth * (0.7 + 0.3 * rng.uniform())));
    o.inv_period = static_cast<float>(1.0 / (3.0 + 4.0 * rng.uniform()));
    o.hash = static_cast<std::uint32_t>(rng.next());
    Track t;
    t.ax = (0.15 + 0.2 * rng.uniform()) * c_.width;
    t.wx = (0.4 + 0.8 * rng.uniform()) * (rng.below(2) ? 1 : -1);
    t.px = 2 * kPi * rng.uniform();
    t.ay = (0.12 + 0.18 * rng.uniform()) * c_.height;
    t.wy = (0.3 + 0.7 * rng.uniform()) * (rng.below(2) ? 1 : -1);
    t.py = 2 * kPi * rng.uniform();
    base_.push_back(o);
    tracks_.push_back(t);
    info_.push_back({col.name, kTextureNames[o.texture], kShapeNames[o.shape], o.depth});
  }
}

void Scene::position(int i, double t, double& x, double& y) const {
  const Track& k = tracks_[i];
  x = c_.width * 0.5 + k.ax * std::sin(k.wx * t + k.px);
  y = c_.height * 0.5 + k.ay * std::sin(k.wy * t + k.py);
}

void Scene::velocity(int i, double t, double& vx, double& vy) const {
  const Track& k = tracks_[i];
  vx = k.ax * k.wx * std::cos(k.wx * t + k.px);
  vy = k.ay * k.wy * std::cos(k.wy * t + k.py);
}

SceneFrame Scene::frame(double t) const {
  SceneFrame f;
  f.width = c_.width;
  f.height = c_.height;
  f.objects = c_.objects;
  f.seed = static_cast<std::uint32_t>(kernels::mix64(c_.seed));
  f.bg_offset = static_cast<float>(std::fmod(std::fabs(t) * 6.0, 32.0));
  for (int i = 0; i < c_.objects; ++i) {
    f.obj[i] = base_[i];
    double x, y;
    position(i, t, x, y);
    f.obj[i].cx = static_cast<float>(x);
    f.obj[i].cy = static_cast<float>(y);
  }
  return f;
}

void Scene::render_cpu(const SceneFrame& f, float* rgb, float* depth) {
  const std::size_t plane = static_cast<std::size_t>(f.width) * f.height;
  for (int y = 0; y < f.height; ++y) {
    for (int x = 0; x < f.width; ++x) {
      const std::size_t k = static_cast<std::size_t>(y) * f.width + x;
      float r, g, b, z;
      detail::scene_pixel(f, x, y, r, g, b, z);
      if (rgb) {
        rgb[k] = r;
        rgb[plane + k] = g;
        rgb[2 * plane + k] = b;
      }
      if (depth) depth[k] = z;
    }
  }
}

void Scene::audio(double t, float* out) const {
  const std::size_t n = c_.audio_samples();
  const double sr = c_.sample_rate;
  const auto end = static_cast<std::int64_t>(std::floor(t * sr));
  // Pitch follows height: f(t) = 200 + 600 (1 - y(t) / H) with y(t) = H/2 + ay sin(wy t + py), so
  // f(t) = 500 - (600 ay / H) sin(wy t + py) and the phase, its integral, is
  // 500 t + (600 ay / H) cos(wy t + py) / wy cycles: continuous, a function of t alone.
  const std::uint32_t noise_seed = static_cast<std::uint32_t>(kernels::mix64(c_.seed ^ 0xA0D10ull));
  for (std::size_t k = 0; k < n; ++k) {
    const std::int64_t s = end - static_cast<std::int64_t>(n) + static_cast<std::int64_t>(k);
    const double ts = static_cast<double>(s) / sr;
    double v = 0;
    for (int i = 0; i < c_.objects; ++i) {
      const Track& tr = tracks_[i];
      const double dev = 600.0 * tr.ay / c_.height;
      const double cycles = 500.0 * ts + dev * std::cos(tr.wy * ts + tr.py) / tr.wy;
      const double loud = 0.6 / c_.objects * (1.5 / base_[i].depth);
      v += loud * std::sin(2 * kPi * (cycles - std::floor(cycles)));
    }
    const auto h = detail::scene_hash(static_cast<std::uint32_t>(s), static_cast<std::uint32_t>(s >> 32), noise_seed);
    v += 0.02 * (static_cast<double>(h) / 4294967295.0 * 2.0 - 1.0);
    out[k] = static_cast<float>(v);
  }
}

std::string Scene::caption(double t) const {
  // Nearest first (the objects are drawn nearest first).
  std::vector<std::string> clauses;
  auto name = [&](int i) { return "a " + info_[i].color + " " + info_[i].texture + " " + info_[i].shape; };
  double vx, vy;
  velocity(0, t, vx, vy);
  std::string first = name(0) + " moves " + direction(vx, vy);
  if (c_.objects >= 2) {
    double x0, y0, x1, y1;
    position(0, t, x0, y0);
    position(1, t, x1, y1);
    const double dx = x0 - x1, dy = y0 - y1;
    const char* rel = std::fabs(dy) >= std::fabs(dx) ? (dy < 0 ? "above" : "below") : (dx < 0 ? "left of" : "right of");
    velocity(1, t, vx, vy);
    first += std::string(" ") + rel + " " + name(1) + " that moves " + direction(vx, vy);
  }
  clauses.push_back(first);
  for (int i = 2; i < c_.objects; ++i) {
    velocity(i, t, vx, vy);
    clauses.push_back(name(i) + " moves " + direction(vx, vy));
  }
  const auto limit = static_cast<std::size_t>(c_.caption_len);
  std::string out;
  for (auto& cl : clauses) {
    const std::string next = out.empty() ? cl : out + ", " + cl;
    if (next.size() > limit) break;
    out = next;
  }
  if (out.empty()) {  // even the first clause is too long: cut it at a word
    out = clauses[0].substr(0, limit);
    const auto sp = out.rfind(' ');
    if (clauses[0].size() > limit && clauses[0][limit] != ' ' && sp != std::string::npos) out.resize(sp);
  }
  return out;
}

void Scene::caption_bytes(double t, std::uint8_t* out) const {
  const std::string s = caption(t);
  std::memset(out, 0, static_cast<std::size_t>(c_.caption_len));
  std::memcpy(out, s.data(), s.size());
}

}  // namespace dp::teachers

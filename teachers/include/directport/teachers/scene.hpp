// The procedural scene behind the `scene` sensor node: a few textured discs and squares at known
// depths moving over a textured background plane, with a sound that follows them and a sentence
// that describes them. Everything is a function of (config, seed, time) alone, so any process can
// recompute what the sensor published for a frame.
//
// Geometry: pixel (x, y) is sampled at its centre (x + 0.5, y + 0.5). The background is a plane
// whose depth grows linearly from 6 m at the bottom row to 12 m at the top
// (background_depth()). Object i (0 = nearest) stands at a constant depth in [1.5, 5.5) m, in
// front of the plane; its apparent size shrinks with its depth; it moves on a Lissajous path.
// A pixel shows the nearest object that covers it (a disc: distance to the centre <= radius; a
// square: both offsets <= half side), or the plane; its depth is that object's or the plane's.
//
// Sound: each object hums a tone whose pitch follows its height on screen (200 Hz at the bottom,
// 800 Hz at the top, continuous in phase) and whose loudness follows its nearness, plus a little
// seeded white noise; |sample| < 0.65.
//
// Caption: "a red striped disc moves left above a blue checkered square that moves up, a green
// dotted disc moves down": the nearest object, its direction of motion (the larger component of
// its velocity; up is towards row 0), where it is relative to the second nearest ("above", "below",
// "left of", "right of": the larger component of the offset between their centres), then the
// second, then each further one nearest first. Clauses that do not fit the caption's length are
// left out; the words are ASCII (hence UTF-8).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "directport/core/types.hpp"

namespace dp::teachers {

struct SceneConfig {
  int width = 128;
  int height = 96;
  int objects = 3;  // 1..kMaxSceneObjects
  std::uint64_t seed = 1;
  int sample_rate = 16000;
  double rate_hz = 30;     // frames per second: sets the audio window (sample_rate / rate_hz samples)
  int caption_len = 128;   // bytes of the caption stream
  void validate() const;   // throws ValidationError naming the param
  std::size_t audio_samples() const;
};

constexpr int kMaxSceneObjects = 8;

enum class SceneShape : std::int32_t { disc = 0, square = 1 };
enum class SceneTexture : std::int32_t { stripes = 0, checker = 1, dots = 2 };

// One object at one instant, as the renderer needs it. Trivially copyable.
struct SceneObject {
  float cx = 0, cy = 0;  // centre, pixels
  float half = 0;        // radius (disc) or half side (square), pixels
  float depth = 0;       // metres
  float r = 0, g = 0, b = 0;
  float inv_period = 0;  // 1 / texture period (pixels)
  std::int32_t shape = 0;    // SceneShape
  std::int32_t texture = 0;  // SceneTexture
  std::uint32_t hash = 0;    // texture seed
};

// Everything one frame's pixels depend on. Trivially copyable: passed by value to the kernel.
struct SceneFrame {
  std::int32_t width = 0, height = 0, objects = 0;
  float bg_offset = 0;  // horizontal scroll of the background texture, pixels
  std::uint32_t seed = 0;
  SceneObject obj[kMaxSceneObjects];
};
static_assert(std::is_trivially_copyable_v<SceneFrame>);

// What the caption says of an object, and what tests check it against.
struct SceneObjectInfo {
  std::string color, texture, shape;  // "red", "striped", "disc"
  float depth = 0;
};

class Scene {
 public:
  explicit Scene(SceneConfig c);  // validates; draws the objects from the seed
  const SceneConfig& config() const { return c_; }
  const std::vector<SceneObjectInfo>& objects() const { return info_; }

  // The frame at time `t` (seconds; with clock ids, frame_id / 1000).
  SceneFrame frame(double t) const;
  // Velocity of object i at `t` (pixels per second; +y is down).
  void velocity(int i, double t, double& vx, double& vy) const;

  // rgb: f32 [3, H, W] in [0, 1]; depth: f32 [1, H, W], metres. Either may be nullptr (not written).
  static void render_cpu(const SceneFrame& f, float* rgb, float* depth);
  // The same on the GPU (device pointers), enqueued on `stream`. Bit-identical to render_cpu.
  static void render_gpu(const SceneFrame& f, float* rgb, float* depth, GpuStream stream);

  // The audio_samples() samples that end at time `t`: global sample indices
  // [floor(t * sample_rate) - n, floor(t * sample_rate)).
  void audio(double t, float* out) const;
  // The caption at `t` (no padding; at most caption_len bytes).
  std::string caption(double t) const;
  // The caption zero-padded to caption_len bytes.
  void caption_bytes(double t, std::uint8_t* out) const;

  static float background_depth(int y, int height);

 private:
  struct Track {
    double ax, wx, px, ay, wy, py;  // x(t) = W/2 + ax sin(wx t + px), y likewise with H
  };
  void position(int i, double t, double& x, double& y) const;
  SceneConfig c_;
  std::vector<SceneObject> base_;  // constant parts of each object
  std::vector<Track> tracks_;
  std::vector<SceneObjectInfo> info_;
};

}  // namespace dp::teachers

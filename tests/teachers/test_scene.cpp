// The procedural scene behind the `scene` sensor: deterministic by seed; the true depth of every
// pixel (an object's where the geometry says the object is in front, the plane's elsewhere); the
// caption names the objects nearest first with the directions their motion takes; the sound is
// finite, bounded, a function of the sample index alone, and its pitch follows the object's
// height. The `scene` node (SceneNodeMP, a process) publishes exactly that. In the GPU suite
// (GpuScene.*): the CUDA renderer against the CPU renderer.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <sstream>

#include "directport/core/error.hpp"
#include "directport/teachers/scene.hpp"
#include "support/gpu_test.hpp"
#include "teachers/nodes_test.hpp"
#include "support/test_support.hpp"

#if DIRECTPORT_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

namespace dp::teachers {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

struct Images {
  std::vector<float> rgb, depth;
};

Images render(const Scene& s, double t) {
  const auto& c = s.config();
  Images im{std::vector<float>(3 * c.width * c.height), std::vector<float>(c.width * c.height)};
  Scene::render_cpu(s.frame(t), im.rgb.data(), im.depth.data());
  return im;
}

// Where pixel (x, y)'s centre lies with respect to object o, by the geometry, in double.
// At least `margin` pixels inside o's outline.
bool inside(const SceneObject& o, int x, int y, double margin) {
  const double dx = x + 0.5 - o.cx, dy = y + 0.5 - o.cy;
  if (o.shape == static_cast<int>(SceneShape::disc)) return std::sqrt(dx * dx + dy * dy) <= o.half - margin;
  return std::fabs(dx) <= o.half - margin && std::fabs(dy) <= o.half - margin;
}
// At least `margin` pixels clear of o's outline.
bool clear_of(const SceneObject& o, int x, int y, double margin) {
  const double dx = x + 0.5 - o.cx, dy = y + 0.5 - o.cy;
  if (o.shape == static_cast<int>(SceneShape::disc)) return std::sqrt(dx * dx + dy * dy) > o.half + margin;
  return std::fabs(dx) > o.half + margin || std::fabs(dy) > o.half + margin;
}

TEST(Scene, BadConfigsAreNamed) {
  auto msg = [](SceneConfig c) {
    try {
      Scene s(c);
    } catch (const ValidationError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  SceneConfig c;
  c.objects = 9;
  EXPECT_NE(msg(c).find("param 'objects'"), std::string::npos);
  c = SceneConfig{};
  c.width = 4;
  EXPECT_NE(msg(c).find("param 'width'"), std::string::npos);
  c = SceneConfig{};
  c.rate_hz = 0;
  EXPECT_NE(msg(c).find("param 'rate_hz'"), std::string::npos);
  c = SceneConfig{};
  c.caption_len = 8;
  EXPECT_NE(msg(c).find("param 'caption_len'"), std::string::npos);
}

TEST(Scene, IsAFunctionOfSeedAndTime) {
  SceneConfig c;
  c.seed = 42;
  c.objects = 5;
  const Scene a(c), b(c);
  c.seed = 43;
  const Scene other(c);
  for (double t : {0.0, 1.25, 1.7e9 + 0.033}) {
    auto ia = render(a, t), ib = render(b, t), io = render(other, t);
    EXPECT_EQ(ia.rgb, ib.rgb) << "t " << t;
    EXPECT_EQ(ia.depth, ib.depth);
    EXPECT_NE(ia.rgb, io.rgb) << "another seed, another scene";
    EXPECT_EQ(a.caption(t), b.caption(t));
    std::vector<float> sa(c.audio_samples()), sb(c.audio_samples());
    a.audio(t, sa.data());
    b.audio(t, sb.data());
    EXPECT_EQ(sa, sb);
  }
  EXPECT_NE(render(a, 1.0).rgb, render(a, 1.5).rgb) << "the objects move";
}

TEST(Scene, EveryPixelHasItsTrueDepth) {
  std::mt19937_64 rng(test::test_seed());
  for (int round = 0; round < 6; ++round) {
    SceneConfig c;
    c.seed = rng();
    c.objects = 1 + static_cast<int>(rng() % 8);
    c.width = 64 + static_cast<int>(rng() % 100);
    c.height = 48 + static_cast<int>(rng() % 80);
    const Scene s(c);
    const double t = 1.7e9 + std::uniform_real_distribution<double>(0, 1000)(rng);
    SCOPED_TRACE("seed " + std::to_string(c.seed) + ", " + std::to_string(c.objects) + " objects, t " + std::to_string(t));
    const SceneFrame f = s.frame(t);
    for (int i = 0; i < c.objects; ++i) {
      EXPECT_GT(f.obj[i].depth, 1.5f);
      EXPECT_LT(f.obj[i].depth, 5.5f) << "in front of the plane (6 m and farther)";
      if (i) {
        EXPECT_GT(f.obj[i].depth, f.obj[i - 1].depth) << "nearest first, distinct";
      }
      EXPECT_EQ(f.obj[i].depth, s.objects()[i].depth);
    }
    auto im = render(s, t);
    const std::size_t plane = static_cast<std::size_t>(c.width) * c.height;
    int object_pixels = 0, plane_pixels = 0;
    for (int y = 0; y < c.height; ++y) {
      for (int x = 0; x < c.width; ++x) {
        const std::size_t k = static_cast<std::size_t>(y) * c.width + x;
        for (int ch = 0; ch < 3; ++ch) {
          ASSERT_GE(im.rgb[ch * plane + k], 0.0f);
          ASSERT_LE(im.rgb[ch * plane + k], 1.0f);
        }
        // The nearest object covering the pixel, by the geometry (skipping pixels on an outline,
        // where double and float may disagree).
        int nearest = -1;
        bool ambiguous = false;
        for (int i = 0; i < c.objects; ++i) {
          if (inside(f.obj[i], x, y, 0.01)) {
            if (nearest < 0) nearest = i;
          } else if (!clear_of(f.obj[i], x, y, 0.01)) {
            ambiguous = true;
          }
        }
        if (ambiguous) continue;
        if (nearest >= 0) {
          ++object_pixels;
          ASSERT_EQ(im.depth[k], f.obj[nearest].depth) << "pixel " << x << "," << y << " shows object " << nearest;
          // Its colour is the object's, darkened by the texture by a factor in [0.55, 1].
          const float base[3] = {f.obj[nearest].r, f.obj[nearest].g, f.obj[nearest].b};
          const float k0 = im.rgb[k] / base[0];
          ASSERT_GE(k0, 0.55f - 1e-6f);
          ASSERT_LE(k0, 1.0f + 1e-6f);
          for (int ch = 1; ch < 3; ++ch) ASSERT_NEAR(im.rgb[ch * plane + k], base[ch] * k0, 1e-5);
        } else {
          ++plane_pixels;
          ASSERT_NEAR(im.depth[k], 6.0 + 6.0 * (1.0 - (y + 0.5) / c.height), 1e-5) << "plane at " << x << "," << y;
        }
      }
    }
    EXPECT_GT(object_pixels, 20);
    EXPECT_GT(plane_pixels, static_cast<int>(plane) / 4);
  }
}

// Words of a caption.
std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> w;
  std::string cur;
  for (char ch : s) {
    if (ch == ' ' || ch == ',') {
      if (!cur.empty()) w.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(ch);
    }
  }
  if (!cur.empty()) w.push_back(cur);
  return w;
}

TEST(Scene, TheCaptionNamesTheObjectsNearestFirstWithTheirMotion) {
  std::mt19937_64 rng(test::test_seed());
  std::map<std::string, int> seen;
  for (int round = 0; round < 40; ++round) {
    SceneConfig c;
    c.seed = rng();
    c.objects = 1 + static_cast<int>(rng() % 4);
    c.caption_len = 256;
    const Scene s(c);
    const double t = std::uniform_real_distribution<double>(0, 1e4)(rng);
    const std::string cap = s.caption(t);
    SCOPED_TRACE("caption '" + cap + "'");
    // Motion and positions from the rendered frames (finite differences), not from the caption code.
    const double h = 1e-3;
    const SceneFrame f = s.frame(t), fa = s.frame(t - h), fb = s.frame(t + h);
    auto dir = [&](int i) {
      const double vx = (double(fb.obj[i].cx) - fa.obj[i].cx) / (2 * h), vy = (double(fb.obj[i].cy) - fa.obj[i].cy) / (2 * h);
      if (std::fabs(std::fabs(vx) - std::fabs(vy)) < 1.0) return std::string("?");  // too close to call
      return std::string(std::fabs(vx) > std::fabs(vy) ? (vx < 0 ? "left" : "right") : (vy < 0 ? "up" : "down"));
    };
    const auto w = words(cap);
    std::size_t at = 0;
    for (int i = 0; i < c.objects; ++i) {
      const auto& o = s.objects()[i];
      // "a COLOUR TEXTURE SHAPE" then "moves DIR" (or "that moves DIR" for the second).
      ASSERT_LT(at + 4, w.size());
      EXPECT_EQ(w[at], "a");
      EXPECT_EQ(w[at + 1], o.color);
      EXPECT_EQ(w[at + 2], o.texture);
      EXPECT_EQ(w[at + 3], o.shape);
      at += 4;
      if (i == 1) {
        EXPECT_EQ(w[at], "that");
        ++at;
      }
      EXPECT_EQ(w[at++], "moves");
      ASSERT_LT(at, w.size());
      const auto d = dir(i);
      if (d != "?") {
        EXPECT_EQ(w[at], d) << "object " << i;
      }
      ++seen[w[at]];
      ++at;
      if (i == 0 && c.objects >= 2) {
        const double dx = double(f.obj[0].cx) - f.obj[1].cx, dy = double(f.obj[0].cy) - f.obj[1].cy;
        std::string rel = std::fabs(dy) >= std::fabs(dx) ? (dy < 0 ? "above" : "below") : (dx < 0 ? "left" : "right");
        ASSERT_LT(at, w.size());
        if (std::fabs(std::fabs(dx) - std::fabs(dy)) > 0.01) {  // else too close to call
          EXPECT_EQ(w[at], rel);
        }
        rel = w[at];
        at += (rel == "left" || rel == "right") ? 2 : 1;  // "left of", "right of"
      }
    }
    EXPECT_EQ(at, w.size()) << "nothing else in the caption";
    for (unsigned char ch : cap) EXPECT_TRUE(ch >= 0x20 && ch < 0x7f);
  }
  for (const char* d : {"left", "right", "up", "down"}) EXPECT_GT(seen[d], 0) << "no object ever moved " << d;
}

TEST(Scene, CaptionBytesAreZeroPaddedAndLongCaptionsLoseWholeClauses) {
  SceneConfig c;
  c.seed = 5;
  c.objects = 6;
  c.caption_len = 256;
  const Scene full(c);
  c.caption_len = 90;
  const Scene cut(c);
  for (double t : {0.5, 3.0, 77.0}) {
    const std::string f = full.caption(t), s = cut.caption(t);
    EXPECT_LE(s.size(), 90u);
    EXPECT_GT(f.size(), 90u);
    EXPECT_EQ(f.compare(0, s.size(), s), 0) << "a prefix of the full caption";
    EXPECT_EQ(f.substr(s.size(), 2), ", ") << "cut at the end of a clause";
    std::vector<std::uint8_t> bytes(90, 0xAB);
    cut.caption_bytes(t, bytes.data());
    EXPECT_EQ(std::string(bytes.begin(), bytes.begin() + s.size()), s);
    for (std::size_t k = s.size(); k < 90; ++k) ASSERT_EQ(bytes[k], 0) << "padding at " << k;
  }
}

TEST(Scene, TheSoundIsBoundedContinuousAndFollowsTheObjectsHeight) {
  SceneConfig c;
  c.seed = 9;
  c.objects = 3;
  const Scene s30(c);
  for (double t : {0.0, 12.5, 1.7e9}) {
    std::vector<float> a(c.audio_samples());
    s30.audio(t, a.data());
    double ss = 0;
    for (float v : a) {
      ASSERT_TRUE(std::isfinite(v));
      ASSERT_LT(std::fabs(v), 0.65f);
      ss += double(v) * v;
    }
    EXPECT_GT(std::sqrt(ss / a.size()), 0.03) << "not silent";
  }
  // A function of the sample index alone: a shorter window is the end of a longer one.
  c.rate_hz = 60;
  const Scene s60(c);
  std::vector<float> a30(s30.config().audio_samples()), a60(s60.config().audio_samples());
  s30.audio(100.0, a30.data());
  s60.audio(100.0, a60.data());
  ASSERT_LT(a60.size(), a30.size());
  EXPECT_TRUE(std::equal(a60.begin(), a60.end(), a30.end() - a60.size()));

  // One object: the strongest frequency of a 100 ms window is 200 + 600 (1 - y / H) Hz at the
  // window's middle.
  c.objects = 1;
  c.rate_hz = 10;  // 1600 samples
  for (std::uint64_t seed : {1, 2, 3, 4}) {
    c.seed = seed;
    const Scene s(c);
    for (double t : {3.0, 10.0, 21.0}) {
      std::vector<float> a(c.audio_samples());
      s.audio(t, a.data());
      const double mid = t - 0.05;
      const double want = 200 + 600 * (1 - s.frame(mid).obj[0].cy / c.height);
      double best_f = 0, best = -1;
      for (double fr = 150; fr <= 850; fr += 2) {
        double re = 0, im = 0;
        for (std::size_t k = 0; k < a.size(); ++k) {
          const double w = 0.5 - 0.5 * std::cos(2 * M_PI * k / a.size());
          re += a[k] * w * std::cos(2 * M_PI * fr * k / c.sample_rate);
          im += a[k] * w * std::sin(2 * M_PI * fr * k / c.sample_rate);
        }
        if (re * re + im * im > best) best = re * re + im * im, best_f = fr;
      }
      EXPECT_NEAR(best_f, want, 25.0) << "seed " << seed << " t " << t;
    }
  }
}

class GpuScene : public test::GpuTest {};

TEST_F(GpuScene, TheGpuRendersTheCpuImageBitForBit) {
#if DIRECTPORT_HAS_CUDA
  std::mt19937_64 rng(test::test_seed());
  for (auto [w, h, n] : {std::tuple{128, 96, 3}, std::tuple{333, 71, 8}, std::tuple{8, 8, 1}}) {
    SceneConfig c;
    c.width = w;
    c.height = h;
    c.objects = n;
    c.seed = rng();
    const Scene s(c);
    const std::size_t plane = static_cast<std::size_t>(w) * h;
    float *drgb = nullptr, *ddepth = nullptr;
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&drgb), 3 * plane * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&ddepth), plane * 4), cudaSuccess);
    for (double t : {0.0, 2.5, 1.7e9 + 0.125}) {
      auto cpu = render(s, t);
      ASSERT_EQ(cudaMemset(drgb, 0xff, 3 * plane * 4), cudaSuccess);
      ASSERT_EQ(cudaMemset(ddepth, 0xff, plane * 4), cudaSuccess);
      Scene::render_gpu(s.frame(t), drgb, ddepth, nullptr);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      std::vector<float> rgb(3 * plane), depth(plane);
      ASSERT_EQ(cudaMemcpy(rgb.data(), drgb, rgb.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(depth.data(), ddepth, depth.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      EXPECT_EQ(0, std::memcmp(rgb.data(), cpu.rgb.data(), rgb.size() * 4)) << w << "x" << h << " t " << t;
      EXPECT_EQ(0, std::memcmp(depth.data(), cpu.depth.data(), depth.size() * 4)) << w << "x" << h << " t " << t;
      // Depth alone (no rgb slot).
      ASSERT_EQ(cudaMemset(ddepth, 0, plane * 4), cudaSuccess);
      Scene::render_gpu(s.frame(t), nullptr, ddepth, nullptr);
      ASSERT_EQ(cudaMemcpy(depth.data(), ddepth, depth.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      EXPECT_EQ(depth, cpu.depth);
    }
    cudaFree(drgb);
    cudaFree(ddepth);
  }
#endif
}

// ------------------------------------------------------------------ the scene node

// The node's four streams carry one frame_id and are what this library computes for it (so any
// process can recompute them).
class SceneNodeMP : public test::NodesTest {};

TEST_F(SceneNodeMP, TheSceneNodePublishesWhatTheSceneLibraryComputesForEachFrameId) {
  const json params{{"width", 64}, {"height", 48}, {"rate_hz", 50.0}, {"seed", 7}, {"objects", 4}, {"sample_rate", 8000},
                    {"caption_len", 100}, {"memory", "host"}};
  auto c = node("scene", "cam", params);
  SceneConfig cfg;
  cfg.width = 64;
  cfg.height = 48;
  cfg.rate_hz = 50;
  cfg.seed = 7;
  cfg.objects = 4;
  cfg.sample_rate = 8000;
  cfg.caption_len = 100;
  const Scene scene(cfg);
  std::map<std::string, std::optional<Subscriber>> subs;
  for (const char* s : {"rgb", "depth", "audio", "caption"}) {
    subs[s] = subscribe("cam", s);
    ASSERT_TRUE(subs[s]) << c.output();
  }
  EXPECT_EQ(subs["rgb"]->spec().shape, (std::vector<std::int64_t>{3, 48, 64}));
  EXPECT_EQ(subs["depth"]->spec().shape, (std::vector<std::int64_t>{1, 48, 64}));
  EXPECT_EQ(subs["audio"]->spec().shape, (std::vector<std::int64_t>{160}));
  EXPECT_EQ(subs["audio"]->spec().layout["sample_rate"], 8000);
  EXPECT_EQ(subs["caption"]->spec().dtype, DType::u8);
  EXPECT_EQ(subs["caption"]->spec().shape, (std::vector<std::int64_t>{100}));
  // Frames by id, per stream.
  std::map<std::uint64_t, std::map<std::string, std::vector<std::uint8_t>>> got;
  const auto t0 = std::chrono::steady_clock::now();
  int complete = 0;
  while (complete < 5 && std::chrono::steady_clock::now() - t0 < 10s) {
    for (auto& [name, sub] : subs) {
      while (auto f = sub->next(0ns)) {
        const auto* b = static_cast<const std::uint8_t*>(f->data);
        got[f->frame_id][name].assign(b, b + f->bytes);
        sub->release(*f);
      }
    }
    complete = 0;
    for (auto& [id, m] : got) complete += m.size() == 4;
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_GE(complete, 5) << c.output();
  const std::uint64_t now_ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  for (auto& [id, m] : got) {
    if (m.size() != 4) continue;
    SCOPED_TRACE("frame_id " + std::to_string(id));
    EXPECT_EQ(id % 20, 0u) << "ticks of 20 ms";
    EXPECT_LT(now_ms - id, 30000u) << "the wall clock in ms";
    const double t = static_cast<double>(id) / 1000.0;
    std::vector<float> rgb(3 * 48 * 64), depth(48 * 64), audio(160);
    Scene::render_cpu(scene.frame(t), rgb.data(), depth.data());
    scene.audio(t, audio.data());
    std::vector<std::uint8_t> cap(100);
    scene.caption_bytes(t, cap.data());
    EXPECT_TRUE(m["rgb"].size() == rgb.size() * 4 && std::memcmp(m["rgb"].data(), rgb.data(), m["rgb"].size()) == 0);
    EXPECT_TRUE(m["depth"].size() == depth.size() * 4 && std::memcmp(m["depth"].data(), depth.data(), m["depth"].size()) == 0);
    EXPECT_TRUE(m["audio"].size() == audio.size() * 4 && std::memcmp(m["audio"].data(), audio.data(), m["audio"].size()) == 0);
    EXPECT_EQ(m["caption"], cap);
  }
  EXPECT_EQ(stop(c), 0) << c.output();
}

}  // namespace
}  // namespace dp::teachers

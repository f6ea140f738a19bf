// The teachers as nodes: real `directport node` processes fed by a node of this test, real shared
// memory, on the host backend.
//  - every teacher on known input: its output stream's spec, the input's frame_id and t_source
//    passed through, and a value that depends on that very frame;
//  - an input a teacher cannot take, and bad params, end the node with exit 2 naming the key;
//    `launch --check` names bad teacher and scene params by their path in the config;
//  - a producer that comes back with another shape is followed when the teacher's output stays the
//    same, and stops the teacher (exit 1, saying why) when it would not.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <thread>

#include "directport/core/node.hpp"
#include "directport/kernels/half.hpp"
#include "teachers/nodes_test.hpp"

namespace dp {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

class TeacherNodeMP : public test::NodesTest {};

// A node of this test process publishing known inputs: each stream's frame for id n is fill(n),
// with t_source = 5000 + 7 n.
struct Inputs {
  struct Stream {
    Publisher* pub;
    std::function<void(std::uint64_t, void*)> fill;
  };
  std::unique_ptr<Node> node;
  std::vector<Stream> streams;
  std::atomic<bool> stop{false};
  std::thread thread;
  std::atomic<std::uint64_t> next_id{1000};

  Inputs(const std::string& domain, const std::string& name) {
    NodeOptions o;
    o.name = name;
    o.domain = domain;
    node = std::make_unique<Node>(o);
  }
  void add(const std::string& name, DType dt, std::vector<std::int64_t> shape, json layout,
           std::function<void(std::uint64_t, void*)> fill) {
    StreamSpec s;
    s.name = name;
    s.dtype = dt;
    s.shape = std::move(shape);
    s.layout = std::move(layout);
    streams.push_back({&node->advertise(s), std::move(fill)});
  }
  void start() {
    node->set_running();
    thread = std::thread([this] {
      while (!stop) {
        const std::uint64_t id = next_id++;
        for (auto& s : streams) {
          if (auto l = s.pub->acquire()) {
            s.fill(id, l->data);
            s.pub->publish(*l, FrameInfo{id, static_cast<std::int64_t>(5000 + 7 * id), 0});
          }
        }
        std::this_thread::sleep_for(15ms);
      }
    });
  }
  ~Inputs() {
    stop = true;
    if (thread.joinable()) thread.join();
  }
};

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// ------------------------------------------------------------------ teachers on known input

struct TeacherCase {
  std::string type, stream;
  json params;
  DType out_dtype;
  std::vector<std::int64_t> out_shape;
  // Checks the output of the frame with id n; returns "" or what is wrong.
  std::function<std::string(std::uint64_t, const void*)> check;
};

TEST_F(TeacherNodeMP, EveryTeacherPassesTheFrameIdOnWithItsOutputForThatFrame) {
  Inputs in(domain_, "src");
  // img: one channel, a vertical step at column 8 + n % 8. Edges at stride 1, scale 1: magnitude
  // 0.5 just left of it. Template: the channel mean is (24 - edge) / 24.
  in.add("img", DType::f32, {1, 16, 24}, nullptr, [](std::uint64_t n, void* p) {
    auto* f = static_cast<float*>(p);
    const int edge = 8 + static_cast<int>(n % 8);
    for (int y = 0; y < 16; ++y) {
      for (int x = 0; x < 24; ++x) f[y * 24 + x] = x >= edge ? 1.0f : 0.0f;
    }
  });
  // depth: constant 2 + (n % 16) / 4 metres.
  in.add("depth", DType::f32, {1, 8, 12}, json{{"kind", "depth"}}, [](std::uint64_t n, void* p) {
    auto* f = static_cast<float*>(p);
    for (int k = 0; k < 96; ++k) f[k] = 2.0f + static_cast<float>(n % 16) * 0.25f;
  });
  // audio: a tone of 500 Hz for even n, 2 kHz for odd n; sample rate from the layout.
  in.add("audio", DType::f32, {400}, json{{"kind", "audio"}, {"sample_rate", 8000}}, [](std::uint64_t n, void* p) {
    auto* f = static_cast<float*>(p);
    const double fr = n % 2 ? 2000 : 500;
    for (int k = 0; k < 400; ++k) f[k] = 0.5f * static_cast<float>(std::sin(2 * M_PI * fr * k / 8000));
  });
  // text: "frame N".
  in.add("text", DType::u8, {32}, nullptr, [](std::uint64_t n, void* p) {
    std::memset(p, 0, 32);
    const std::string s = "Frame " + std::to_string(n);
    std::memcpy(p, s.data(), s.size());
  });
  in.start();

  auto half = [](const void* p, std::size_t k) { return kernels::half_to_float(static_cast<const std::uint16_t*>(p)[k]); };
  std::vector<TeacherCase> cases = {
      {"template", "img", json::object(), DType::f32, {1},
       [](std::uint64_t n, const void* p) {
         const float want = static_cast<float>(24 - (8 + n % 8)) / 24.0f;
         const float got = static_cast<const float*>(p)[0];
         return std::fabs(got - want) < 1e-6 ? "" : "mean " + std::to_string(got) + ", want " + std::to_string(want);
       }},
      {"edges", "img", json{{"scales", {1}}, {"stride", 1}}, DType::f16, {3, 16, 24},
       [&](std::uint64_t n, const void* p) {
         const int edge = 8 + static_cast<int>(n % 8);
         const float m = half(p, 5 * 24 + edge - 1), off = half(p, 5 * 24 + edge - 3), c2 = half(p, 16 * 24 + 5 * 24 + edge - 1);
         return m == 0.5f && off == 0.0f && c2 == 0.5f ? "" : "edge at " + std::to_string(edge) + ": m " + std::to_string(m);
       }},
      {"scene-depth", "depth", json::object(), DType::bf16, {1, 4, 6},
       [](std::uint64_t n, const void* p) {
         const float want = 2.0f + static_cast<float>(n % 16) * 0.25f;
         for (int k = 0; k < 24; ++k) {
           if (kernels::bf16_to_float(static_cast<const std::uint16_t*>(p)[k]) != want) return std::string("depth differs");
         }
         return std::string();
       }},
      {"audio-spectrum", "audio", json{{"bands", 16}}, DType::f32, {16},
       [](std::uint64_t n, const void* p) {
         const auto* b = static_cast<const float*>(p);
         const int peak = static_cast<int>(std::max_element(b, b + 16) - b);
         // 16 mel bands from 50 Hz to 4 kHz peak at 455 Hz (band 3) and 2040 Hz (band 11).
         const int want = n % 2 ? 11 : 3;
         return peak == want ? "" : "peak band " + std::to_string(peak) + ", want " + std::to_string(want);
       }},
      {"caption-hash", "text", json{{"dim", 64}}, DType::f32, {64},
       [](std::uint64_t n, const void* p) {
         const auto* v = static_cast<const float*>(p);
         std::vector<float> want(64, 0.0f);
         for (const std::string& w : {std::string("frame"), std::to_string(n)}) {
           const auto h = fnv1a(w);
           want[h % 64] += (h >> 63) ? -1.0f : 1.0f;
         }
         double ss = 0;
         for (float x : want) ss += x * x;
         for (int k = 0; k < 64; ++k) {
           if (std::fabs(v[k] - want[k] / std::sqrt(ss)) > 1e-6) return std::string("embedding differs at ") + std::to_string(k);
         }
         return std::string();
       }},
  };
  std::vector<platform::Child> procs;
  for (auto& c : cases) {
    json p = c.params;
    p["from"] = "src/" + c.stream;
    p["take"] = "next";
    procs.push_back(node(c.type, "t-" + c.type, p));
  }
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    SCOPED_TRACE("teacher " + c.type);
    auto sub = subscribe("t-" + c.type, "out");
    ASSERT_TRUE(sub) << procs[i].output();
    EXPECT_EQ(sub->spec().dtype, c.out_dtype);
    EXPECT_EQ(sub->spec().shape, c.out_shape);
    EXPECT_EQ(sub->spec().memory, MemoryKind::host);
    EXPECT_EQ(sub->spec().layout["teacher"], c.type);
    EXPECT_EQ(sub->spec().layout["from"], "src/" + c.stream);
    int good = 0;
    std::uint64_t last = 0;
    for (int k = 0; k < 8; ++k) {
      auto f = sub->next(3s);
      ASSERT_TRUE(f) << "no output; node log:\n" << procs[i].output();
      EXPECT_GE(f->frame_id, 1000u);
      EXPECT_LT(f->frame_id, in.next_id.load());
      EXPECT_GT(f->frame_id, last);
      last = f->frame_id;
      EXPECT_EQ(f->t_source_ns, static_cast<std::int64_t>(5000 + 7 * f->frame_id)) << "t_source passed through";
      const auto why = c.check(f->frame_id, f->data);
      EXPECT_EQ(why, "") << "frame " << f->frame_id;
      good += why.empty();
      sub->release(*f);
    }
    EXPECT_EQ(good, 8);
  }
  for (std::size_t i = 0; i < procs.size(); ++i) {
    EXPECT_EQ(stop(procs[i]), 0) << procs[i].output();
    auto fin = final_json(procs[i].output());
    EXPECT_EQ(fin["type"], cases[i].type) << procs[i].output();
    EXPECT_GE(fin["processed"].get<int>(), 8);
  }
}

TEST_F(TeacherNodeMP, AnInputATeacherCannotTakeOrABadParamEndsTheNodeNamingTheKey) {
  Inputs in(domain_, "src");
  in.add("bytes", DType::u8, {16}, nullptr, [](std::uint64_t, void* p) { std::memset(p, 1, 16); });
  in.start();
  auto c = node("edges", "e", json{{"from", "src/bytes"}});
  auto rc = c.wait_for(15s);
  ASSERT_TRUE(rc) << "edges took a u8 vector";
  EXPECT_EQ(*rc, 2) << c.output();
  for (const char* part : {"param 'from'", "src/bytes is u8 [16]", "teacher 'edges' needs an image f32 [C, H, W]"}) {
    EXPECT_NE(c.output().find(part), std::string::npos) << "'" << part << "' not in:\n" << c.output();
  }
  auto b = node("edges", "e2", json{{"from", "src/bytes"}, {"scales", {0}}});
  rc = b.wait_for(15s);
  ASSERT_TRUE(rc);
  EXPECT_EQ(*rc, 2) << b.output();
  EXPECT_NE(b.output().find("param 'scales'"), std::string::npos) << b.output();
  auto u = node("audio-spectrum", "a", json{{"from", "src/bytes"}, {"bandz", 3}});
  rc = u.wait_for(15s);
  ASSERT_TRUE(rc);
  EXPECT_EQ(*rc, 2) << u.output();
  EXPECT_NE(u.output().find("params.bandz"), std::string::npos) << u.output();
}

TEST_F(TeacherNodeMP, LaunchCheckNamesBadTeacherAndSceneParamsByPath) {
  const json g{{"domain", domain_},
               {"nodes",
                {{{"name", "cam"}, {"type", "scene"}, {"params", {{"width", 4}}}},
                 {{"name", "e"}, {"type", "edges"}, {"params", {{"from", "cam/rgb"}, {"scales", {1, 0}}}}},
                 {{"name", "a"}, {"type", "audio-spectrum"}, {"params", {{"from", "cam/audio"}, {"take", "sometimes"}}}},
                 {{"name", "t"}, {"type", "caption-hash"}, {"params", {{"from", "cam"}}}},
                 {{"name", "ok"}, {"type", "scene-depth"}, {"params", {{"from", "cam/depth"}}}}}}};
  const std::string path = "/tmp/dp_test_check_" + domain_ + ".json";
  std::ofstream(path) << g.dump();
  auto c = platform::Child::spawn({DP_CLI, "launch", path, "--check"}, {true, true});
  auto rc = c.wait_for(15s);
  std::remove(path.c_str());
  ASSERT_TRUE(rc);
  EXPECT_EQ(*rc, 2) << c.output();
  for (const char* part : {"config has 4 problems", "nodes[0] (cam).params.width: must be in 8..8192, got 4",
                           "nodes[1] (e).params.scales: each cell size must be an integer in 1..64",
                           "nodes[2] (a).params.take: expected latest or next", "nodes[3] (t).params.from: expected NODE/STREAM"}) {
    EXPECT_NE(c.output().find(part), std::string::npos) << "'" << part << "' not in:\n" << c.output();
  }
  EXPECT_EQ(c.output().find("(ok)"), std::string::npos) << c.output();
}

TEST_F(TeacherNodeMP, AProducerBackWithAnotherShapeIsFollowedOrStopsTheTeacher) {
  auto fill_value = [](float v, std::size_t n) {
    return [v, n](std::uint64_t, void* p) {
      auto* f = static_cast<float*>(p);
      for (std::size_t k = 0; k < n; ++k) f[k] = v;
    };
  };
  auto in = std::make_unique<Inputs>(domain_, "src");
  in->add("img", DType::f32, {1, 8, 8}, nullptr, fill_value(0.25f, 64));
  in->start();
  auto t = node("template", "mean", json{{"from", "src/img"}});
  auto sub = subscribe("mean", "out");
  ASSERT_TRUE(sub) << t.output();
  auto value = [&](float want) {
    return test::wait_until(
        [&] {
          auto f = sub->next(100ms);
          if (!f) return false;
          const float v = *static_cast<const float*>(f->data);
          sub->release(*f);
          return v == want;
        },
        10s, 1ms);
  };
  ASSERT_TRUE(value(0.25f)) << t.output();
  // Back as [1, 16, 16]: the template's output is still f32 [1]: followed.
  in.reset();
  in = std::make_unique<Inputs>(domain_, "src");
  in->add("img", DType::f32, {1, 16, 16}, nullptr, fill_value(0.75f, 256));
  in->start();
  EXPECT_TRUE(value(0.75f)) << "the teacher did not follow its input's new shape; log:\n" << t.output();
  EXPECT_TRUE(t.running());
  // Back as [3, 8, 8]: the output would be f32 [3], not what the stream announced.
  in.reset();
  in = std::make_unique<Inputs>(domain_, "src");
  in->add("img", DType::f32, {3, 8, 8}, nullptr, fill_value(0.5f, 192));
  in->start();
  auto rc = t.wait_for(15s);
  ASSERT_TRUE(rc) << "the teacher went on with another output shape";
  EXPECT_EQ(*rc, 1) << t.output();
  for (const char* part : {"src/img came back as f32 [3,8,8]", "the output would be f32 [3]", "announced as f32 [1]",
                           "restart the teacher"}) {
    EXPECT_NE(t.output().find(part), std::string::npos) << "'" << part << "' not in:\n" << t.output();
  }
}

}  // namespace
}  // namespace dp

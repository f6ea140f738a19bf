// The compositor in a real graph on the host backend: `directport launch` runs three stand-in
// teachers (tensor-source: values a function of seed and frame_id) and the compositor, each its
// own process. This test subscribes to the fused stream and replays every fused frame with the
// CPU reference (same layout, inputs recomputed from frame_id, presence from the mask): the
// bytes must be identical, frame after frame, statistics included. A teacher killed with SIGKILL
// is masked while it is gone and fused again once the launcher has restarted it, and nothing else
// changes.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <map>

#include "directport/compositor/compositor.hpp"
#include "directport/core/discovery.hpp"
#include "directport/core/error.hpp"
#include "directport/core/stream.hpp"
#include "directport/kernels/fusion.hpp"
#include "directport/kernels/pattern.hpp"
#include "directport/platform/child.hpp"
#include "support/fixtures.hpp"
#include "support/launch.hpp"
#include "support/test_support.hpp"

#ifndef DP_CLI
#error "DP_CLI (the path of the directport binary) must be defined by CMake"
#endif

namespace dp {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

struct TeacherDef {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  double rate_hz;
  std::uint64_t seed;
  kernels::NormMode norm;
};

const std::vector<TeacherDef> kTeachers = {
    {"edges", DType::f16, {3, 24, 32}, 50, 11, kernels::NormMode::none},
    {"text", DType::f32, {16}, 50, 7, kernels::NormMode::isotropic},
    {"depth", DType::bf16, {1, 48, 64}, 25, 3, kernels::NormMode::channel},
};

class CompositorMP : public test::GraphTest {
 protected:
  void SetUp() override {
    DomainTest::SetUp();
    path_ = "/tmp/dp_test_compositor_" + domain_ + ".json";
  }
  void TearDown() override {
    std::remove(path_.c_str());
    GraphTest::TearDown();
  }

  json graph(const json& compositor_params) {
    json nodes = json::array();
    for (auto& t : kTeachers) {
      nodes.push_back({{"name", t.name},
                       {"type", "tensor-source"},
                       {"restart", "on-failure"},
                       {"params",
                        {{"memory", "host"}, {"shape", t.shape}, {"dtype", dtype_name(t.dtype)}, {"rate_hz", t.rate_hz},
                         {"seed", t.seed}}}});
    }
    nodes.push_back({{"name", "fuse"}, {"type", "compositor"}, {"params", compositor_params}});
    return {{"domain", domain_}, {"nodes", nodes}};
  }

  json teachers_param() {
    json t = json::array();
    for (auto& d : kTeachers) t.push_back({{"from", d.name + "/out"}, {"norm", kernels::norm_mode_name(d.norm)}});
    return t;
  }

  std::string write(const json& config) {
    std::ofstream(path_) << config.dump(2);
    return path_;
  }

  long long pid_of(const std::string& node) {
    for (auto& e : list_nodes(domain_)) {
      if (e.name == node && e.liveness == Liveness::live) return e.owner.pid;
    }
    return -1;
  }

  std::string path_;
};

std::optional<Subscriber> subscribe_within(const std::string& node, const std::string& stream, const std::string& domain,
                                           std::chrono::milliseconds bound) {
  SubscribeOptions o;
  o.domain = domain;
  o.client_name = "test";
  std::optional<Subscriber> sub;
  test::wait_until(
      [&] {
        try {
          sub.emplace(node, stream, o);
          return true;
        } catch (const std::exception&) {
          return false;
        }
      },
      bound, 20ms);
  return sub;
}

TEST_F(CompositorMP, FusedFramesAreTheReferenceFusionAndADeadTeacherIsMaskedUntilItReturns) {
  json params{{"memory", "host"},  {"teachers", teachers_param()}, {"grid", {24, 32}}, {"dtype", "f32"},
              {"slots", 16},       {"wait_ms", 30.0},              {"momentum", 0.1},    {"wait_subscribers", 1}};
  test::Launcher launch(DP_CLI, {write(graph(params)), "-q"});
  // `inspect` shows the segments.
  // (Before subscribing: the compositor fuses only once a consumer is there, so that this test
  // sees every fused frame from the first.)
  {
    std::string out;
    ASSERT_TRUE(test::wait_until(
        [&] {
          auto c = platform::Child::spawn({DP_CLI, "inspect", "fuse/fused", "-d", domain_}, {true, true});
          auto rc = c.wait_for(15s);
          out = c.output();
          return rc && *rc == 0 && out.find("layout:") != std::string::npos;
        },
        15s, 100ms))
        << out << launch.log();
    const auto& c = out;
    for (const char* part : {"layout: fused, grid [24,32]", "edges", "from f16 [3,24,32], norm none", "depth",
                             "from bf16 [1,48,64], norm channel", "mask"}) {
      EXPECT_NE(c.find(part), std::string::npos) << "'" << part << "' not in:\n" << c;
    }
  }
  auto sub = subscribe_within("fuse", "fused", domain_, 15s);
  ASSERT_TRUE(sub) << "no fused stream within 15 s; launcher log:\n" << launch.log();

  // The manifest's layout is the one the reference computes for these teachers.
  std::vector<kernels::FusionInput> inputs;
  for (auto& t : kTeachers) inputs.push_back({t.name, t.dtype, t.shape, t.norm});
  kernels::FusionLayout layout(inputs, 24, 32, DType::f32, 0.1, 1e-5);
  ASSERT_EQ(sub->spec().layout, layout.to_json());
  ASSERT_EQ(sub->spec().frame_bytes(), layout.total_bytes());

  kernels::FusionCpu replica(layout);
  std::vector<std::vector<std::uint8_t>> in(kTeachers.size());
  for (std::size_t i = 0; i < kTeachers.size(); ++i) in[i].resize(layout.input_bytes(i));
  std::vector<std::uint8_t> want(layout.total_bytes());
  std::uint64_t frames = 0, last_id = 0;
  std::map<std::string, std::uint64_t> present;

  // Receives one fused frame, checks it against the replica; returns its mask (empty if none
  // came) and sets `id` to its frame_id.
  std::uint64_t id = 0;
  auto receive = [&]() -> std::vector<bool> {
    auto f = sub->next(2s);
    if (!f) {
      ADD_FAILURE() << "no fused frame for 2 s; launcher log:\n" << launch.log();
      return {};
    }
    EXPECT_GT(f->frame_id, last_id) << "fused frame ids increase";
    last_id = id = f->frame_id;
    const auto* out = static_cast<const float*>(f->data);
    std::vector<bool> mask(kTeachers.size());
    std::vector<const void*> ptrs(kTeachers.size(), nullptr);
    for (std::size_t i = 0; i < kTeachers.size(); ++i) {
      const float m = out[layout.mask_offset() + i];
      EXPECT_TRUE(m == 0.0f || m == 1.0f) << "mask " << m;
      mask[i] = m == 1.0f;
      if (!mask[i]) continue;
      ++present[kTeachers[i].name];
      const auto& t = kTeachers[i];
      const std::uint64_t plane = t.shape.size() == 3 ? std::uint64_t(t.shape[1] * t.shape[2]) : 1;
      kernels::fill_pattern_cpu(in[i].data(), t.dtype, layout.input_bytes(i) / dtype_size(t.dtype), plane, t.seed,
                                f->frame_id);
      ptrs[i] = in[i].data();
    }
    replica.fuse(ptrs, want.data());
    const bool same = std::memcmp(f->data, want.data(), want.size()) == 0;
    sub->release(*f);
    EXPECT_TRUE(same) << "fused frame " << f->frame_id << " differs from the reference fusion (frames received so far: "
                      << frames << ", missed: " << sub->counters().missed << ")";
    ++frames;
    return mask;
  };

  for (int k = 0; k < 40 && !HasFailure(); ++k) receive();
  ASSERT_FALSE(HasFailure());
  // (Under load a teacher can miss the 30 ms wait now and then: its slice is then masked, which
  // the replay above checks exactly. These only say that the teachers are fused at all.)
  EXPECT_GE(present["edges"], 20u);
  EXPECT_GE(present["depth"], 5u) << "depth ticks at 25 Hz: every other fused id";

  // Kill depth: its slice is masked while it is gone, the others go on as before. Depth ticks
  // every 40 ms, so ids that are multiples of 40 carry it whenever it is alive.
  const long long depth = pid_of("depth");
  ASSERT_GT(depth, 0);
  ASSERT_EQ(::kill(static_cast<pid_t>(depth), SIGKILL), 0);
  bool masked = false, back = false;
  std::uint64_t others_missing = 0, after_kill = 0;
  const auto t0 = std::chrono::steady_clock::now();
  while (!back && !HasFailure() && std::chrono::steady_clock::now() - t0 < 15s) {
    auto mask = receive();
    if (mask.empty()) break;
    ++after_kill;
    if (!mask[0] || !mask[1]) ++others_missing;
    if (id % 40 != 0) continue;
    if (!mask[2]) masked = true;
    if (masked && mask[2]) back = true;
  }
  EXPECT_NE(pid_of("depth"), depth) << "depth was restarted by the launcher";
  EXPECT_TRUE(masked) << "depth's slice was never masked after its death";
  EXPECT_TRUE(back) << "depth was not fused again after its restart within 15 s; log:\n" << launch.log();
  EXPECT_LE(others_missing, after_kill / 3) << "the other teachers were disturbed by depth's death";
  for (int k = 0; k < 20 && !HasFailure(); ++k) receive();
  EXPECT_EQ(sub->counters().missed, 0u);
  sub.reset();

  launch.signal(SIGINT);
  auto rc = launch.wait(15s);
  ASSERT_TRUE(rc) << "the launcher did not stop";
  EXPECT_EQ(*rc, 0) << launch.log();
  auto fin = test::final_line(launch.log(), "fuse");
  ASSERT_TRUE(fin.is_object()) << launch.log();
  EXPECT_GE(fin["fused"].get<std::uint64_t>(), frames) << "the compositor restarted? log:\n" << launch.log();
  EXPECT_EQ(fin["teachers"][2]["name"], "depth");
  EXPECT_TRUE(list_nodes(domain_).empty()) << "manifests left behind";
}

TEST_F(CompositorMP, ATeacherThatNeverComesIsMaskedWhenItsShapeIsDeclared) {
  json teachers = teachers_param();
  teachers.push_back({{"from", "ghost/out"}, {"dtype", "f32"}, {"shape", {2, 8, 8}}});
  json params{{"memory", "host"}, {"teachers", teachers}, {"grid", {24, 32}}, {"wait_ms", 10.0}, {"wait_subscribers", 1}};
  // The ghost is published by no node: add one that exits at once, so that the config is valid.
  json g = graph(params);
  g["nodes"].push_back({{"name", "ghost"},
                        {"type", "tensor-source"},
                        {"restart", "never"},
                        {"required", false},
                        {"params", {{"memory", "host"}, {"shape", {2, 8, 8}}, {"frames", 1}, {"rate_hz", 1000.0}}}});
  test::Launcher launch(DP_CLI, {write(g), "-q"});
  auto sub = subscribe_within("fuse", "fused", domain_, 15s);
  ASSERT_TRUE(sub) << launch.log();
  kernels::FusionLayout layout(
      {{"edges", DType::f16, {3, 24, 32}, kernels::NormMode::none}, {"text", DType::f32, {16}, kernels::NormMode::isotropic},
       {"depth", DType::bf16, {1, 48, 64}, kernels::NormMode::channel}, {"ghost", DType::f32, {2, 8, 8}, kernels::NormMode::channel}},
      24, 32, DType::f32);
  ASSERT_EQ(sub->spec().layout, layout.to_json());
  int ghost_missing = 0, edges_present = 0;
  for (int k = 0; k < 30; ++k) {
    auto f = sub->next(2s);
    ASSERT_TRUE(f) << launch.log();
    const auto* out = static_cast<const float*>(f->data);
    if (out[layout.mask_offset() + 3] == 0.0f) {
      ++ghost_missing;
      for (std::size_t e = 0; e < layout.segment_elements(3); ++e) ASSERT_EQ(out[layout.offset(3) + e], 0.0f);
    }
    // (The ghost's one frame, on a tick of its own, may be fused alone once the wait is over.)
    if (out[layout.mask_offset() + 0] == 1.0f) ++edges_present;
    sub->release(*f);
  }
  EXPECT_GE(ghost_missing, 29) << "the ghost published one frame at most";
  EXPECT_GE(edges_present, 25) << "the live teachers are fused while the ghost is masked";
  sub.reset();
  launch.signal(SIGINT);
  ASSERT_TRUE(launch.wait(15s));
}

// Config errors of the compositor's params name the JSON path, and nothing starts.
TEST_F(CompositorMP, BadTeacherParamsAreNamedByPath) {
  auto check = [&](const json& teachers, const std::string& needle) {
    json g = graph({{"teachers", teachers}, {"memory", "host"}});
    auto c = platform::Child::spawn({DP_CLI, "launch", write(g), "--check"}, {true, true});
    auto rc = c.wait_for(15s);
    ASSERT_TRUE(rc);
    EXPECT_EQ(*rc, 2) << c.output();
    EXPECT_NE(c.output().find(needle), std::string::npos) << "expected '" << needle << "' in:\n" << c.output();
  };
  check(json::array(), "nodes[3] (fuse).params.teachers: expected a non-empty array");
  check({{{"form", "edges/out"}}}, "nodes[3] (fuse).params.teachers[0].form: unknown key");
  check({{{"from", "edges"}}}, "nodes[3] (fuse).params.teachers[0].from: expected \"NODE/STREAM\"");
  check({{{"from", "edges/out"}, {"norm", "batch"}}}, "nodes[3] (fuse).params.teachers[0].norm: unknown normalisation 'batch'");
  check({{{"from", "edges/out"}, {"dtype", "f16"}}}, "nodes[3] (fuse).params.teachers[0]: give both 'dtype' and 'shape'");
  check({{{"from", "edges/out"}, {"dtype", "f16"}, {"shape", {2, 3}}}}, "teachers[0].shape");
  check({{{"from", "edges/out"}}, {{"from", "edges/out"}}}, "teachers[1].name: 'edges' names another teacher");
  check({{{"from", "nobody/out"}}}, "subscribes to 'nobody/out' but the graph has no node 'nobody'");
}

}  // namespace
}  // namespace dp

// configs/teachers.json (scene -> four analytic teachers -> compositor) launched as a user
// would, on the host backend: every node its own process, the fused stream has every teacher's
// mask set, the graph stops cleanly.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>

#include "directport/core/discovery.hpp"
#include "directport/kernels/half.hpp"
#include "teachers/nodes_test.hpp"

#ifndef DP_TEACHERS_CONFIG
#error "DP_TEACHERS_CONFIG (configs/teachers.json) must be defined by CMake"
#endif

namespace dp {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

class FrontEndMP : public test::NodesTest {};

TEST_F(FrontEndMP, TheTeachersConfigFusesEveryTeacherOnTheHostBackend) {
  std::ifstream f(DP_TEACHERS_CONFIG);
  json g = json::parse(f);
  g["domain"] = domain_;
  for (auto& n : g["nodes"]) {
    if (n["params"].contains("memory")) n["params"]["memory"] = "host";
    if (n["type"] == "compositor") {
      n["params"]["wait_subscribers"] = 1;
      n["params"]["wait_ms"] = 100.0;
    }
  }
  const std::string path = "/tmp/dp_test_teachers_" + domain_ + ".json";
  std::ofstream(path) << g.dump(2);
  test::Launcher launch(DP_CLI, {path, "-q"});
  auto sub = subscribe("fuse", "fused", 20s);
  std::remove(path.c_str());
  ASSERT_TRUE(sub) << launch.log();
  const auto& layout = sub->spec().layout;
  ASSERT_EQ(layout["segments"].size(), 4u) << layout.dump();
  std::vector<std::string> names;
  for (auto& s : layout["segments"]) names.push_back(s["teacher"]);
  EXPECT_EQ(names, (std::vector<std::string>{"edges", "depth", "audio", "text"}));
  const auto mask_at = layout["mask"]["offset"].get<std::size_t>();
  EXPECT_EQ(sub->spec().dtype, DType::bf16);
  int full = 0, frames = 0;
  std::uint64_t last = 0;
  for (int k = 0; k < 40; ++k) {
    auto fr = sub->next(3s);
    ASSERT_TRUE(fr) << "no fused frame for 3 s; log:\n" << launch.log();
    EXPECT_GT(fr->frame_id, last);
    last = fr->frame_id;
    const auto* m = static_cast<const std::uint16_t*>(fr->data) + mask_at;
    bool all = true;
    for (int t = 0; t < 4; ++t) all = all && kernels::bf16_to_float(m[t]) == 1.0f;
    full += all;
    ++frames;
    sub->release(*fr);
  }
  EXPECT_GE(full, 30) << "of " << frames << " fused frames, " << full << " had every teacher; log:\n" << launch.log();
  sub.reset();
  launch.signal(SIGINT);
  auto rc = launch.wait(15s);
  ASSERT_TRUE(rc);
  EXPECT_EQ(*rc, 0) << launch.log();
  for (const char* t : {"edges", "depth", "audio", "text"}) {
    auto fin = test::final_line(launch.log(), t);
    ASSERT_TRUE(fin.is_object()) << t << ":\n" << launch.log();
    EXPECT_GE(fin["processed"].get<int>(), 40) << t;
  }
  EXPECT_TRUE(list_nodes(domain_).empty()) << "manifests left behind";
}

}  // namespace
}  // namespace dp

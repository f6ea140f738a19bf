// The student node in a launched graph on the host backend: it pairs a sensor stream with the
// compositor's fused stream, trains, publishes its prediction in the fused layout, writes its
// CSV report and checkpoints; killed with SIGKILL, it is restarted by the launcher and resumes
// from its last checkpoint.
#include <unistd.h>

#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <iterator>
#include <regex>

#include "directport/core/discovery.hpp"
#include "directport/core/stream.hpp"
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

class StudentMP : public test::GraphTest {
 protected:
  void SetUp() override {
    DomainTest::SetUp();
    char tmpl[] = "/tmp/dp_test_student_graph_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (auto f : {"/graph.json", "/ck.json", "/ck.model.pt", "/ck.optim.pt", "/report.csv", "/ck.json.tmp",
                   "/ck.model.pt.tmp", "/ck.optim.pt.tmp"}) {
      std::remove((dir_ + f).c_str());
    }
    ::rmdir(dir_.c_str());
    GraphTest::TearDown();
  }
  // The student's counters from its manifest (an empty object until it has published them).
  json student_info() {
    for (auto& e : list_nodes(domain_)) {
      if (e.name != "student" || !e.doc.is_object()) continue;
      const auto& info = e.doc.value("info", json::object());
      if (info.contains("student") && info["student"].is_object()) return info["student"];
    }
    return json::object();
  }
  long long pid_of(const std::string& node) {
    for (auto& e : list_nodes(domain_)) {
      if (e.name == node && e.liveness == Liveness::live) return e.owner.pid;
    }
    return -1;
  }
  std::string dir_;
};

TEST_F(StudentMP, TrainsPublishesCheckpointsAndResumesAfterSigkill) {
  json g{{"domain", domain_},
         {"nodes",
          {{{"name", "cam"},
            {"type", "tensor-source"},
            {"params", {{"memory", "host"}, {"shape", {3, 32, 32}}, {"rate_hz", 100.0}, {"seed", 5}}}},
           {{"name", "edges"},
            {"type", "tensor-source"},
            {"params", {{"memory", "host"}, {"shape", {2, 8, 8}}, {"rate_hz", 100.0}, {"seed", 6}}}},
           {{"name", "fuse"},
            {"type", "compositor"},
            {"params", {{"memory", "host"}, {"teachers", {{{"from", "edges/out"}}}}, {"grid", {8, 8}}, {"wait_ms", 5.0}}}},
           {{"name", "student"},
            {"type", "student"},
            {"restart", "on-failure"},
            {"params",
             {{"input", "cam/out"},
              {"target", "fuse/fused"},
              {"width", 8},
              {"checkpoint", dir_ + "/ck"},
              {"checkpoint_every", 20},
              {"report", dir_ + "/report.csv"},
              {"report_every", 5},
              {"progress_s", 0.2}}}}}}};
  std::ofstream(dir_ + "/graph.json") << g.dump(2);
  test::Launcher launch(DP_CLI, {dir_ + "/graph.json", "-q"});
  // Training: the step count in the student's manifest passes 60.
  ASSERT_TRUE(test::wait_until([&] { return student_info().value("step", 0) >= 60; }, 60s, 50ms))
      << "the student did not reach 60 steps; log:\n" << launch.log();
  auto info = student_info();
  EXPECT_GE(info["paired"].get<std::uint64_t>(), 60u);
  // The student runs in directport-torch (handed over by exec, same process); the other nodes
  // never load LibTorch.
  {
    auto exe = [](long long pid) {
      char buf[4096] = {};
      ssize_t n = ::readlink(("/proc/" + std::to_string(pid) + "/exe").c_str(), buf, sizeof buf - 1);
      return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
    };
    auto maps = [](long long pid) {
      std::ifstream f("/proc/" + std::to_string(pid) + "/maps");
      return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    };
    const long long student = pid_of("student"), fuse = pid_of("fuse");
    ASSERT_GT(student, 0);
    ASSERT_GT(fuse, 0);
    const std::string student_exe = exe(student);
    EXPECT_EQ(student_exe.substr(student_exe.rfind('/') + 1), "directport-torch") << student_exe;
    EXPECT_NE(maps(student).find("libtorch"), std::string::npos);
    EXPECT_EQ(maps(fuse).find("libtorch"), std::string::npos) << "the compositor loaded LibTorch";
  }
  // Its prediction has the fused stream's layout.
  {
    SubscribeOptions o;
    o.domain = domain_;
    Subscriber pred("student", "prediction", o);
    Subscriber fused("fuse", "fused", o);
    EXPECT_EQ(pred.spec().layout, fused.spec().layout);
    EXPECT_EQ(pred.spec().frame_bytes(), fused.spec().frame_bytes());
  }
  // `top` shows the student's and the compositor's status lines.
  {
    auto c = platform::Child::spawn({DP_CLI, "top", "--once", "-d", domain_}, {true, true});
    ASSERT_EQ(c.wait_for(15s), 0) << c.output();
    EXPECT_NE(c.output().find("STATUS"), std::string::npos) << c.output();
    EXPECT_TRUE(std::regex_search(c.output(), std::regex("student +step \\d+, [0-9.]+ steps/s, loss"))) << c.output();
    EXPECT_TRUE(std::regex_search(c.output(), std::regex("fuse +fused \\d+ \\(complete"))) << c.output();
  }
  // A checkpoint exists; kill the student and let the launcher restart it.
  ASSERT_TRUE(test::wait_until([&] { return std::ifstream(dir_ + "/ck.json").good(); }, 10s));
  const long long old = pid_of("student");
  ASSERT_GT(old, 0);
  ASSERT_EQ(::kill(static_cast<pid_t>(old), SIGKILL), 0);
  ASSERT_TRUE(launch.wait_log("resumed from checkpoint", 30s)) << launch.log();
  std::smatch m;
  const std::string log = launch.log();
  ASSERT_TRUE(std::regex_search(log, m, std::regex("resumed from checkpoint \\S+ at step (\\d+)"))) << log;
  const auto resumed = std::stoull(m[1]);
  EXPECT_GE(resumed, 20u);
  EXPECT_EQ(resumed % 20, 0u) << "resumed from a checkpoint written every 20 steps";
  ASSERT_TRUE(test::wait_until([&] { return student_info().value("step", 0ull) >= resumed + 20; }, 60s, 50ms))
      << "the restarted student did not train on; log:\n" << launch.log();
  EXPECT_NE(pid_of("student"), old);
  launch.signal(SIGINT);
  auto rc = launch.wait(30s);
  ASSERT_TRUE(rc);
  EXPECT_EQ(*rc, 0) << launch.log();
  auto fin = test::final_line(launch.log(), "student");
  ASSERT_TRUE(fin.is_object()) << launch.log();
  EXPECT_GT(fin["step"].get<std::uint64_t>(), resumed);
  // The CSV: a header, then rows whose step increases within each run.
  std::ifstream csv(dir_ + "/report.csv");
  std::string header, line;
  std::getline(csv, header);
  EXPECT_EQ(header.rfind("step,time_s,loss,loss_edges,steps_per_s,paired", 0), 0u) << header;
  int rows = 0;
  while (std::getline(csv, line)) ++rows;
  EXPECT_GE(rows, 10);
}

// The small distillation graph of CI: the scene, two analytic teachers, the compositor and the
// student, on the host backend. The student's loss falls within a bounded number of steps.
TEST_F(StudentMP, LossFallsOnTheSceneWithinABoundedNumberOfSteps) {
  json g{{"domain", domain_},
         {"nodes",
          {{{"name", "scene"},
            {"type", "scene"},
            {"params", {{"memory", "host"}, {"width", 64}, {"height", 48}, {"rate_hz", 30}, {"seed", 3}}}},
           {{"name", "edges"}, {"type", "edges"}, {"params", {{"from", "scene/rgb"}, {"scales", {1, 2}}, {"stride", 2}}}},
           {{"name", "depth"}, {"type", "scene-depth"}, {"params", {{"from", "scene/depth"}, {"factor", 2}}}},
           {{"name", "fuse"},
            {"type", "compositor"},
            {"params",
             {{"memory", "host"},
              {"teachers", {{{"from", "edges/out"}}, {{"from", "depth/out"}}}},
              {"grid", {24, 32}},
              {"wait_ms", 30.0}}}},
           {{"name", "student"},
            {"type", "student"},
            {"params",
             {{"input", "scene/rgb"},
              {"target", "fuse/fused"},
              {"width", 16},
              {"lr", 0.002},
              {"steps", 240},
              {"report", dir_ + "/report.csv"},
              {"report_every", 10},
              {"progress_s", 1.0}}}}}}};
  std::ofstream(dir_ + "/graph.json") << g.dump(2);
  test::Launcher launch(DP_CLI, {dir_ + "/graph.json", "-q"});
  ASSERT_TRUE(launch.wait_log("[student] {", 120s)) << "the student did not finish its 240 steps; log:\n" << launch.log();
  launch.signal(SIGINT);
  ASSERT_TRUE(launch.wait(30s));
  std::ifstream csv(dir_ + "/report.csv");
  std::string header, line;
  std::getline(csv, header);
  std::vector<double> loss;
  while (std::getline(csv, line)) loss.push_back(std::stod(line.substr(line.find(',', line.find(',') + 1) + 1)));
  ASSERT_GE(loss.size(), 20u) << "rows of the CSV";
  const double first = (loss[0] + loss[1] + loss[2]) / 3;
  const double last = (loss[loss.size() - 1] + loss[loss.size() - 2] + loss[loss.size() - 3]) / 3;
  std::printf("loss over the first 30 steps %.4g, over the last 30 %.4g\n", first, last);
  EXPECT_LT(last, 0.8 * first) << "loss over the first 30 steps " << first << ", over the last 30 " << last;
}

}  // namespace
}  // namespace dp

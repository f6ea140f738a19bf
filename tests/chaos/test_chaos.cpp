// dp_chaos run as a user runs it: a short chaos run on the host backend must pass every check
// (and must really have killed sources and sinks, mid-stream and during set-up); and each kind
// of check must catch its fault when one is injected on purpose (--fault), so that a passing run
// means something.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "directport/platform/child.hpp"
#include "support/fixtures.hpp"
#include "support/system_probe.hpp"

#ifndef DP_CHAOS
#error "DP_CHAOS (the path of dp_chaos) must be defined by CMake"
#endif

namespace dp {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

struct ChaosRun {
  int rc = -1000;
  std::string out;
  json summary;
};

class ChaosMP : public test::GraphTest {
 protected:
  // Runs dp_chaos in our domain to the end, bounded; its JSON summary parsed.
  ChaosRun chaos(std::vector<std::string> args, std::chrono::milliseconds bound = 180s) {
    char tmpl[] = "/tmp/dp_test_chaos_XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl), nullptr);
    const std::string dir = tmpl, json_path = dir + "/summary.json";
    args.insert(args.begin(), {DP_CHAOS, "--domain", domain_, "--json", json_path, "--workdir", dir + "/work"});
    auto c = platform::Child::spawn(args, {/*capture_stdout=*/true, /*merge_stderr=*/true});
    ChaosRun r;
    auto rc = c.wait_for(bound);
    if (!rc) {
      c.signal(SIGKILL);
      c.wait_for(10s);
      ADD_FAILURE() << "dp_chaos did not finish within " << bound.count() << " ms:\n" << c.output();
    }
    r.rc = rc ? *rc : -1000;
    r.out = c.output();
    std::ifstream in(json_path);
    if (in) r.summary = json::parse(in, nullptr, false);
    std::remove(json_path.c_str());
    std::system(("rm -rf '" + dir + "'").c_str());
    return r;
  }
  static bool any_failure(const json& s, const std::string& part) {
    for (auto& f : s.value("failures", json::array())) {
      if (f.get<std::string>().find(part) != std::string::npos) return true;
    }
    return false;
  }
};

TEST_F(ChaosMP, ShortHostRunPassesEveryCheck) {
  auto r = chaos({"--duration", "15", "--kill-rate", "1", "--seed", "20240611", "--setup-fraction", "0.4",
                  "--memory", "host"});
  ASSERT_TRUE(r.summary.is_object()) << "no JSON summary:\n" << r.out;
  const auto& s = r.summary;
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(s["passed"], true) << s["failures"].dump(2);
  EXPECT_EQ(s["seed"], 20240611u);
  EXPECT_GE(s["duration_s"].get<double>(), 14.9);
  // It really did something: sources and sinks killed, mid-stream and during set-up.
  const auto& k = s["kills"];
  EXPECT_GE(k["total"].get<int>(), 5) << k;
  EXPECT_GE(k["mid_stream"].get<int>(), 1) << k;
  EXPECT_GE(k["set_up"].get<int>(), 1) << k;
  EXPECT_GE(k["sources"].get<int>(), 1) << k;
  EXPECT_GE(k["sinks"].get<int>(), 1) << k;
  // Every kill was followed by a restart, and every one recovered (or was killed again first).
  EXPECT_EQ(s["restarts"], k["total"]) << s.dump(2);
  EXPECT_EQ(s["reconnect_ms"]["count"].get<int>() + k["superseded"].get<int>(), k["total"].get<int>()) << s.dump(2);
  EXPECT_EQ(s["unexpected_exits"], 0);
  EXPECT_GT(s["frames"]["verified"].get<long long>(), 0);
  EXPECT_EQ(s["frames"]["bad"], 0);
  EXPECT_EQ(s["frames"]["failed_verification_lines"], 0);
  for (auto kind : {"shm", "sockets", "processes"}) EXPECT_EQ(s["leaks"][kind], json::array()) << kind;
  // GPU memory is accounted for GPU streams only (NVML, on the GPU machine); here it says why not.
  EXPECT_EQ(s["leaks"]["gpu_memory"]["measured"], false) << s["leaks"].dump(2);
  EXPECT_NE(s["leaks"]["gpu_memory"]["why"].get<std::string>().find("host memory"), std::string::npos);
  EXPECT_TRUE(r.out.find("GPU memory         not measured: host memory") != std::string::npos) << r.out;
  EXPECT_EQ(s["launcher"]["exit_code"], 0);
  EXPECT_EQ(s["launcher"]["stopped_cleanly"], true);
  EXPECT_TRUE(r.out.find("dp_chaos: PASS") != std::string::npos) << r.out;
}

TEST_F(ChaosMP, AStalledSinkIsReportedAsAHang) {
  auto r = chaos({"--duration", "3", "--kill-rate", "0", "--hang-bound", "2", "--fault", "stall-sink"});
  ASSERT_TRUE(r.summary.is_object()) << r.out;
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_EQ(r.summary["passed"], false);
  EXPECT_TRUE(any_failure(r.summary, "took no frame for")) << r.summary["failures"].dump(2);
  EXPECT_TRUE(r.out.find("dp_chaos: FAIL") != std::string::npos) << r.out;
}

TEST_F(ChaosMP, CorruptFramesAreReported) {
  // 6 s: with 3 s it failed twice in a full parallel ctest run (never alone, eleven reruns): a
  // loaded machine leaves less of a short run for corrupt frames to reach a sink and be verified.
  auto r = chaos({"--duration", "6", "--kill-rate", "0", "--fault", "corrupt"});
  ASSERT_TRUE(r.summary.is_object()) << r.out;
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_TRUE(any_failure(r.summary, "received a corrupt frame")) << r.summary["failures"].dump(2);
  EXPECT_GT(r.summary["frames"]["failed_verification_lines"].get<int>(), 0);
  EXPECT_GT(r.summary["frames"]["bad"].get<int>(), 0) << "the sinks' final lines count them too";
}

TEST_F(ChaosMP, LeftoversAreReportedAsLeaks) {
  auto r = chaos({"--duration", "2", "--kill-rate", "0", "--fault", "leak"});
  ASSERT_TRUE(r.summary.is_object()) << r.out;
  EXPECT_EQ(r.rc, 1) << r.out;
  const auto& l = r.summary["leaks"];
  EXPECT_EQ(l["shm"].size(), 1u) << l;
  EXPECT_EQ(l["sockets"].size(), 1u) << l;
  ASSERT_EQ(l["processes"].size(), 1u) << l;
  EXPECT_NE(l["processes"][0]["argv"].get<std::string>().find(domain_), std::string::npos) << l;
  EXPECT_TRUE(any_failure(r.summary, "leaked processes")) << r.summary["failures"].dump(2);
}

TEST_F(ChaosMP, HelpAndBadOptions) {
  auto help = platform::Child::spawn({DP_CHAOS, "--help"}, {true, true});
  ASSERT_EQ(help.wait_for(10s), 0) << help.output();
  for (auto opt : {"--duration", "--kill-rate", "--seed", "--json", "--fault"}) {
    EXPECT_NE(help.output().find(opt), std::string::npos) << opt << " missing from --help:\n" << help.output();
  }
  for (std::vector<std::string> bad : {std::vector<std::string>{"--kill-rate", "-1"},
                                       std::vector<std::string>{"--fault", "nope"},
                                       std::vector<std::string>{"--no-such-option"}}) {
    bad.insert(bad.begin(), DP_CHAOS);
    auto c = platform::Child::spawn(bad, {true, true});
    EXPECT_EQ(c.wait_for(10s), 2) << bad[1] << ":\n" << c.output();
  }
}

}  // namespace
}  // namespace dp

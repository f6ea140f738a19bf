// The `directport` binary as a user drives it: help and option errors, `node` name checks,
// `launch` (--check, bad configs, a host graph for a duration, restarts, a required node failing
// for good, an optional one failing, every node finishing) and `ls`/`inspect`/`top` on a live
// graph. Every run is bounded; every graph runs in a domain of its own and must leave no process
// and nothing in /dev/shm behind.
#include <dirent.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "directport/core/discovery.hpp"
#if DIRECTPORT_HAS_CUDA
#include "directport/cuda/driver.hpp"
#endif
#include "directport/platform/child.hpp"
#include "support/fixtures.hpp"
#include "support/launch.hpp"

#ifndef DP_CLI
#error "DP_CLI (the path of the directport binary) must be defined by CMake"
#endif

namespace dp {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

struct Run {
  int rc = -1000;  // exit code, -signal, or -1000 if it outran its bound (then killed)
  std::string out;
};

// Runs `directport ARGS...` to the end, bounded; stdout (and stderr, when merged) captured.
Run cli(std::vector<std::string> args, bool merge_stderr = true, std::chrono::milliseconds bound = 15s) {
  args.insert(args.begin(), DP_CLI);
  auto c = platform::Child::spawn(args, {/*capture_stdout=*/true, merge_stderr});
  auto rc = c.wait_for(bound);
  if (!rc) {
    c.signal(SIGKILL);
    c.wait_for(5s);
    std::string cmd;
    for (auto& a : args) cmd += " " + a;
    ADD_FAILURE() << "`" << cmd << "` did not finish within " << bound.count() << " ms; output:\n" << c.output();
    return {-1000, c.output()};
  }
  return {*rc, c.output()};
}

// The JSON a command printed on stdout (stderr not captured), or a test failure.
json cli_json(std::vector<std::string> args) {
  auto r = cli(std::move(args), /*merge_stderr=*/false);
  EXPECT_EQ(r.rc, 0) << r.out;
  auto j = json::parse(r.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << "not JSON:\n" << r.out;
  return j.is_discarded() ? json() : j;
}

const json* find_named(const json& arr, const std::string& name) {
  if (!arr.is_array()) return nullptr;
  for (auto& e : arr) {
    if (e.is_object() && e.value("name", "") == name) return &e;
  }
  return nullptr;
}

// A `directport launch` running in the background (support/launch.hpp).
class Launcher : public test::Launcher {
 public:
  explicit Launcher(std::vector<std::string> args) : test::Launcher(DP_CLI, std::move(args)) {}
};
using test::final_line;
using test::processes_with_arg;

class CliMP : public test::GraphTest {
 protected:
  void SetUp() override {
    DomainTest::SetUp();
    char tmpl[] = "/tmp/dp_test_cli_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (auto& f : files_) std::remove(f.c_str());
    ::rmdir(dir_.c_str());
    GraphTest::TearDown();
  }

  std::string write_config(const json& config, const std::string& name = "graph.json") {
    auto path = dir_ + "/" + name;
    std::ofstream(path) << config.dump(2);
    files_.push_back(path);
    return path;
  }

  // pattern-source on the host backend (4 KiB frames) and two checksum sinks.
  json host_graph(double rate_hz = 500) {
    return {{"domain", domain_},
            {"nodes",
             {{{"name", "source"},
               {"type", "pattern-source"},
               {"params", {{"memory", "host"}, {"rate_hz", rate_hz}, {"bytes", 4096}}}},
              {{"name", "sink0"}, {"type", "checksum-sink"}, {"params", {{"from", "source/frames"}}}},
              {{"name", "sink1"}, {"type", "checksum-sink"}, {"params", {{"from", "source/frames"}}}}}}};
  }

  json ls() { return cli_json({"ls", "-d", domain_, "--json"}); }

  // Waits until `names` are all listed running and live, and `source/frames` has `consumers`.
  bool wait_running(const std::vector<std::string>& names, std::size_t consumers = 2,
                    std::chrono::milliseconds timeout = 10s) {
    return test::wait_until(
        [&] {
          auto j = ls();
          for (auto& n : names) {
            auto* e = find_named(j["nodes"], n);
            if (!e || (*e)["state"] != "running" || (*e)["liveness"] != "live") return false;
          }
          auto* src = find_named(j["nodes"], "source");
          auto* st = src ? find_named((*src)["streams"], "frames") : nullptr;
          return consumers == 0 || (st && st->value("consumers", json::array()).size() == consumers);
        },
        timeout, 50ms);
  }

  long long pid_of(const std::string& node) {
    auto j = ls();
    auto* e = find_named(j["nodes"], node);
    return e ? (*e)["pid"].get<long long>() : -1;
  }

  // The end state every launch must leave: no manifest, no segment, no process of the domain.
  void expect_clean() {
    EXPECT_TRUE(list_nodes(domain_).empty()) << "manifests left in the domain";
    EXPECT_TRUE(test::shm_entries(domain_).empty()) << "segments left in /dev/shm";
    EXPECT_TRUE(processes_with_arg(domain_).empty()) << "processes of the domain left running";
  }

  std::string dir_;
  std::vector<std::string> files_;
};

// ------------------------------------------------------------------ help and options

// `directport bench` on the host backend (the only method without a GPU): it runs real
// processes and writes JSON and CSV whose rows are complete. Figures are not judged here.
TEST_F(CliMP, BenchRunsTheHostMethodAndWritesJsonAndCsv) {
  const std::string out = dir_ + "/bench";
  auto r = cli({"bench", "--methods", "host", "--sizes", "4K,64K", "--consumers", "1,3", "--frames", "60", "--json",
                out + ".json", "--csv", out + ".csv"},
               true, 60s);
  files_.push_back(out + ".json");
  files_.push_back(out + ".csv");
  if (r.rc == 2 && has(r.out, "is not there")) GTEST_SKIP() << "dp_bench_handoff is not built: " << r.out;
  ASSERT_EQ(r.rc, 0) << r.out;
  std::ifstream jf(out + ".json");
  auto j = json::parse(jf, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j["complete"], true);
  EXPECT_EQ(j["spin_us"], 0);
  EXPECT_NE(::access((out + ".json.tmp").c_str(), F_OK), 0) << "the temporary file is renamed over the result";
  ASSERT_EQ(j["rows"].size(), 4u) << j.dump(2);
  for (auto& row : j["rows"]) {
    EXPECT_EQ(row["method"], "host");
    EXPECT_TRUE(row["ok"].get<bool>()) << row.dump();
    EXPECT_EQ(row["bad"], 0) << "a consumer saw a frame out of order or a wrong stamp";
    EXPECT_GT(row["lat_cpu_us_p50"].get<double>(), 0.0);
    EXPECT_GE(row["lat_cpu_us_p99"].get<double>(), row["lat_cpu_us_p50"].get<double>());
    EXPECT_GT(row["frames_per_s"].get<double>(), 0.0);
  }
  std::ifstream cf(out + ".csv");
  std::string header, line;
  std::getline(cf, header);
  EXPECT_TRUE(has(header, "method,bytes,consumers,frames,ok,lat_cpu_us_p50")) << header;
  int lines = 0;
  while (std::getline(cf, line)) ++lines;
  EXPECT_EQ(lines, 4);
  // Bad input is named; a GPU method without a GPU says so.
  auto bad = cli({"bench", "--methods", "carrier-pigeon"});
  EXPECT_EQ(bad.rc, 2);
  EXPECT_TRUE(has(bad.out, "unknown method 'carrier-pigeon'")) << bad.out;
  auto size = cli({"bench", "--methods", "host", "--sizes", "4Q"});
  EXPECT_EQ(size.rc, 2);
  EXPECT_TRUE(has(size.out, "size '4Q'")) << size.out;
  auto spin_bad = cli({"bench", "--methods", "host", "--spin-us", "-5"});
  EXPECT_EQ(spin_bad.rc, 2);
  EXPECT_TRUE(has(spin_bad.out, "--spin-us")) << spin_bad.out;
  // Polling consumers: same rows, the setting recorded.
  auto spun = cli({"bench", "--methods", "host", "--sizes", "4K", "--consumers", "2", "--frames", "40", "--spin-us",
                   "500", "--json", out + "-spin.json"},
                  true, 60s);
  files_.push_back(out + "-spin.json");
  ASSERT_EQ(spun.rc, 0) << spun.out;
  std::ifstream sf(out + "-spin.json");
  auto sj = json::parse(sf, nullptr, false);
  ASSERT_FALSE(sj.is_discarded());
  EXPECT_EQ(sj["spin_us"], 500);
  ASSERT_EQ(sj["rows"].size(), 1u) << sj.dump(2);
  EXPECT_TRUE(sj["rows"][0]["ok"].get<bool>()) << sj.dump(2);
  EXPECT_EQ(sj["rows"][0]["bad"], 0);
}

// On the GPU: DirectPort, the torch.multiprocessing peer and the floor (no handoff) at one size.
// Every row's frames are checked by their consumers (bad = 0), and every row has both clocks: the
// torch peer's GPU clock comes from the native kernels it loads through ctypes
// (bench/clock_module.cpp). Figures are not judged here.
class GpuBench : public CliMP {};

TEST_F(GpuBench, DirectPortTorchAndFloorRowsCarryBothClocks) {
#if DIRECTPORT_HAS_CUDA
  if (!cuda::availability().usable) GTEST_SKIP() << "no usable CUDA device: " << cuda::availability().reason;
#else
  GTEST_SKIP() << "built without CUDA (DIRECTPORT_WITH_CUDA=OFF)";
#endif
  const std::string out = dir_ + "/bench-gpu.json";
  files_.push_back(out);
  auto r = cli({"bench", "--methods", "directport,torch,floor", "--sizes", "4K", "--consumers", "1", "--frames", "60",
                "--json", out},
               true, 80s);
  if (r.rc == 2 && has(r.out, "is not there")) GTEST_SKIP() << "dp_bench_handoff is not built: " << r.out;
  ASSERT_EQ(r.rc, 0) << r.out;
  std::ifstream jf(out);
  auto j = json::parse(jf, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["complete"], true);
  ASSERT_EQ(j["rows"].size(), 3u) << j.dump(2);
  std::string torch_skipped;
  for (auto& row : j["rows"]) {
    if (row["method"] == "torch" && row.contains("skipped")) {
      // Only a machine without torch (or without CUDA for it) excuses the row; a peer that ran
      // and failed (the clock library, a crash) fails the test.
      torch_skipped = row["skipped"].get<std::string>();
      EXPECT_TRUE(has(torch_skipped, "torch is not importable") || has(torch_skipped, "torch sees no CUDA device"))
          << "the torch peer failed: " << row.dump();
      continue;
    }
    EXPECT_TRUE(row["ok"].get<bool>()) << row.dump();
    EXPECT_EQ(row["bad"], 0) << "a consumer read a frame that is not the one sent: " << row.dump();
    for (const char* key : {"lat_cpu_us_p50", "lat_cpu_us_p99", "lat_gpu_us_p50", "lat_gpu_us_p99", "frames_per_s"}) {
      ASSERT_TRUE(row[key].is_number()) << key << " missing: " << row.dump();
      EXPECT_GT(row[key].get<double>(), 0.0) << key << ": " << row.dump();
    }
    EXPECT_GE(row["lat_gpu_us_p99"].get<double>(), row["lat_gpu_us_p50"].get<double>()) << row.dump();
  }
  // The ratios pair each peer with DirectPort at its size; the floor is not a peer.
  for (auto& q : j["ratios"]) EXPECT_NE(q["method"], "floor") << q.dump();
  if (!torch_skipped.empty()) GTEST_SKIP() << "the torch peer did not run: " << torch_skipped;
  ASSERT_EQ(j["ratios"].size(), 1u) << j.dump(2);
  EXPECT_TRUE(j["ratios"][0]["lat_gpu_ratio"].is_number()) << j.dump(2);
}

TEST_F(CliMP, HelpListsEverySubcommand) {
  auto r = cli({"--help"});
  EXPECT_EQ(r.rc, 0) << r.out;
  for (auto sub : {"doctor", "ls", "inspect", "node", "demo", "launch", "top", "bench"}) {
    EXPECT_TRUE(has(r.out, std::string("\n  ") + sub + " ")) << "--help does not list '" << sub << "':\n" << r.out;
  }
  auto launch = cli({"launch", "--help"});
  EXPECT_EQ(launch.rc, 0);
  for (auto opt : {"--duration", "--check", "--quiet", "--domain"}) EXPECT_TRUE(has(launch.out, opt)) << opt;
  auto top = cli({"top", "--help"});
  EXPECT_EQ(top.rc, 0);
  for (auto opt : {"--once", "--json", "--iterations", "--interval", "--domain"}) EXPECT_TRUE(has(top.out, opt)) << opt;
}

TEST_F(CliMP, UnknownOptionIsNamed) {
  for (auto args : std::vector<std::vector<std::string>>{{"ls", "--no-such-option"},
                                                         {"--no-such-option", "ls"},
                                                         {"launch", "x.json", "--no-such-option"},
                                                         {"top", "--once", "--no-such-option"}}) {
    auto r = cli(args);
    EXPECT_EQ(r.rc, 2) << "bad input exits 2 (docs/CONFIG.md):\n" << r.out;
    EXPECT_TRUE(has(r.out, "--no-such-option")) << "the message must name the option:\n" << r.out;
  }
}

TEST_F(CliMP, UnknownTopLevelWordIsNamed) {
  // BUG (cli/main.cpp): with require_subcommand(1), CLI11 reports the missing subcommand before
  // the unexpected word, so a typo in the command or an unknown option before it is never named:
  // "A subcommand is required".
  for (std::string word : {"--no-such-option", "no-such-command"}) {
    auto r = cli({word});
    EXPECT_NE(r.rc, 0) << r.out;
    EXPECT_TRUE(has(r.out, word)) << "the message must name '" << word << "':\n" << r.out;
  }
  auto r = cli({});
  EXPECT_NE(r.rc, 0) << "no subcommand at all is still an error";
  EXPECT_TRUE(has(r.out, "subcommand")) << r.out;
}

TEST_F(CliMP, NodeHelpListsTheBuiltinTypesWithTheirParams) {
  auto r = cli({"node", "--help"});
  EXPECT_EQ(r.rc, 0) << r.out;
  for (auto part : {"pattern-source:", "checksum-sink:", "from (string) [required]", "rate_hz (number) [200.0]",
                    "wait_subscribers (integer) [0]", "timeout_s (number) [10.0]", "memory (string) [\"auto\"]"}) {
    EXPECT_TRUE(has(r.out, part)) << "missing '" << part << "':\n" << r.out;
  }
}

TEST_F(CliMP, NodeWithABadNameNamesTheRule) {
  for (std::string bad : {"../x", "a/b", "a.b"}) {
    auto r = cli({"node", "checksum-sink", "--name", bad, "-d", domain_, "-p", "from=a/b"});
    EXPECT_NE(r.rc, 0) << r.out;
    EXPECT_TRUE(has(r.out, "node name '" + bad + "'")) << r.out;
    EXPECT_TRUE(has(r.out, "1 to 48 characters from A-Z a-z 0-9 _ -")) << "the message must state the rule:\n" << r.out;
  }
  auto r = cli({"node", "pattern-source", "--name", "ok", "-d", "../dom"});
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(has(r.out, "domain '../dom'")) << r.out;
  expect_clean();
}

TEST_F(CliMP, NodeWithBadParamsNamesTheParam) {
  auto r = cli({"node", "pattern-source", "--name", "src", "-d", domain_, "-p", "rate=5"});
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(has(r.out, "params.rate:")) << r.out;
  EXPECT_TRUE(has(r.out, "known: stream, bytes")) << r.out;
  r = cli({"node", "checksum-sink", "--name", "k", "-d", domain_});
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(has(r.out, "params.from:")) << r.out;
  r = cli({"node", "no-such-type", "--name", "k", "-d", domain_});
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(has(r.out, "unknown node type 'no-such-type'")) << r.out;
  for (auto type : {"checksum-sink", "compositor", "pattern-source", "tensor-source"}) {
    EXPECT_TRUE(has(r.out, type)) << "the known types do not list " << type << ": " << r.out;
  }
  expect_clean();
}

// ------------------------------------------------------------------ launch: validation

TEST_F(CliMP, LaunchCheckOfTheExampleConfig) {
  auto r = cli({"launch", DP_EXAMPLE_CONFIG, "--check"});
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(has(r.out, "valid; domain 'example', 3 nodes")) << r.out;
  std::istringstream in(r.out);
  int rows = 0;
  for (std::string line; std::getline(in, line);) {
    std::istringstream cols(line);
    std::string name, type, restart_word, restart, required;
    cols >> name >> type >> restart_word >> restart >> required;
    if (name == "source") {
      ++rows;
      EXPECT_EQ(type, "pattern-source");
      EXPECT_EQ(restart, "on-failure");
      EXPECT_EQ(required, "required");
      EXPECT_TRUE(has(line, "\"wait_subscribers\":0")) << "defaults must be shown filled in: " << line;
    } else if (name == "sink0" || name == "sink1") {
      ++rows;
      EXPECT_EQ(type, "checksum-sink");
      EXPECT_EQ(restart, name == "sink1" ? "always" : "on-failure") << line;
      EXPECT_EQ(required, name == "sink1" ? "optional" : "required") << line;
      EXPECT_TRUE(has(line, "\"from\":\"source/frames\"")) << line;
    }
  }
  EXPECT_EQ(rows, 3) << r.out;
  // --domain overrides the config's domain; --check starts nothing.
  r = cli({"launch", DP_EXAMPLE_CONFIG, "--check", "-d", domain_});
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(has(r.out, "domain '" + domain_ + "'")) << r.out;
  r = cli({"launch", DP_EXAMPLE_CONFIG, "--check", "-d", "a/b"});
  EXPECT_NE(r.rc, 0) << r.out;
  expect_clean();
}

// A config whose nodes are mostly fine: a launcher that validated per node would start some.
json bad_graph(const std::string& domain) {
  return {{"domain", domain},
          {"nodes",
           {{{"name", "source"}, {"type", "pattern-source"}, {"params", {{"memory", "host"}, {"rate_hz", 100}}}},
            {{"name", "sink0"}, {"type", "checksum-sink"}, {"params", {{"from", "source/frames"}}}},
            {{"name", "sink1"}, {"type", "checksum-sink"}, {"params", {{"from", "source/frames"}, {"rate", 5}}}},
            {{"name", "sink2"}, {"type", "checksum-sink"}, {"params", {{"from", "source/frame"}}}, {"restart", "often"}}}}};
}

TEST_F(CliMP, LaunchOfABadConfigNamesEveryProblemAndStartsNothing) {
  auto path = write_config(bad_graph(domain_));
  auto r = cli({"launch", path, "-q"});
  EXPECT_NE(r.rc, 0) << r.out;
  EXPECT_TRUE(has(r.out, path + ": config has 3 problems:")) << r.out;
  EXPECT_TRUE(has(r.out, "nodes[2] (sink1).params.rate: node type 'checksum-sink' has no param 'rate'")) << r.out;
  EXPECT_TRUE(has(r.out, "nodes[3] (sink2).restart:")) << r.out;
  EXPECT_TRUE(has(r.out, "nodes[3] (sink2).params: subscribes to 'source/frame' but node 'source' publishes frames"))
      << r.out;
  EXPECT_FALSE(has(r.out, "[launch]")) << "nothing may start:\n" << r.out;
  expect_clean();

  r = cli({"launch", dir_ + "/missing.json"});
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(has(r.out, "cannot read config '" + dir_ + "/missing.json'")) << r.out;
  auto broken = write_config(json(nullptr), "broken.json");
  std::ofstream(broken) << "{\"nodes\": [";
  r = cli({"launch", broken});
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(has(r.out, broken + ": not valid JSON")) << r.out;
  expect_clean();
}

TEST_F(CliMP, LaunchOfBadInputExitsWithTheDocumentedStatus) {
  // docs/CONFIG.md: "Exit status: 0 after a clean stop, 1 when a required node failed, 2 or more
  // for bad input." BUG (cli/main.cpp): every dp::Error, a ValidationError of the config
  // included, exits 1, so a script cannot tell a bad config from a graph that failed.
  auto r = cli({"launch", write_config(bad_graph(domain_)), "--check"});
  EXPECT_GE(r.rc, 2) << "a bad config must exit with 2 or more (docs/CONFIG.md), got " << r.rc << ":\n" << r.out;
  r = cli({"launch", dir_ + "/missing.json"});
  EXPECT_GE(r.rc, 2) << "a missing config must exit with 2 or more (docs/CONFIG.md), got " << r.rc;
  expect_clean();
}

// Found while writing the config fuzzer: a value nested 200 000 levels deep (a 400 KB file) made
// `launch` overflow its stack while quoting the value in the error message (SIGSEGV).
TEST_F(CliMP, LaunchOfADeeplyNestedConfigIsABadConfig) {
  std::ofstream(dir_ + "/deep.json") << R"({"nodes":[{"name":"a","type":"pattern-source","restart":)"
                                     << std::string(200000, '[') << std::string(200000, ']') << "}]}";
  files_.push_back(dir_ + "/deep.json");
  auto r = cli({"launch", dir_ + "/deep.json", "--check"});
  EXPECT_EQ(r.rc, 2) << (r.rc == -SIGSEGV ? "SIGSEGV: " : "") << r.out.substr(0, 2000);
  EXPECT_TRUE(has(r.out, "config nests deeper than 64 levels")) << r.out.substr(0, 2000);
  // The same through `node --params-json`.
  r = cli({"node", "pattern-source", "--name", "src", "-d", domain_, "--params-json",
           "{\"stream\":" + std::string(60000, '[') + std::string(60000, ']') + "}"});
  EXPECT_EQ(r.rc, 2) << r.out.substr(0, 2000);
  EXPECT_TRUE(has(r.out, "--params-json nests deeper than 64 levels")) << r.out.substr(0, 2000);
  expect_clean();
}

// ------------------------------------------------------------------ launch: running graphs

TEST_F(CliMP, LaunchRunsAHostGraphForADuration) {
  auto path = write_config(host_graph());
  auto t0 = std::chrono::steady_clock::now();
  auto r = cli({"launch", path, "--duration", "3", "-q"}, true, 20s);
  auto took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_GE(took, 2.9) << r.out;
  EXPECT_LT(took, 12.0) << r.out;
  EXPECT_TRUE(has(r.out, "[launch] domain '" + domain_ + "': started 3 nodes")) << r.out;
  EXPECT_TRUE(has(r.out, "[launch] stopping: duration reached")) << r.out;
  EXPECT_TRUE(has(r.out, "[launch] graph stopped cleanly")) << r.out;
  EXPECT_FALSE(has(r.out, "restarting")) << r.out;
  EXPECT_FALSE(has(r.out, "nodes running")) << "-q must turn the progress line off:\n" << r.out;
  auto src = final_line(r.out, "source");
  ASSERT_TRUE(src.is_object()) << "no final line of [source]:\n" << r.out;
  EXPECT_GT(src.value("published", 0), 500) << src;
  for (auto name : {"sink0", "sink1"}) {
    auto j = final_line(r.out, name);
    ASSERT_TRUE(j.is_object()) << "no final line of [" << name << "]:\n" << r.out;
    EXPECT_TRUE(has(r.out, "[" + std::string(name) + "] {")) << r.out;
    EXPECT_EQ(j.value("bad", -1), 0) << j;
    EXPECT_GT(j.value("verified", 0), 100) << j;
    EXPECT_EQ(j.value("from", ""), "source/frames") << j;
  }
  expect_clean();
}

TEST_F(CliMP, LaunchRestartsAKilledNode) {
  Launcher l({write_config(host_graph()), "-q"});
  ASSERT_TRUE(wait_running({"source", "sink0", "sink1"})) << "the graph did not come up:\n" << l.log();
  auto before = ls();
  auto pid = [&](const json& j, const char* n) { return (*find_named(j["nodes"], n))["pid"].get<long long>(); };
  const long long old_sink = pid(before, "sink0");
  ASSERT_GT(old_sink, 0);
  auto mine = processes_with_arg(domain_);
  ASSERT_NE(std::find(mine.begin(), mine.end(), old_sink), mine.end()) << "sink0's pid is not a node of the domain";
  ASSERT_EQ(::kill(static_cast<pid_t>(old_sink), SIGKILL), 0);

  long long new_sink = -1;
  EXPECT_TRUE(test::wait_until(
      [&] {
        auto j = ls();
        auto* e = find_named(j["nodes"], "sink0");
        if (!e || (*e)["pid"] == old_sink || (*e)["state"] != "running" || (*e)["liveness"] != "live") return false;
        new_sink = (*e)["pid"].get<long long>();
        return true;
      },
      6s, 50ms))
      << "ls never showed a new sink0:\n" << l.log();
  EXPECT_GT(new_sink, 0);
  EXPECT_NE(new_sink, old_sink);
  EXPECT_TRUE(l.wait_log("[launch] restarting sink0 (restart 1 of 5)", 5s)) << l.log();
  EXPECT_TRUE(has(l.log(), "[launch] sink0 was killed by signal 9; restarting in")) << l.log();
  auto after = ls();
  EXPECT_EQ(pid(after, "source"), pid(before, "source")) << "only the killed node restarts";
  EXPECT_EQ(pid(after, "sink1"), pid(before, "sink1")) << "only the killed node restarts";

  l.signal(SIGTERM);
  auto rc = l.wait(15s);
  ASSERT_TRUE(rc) << "the launcher did not stop on SIGTERM:\n" << l.log();
  EXPECT_EQ(*rc, 0) << (*rc == -SIGABRT ? "the launcher aborted after restarting sink0 (see "
                                          "LauncherChildMP.MoveAssignOverAChildWithOutput)\n"
                                        : "")
                    << l.log();
  EXPECT_TRUE(has(l.log(), "[launch] stopping: received SIGTERM")) << l.log();
  EXPECT_TRUE(has(l.log(), "[launch] graph stopped cleanly")) << l.log();
  auto sink0 = final_line(l.log(), "sink0");
  EXPECT_EQ(sink0.value("bad", -1), 0) << "the restarted sink0 must verify cleanly:\n" << l.log();
  expect_clean();
}

TEST_F(CliMP, RestartBackoffStartsOverAfterAStableRun) {
  // 'steady' runs 2.5 s (25 frames at 10 Hz) and exits: each run outlasts --stable-after 2, so
  // every restart waits the first delay. 'flappy' exits at once: its delay doubles.
  json config{{"domain", domain_},
              {"nodes",
               {{{"name", "steady"},
                 {"type", "pattern-source"},
                 {"params", {{"memory", "host"}, {"bytes", 4096}, {"frames", 25}, {"rate_hz", 10.0}}},
                 {"restart", "always"},
                 {"max_restarts", 100}},
                {{"name", "flappy"},
                 {"type", "pattern-source"},
                 {"params", {{"memory", "host"}, {"bytes", 4096}, {"frames", 1}}},
                 {"restart", "always"},
                 {"max_restarts", 3},
                 {"required", false}}}}};
  auto r = cli({"launch", write_config(config), "--duration", "12", "--stable-after", "2", "-q"}, true, 40s);
  EXPECT_EQ(r.rc, 0) << r.out;
  auto delays = [&](const std::string& node) {
    std::vector<long> d;
    const std::string head = "[launch] " + node + " exited with 0; restarting in ";
    std::istringstream in(r.out);
    for (std::string l; std::getline(in, l);) {
      if (l.rfind(head, 0) == 0) d.push_back(std::stol(l.substr(head.size())));
    }
    return d;
  };
  auto steady = delays("steady");
  ASSERT_GE(steady.size(), 2u) << r.out;
  for (long d : steady) EXPECT_EQ(d, 250) << r.out;
  EXPECT_EQ(delays("flappy"), (std::vector<long>{250, 500, 1000})) << r.out;
  expect_clean();
}

TEST_F(CliMP, LaunchMpsWithoutTheMpsToolsSaysWhatIsMissing) {
  for (const char* d : {"/usr/local/nvidia/bin", "/usr/bin"}) {
    if (::access((std::string(d) + "/nvidia-cuda-mps-control").c_str(), X_OK) == 0) {
      GTEST_SKIP() << "nvidia-cuda-mps-control is installed here: the MPS run is in scripts/gpu-check (graphs)";
    }
  }
  ::unsetenv("CUDA_MPS_PIPE_DIRECTORY");
  auto r = cli({"launch", write_config(host_graph()), "--mps", "--duration", "1", "-q"});
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_TRUE(has(r.out, "--mps: nvidia-cuda-mps-control was not found")) << r.out;
  EXPECT_TRUE(has(r.out, "launch without --mps")) << r.out;
  EXPECT_FALSE(has(r.out, "[launch] domain")) << "nothing may start:\n" << r.out;
  expect_clean();
}

TEST_F(CliMP, RequiredNodeThatFailsForGoodStopsTheGraph) {
  // The source waits for 99 subscribers, so it never publishes; the sink wants 10 frames, gives
  // up after 0.5 s (exit 2), is restarted once, gives up again: failed for good.
  json config{{"domain", domain_},
              {"nodes",
               {{{"name", "source"},
                 {"type", "pattern-source"},
                 {"params", {{"memory", "host"}, {"bytes", 4096}, {"wait_subscribers", 99}}}},
                {{"name", "sink0"},
                 {"type", "checksum-sink"},
                 {"params", {{"from", "source/frames"}, {"timeout_s", 0.5}, {"frames", 10}}},
                 {"max_restarts", 1}}}}};
  auto r = cli({"launch", write_config(config), "-q"}, true, 15s);
  EXPECT_EQ(r.rc, 1) << (r.rc == -SIGABRT ? "the launcher aborted while restarting sink0 (see "
                                            "LauncherChildMP.MoveAssignOverAChildWithOutput)\n"
                                          : "")
                     << r.out;
  EXPECT_TRUE(has(r.out, "[launch] sink0 exited with 2; restarting in")) << r.out;
  EXPECT_TRUE(has(r.out, "[launch] restarting sink0 (restart 1 of 1)")) << r.out;
  EXPECT_TRUE(has(r.out, "[launch] sink0 exited with 2: failed for good")) << r.out;
  EXPECT_TRUE(has(r.out, "[launch] stopping: required node 'sink0' failed")) << r.out;
  EXPECT_TRUE(has(r.out, "[launch] graph failed")) << r.out;
  EXPECT_TRUE(final_line(r.out, "source").is_object()) << "the source must be stopped cleanly:\n" << r.out;
  expect_clean();
}

TEST_F(CliMP, OptionalNodeThatFailsLeavesTheGraphRunning) {
  // write_probe needs a GPU stream: on the host stream the node throws at its first frame (exit 1).
  auto config = host_graph();
  config["nodes"].push_back({{"name", "flaky"},
                             {"type", "checksum-sink"},
                             {"params", {{"from", "source/frames"}, {"write_probe", true}}},
                             {"restart", "never"},
                             {"required", false}});
  auto r = cli({"launch", write_config(config), "--duration", "2", "-q"}, true, 15s);
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(has(r.out, "[launch] flaky exited with 1: failed for good")) << r.out;
  EXPECT_FALSE(has(r.out, "restarting flaky")) << "restart never:\n" << r.out;
  EXPECT_TRUE(has(r.out, "[launch] stopping: duration reached")) << r.out;
  EXPECT_TRUE(has(r.out, "[launch] graph stopped cleanly")) << r.out;
  for (auto name : {"sink0", "sink1"}) EXPECT_EQ(final_line(r.out, name).value("bad", -1), 0) << r.out;
  expect_clean();
}

TEST_F(CliMP, LaunchEndsWhenEveryNodeFinished) {
  json config{{"domain", domain_},
              {"nodes",
               {{{"name", "source"},
                 {"type", "pattern-source"},
                 {"params", {{"memory", "host"}, {"bytes", 4096}, {"rate_hz", 500}, {"frames", 400}, {"wait_subscribers", 2}}}},
                {{"name", "sink0"}, {"type", "checksum-sink"}, {"params", {{"from", "source/frames"}, {"frames", 50}}}},
                {{"name", "sink1"}, {"type", "checksum-sink"}, {"params", {{"from", "source/frames"}, {"frames", 50}}}}}}};
  auto r = cli({"launch", write_config(config), "-q"}, true, 15s);
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(has(r.out, "[launch] stopping: every node finished")) << r.out;
  EXPECT_EQ(final_line(r.out, "source").value("published", 0), 400) << r.out;
  for (auto name : {"sink0", "sink1"}) {
    auto j = final_line(r.out, name);
    EXPECT_EQ(j.value("verified", 0), 50) << r.out;
    EXPECT_TRUE(has(r.out, "[launch] " + std::string(name) + " exited with 0: finished")) << r.out;
  }
  expect_clean();
}

// A consumer started before its producer waits for it (docs/CONFIG.md: "consumers also retry on
// their own until their producer is there"). Found by dp_chaos: a sink restarted while its source
// was down exited with 1 at once, and each such exit doubled its restart delay.
TEST_F(CliMP, SinkStartedBeforeItsSourceWaitsForIt) {
  auto sink = platform::Child::spawn({DP_CLI, "node", "checksum-sink", "--name", "sink", "-d", domain_, "-p",
                                      "from=src/frames", "-p", "frames=20"},
                                     {true, true});
  std::this_thread::sleep_for(1s);
  ASSERT_FALSE(sink.wait_for(0ms)) << "the sink gave up before its source existed:\n" << sink.output();
  auto src = platform::Child::spawn({DP_CLI, "node", "pattern-source", "--name", "src", "-d", domain_, "-p",
                                     "memory=host", "-p", "bytes=4096", "-p", "rate_hz=200"},
                                    {true, true});
  auto rc = sink.wait_for(15s);
  ASSERT_TRUE(rc) << "the sink never finished:\n" << sink.output();
  EXPECT_EQ(*rc, 0) << sink.output();
  json j;  // the sink's final line: the last JSON object it printed
  std::istringstream lines(sink.output());
  for (std::string l; std::getline(lines, l);) {
    if (!l.empty() && l[0] == '{') j = json::parse(l, nullptr, false);
  }
  EXPECT_EQ(j.value("verified", 0), 20) << sink.output();
  EXPECT_EQ(j.value("bad", -1), 0) << sink.output();
  src.signal(SIGTERM);
  auto src_rc = src.wait_for(10s);
  ASSERT_TRUE(src_rc) << src.output();
  EXPECT_EQ(*src_rc, 0) << src.output();
  expect_clean();
}

// The wait is bounded by a stop: SIGTERM ends a sink that waits for a producer that never comes.
TEST_F(CliMP, SinkWaitingForItsSourceStopsOnSigterm) {
  auto sink = platform::Child::spawn({DP_CLI, "node", "checksum-sink", "--name", "sink", "-d", domain_, "-p",
                                      "from=src/frames"},
                                     {true, true});
  std::this_thread::sleep_for(500ms);
  ASSERT_FALSE(sink.wait_for(0ms)) << "the sink gave up before its source existed:\n" << sink.output();
  const auto t0 = std::chrono::steady_clock::now();
  sink.signal(SIGTERM);
  auto rc = sink.wait_for(5s);
  ASSERT_TRUE(rc) << "SIGTERM did not end the wait for the producer:\n" << sink.output();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  EXPECT_NE(*rc, -SIGKILL) << sink.output();
  EXPECT_TRUE(has(sink.output(), "no node 'src'")) << "the message names what it waited for:\n" << sink.output();
  expect_clean();
}

// ------------------------------------------------------------------ the launcher's children

// launch_graph restarts a node by move-assigning a fresh platform::Child over the old one, whose
// captured output buffer is on the heap by then. (This belongs with tests/platform/test_child.cpp;
// it is here because the launcher tests above crash on it, intermittently, with SIGABRT.)
TEST(LauncherChildMP, MoveAssignOverAChildWithOutput) {
  // BUG (core/src/platform/linux/child.cpp): Child::operator= calls this->~Child() and then
  // assigns to the destroyed members; the std::string frees its buffer twice ("free(): double
  // free detected in tcache 2"; in the launcher: "malloc(): unaligned tcache chunk detected").
  auto c = test::Child::fork([](test::LineChannel&) {
    auto a = platform::Child::spawn({"/bin/sh", "-c", "echo first output, longer than the short-string buffer"},
                                    {true, false});
    if (a.wait_for(10s) != 0) return 3;
    auto b = platform::Child::spawn({"/bin/sh", "-c", "echo second output, longer than the short-string buffer"},
                                    {true, false});
    if (b.wait_for(10s) != 0) return 4;
    a = std::move(b);
    if (a.output() != "second output, longer than the short-string buffer\n") return 5;
    a = platform::Child::spawn({"/bin/sh", "-c", "exit 0"}, {true, false});  // over one that has exited
    if (a.wait_for(10s) != 0 || !a.output().empty()) return 6;
    return 0;
  });
  auto st = c.wait(20s);
  ASSERT_TRUE(st);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0)
      << "moving a Child over one with output must work: " << test::describe_status(*st);
}

// ------------------------------------------------------------------ ls, inspect, top

TEST_F(CliMP, LsOfAnEmptyDomain) {
  auto j = ls();
  EXPECT_EQ(j["domain"], domain_);
  EXPECT_EQ(j["nodes"], json::array());
  auto r = cli({"ls", "-d", domain_});
  EXPECT_EQ(r.rc, 0);
  EXPECT_TRUE(has(r.out, "no nodes in domain '" + domain_ + "'")) << r.out;
  r = cli({"top", "-d", domain_, "--once", "--json", "-i", "0.05"}, false);
  EXPECT_EQ(r.rc, 0);
  auto t = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(t.is_discarded()) << r.out;
  EXPECT_EQ(t["nodes"], json::array());
}

TEST_F(CliMP, LsInspectAndTopOnALiveGraph) {
  Launcher l({write_config(host_graph()), "-q"});
  ASSERT_TRUE(wait_running({"source", "sink0", "sink1"})) << "the graph did not come up:\n" << l.log();

  // ls --json
  auto j = ls();
  EXPECT_EQ(j["domain"], domain_);
  ASSERT_EQ(j["nodes"].size(), 3u) << j.dump(2);
  EXPECT_EQ(j["removed_stale"], json::array());
  std::map<std::string, long long> pids;
  for (auto& n : j["nodes"]) {
    pids[n["name"]] = n["pid"].get<long long>();
    EXPECT_GT(n["pid"].get<long long>(), 0);
    EXPECT_EQ(n["problem"], "");
    EXPECT_LT(n["heartbeat_age_ms"].get<long long>(), 5000);
  }
  auto& src = *find_named(j["nodes"], "source");
  ASSERT_EQ(src["streams"].size(), 1u);
  auto& frames = src["streams"][0];
  EXPECT_EQ(frames["name"], "frames");
  EXPECT_EQ(frames["memory"], "host");
  EXPECT_EQ(frames["frame_bytes"], 4096);
  EXPECT_EQ(frames["slots"], 3);
  ASSERT_EQ(frames["consumers"].size(), 2u);
  std::set<std::string> clients;
  for (auto& c : frames["consumers"]) clients.insert(c["client"].get<std::string>());
  EXPECT_EQ(clients, (std::set<std::string>{"sink0", "sink1"}));
  EXPECT_EQ(src["subscriptions"], json::array());
  for (auto name : {"sink0", "sink1"}) {
    auto& s = *find_named(j["nodes"], name);
    EXPECT_EQ(s["streams"], json::array());
    EXPECT_EQ(s["subscriptions"], json::array({"source/frames"}));
  }

  // inspect NODE --json
  auto in = cli_json({"inspect", "sink0", "-d", domain_, "--json"});
  EXPECT_EQ(in["node"], "sink0");
  EXPECT_EQ(in["domain"], domain_);
  EXPECT_EQ(in["header"]["pid"].get<long long>(), pids["sink0"]);
  EXPECT_EQ(in["header"]["state"], "running");
  EXPECT_EQ(in["header"]["liveness"], "live");
  EXPECT_TRUE(has(in["header"]["segment"].get<std::string>(), domain_ + ".sink0")) << in["header"];
  EXPECT_EQ(in["streams"], json::array());
  ASSERT_TRUE(in.contains("manifest")) << in.dump(2);
  EXPECT_EQ(in["manifest"]["type"], "checksum-sink");
  EXPECT_EQ(in["manifest"]["info"]["params"]["from"], "source/frames") << "the validated params are in the manifest";
  EXPECT_EQ(in["manifest"]["info"]["params"]["timeout_s"], 10.0) << "with the defaults filled in";

  // inspect NODE/STREAM --json
  auto st = cli_json({"inspect", "source/frames", "-d", domain_, "--json"});
  EXPECT_EQ(st["node"], "source");
  EXPECT_FALSE(st.contains("manifest")) << "only the stream is shown";
  ASSERT_EQ(st["streams"].size(), 1u);
  EXPECT_EQ(st["streams"][0]["manifest"]["name"], "frames");
  EXPECT_EQ(st["streams"][0]["manifest"]["frame_bytes"], 4096);
  auto& control = st["streams"][0]["control"];
  EXPECT_GT(control["published"].get<long long>(), 0);
  EXPECT_EQ(control["subscribers"], 2);
  EXPECT_EQ(control["slots"].size(), 3u);
  auto r = cli({"inspect", "source/nope", "-d", domain_, "--json"});
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(has(r.out, "publishes no stream 'nope'")) << r.out;
  r = cli({"inspect", "ghost", "-d", domain_});
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(has(r.out, "ghost")) << r.out;

  // top --once --json
  r = cli({"top", "-d", domain_, "--once", "--json", "-i", "0.3"}, false);
  EXPECT_EQ(r.rc, 0) << r.out;
  auto t = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(t.is_discarded()) << "top --json --once must print one JSON document:\n" << r.out;
  EXPECT_EQ(t["domain"], domain_);
  ASSERT_EQ(t["nodes"].size(), 3u) << t.dump(2);
  for (auto& n : t["nodes"]) {
    EXPECT_EQ(n["pid"].get<long long>(), pids[n["name"]]) << n;
    EXPECT_EQ(n["liveness"], "live") << n;
    EXPECT_GT(n.value("rss_mib", 0.0), 0.0) << n;
    EXPECT_EQ(n["gpu_stream_mib"], 0.0) << "host streams use no GPU memory: " << n;
    // A process's whole GPU memory comes from NVML where there is a GPU; host nodes use none.
    if (n.contains("gpu_mib")) {
      EXPECT_EQ(n["gpu_mib"], 0.0) << n;
    }
  }
  // Without it, the reason is there instead of a made-up figure.
  EXPECT_TRUE(t.contains("gpu_memory_unavailable") != t["nodes"][0].contains("gpu_mib")) << t.dump(2);
  auto& tsrc = *find_named(t["nodes"], "source");
  EXPECT_EQ(tsrc["type"], "pattern-source");
  ASSERT_EQ(tsrc["streams"].size(), 1u);
  auto& ts = tsrc["streams"][0];
  EXPECT_EQ(ts["name"], "frames");
  ASSERT_TRUE(ts.contains("rate_hz")) << ts;
  EXPECT_GT(ts["rate_hz"].get<double>(), 0.0) << ts;
  EXPECT_LT(ts["rate_hz"].get<double>(), 2000.0) << "paced at 500 Hz: " << ts;
  EXPECT_EQ(ts["subscribers"], 2) << ts;
  EXPECT_GT(ts["published"].get<long long>(), 0) << ts;
  EXPECT_TRUE(ts.contains("dropped")) << ts;
  EXPECT_TRUE(ts.contains("slots_held") && ts.contains("max_lag")) << "consumer state from the broker: " << ts;
  EXPECT_EQ(ts["consumers"].size(), 2u) << ts;
  for (auto name : {"sink0", "sink1"}) {
    auto& s = *find_named(t["nodes"], name);
    EXPECT_EQ(s["type"], "checksum-sink");
    ASSERT_TRUE(s.contains("cpu_percent")) << s;
    EXPECT_GE(s["cpu_percent"].get<double>(), 0.0) << s;
    EXPECT_EQ(s["streams"], json::array());
  }

  // The table, once.
  r = cli({"top", "-d", domain_, "--once", "-i", "0.1"}, false);
  EXPECT_EQ(r.rc, 0);
  EXPECT_TRUE(has(r.out, "domain " + domain_ + " — 3 nodes")) << r.out;
  EXPECT_TRUE(has(r.out, "source/frames")) << r.out;

  l.signal(SIGTERM);
  auto rc = l.wait(15s);
  ASSERT_TRUE(rc) << l.log();
  EXPECT_EQ(*rc, 0) << l.log();
  expect_clean();
}

}  // namespace
}  // namespace dp

// GPU suite of the CUDA transport (label gpu): producer and consumers are separate processes
// (`directport node pattern-source|checksum-sink`) exchanging self-verifying frames (seq + random
// fill + checksum, checked on the GPU by each consumer) through cuda-vmm memory and mem-op fences.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "directport/core/discovery.hpp"
#include "directport/core/manifest.hpp"
#include "directport/cuda/device.hpp"
#include "directport/platform/child.hpp"
#include "directport/platform/process.hpp"
#include "support/gpu_test.hpp"
#include "support/node_process.hpp"

namespace {

using dp::test::finish;
using Proc = dp::test::Proc;

Proc spawn(std::vector<std::string> args) { return dp::test::spawn_cli(DP_CLI, std::move(args)); }

class GpuTransport : public dp::test::GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();  // skips, with the reason, where no CUDA device is usable
    if (IsSkipped()) return;
    domain_ = "gpu" + std::to_string(getpid()) + "x" + std::to_string(counter_++);
  }
  void TearDown() override {
    if (domain_.empty()) return;
    dp::remove_stale(domain_, std::chrono::seconds(0));
    EXPECT_TRUE(dp::list_nodes(domain_).empty()) << "manifests left behind in " << domain_;
  }
  // `extra`: more key=value params.
  Proc source(std::uint64_t bytes, int wait_subs, double rate = 0, const std::string& memory = "cuda-vmm",
              const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{"node", "pattern-source", "-n", "src", "-d", domain_, "-p", "bytes=" + std::to_string(bytes),
                                  "-p", "memory=" + memory, "-p", "rate_hz=" + std::to_string(rate), "-p",
                                  "wait_subscribers=" + std::to_string(wait_subs)};
    auto p = spawn(with_params(std::move(args), extra));
    wait_running("src");
    return p;
  }
  Proc sink(int i, std::uint64_t frames, double hold_ms = 0, bool probe = false, double timeout_s = 20,
            const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{"node", "checksum-sink", "-n", "sink" + std::to_string(i), "-d", domain_, "-p",
                                  "from=src/frames", "-p", "frames=" + std::to_string(frames), "-p", "hold_ms=" + std::to_string(hold_ms),
                                  "-p", std::string("write_probe=") + (probe ? "true" : "false"), "-p",
                                  "timeout_s=" + std::to_string(timeout_s)};
    return spawn(with_params(std::move(args), extra));
  }
  static std::vector<std::string> with_params(std::vector<std::string> args, const std::vector<std::string>& extra) {
    for (auto& e : extra) {
      args.push_back("-p");
      args.push_back(e);
    }
    return args;
  }
  void wait_running(const std::string& node) {
    for (int i = 0; i < 1000; ++i) {
      for (auto& n : dp::list_nodes(domain_)) {
        if (n.name == node && n.state == dp::protocol::NodeState::running && n.liveness == dp::Liveness::live) return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL() << node << " did not come up";
  }
  std::string domain_;
  static inline int counter_ = 0;
};

struct Case {
  std::uint64_t bytes;
  int consumers;
  std::uint64_t frames;
  double slow_hold_ms;  // one consumer holds each frame this long (0: all fast)
};

class GpuTransportFrames : public GpuTransport, public ::testing::WithParamInterface<Case> {};

TEST_P(GpuTransportFrames, NoTornStaleOrForeignFrameIsAccepted) {
  auto c = GetParam();
  auto src = source(c.bytes, c.consumers);
  std::vector<Proc> sinks;
  for (int i = 0; i < c.consumers; ++i) sinks.push_back(sink(i, c.frames, i == 0 ? c.slow_hold_ms : 0));
  std::uint64_t verified = 0;
  for (auto& s : sinks) {
    auto [rc, j] = finish(s);
    EXPECT_EQ(rc, 0) << j.dump();
    EXPECT_EQ(j.value("bad", 1), 0u) << j.dump();
    verified += j.value("verified", 0ull);
  }
  src.signal(SIGTERM);
  auto [rc, j] = finish(src);
  EXPECT_EQ(rc, 0);
  EXPECT_GE(verified, c.frames * c.consumers);
  std::printf("[ figures ] %llu bytes, %d consumers: %llu frames verified, producer published %llu, dropped %llu\n",
              static_cast<unsigned long long>(c.bytes), c.consumers, static_cast<unsigned long long>(verified),
              static_cast<unsigned long long>(j.value("published", 0ull)),
              static_cast<unsigned long long>(j.value("dropped", 0ull)));
}

INSTANTIATE_TEST_SUITE_P(Sizes, GpuTransportFrames,
                         ::testing::Values(Case{4096, 1, 40000, 0}, Case{4096, 8, 8000, 0}, Case{1 << 20, 1, 20000, 0},
                                           Case{1 << 20, 8, 4000, 2.0}, Case{64 << 20, 1, 2000, 0},
                                           Case{64 << 20, 8, 500, 5.0}, Case{256 << 20, 1, 300, 0},
                                           Case{256 << 20, 8, 150, 0}));

TEST_F(GpuTransport, WriteIntoReadOnlyMappingFaultsOnlyThatConsumer) {
  if (dp::cuda::mps_enabled(0)) {
    GTEST_SKIP() << "under MPS a GPU fault is not contained to the client that made it (docs/TRANSPORT.md)";
  }
  auto src = source(1 << 20, 2, 1000);
  auto bad = sink(0, 1, 0, /*probe=*/true);
  auto good = sink(1, 3000);
  auto [rc_bad, jb] = finish(bad);
  EXPECT_EQ(rc_bad, 3) << "the write must fault (exit 3), got " << rc_bad;
  auto [rc_good, jg] = finish(good);
  EXPECT_EQ(rc_good, 0) << jg.dump();
  EXPECT_EQ(jg.value("bad", 1), 0u);
  EXPECT_TRUE(src.running() && !src.wait_for(std::chrono::milliseconds(0))) << "the producer must survive a consumer's fault";
  src.signal(SIGTERM);
  EXPECT_EQ(finish(src).first, 0);
}

// With the ready words in the host page (the default) and in device memory: the survivors raise
// whichever their GPU waits are on.
TEST_F(GpuTransport, ProducerKilledWithPendingWaitsThenRestartedIsPickedUp) {
  for (std::string where : {"host", "device"}) {
    SCOPED_TRACE("ready words in " + where + " memory");
    ::setenv("DIRECTPORT_READY_WORDS", where.c_str(), 1);
    auto src = source(4 << 20, 2, 2000);
    auto a = sink(0, 4000, 0, false, 30);
    auto b = sink(1, 4000, 0, false, 30);
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    src.signal(SIGKILL);
    finish(src);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    auto src2 = source(4 << 20, 0, 2000);
    ::unsetenv("DIRECTPORT_READY_WORDS");
    for (auto* s : {&a, &b}) {
      auto [rc, j] = finish(*s, std::chrono::seconds(60));
      EXPECT_EQ(rc, 0) << j.dump();
      EXPECT_EQ(j.value("bad", 1), 0u) << j.dump();
      EXPECT_GE(j.value("reconnects", 0), 1) << j.dump();
    }
    src2.signal(SIGTERM);
    EXPECT_EQ(finish(src2).first, 0);
    dp::remove_stale(domain_, std::chrono::seconds(0));
  }
}

// The producer's stream stalls (60 s) before it writes a frame, the frames it announces meanwhile
// are claimed by both consumers, whose GPU waits on their ready words then stay pending; the
// producer is killed. Each consumer's watchdog must release its own waits (the ready words raised
// with kForcedReady; a raise the GPU's cyclic GEQ does not pass would leave the consumer's stream,
// and its process in cudaStreamSynchronize, blocked for good). The consumers count those frames
// invalid, accept none of them, and go on with a restarted producer.
TEST_F(GpuTransport, ProducerKilledWhileConsumersWaitOnUnwrittenFramesReleasesTheirWaits) {
  auto src = source(1 << 20, 2, 1000, "cuda-vmm", {"stall_after=200", "stall_ms=60000"});
  auto a = sink(0, 2000, 0, false, 40);
  auto b = sink(1, 2000, 0, false, 40);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // 200 frames, then the stall
  src.signal(SIGKILL);
  finish(src);
  auto src2 = source(1 << 20, 0, 1000);
  for (auto* s : {&a, &b}) {
    auto [rc, j] = finish(*s, std::chrono::seconds(60));
    EXPECT_EQ(rc, 0) << j.dump();
    EXPECT_EQ(j.value("bad", 1), 0u) << j.dump();
    EXPECT_GE(j.value("invalidated", 0), 1) << j.dump();
    EXPECT_GE(j.value("reconnects", 0), 1) << j.dump();
    EXPECT_GE(j.value("verified", 0ull), 2000u) << j.dump();
    // The sync that waited on the unwritten frame ended within the watchdog's period of the kill,
    // not never; the longest is the 1.5 s the test waited before killing the producer, at most.
    EXPECT_LT(j["sync_us"].value("max", 1e9), 5e6) << j.dump();
  }
  src2.signal(SIGTERM);
  EXPECT_EQ(finish(src2).first, 0);
}

TEST_F(GpuTransport, ConsumerKilledWhileHoldingDoesNotStopTheProducer) {
  auto src = source(1 << 20, 2, 0);
  auto victim = sink(0, 0, 3.0);  // slow, holds frames
  auto survivor = sink(1, 5000);
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  victim.signal(SIGKILL);
  finish(victim);
  auto [rc, j] = finish(survivor);
  EXPECT_EQ(rc, 0) << j.dump();
  EXPECT_EQ(j.value("bad", 1), 0u);
  src.signal(SIGTERM);
  auto [rcs, js] = finish(src);
  EXPECT_EQ(rcs, 0);
  EXPECT_GE(js.value("published", 0ull), 5000u);
}

// A consumer whose GPU stream stalls after it enqueued a release (alive, connected; its stream
// is held 10 s, the GPU left free, while it goes on taking frames without synchronising) holds the producer's stream,
// which waits for that release. After the stream's release_timeout (500 ms here) the producer cuts
// it off (PROTOCOL.md §10.3) and the other consumer goes on. The cut consumer holds frames the
// producer announced but had not written; it writes none of the live producer's ready words, so
// the other consumer, verifying every frame, accepts no unwritten one. The cut consumer waits its
// stall out, subscribes again once its releases have run, and verifies frames again.
TEST_F(GpuTransport, ConsumerWhoseStreamStallsIsCutOffAndTheOthersGoOn) {
  auto src = source(1 << 20, 2, 1000, "cuda-vmm", {"release_timeout_ms=500"});
  auto stalled = sink(0, 3000, 0, false, 60, {"stall_after=50", "stall_ms=10000"});
  auto healthy = sink(1, 4000, 0, false, 30);
  const auto t0 = std::chrono::steady_clock::now();
  auto [rc, j] = finish(healthy, std::chrono::seconds(60));
  const double took_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(rc, 0) << j.dump();
  EXPECT_EQ(j.value("bad", 1), 0u) << j.dump();
  EXPECT_GE(j.value("verified", 0ull), 4000u) << j.dump();
  EXPECT_EQ(j.value("cuts", 1), 0u) << j.dump();
  // 4 000 frames at 1 kHz, the bound and a broker tick or two; without the cut, the 10 s stall;
  // a cut consumer subscribing again while still stalled would add half a second each time.
  EXPECT_LT(took_s, 9.0);
  // The healthy consumer's longest stream sync (its GPU wait for a frame the blocked producer had
  // not written): the bound and a tick or two, not the stall.
  EXPECT_LT(j["sync_us"].value("max", 1e9), 3e6) << j.dump();
  auto [rcs, js] = finish(stalled, std::chrono::seconds(60));
  EXPECT_EQ(rcs, 0) << js.dump();
  EXPECT_EQ(js.value("bad", 1), 0u) << js.dump();
  EXPECT_EQ(js.value("cuts", 0), 1) << js.dump();
  EXPECT_EQ(js.value("reconnects", 0), 1) << js.dump();
  EXPECT_GE(js.value("invalidated", 0), 1) << js.dump();
  EXPECT_GE(js.value("verified", 0ull), 3000u) << js.dump();
  src.signal(SIGTERM);
  auto [rcp, jp] = finish(src);
  EXPECT_EQ(rcp, 0) << jp.dump();
  EXPECT_EQ(jp.value("cut_off", 0), 1) << jp.dump();
  std::printf("[ figures ] stalled consumer cut off: healthy consumer took %.2f s for 4000 frames at 1 kHz; "
              "healthy: %s; stalled: %s; producer: %s\n",
              took_s, j.dump().c_str(), js.dump().c_str(), jp.dump().c_str());
}

TEST_F(GpuTransport, LegacyIpcMemoryKindCarriesVerifiedFrames) {
  auto src = source(1 << 20, 1, 0, "cuda-ipc");
  auto s = sink(0, 5000);
  auto [rc, j] = finish(s);
  EXPECT_EQ(rc, 0) << j.dump();
  EXPECT_EQ(j.value("bad", 1), 0u);
  src.signal(SIGTERM);
  EXPECT_EQ(finish(src).first, 0);
}

// Where the ready words live (DIRECTPORT_READY_WORDS in the producer; its manifest says which)
// changes nothing a consumer can see but the speed: both carry verified frames.
TEST_F(GpuTransport, ReadyWordsInDeviceOrHostMemoryCarryVerifiedFrames) {
  for (std::string where : {"device", "host"}) {
    SCOPED_TRACE(where);
    ::setenv("DIRECTPORT_READY_WORDS", where.c_str(), 1);
    auto src = source(1 << 20, 1);
    ::unsetenv("DIRECTPORT_READY_WORDS");
    auto doc = dp::ManifestReader::open(domain_, "src").json();
    EXPECT_EQ(doc["streams"][0].value("ready_words", std::string("?")), where) << doc.dump();
    auto s = sink(0, 3000);
    auto [rc, j] = finish(s);
    EXPECT_EQ(rc, 0) << j.dump();
    EXPECT_EQ(j.value("bad", 1), 0u);
    EXPECT_GE(j.value("verified", 0ull), 3000u) << j.dump();
    src.signal(SIGTERM);
    EXPECT_EQ(finish(src).first, 0);
    dp::remove_stale(domain_, std::chrono::seconds(0));
  }
}

}  // namespace

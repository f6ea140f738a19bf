// GPU suite of the Vulkan kinds (label gpu; docs/VULKAN.md): real processes exchanging
// self-verifying frames, one end a Vulkan program (`directport node vulkan-source|vulkan-sink`),
// the other an unchanged CUDA node (pattern-source, checksum-sink). Skips, with the reason, where
// CUDA or Vulkan's exports are not usable.
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
#include "directport/platform/child.hpp"
#include "directport/vulkan/vulkan.hpp"
#include "support/gpu_test.hpp"
#include "support/node_process.hpp"

namespace {

using dp::test::finish;
using Proc = dp::test::Proc;

Proc spawn(std::vector<std::string> args) { return dp::test::spawn_cli(DP_CLI, std::move(args)); }

class GpuVulkan : public dp::test::GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    if (!dp::vk::availability().usable) GTEST_SKIP() << "the Vulkan kinds are not usable here: " << dp::vk::availability().reason;
    domain_ = "vk" + std::to_string(getpid()) + "x" + std::to_string(counter_++);
  }
  void TearDown() override {
    if (domain_.empty()) return;
    dp::remove_stale(domain_, std::chrono::seconds(0));
    EXPECT_TRUE(dp::list_nodes(domain_).empty()) << "manifests left behind in " << domain_;
  }
  Proc node(const std::string& type, const std::string& name, std::vector<std::string> params) {
    std::vector<std::string> args{"node", type, "-n", name, "-d", domain_};
    for (auto& p : params) {
      args.push_back("-p");
      args.push_back(p);
    }
    return spawn(args);
  }
  void wait_running(const std::string& name) {
    for (int i = 0; i < 2000; ++i) {
      for (auto& n : dp::list_nodes(domain_)) {
        if (n.name == name && n.state == dp::protocol::NodeState::running && n.liveness == dp::Liveness::live) return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL() << name << " did not come up";
  }
  static void expect_clean(const nlohmann::json& j, std::uint64_t at_least) {
    EXPECT_EQ(j.value("bad", 1ull), 0u) << j.dump();
    EXPECT_GE(j.value("verified", 0ull), at_least) << j.dump();
  }
  std::string domain_;
  static inline int counter_ = 0;
};

// A Vulkan program publishes; CUDA consumers (the unchanged checksum-sink) verify on the GPU.
TEST_F(GpuVulkan, VulkanProducerToCudaConsumers) {
  for (std::uint64_t bytes : {4096ull, 1ull << 20, 64ull << 20}) {
    const std::uint64_t frames = bytes >= (64ull << 20) ? 500 : 5000;
    auto src = node("vulkan-source", "src", {"bytes=" + std::to_string(bytes), "rate_hz=0", "wait_subscribers=2"});
    wait_running("src");
    auto a = node("checksum-sink", "a", {"from=src/frames", "frames=" + std::to_string(frames)});
    auto b = node("checksum-sink", "b", {"from=src/frames", "frames=" + std::to_string(frames), "hold_ms=0.2"});
    auto [ra, ja] = finish(a);
    auto [rb, jb] = finish(b);
    src.signal(SIGTERM);
    auto [rs, js] = finish(src);
    EXPECT_EQ(ra, 0) << ja.dump();
    EXPECT_EQ(rb, 0) << jb.dump();
    EXPECT_EQ(rs, 0) << js.dump();
    expect_clean(ja, frames);
    expect_clean(jb, frames);
    std::printf("[ figures ] vulkan-source -> 2 CUDA sinks, %llu bytes: %llu + %llu verified, 0 bad; sink sync p50 %.1f us\n",
                static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(ja.value("verified", 0ull)),
                static_cast<unsigned long long>(jb.value("verified", 0ull)),
                ja["sync_us"].value("p50", 0.0));
  }
}

// Vulkan producer -> CUDA consumer, which relays each frame into `vulkan` memory it writes with
// CUDA (signalling the Vulkan semaphore from its stream) -> a consumer that waits on the Vulkan side.
TEST_F(GpuVulkan, RoundTripVulkanToCudaToVulkan) {
  const std::uint64_t frames = 3000;
  auto src = node("vulkan-source", "src", {"bytes=1048576", "rate_hz=2000", "wait_subscribers=1"});
  wait_running("src");
  auto relay = node("checksum-sink", "relay", {"from=src/frames", "forward=relayed", "forward_memory=vulkan"});
  wait_running("relay");
  auto sink = node("vulkan-sink", "sink", {"from=relay/relayed", "frames=" + std::to_string(frames), "seq_from=frame_id"});
  auto [rk, jk] = finish(sink);
  relay.signal(SIGTERM);
  src.signal(SIGTERM);
  auto [rr, jr] = finish(relay);
  auto [rs, js] = finish(src);
  EXPECT_EQ(rk, 0) << jk.dump();
  EXPECT_EQ(rr, 0) << jr.dump();
  expect_clean(jk, frames);
  EXPECT_EQ(jr.value("bad", 1ull), 0u) << jr.dump();
  std::printf("[ figures ] vulkan-source -> CUDA relay -> vulkan-sink: %llu relayed frames verified on the Vulkan side, "
              "relay verified %llu; vulkan-sink next p50 %.1f us, check p50 %.1f us\n",
              static_cast<unsigned long long>(jk.value("verified", 0ull)),
              static_cast<unsigned long long>(jr.value("verified", 0ull)), jk["next_us"].value("p50", 0.0),
              jk["verify_us"].value("p50", 0.0));
}

// A CUDA producer signals a Vulkan timeline semaphore; the reader waits on it on the Vulkan side.
// Memory: Vulkan memory written by CUDA, and cuda-vmm (VMM memory imported into Vulkan).
TEST_F(GpuVulkan, CudaProducerToVulkanConsumer) {
  for (std::string memory : {"vulkan", "cuda-vmm"}) {
    const std::uint64_t frames = 3000;
    auto src = node("pattern-source", "src",
                    {"bytes=1048576", "memory=" + memory, "fence=vulkan-timeline", "rate_hz=0", "wait_subscribers=1"});
    wait_running("src");
    auto sink = node("vulkan-sink", "sink", {"from=src/frames", "frames=" + std::to_string(frames)});
    auto [rk, jk] = finish(sink);
    src.signal(SIGTERM);
    auto [rs, js] = finish(src);
    EXPECT_EQ(rk, 0) << memory << ": " << jk.dump();
    EXPECT_EQ(rs, 0) << memory << ": " << js.dump();
    expect_clean(jk, frames);
    std::printf("[ figures ] pattern-source (CUDA, %s memory, vulkan-timeline) -> vulkan-sink: %llu verified\n",
                memory.c_str(), static_cast<unsigned long long>(jk.value("verified", 0ull)));
  }
}

// kill -9 of a Vulkan producer while a CUDA consumer's GPU waits and a Vulkan consumer's CPU wait
// are pending on its semaphore: neither hangs, both take the restarted producer's frames.
TEST_F(GpuVulkan, KilledVulkanProducerReleasesWaitersAndIsPickedUpAgain) {
  auto src = node("vulkan-source", "src", {"bytes=1048576", "rate_hz=500"});
  wait_running("src");
  auto cuda_sink = node("checksum-sink", "c", {"from=src/frames", "timeout_s=60", "hold_ms=1"});
  auto vk_sink = node("vulkan-sink", "v", {"from=src/frames", "timeout_s=60"});
  std::this_thread::sleep_for(std::chrono::seconds(2));
  for (int round = 0; round < 3; ++round) {
    src.signal(SIGKILL);
    finish(src);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_TRUE(cuda_sink.running()) << "the CUDA consumer died with its producer";
    EXPECT_TRUE(vk_sink.running()) << "the Vulkan consumer died with its producer";
    dp::remove_stale(domain_, std::chrono::seconds(0));
    src = node("vulkan-source", "src", {"bytes=1048576", "rate_hz=500"});
    wait_running("src");
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }
  cuda_sink.signal(SIGTERM);
  vk_sink.signal(SIGTERM);
  auto [rc, jc] = finish(cuda_sink, std::chrono::seconds(30));
  auto [rv, jv] = finish(vk_sink, std::chrono::seconds(30));
  src.signal(SIGTERM);
  finish(src);
  EXPECT_EQ(rc, 0) << jc.dump();
  EXPECT_EQ(rv, 0) << jv.dump();
  for (auto* j : {&jc, &jv}) {
    EXPECT_EQ(j->value("bad", 1ull), 0u) << j->dump();
    EXPECT_GE(j->value("reconnects", 0ull), 3u) << j->dump();
    EXPECT_GT(j->value("verified", 0ull), 1000u) << j->dump();
  }
  std::printf("[ figures ] 3 kills of a Vulkan producer: CUDA sink %llu verified, %llu invalidated, %llu reconnects; "
              "Vulkan sink %llu verified, %llu invalidated, %llu reconnects\n",
              static_cast<unsigned long long>(jc.value("verified", 0ull)),
              static_cast<unsigned long long>(jc.value("invalidated", 0ull)),
              static_cast<unsigned long long>(jc.value("reconnects", 0ull)),
              static_cast<unsigned long long>(jv.value("verified", 0ull)),
              static_cast<unsigned long long>(jv.value("invalidated", 0ull)),
              static_cast<unsigned long long>(jv.value("reconnects", 0ull)));
}

}  // namespace

// The Vulkan frame kernels (kernels/vulkan/frame.comp) against their CPU reference, on whatever
// Vulkan device this machine has: Mesa's lavapipe (CPU) in CI, the GPU on the device. They need
// no exports, so they run where the Vulkan kinds themselves are unavailable.
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "directport/kernels/frame_check.hpp"
#include "directport/vulkan/vulkan.hpp"
#if DIRECTPORT_HAS_VULKAN
#include "directport/kernels/vulkan_frames.hpp"
#endif

namespace {

TEST(VulkanAvailability, NamesTheDeviceOrSaysWhyNot) {
  const auto& a = dp::vk::availability();
  auto j = dp::vk::describe();
  EXPECT_EQ(j["usable"].get<bool>(), a.usable);
  if (a.usable) {
    EXPECT_FALSE(a.device.empty());
    EXPECT_EQ(a.uuid.rfind("GPU-", 0), 0u) << a.uuid;
    EXPECT_TRUE(a.timeline && a.external_semaphore_fd && a.external_memory_fd);
  } else {
    // The reason names what is missing and where to look.
    EXPECT_FALSE(a.reason.empty());
    EXPECT_TRUE(a.reason.find("lacks") != std::string::npos || a.reason.find("VULKAN.md") != std::string::npos ||
                a.reason.find("no Vulkan") != std::string::npos)
        << a.reason;
  }
}

#if DIRECTPORT_HAS_VULKAN
class VulkanFrames : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!dp::vk::availability().compute) GTEST_SKIP() << "no Vulkan device runs the frame kernels here: " << dp::vk::availability().reason;
    ctx_ = dp::vk::Context::get();
    kernels_ = std::make_unique<dp::kernels::VulkanFrames>(ctx_);
    commands_ = std::make_unique<dp::vk::Commands>(ctx_);
    cmd_ = commands_->allocate();
    done_ = dp::vk::Timeline(ctx_, false);
  }
  // Records with `rec`, submits, waits.
  template <class F>
  void run(F rec) {
    commands_->begin(cmd_);
    rec(cmd_);
    commands_->end(cmd_);
    std::uint64_t v = ++n_;
    VkTimelineSemaphoreSubmitInfo tl{VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO, nullptr, 0, nullptr, 1, &v};
    VkSemaphore sem = done_.get();
    VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO, &tl, 0, nullptr, nullptr, 1, &cmd_, 1, &sem};
    ctx_->submit(si);
    ASSERT_TRUE(done_.wait(v, std::chrono::seconds(60)));
  }
  std::shared_ptr<dp::vk::Context> ctx_;
  std::unique_ptr<dp::kernels::VulkanFrames> kernels_;
  std::unique_ptr<dp::vk::Commands> commands_;
  VkCommandBuffer cmd_ = VK_NULL_HANDLE;
  dp::vk::Timeline done_;
  std::uint64_t n_ = 0;
};

TEST_F(VulkanFrames, StampMatchesTheCpuReference) {
  std::mt19937_64 rng(7);
  // Odd word counts, one frame smaller than a workgroup, one larger than a whole dispatch's pass.
  for (std::size_t words : {3ul, 4ul, 255ul, 257ul, 4099ul, 65537ul, 2'500'001ul}) {
    const std::size_t bytes = words * 8, offset = 8 * (rng() % 64);
    dp::vk::Buffer buf(ctx_, offset + bytes + 64, dp::vk::Buffer::Where::host);
    std::memset(buf.mapped(), 0xAB, buf.size());
    const std::uint64_t seq = rng(), seed = rng();
    kernels_->use_buffer(buf.get(), buf.size());
    run([&](VkCommandBuffer c) { kernels_->record_stamp(c, offset, bytes, seq, seed); });
    std::vector<std::uint64_t> want(words);
    dp::kernels::stamp_frame_cpu(want.data(), bytes, seq, seed);
    const auto* got = static_cast<const unsigned char*>(buf.mapped()) + offset;
    EXPECT_EQ(std::memcmp(got, want.data(), bytes), 0) << words << " words";
    EXPECT_EQ(dp::kernels::verify_frame_cpu(got, bytes, seq), dp::kernels::kFrameOk) << words << " words";
    // Nothing written outside the frame.
    const auto* tail = got + bytes;
    for (int i = 0; i < 64; ++i) ASSERT_EQ(tail[i], 0xAB) << "byte " << i << " after a frame of " << words << " words";
  }
}

TEST_F(VulkanFrames, VerifyAgreesWithTheCpuAndCatchesDamage) {
  std::mt19937_64 rng(11);
  const std::size_t words = 100'003, bytes = words * 8;
  dp::vk::Buffer buf(ctx_, bytes, dp::vk::Buffer::Where::host);
  auto* w = static_cast<std::uint64_t*>(buf.mapped());
  kernels_->use_buffer(buf.get(), buf.size());
  auto check = [&](std::uint64_t expect_seq) {
    run([&](VkCommandBuffer c) { kernels_->record_verify(c, 0, bytes); });
    return kernels_->verify_result(expect_seq);
  };
  for (int trial = 0; trial < 5; ++trial) {
    const std::uint64_t seq = rng(), seed = rng();
    dp::kernels::stamp_frame_cpu(w, bytes, seq, seed);
    EXPECT_EQ(check(seq), dp::kernels::kFrameOk);
    EXPECT_EQ(check(seq + 1), dp::kernels::kFrameWrongSeq);
    const std::size_t k = 1 + rng() % (words - 2);
    w[k] ^= 1ull << (rng() % 64);  // one bit anywhere in the payload
    EXPECT_EQ(check(seq), dp::kernels::kFrameBadChecksum) << "bit flip in word " << k;
    EXPECT_EQ(check(seq), dp::kernels::verify_frame_cpu(w, bytes, seq));
  }
}
#endif

}  // namespace

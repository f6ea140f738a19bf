#include "directport/kernels/vulkan_frames.hpp"

#include <algorithm>
#include <cstring>

#include "frame_spv.h"  // dp_frame_spv: kernels/vulkan/frame.comp, compiled by glslangValidator

namespace dp::kernels {
namespace {

struct Push {
  std::uint64_t first, n, seq, seed;
  std::uint32_t mode, pad;
};

}  // namespace

VulkanFrames::VulkanFrames(std::shared_ptr<vk::Context> ctx)
    : ctx_(ctx),
      pipe_(ctx, dp_frame_spv, sizeof dp_frame_spv / sizeof dp_frame_spv[0], 2, sizeof(Push), 1),
      sums_(ctx, 64, vk::Buffer::Where::device),
      readback_(ctx, 64, vk::Buffer::Where::host) {}

void VulkanFrames::use_buffer(VkBuffer buffer, std::size_t bytes) {
  if (bytes > ctx_->max_storage_range()) {
    throw ValidationError("a Vulkan stream of " + std::to_string(bytes) + " bytes is more than the frame kernels can bind on " +
                          ctx_->name() + " (maxStorageBufferRange " + std::to_string(ctx_->max_storage_range()) +
                          " bytes): use smaller frames or fewer slots");
  }
  // The set may be in use by work still running: wait, then make it again.
  ctx_->wait_idle();
  pipe_.reset();
  VkBuffer bufs[2] = {buffer, sums_.get()};
  set_ = pipe_.bind(bufs, 2);
  buffer_ = buffer;
}

void VulkanFrames::record(VkCommandBuffer cmd, std::size_t offset, std::size_t bytes, std::uint64_t seq,
                          std::uint64_t seed, std::uint32_t mode) {
  DP_EXPECTS(set_ != VK_NULL_HANDLE, "VulkanFrames: use_buffer() first");
  DP_EXPECTS(bytes % 8 == 0 && bytes >= kMinStampedBytes && offset % 8 == 0,
             "Vulkan frames need >= 24 bytes, a multiple of 8, at a multiple of 8");
  DP_EXPECTS((offset + bytes) / 8 <= 0xFFFFFFFFull, "the Vulkan frame kernels index words with 32 bits");
  const auto& f = ctx_->fn();
  VkDescriptorSet set = set_;
  vk::full_barrier(*ctx_, cmd);  // after earlier submissions' use of the scratch and the frame
  f.vkCmdFillBuffer(cmd, sums_.get(), 0, 8, 0);
  vk::full_barrier(*ctx_, cmd);
  f.vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe_.pipeline());
  f.vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe_.layout(), 0, 1, &set, 0, nullptr);
  Push p{offset / 8, bytes / 8, seq, seed, mode, 0};
  f.vkCmdPushConstants(cmd, pipe_.layout(), VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof p, &p);
  const std::uint64_t groups = std::min<std::uint64_t>((p.n - 1 + 255) / 256, 8192);
  f.vkCmdDispatch(cmd, static_cast<std::uint32_t>(groups), 1, 1);
  vk::full_barrier(*ctx_, cmd);
}

void VulkanFrames::record_stamp(VkCommandBuffer cmd, std::size_t offset, std::size_t bytes, std::uint64_t seq,
                                std::uint64_t seed) {
  record(cmd, offset, bytes, seq, seed, 0);
  VkBufferCopy c{0, offset + bytes - 8, 8};
  ctx_->fn().vkCmdCopyBuffer(cmd, sums_.get(), buffer_, 1, &c);
  vk::full_barrier(*ctx_, cmd);
}

void VulkanFrames::record_verify(VkCommandBuffer cmd, std::size_t offset, std::size_t bytes) {
  record(cmd, offset, bytes, 0, 0, 1);
  VkBufferCopy sum{0, 0, 8};
  VkBufferCopy ends[2] = {{offset, 8, 8}, {offset + bytes - 8, 16, 8}};
  ctx_->fn().vkCmdCopyBuffer(cmd, sums_.get(), readback_.get(), 1, &sum);
  ctx_->fn().vkCmdCopyBuffer(cmd, buffer_, readback_.get(), 2, ends);
  vk::full_barrier(*ctx_, cmd);
}

FrameCheck VulkanFrames::verify_result(std::uint64_t expected_seq) const {
  std::uint64_t r[3];
  std::memcpy(r, readback_.mapped(), sizeof r);
  if (r[1] != expected_seq) return kFrameWrongSeq;
  return r[0] == r[2] ? kFrameOk : kFrameBadChecksum;
}

}  // namespace dp::kernels

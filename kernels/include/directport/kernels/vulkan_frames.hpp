// Self-verifying frames (frame_check.hpp) made and checked with Vulkan compute shaders
// (kernels/vulkan/frame.comp), bit-identical to the CPU and CUDA versions: what the Vulkan
// example nodes publish and verify. Needs a build with Vulkan (DIRECTPORT_HAS_VULKAN).
#pragma once

#include "directport/kernels/frame_check.hpp"
#include "directport/vulkan/vulkan.hpp"

#if DIRECTPORT_HAS_VULKAN
#include <memory>

namespace dp::kernels {

class VulkanFrames {
 public:
  explicit VulkanFrames(std::shared_ptr<vk::Context> ctx);

  // The buffer the frames are in (`bytes` long), for every record_* until the next call. Call it
  // again whenever the buffer may have changed (a reconnect: Frame::generation), even if the
  // handle looks the same (a destroyed buffer's handle may come back). Waits for the queue to be
  // idle. Throws ValidationError for a buffer larger than one storage binding may be
  // (maxStorageBufferRange, about 4 GiB on NVIDIA): smaller frames or fewer slots.
  void use_buffer(VkBuffer buffer, std::size_t bytes);

  // Records into `cmd` the stamp of the frame of `bytes` at byte `offset` of `buffer` (a
  // multiple of 8, >= kMinStampedBytes; offset a multiple of 8). The recording starts with a
  // barrier, so frames recorded into command buffers submitted one after another on the queue
  // do not overlap (they share a scratch word).
  void record_stamp(VkCommandBuffer cmd, std::size_t offset, std::size_t bytes, std::uint64_t seq, std::uint64_t seed);
  // Records the check of that frame; once the command buffer has completed, verify_result()
  // gives its verdict. One check in flight at a time.
  void record_verify(VkCommandBuffer cmd, std::size_t offset, std::size_t bytes);
  FrameCheck verify_result(std::uint64_t expected_seq) const;

 private:
  void record(VkCommandBuffer cmd, std::size_t offset, std::size_t bytes, std::uint64_t seq, std::uint64_t seed,
              std::uint32_t mode);
  std::shared_ptr<vk::Context> ctx_;
  vk::ComputePipeline pipe_;
  vk::Buffer sums_;      // device: sums[0], the reduction's target
  vk::Buffer readback_;  // host: [0] checksum, [1] word 0, [2] last word
  VkBuffer buffer_ = VK_NULL_HANDLE;
  VkDescriptorSet set_ = VK_NULL_HANDLE;
};

}  // namespace dp::kernels
#endif

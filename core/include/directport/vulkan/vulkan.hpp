// Vulkan for the `vulkan` memory kind and the `vulkan-timeline` fence kind (docs/VULKAN.md):
// exportable timeline semaphores and buffers, their import from opaque file descriptors, and the
// little of a compute runtime the example nodes need. The loader (libvulkan.so.1) is opened at
// run time, so binaries start, and report why there is no Vulkan, on machines without one.
//
// Built with the Vulkan headers (Debian's libvulkan-dev) where CMake finds them
// (DIRECTPORT_HAS_VULKAN=1); otherwise only availability() exists and says so.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "directport/core/error.hpp"
#include "directport/platform/fd.hpp"

#if DIRECTPORT_HAS_VULKAN
#ifndef VK_NO_PROTOTYPES
#define VK_NO_PROTOTYPES
#endif
#include <vulkan/vulkan_core.h>
#endif

namespace dp::vk {

// The Vulkan loader or driver refused an operation; the message names the call and the result.
class VulkanError : public Error {
 public:
  using Error::Error;
};

struct Availability {
  bool usable = false;  // a device with everything both Vulkan kinds need
  bool compute = false;  // a device that runs the frame kernels (exports aside)
  std::string reason;   // why not, when !usable
  std::string device;   // the chosen device's name, its UUID ("GPU-..." like CUDA's) and driver
  std::string uuid;
  std::string driver;
  std::uint32_t api_version = 0;  // the device's
  // What the device offers, each needed: timeline semaphores, opaque-fd export of semaphores and
  // memory, 64-bit integers and 64-bit buffer atomics in shaders (the frame kernels).
  bool timeline = false, external_semaphore_fd = false, external_memory_fd = false, shader_int64 = false,
       int64_atomics = false;
};

// Probes once (thread-safe): loader, instance, and the device Context::get() would choose.
// Never throws.
const Availability& availability();
// {"usable", "reason", "device", "uuid", "driver", "api_version", features...} for `doctor`.
nlohmann::json describe();

#if DIRECTPORT_HAS_VULKAN

#define DP_VK_FUNCTIONS(X)                                                                             \
  X(vkDestroyInstance) X(vkEnumeratePhysicalDevices) X(vkGetPhysicalDeviceProperties2)                 \
  X(vkGetPhysicalDeviceFeatures2) X(vkGetPhysicalDeviceQueueFamilyProperties)                          \
  X(vkGetPhysicalDeviceMemoryProperties) X(vkEnumerateDeviceExtensionProperties) X(vkCreateDevice)     \
  X(vkGetDeviceProcAddr) X(vkGetPhysicalDeviceExternalSemaphoreProperties)                             \
  X(vkGetPhysicalDeviceExternalBufferProperties)
#define DP_VK_DEVICE_FUNCTIONS(X)                                                                      \
  X(vkDestroyDevice) X(vkGetDeviceQueue) X(vkDeviceWaitIdle) X(vkQueueWaitIdle) X(vkQueueSubmit) X(vkCreateSemaphore)     \
  X(vkDestroySemaphore) X(vkGetSemaphoreFdKHR) X(vkImportSemaphoreFdKHR) X(vkGetSemaphoreCounterValue) \
  X(vkWaitSemaphores) X(vkSignalSemaphore) X(vkCreateBuffer) X(vkDestroyBuffer)                        \
  X(vkGetBufferMemoryRequirements) X(vkAllocateMemory) X(vkFreeMemory) X(vkBindBufferMemory)           \
  X(vkMapMemory) X(vkUnmapMemory) X(vkGetMemoryFdKHR) X(vkCreateShaderModule) X(vkDestroyShaderModule) \
  X(vkCreateDescriptorSetLayout) X(vkDestroyDescriptorSetLayout) X(vkCreatePipelineLayout)             \
  X(vkDestroyPipelineLayout) X(vkCreateComputePipelines) X(vkDestroyPipeline) X(vkCreateDescriptorPool) \
  X(vkDestroyDescriptorPool) X(vkResetDescriptorPool) X(vkAllocateDescriptorSets) X(vkUpdateDescriptorSets)                     \
  X(vkCreateCommandPool) X(vkDestroyCommandPool) X(vkAllocateCommandBuffers) X(vkFreeCommandBuffers)   \
  X(vkBeginCommandBuffer) X(vkEndCommandBuffer) X(vkResetCommandBuffer) X(vkCmdBindPipeline)           \
  X(vkCmdBindDescriptorSets) X(vkCmdPushConstants) X(vkCmdDispatch) X(vkCmdPipelineBarrier)            \
  X(vkCmdFillBuffer) X(vkCmdCopyBuffer)

struct Functions {
#define DP_VK_DECLARE(name) PFN_##name name = nullptr;
  DP_VK_FUNCTIONS(DP_VK_DECLARE)
  DP_VK_DEVICE_FUNCTIONS(DP_VK_DECLARE)
#undef DP_VK_DECLARE
};

[[noreturn]] void throw_vk(VkResult rc, const char* call, const char* file, int line);

// One instance, device and compute queue for the whole process, on the device whose UUID is
// `uuid` (a CUDA producer or consumer passes its GPU's, so that the handles it exchanges are
// of one device); "" picks the first device that has everything (a discrete GPU first), else
// the first that runs the compute kernels (exports then throw, naming what is missing).
// Created on first use; a later call naming another device throws VulkanError.
class Context {
 public:
  static std::shared_ptr<Context> get(const std::string& uuid = "");
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const Functions& fn() const { return fn_; }
  VkDevice device() const { return device_; }
  VkPhysicalDevice physical() const { return phys_; }
  VkQueue queue() const { return queue_; }
  std::uint32_t queue_family() const { return family_; }
  const std::string& uuid() const { return uuid_; }
  const std::string& name() const { return name_; }
  // A memory type among `bits` with all of `want`; throws VulkanError if none.
  std::uint32_t memory_type(std::uint32_t bits, VkMemoryPropertyFlags want) const;
  // Whether exportable buffers must be dedicated allocations (the driver's answer).
  bool export_needs_dedicated() const { return dedicated_only_; }
  // vkQueueSubmit on the process's queue (its access is serialised, as Vulkan requires: submit
  // through this, not to queue() directly, where other threads may submit too).
  void submit(const VkSubmitInfo& info);
  // Waits until the queue has run everything submitted (under the same lock).
  void wait_idle();
  // The largest storage-buffer binding the device allows (maxStorageBufferRange).
  std::uint64_t max_storage_range() const { return max_storage_range_; }
  // Whether semaphores and memory can be exported and imported (else: throws VulkanError why).
  bool exports() const { return exports_; }
  void require_exports() const;

 private:
  Context() = default;
  Functions fn_{};
  VkInstance instance_ = VK_NULL_HANDLE;
  VkPhysicalDevice phys_ = VK_NULL_HANDLE;
  VkDevice device_ = VK_NULL_HANDLE;
  VkQueue queue_ = VK_NULL_HANDLE;
  std::uint32_t family_ = 0;
  std::string uuid_, name_;
  bool dedicated_only_ = false;
  bool exports_ = false;
  std::string missing_;
  std::uint64_t max_storage_range_ = 0;
  VkPhysicalDeviceMemoryProperties mem_{};
  std::mutex queue_mu_;
};

// A timeline semaphore (value only ever rises).
class Timeline {
 public:
  Timeline() = default;
  // Exportable as an opaque fd when `exportable`.
  Timeline(std::shared_ptr<Context> ctx, bool exportable);
  // Imports an opaque fd (Vulkan owns it from then on; on failure it is closed).
  static Timeline import_fd(std::shared_ptr<Context> ctx, platform::UniqueFd fd);
  Timeline(Timeline&& o) noexcept;
  Timeline& operator=(Timeline&& o) noexcept;
  ~Timeline();

  VkSemaphore get() const { return sem_; }
  explicit operator bool() const { return sem_ != VK_NULL_HANDLE; }
  // A new opaque fd for the semaphore (each call gives another).
  platform::UniqueFd export_fd() const;
  std::uint64_t value() const;
  // Waits on the CPU until value() >= v, at most `timeout`; true once reached.
  bool wait(std::uint64_t v, std::chrono::nanoseconds timeout) const;
  // Raises the value from the CPU to v; a v not above the current value does nothing.
  void host_signal(std::uint64_t v) const;
  // Signals v on the process's queue after everything submitted to it before.
  void queue_signal(std::uint64_t v) const;

 private:
  std::shared_ptr<Context> ctx_;
  VkSemaphore sem_ = VK_NULL_HANDLE;
};

// Device memory with one storage/transfer buffer over all of it.
class Buffer {
 public:
  enum class Where { device_exportable, device, host };  // host: host-visible, coherent, mapped
  Buffer() = default;
  Buffer(std::shared_ptr<Context> ctx, std::size_t bytes, Where where);
  // Imports `bytes` of opaque-fd memory (exported by Vulkan, `dedicated` as it was allocated),
  // with a buffer of `buffer_bytes` over it (0: all of it; a dedicated import must repeat the
  // exporter's buffer size). Vulkan owns the fd once the import succeeds; on failure it is closed.
  static Buffer import_fd(std::shared_ptr<Context> ctx, platform::UniqueFd fd, std::size_t bytes, bool dedicated,
                          std::size_t buffer_bytes = 0);
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  ~Buffer();

  VkBuffer get() const { return buf_; }
  std::size_t size() const { return bytes_; }   // what was asked for
  std::size_t allocation_size() const { return alloc_; }  // what the memory holds
  bool dedicated() const { return dedicated_; }
  void* mapped() const { return map_; }          // Where::host only
  platform::UniqueFd export_fd() const;          // Where::device_exportable only

 private:
  void create_buffer(bool external);
  void free_all() noexcept;
  std::shared_ptr<Context> ctx_;
  VkBuffer buf_ = VK_NULL_HANDLE;
  VkDeviceMemory mem_ = VK_NULL_HANDLE;
  std::size_t bytes_ = 0, alloc_ = 0;
  bool dedicated_ = false;
  void* map_ = nullptr;
};

// A command pool and one primary command buffer per call of allocate(); freed with the pool.
class Commands {
 public:
  explicit Commands(std::shared_ptr<Context> ctx);
  ~Commands();
  Commands(const Commands&) = delete;
  Commands& operator=(const Commands&) = delete;
  VkCommandBuffer allocate();
  // Resets and begins `cmd` for one submission.
  void begin(VkCommandBuffer cmd);
  void end(VkCommandBuffer cmd);

 private:
  std::shared_ptr<Context> ctx_;
  VkCommandPool pool_ = VK_NULL_HANDLE;
};

// A compute pipeline of one SPIR-V module whose bindings 0..n-1 are storage buffers, with
// `push_bytes` of push constants, and a pool of descriptor sets for it.
class ComputePipeline {
 public:
  ComputePipeline(std::shared_ptr<Context> ctx, const std::uint32_t* spirv, std::size_t words, std::uint32_t buffers,
                  std::uint32_t push_bytes, std::uint32_t max_sets = 16);
  ~ComputePipeline();
  ComputePipeline(const ComputePipeline&) = delete;
  ComputePipeline& operator=(const ComputePipeline&) = delete;
  // A descriptor set with binding i = the whole of buffers[i]. Sets live until reset().
  VkDescriptorSet bind(const VkBuffer* buffers, std::uint32_t n);
  // Frees every set bind() gave (none may be in use by pending work).
  void reset();
  std::uint32_t max_sets() const { return max_sets_; }
  VkPipeline pipeline() const { return pipe_; }
  VkPipelineLayout layout() const { return layout_; }

 private:
  void free_all() noexcept;
  std::shared_ptr<Context> ctx_;
  VkShaderModule module_ = VK_NULL_HANDLE;
  VkDescriptorSetLayout set_layout_ = VK_NULL_HANDLE;
  VkPipelineLayout layout_ = VK_NULL_HANDLE;
  VkPipeline pipe_ = VK_NULL_HANDLE;
  VkDescriptorPool pool_ = VK_NULL_HANDLE;
  std::uint32_t buffers_ = 0, max_sets_ = 0;
};

// Orders transfer and compute writes before later compute, transfer and host accesses.
void full_barrier(const Context& ctx, VkCommandBuffer cmd);

#endif  // DIRECTPORT_HAS_VULKAN

}  // namespace dp::vk

#if DIRECTPORT_HAS_VULKAN
#define DP_VK_CHECK(ctx_fn, call_name, ...)                                                  \
  do {                                                                                    \
    VkResult dp_vk_rc_ = (ctx_fn).call_name(__VA_ARGS__);                                 \
    if (dp_vk_rc_ != VK_SUCCESS) ::dp::vk::throw_vk(dp_vk_rc_, #call_name, __FILE__, __LINE__); \
  } while (0)
#endif

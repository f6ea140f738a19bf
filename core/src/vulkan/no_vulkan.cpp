// Builds without the Vulkan headers: the Vulkan kinds are reported unavailable, with the fix.
#include "directport/core/transport.hpp"
#include "directport/vulkan/vulkan.hpp"

namespace dp::vk {

const Availability& availability() {
  static const Availability a = [] {
    Availability r;
    r.reason = "this build of DirectPort has no Vulkan support: its CMake found no Vulkan headers or no "
               "glslangValidator (apt install libvulkan-dev glslang-tools, then configure again: docs/VULKAN.md)";
    return r;
  }();
  return a;
}

nlohmann::json describe() { return {{"usable", false}, {"reason", availability().reason}}; }

}  // namespace dp::vk

namespace dp {

std::unique_ptr<ProducerTransport> make_vulkan_producer_transport(const StreamSpec& spec, const std::string&) {
  throw vk::VulkanError("stream '" + spec.name + "' is written with Vulkan: " + vk::availability().reason);
}

std::unique_ptr<ConsumerTransport> make_vulkan_consumer_transport(TransportImport imp) {
  throw vk::VulkanError("stream '" + imp.spec->name + "' is read with Vulkan: " + vk::availability().reason);
}

}  // namespace dp

// Built when DIRECTPORT_WITH_CUDA is OFF: the CUDA memory kinds report why they are missing.
#include "directport/core/error.hpp"
#include "directport/core/transport.hpp"

namespace dp {

std::unique_ptr<ProducerTransport> make_cuda_producer_transport(const StreamSpec& spec, const std::string&) {
  throw CudaError(std::string("stream memory '") + memory_kind_name(spec.memory) +
                  "' needs CUDA, but this build has none: reconfigure with -DDIRECTPORT_WITH_CUDA=ON "
                  "on a machine with the CUDA toolkit, or use memory 'host'");
}

std::unique_ptr<ConsumerTransport> make_cuda_consumer_transport(TransportImport imp) {
  throw CudaError(std::string("stream '") + imp.spec->name +
                  "' is on the GPU, but this build has no CUDA: reconfigure with -DDIRECTPORT_WITH_CUDA=ON");
}

}  // namespace dp

#include "directport/cuda/device.hpp"

namespace dp::cuda {
bool gpu_available() noexcept { return false; }
FenceWaits fence_waits(int) { return {true, "this build has no CUDA"}; }
ReadyWords ready_words(int) { return {false, "this build has no CUDA"}; }
bool mps_enabled(int) noexcept { return false; }
ProcessGpuMemory process_gpu_memory() noexcept { return {false, "this build has no CUDA", {}}; }
DeviceGpuMemory device_gpu_memory(int) noexcept { return {false, "this build has no CUDA", 0, 0}; }
nlohmann::json probe(bool) {
  return {{"built_with_cuda", false}, {"usable", false},
          {"reason", "this build has no CUDA (configured with DIRECTPORT_WITH_CUDA=OFF or without nvcc)"}};
}
}  // namespace dp::cuda

// The seam between the frame protocol (Publisher/Subscriber) and a memory + fence backend.
// Host: memfd segments and futex fences. CUDA (cuda/): VMM or legacy IPC memory and
// stream memory-operation fences. A backend only moves bytes and timeline values; the slot
// protocol is the same for all of them.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/core/protocol.hpp"
#include "directport/core/types.hpp"
#include "directport/platform/shm.hpp"

namespace dp {

// Which API a process writes or reads a stream's frames with, where its kinds allow more than
// one (`vulkan` memory and `vulkan-timeline` fences: docs/VULKAN.md). `automatic`: CUDA where this
// build and machine have it, Vulkan otherwise.
enum class GpuApi : std::uint8_t { automatic, cuda, vulkan };

// A subscription's release page as the producer sees it: mapped read-only; a writable mapping
// is made only to release a dead consumer's pending fences.
struct ReleasePageView {
  const protocol::ReleaseRecord* records = nullptr;  // one per slot
  const protocol::ConsumerState* state = nullptr;    // at kConsumerStateOffset
  void* gpu_handle = nullptr;                        // backend data (e.g. device pointer)
};

class ProducerTransport {
 public:
  virtual ~ProducerTransport() = default;
  virtual void* slot_data(std::uint32_t slot) = 0;
  virtual std::size_t slot_stride() const = 0;
  // Descriptors a subscriber receives, in order: memory, ready page.
  virtual std::vector<int> export_fds() const = 0;
  // Manifest fields describing memory and fences (handle types, device UUID, ...).
  virtual nlohmann::json describe() const = 0;
  virtual protocol::AtomicU64& ready_word(std::uint32_t slot) = 0;
  // Called when a subscription's release page arrives (GPU: register it) and when it goes away.
  // detach() takes the mapping over: GPU work enqueued earlier may still read it.
  virtual void attach(ReleasePageView& page, platform::Segment& mapping) = 0;
  virtual void detach(ReleasePageView& page, platform::Segment&& mapping) noexcept = 0;
  // Makes `stream` wait until the subscriber's released[slot] >= value (host: never needed,
  // the CPU check already saw the release).
  virtual void wait_released(GpuStream stream, const ReleasePageView& page, std::uint32_t slot,
                             std::uint64_t value) = 0;
  // After the application's writes to `slot` on `stream`: ready[slot] = seq.
  virtual void signal_ready(GpuStream stream, std::uint32_t slot, std::uint64_t seq) = 0;
  virtual bool gpu_side() const = 0;
  // Whether a slot whose release is enqueued on a consumer's stream but not yet executed may
  // be taken, its wait enqueued on our stream (wait_released). False: only once the release
  // has executed, seen on the CPU (cuda::fence_waits).
  virtual bool gpu_waits() const { return false; }
  // The VkBuffer over the stream's memory, for a Vulkan writer; 0 otherwise. A Vulkan
  // transport's SlotLease::data is the slot's byte offset in it, not an address.
  virtual std::uint64_t vulkan_buffer() const { return 0; }
};

class ConsumerTransport {
 public:
  virtual ~ConsumerTransport() = default;
  virtual const void* slot_data(std::uint32_t slot) const = 0;
  // Makes the reader wait until ready[slot] >= seq: the host waits on the CPU (bounded; false
  // on timeout), the GPU enqueues the wait on `stream` and returns true.
  virtual bool wait_ready(GpuStream stream, std::uint32_t slot, std::uint64_t seq,
                          std::chrono::nanoseconds timeout) = 0;
  // The reader is done with `slot` once `stream` reaches this point: released[slot] = seq.
  virtual void signal_released(GpuStream stream, protocol::ReleaseRecord& rec, std::uint64_t seq) = 0;
  // Current ready value of a slot, read on the CPU.
  virtual std::uint64_t ready_value(std::uint32_t slot) const = 0;
  // The producer is dead: raise ready[slot] to `word` (seq | kForcedReady) so that no GPU wait of
  // ours stays blocked; a transport whose waits are on a semaphore raises it to `semaphore_value`,
  // a value every survivor computes alike (the stream's latest seq at the death, or above), so
  // that no survivor lowers what another raised (CUDA sets an external timeline semaphore).
  virtual void force_ready(std::uint32_t slot, std::uint64_t word, std::uint64_t semaphore_value) noexcept = 0;
  // The VkBuffer over the stream's memory, for a Vulkan reader, and its size; 0 otherwise.
  virtual std::uint64_t vulkan_buffer() const { return 0; }
  virtual std::uint64_t vulkan_buffer_bytes() const { return 0; }
};

struct TransportImport {
  const StreamSpec* spec = nullptr;
  std::size_t slot_stride = 0;
  nlohmann::json description;           // the stream's manifest/reply fields
  std::vector<platform::UniqueFd> fds;  // memory, ready page
  platform::Segment* release_page = nullptr;  // the subscriber's own page (GPU: registered)
  GpuApi api = GpuApi::automatic;
};

std::unique_ptr<ProducerTransport> make_producer_transport(const StreamSpec& spec, const std::string& debug_name,
                                                           GpuApi api = GpuApi::automatic);
std::unique_ptr<ConsumerTransport> make_consumer_transport(TransportImport imp);

// Implemented in host_transport.cpp and cuda/cuda_transport.cpp.
std::unique_ptr<ProducerTransport> make_host_producer_transport(const StreamSpec& spec, const std::string& debug_name);
std::unique_ptr<ConsumerTransport> make_host_consumer_transport(TransportImport imp);
std::unique_ptr<ProducerTransport> make_cuda_producer_transport(const StreamSpec& spec, const std::string& debug_name);
std::unique_ptr<ConsumerTransport> make_cuda_consumer_transport(TransportImport imp);
// In vulkan/vulkan_transport.cpp (throw "not built" without the Vulkan headers).
std::unique_ptr<ProducerTransport> make_vulkan_producer_transport(const StreamSpec& spec, const std::string& debug_name);
std::unique_ptr<ConsumerTransport> make_vulkan_consumer_transport(TransportImport imp);

}  // namespace dp

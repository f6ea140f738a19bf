// Host backend: slots in a sealed memfd (peers can only map it read-only), ready words in a
// fence page, CPU atomics and futex waits.
#include <cstring>

#include "directport/core/error.hpp"
#include "directport/core/fence.hpp"
#include "directport/core/transport.hpp"
#include "directport/cuda/device.hpp"

namespace dp {
namespace {

std::size_t round_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

class HostProducer final : public ProducerTransport {
 public:
  HostProducer(const StreamSpec& spec, const std::string& name)
      : stride_(round_up(spec.frame_bytes(), 256)),
        mem_(platform::Segment::create_anonymous("dp-mem-" + name, stride_ * spec.slots, /*seal_writes=*/true)),
        page_(platform::Segment::create_anonymous("dp-ready-" + name, protocol::kFencePageBytes, false)) {
    for (std::uint32_t i = 0; i < spec.slots; ++i) new (&ready_word(i)) protocol::AtomicU64(0);
  }
  void* slot_data(std::uint32_t slot) override { return static_cast<char*>(mem_.data()) + slot * stride_; }
  std::size_t slot_stride() const override { return stride_; }
  std::vector<int> export_fds() const override { return {mem_.fd().get(), page_.fd().get()}; }
  nlohmann::json describe() const override {
    return {{"memory_handle", "posix-fd"}, {"fence_handle", "posix-fd"}, {"sealed", mem_.sealed()},
            {"memory_bytes", mem_.size()}};
  }
  protocol::AtomicU64& ready_word(std::uint32_t slot) override { return fence::page_word(page_.data(), slot); }
  void attach(ReleasePageView&, platform::Segment&) override {}
  void detach(ReleasePageView&, platform::Segment&&) noexcept override {}
  void wait_released(GpuStream, const ReleasePageView&, std::uint32_t, std::uint64_t) override {}
  void signal_ready(GpuStream stream, std::uint32_t slot, std::uint64_t seq) override {
    DP_EXPECTS(stream == nullptr, "the host backend takes no GPU stream");
    fence::host_signal(ready_word(slot), seq);
  }
  bool gpu_side() const override { return false; }

 private:
  std::size_t stride_;
  platform::Segment mem_, page_;
};

class HostConsumer final : public ConsumerTransport {
 public:
  explicit HostConsumer(TransportImport imp) : stride_(imp.slot_stride), slots_(imp.spec->slots) {
    if (imp.fds.size() != 2) throw ValidationError("host stream needs 2 descriptors (memory, ready page)");
    mem_ = platform::Segment::map_fd(std::move(imp.fds[0]), stride_ * slots_, platform::Access::read_only);
    page_ = platform::Segment::map_fd(std::move(imp.fds[1]), protocol::kFencePageBytes, platform::Access::read_only);
  }
  const void* slot_data(std::uint32_t slot) const override {
    return static_cast<const char*>(mem_.data()) + slot * stride_;
  }
  bool wait_ready(GpuStream stream, std::uint32_t slot, std::uint64_t seq, std::chrono::nanoseconds timeout) override {
    DP_EXPECTS(stream == nullptr, "the host backend takes no GPU stream");
    return fence::host_wait(word(slot), seq, timeout);
  }
  void signal_released(GpuStream stream, protocol::ReleaseRecord& rec, std::uint64_t seq) override {
    DP_EXPECTS(stream == nullptr, "the host backend takes no GPU stream");
    fence::host_signal(rec.released, seq);
  }
  std::uint64_t ready_value(std::uint32_t slot) const override { return word(slot).load(std::memory_order_acquire); }
  void force_ready(std::uint32_t, std::uint64_t, std::uint64_t) noexcept override {
    // Nothing of ours waits on the host page asynchronously: CPU waits are bounded.
  }

 private:
  const protocol::AtomicU64& word(std::uint32_t slot) const { return fence::page_word(page_.data(), slot); }
  std::size_t stride_;
  std::uint32_t slots_;
  platform::Segment mem_, page_;
};

}  // namespace

std::unique_ptr<ProducerTransport> make_host_producer_transport(const StreamSpec& spec, const std::string& name) {
  return std::make_unique<HostProducer>(spec, name);
}
std::unique_ptr<ConsumerTransport> make_host_consumer_transport(TransportImport imp) {
  return std::make_unique<HostConsumer>(std::move(imp));
}

namespace {
// `automatic` for a GPU stream: CUDA where there is a usable GPU in a CUDA build, else Vulkan.
bool use_vulkan(GpuApi api) {
  if (api != GpuApi::automatic) return api == GpuApi::vulkan;
  return !cuda::gpu_available();
}
}  // namespace

std::unique_ptr<ProducerTransport> make_producer_transport(const StreamSpec& spec, const std::string& name, GpuApi api) {
  if (spec.memory == MemoryKind::host) return make_host_producer_transport(spec, name);
  if (use_vulkan(api)) {
    if (spec.memory != MemoryKind::vulkan) {
      throw ValidationError("stream '" + spec.name + "': a Vulkan producer writes 'vulkan' memory, not '" +
                            memory_kind_name(spec.memory) + "'");
    }
    return make_vulkan_producer_transport(spec, name);
  }
  return make_cuda_producer_transport(spec, name);
}

std::unique_ptr<ConsumerTransport> make_consumer_transport(TransportImport imp) {
  if (imp.spec->memory == MemoryKind::host) return make_host_consumer_transport(std::move(imp));
  if (use_vulkan(imp.api)) return make_vulkan_consumer_transport(std::move(imp));
  return make_cuda_consumer_transport(std::move(imp));
}

}  // namespace dp

// The Vulkan side of the `vulkan` memory kind and the `vulkan-timeline` fence kind
// (docs/VULKAN.md): a producer that is a Vulkan program, and a consumer that reads with Vulkan.
//
// "ready" is one exportable timeline semaphore per stream whose value is the seq of the last
// frame whose writes are done (seqs rise, so one semaphore serves every slot). The fence page's
// ready words stay: they mirror the semaphore on the CPU (a producer thread stores a slot's word
// once the semaphore has reached its seq), because the protocol's CPU checks — is a slot's
// last frame done, did a dead producer finish the frame a consumer holds — read them, and a
// semaphore imported into CUDA cannot be read on the CPU. Releases stay words in the consumers'
// release pages, written on the CPU once the reader's Vulkan work is done.
#include <deque>
#include <thread>

#include <condition_variable>

#include "directport/core/fence.hpp"
#include "directport/core/transport.hpp"
#include "directport/vulkan/vulkan.hpp"

namespace dp {
namespace {

std::size_t round_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

class VulkanProducer final : public ProducerTransport {
 public:
  VulkanProducer(const StreamSpec& spec, const std::string& name)
      : spec_(spec), ctx_(vk::Context::get()), stride_(round_up(spec.frame_bytes(), 256)) {
    mem_ = vk::Buffer(ctx_, stride_ * spec.slots, vk::Buffer::Where::device_exportable);
    mem_fd_ = mem_.export_fd();
    sem_ = vk::Timeline(ctx_, true);
    sem_fd_ = sem_.export_fd();
    ready_ = platform::Segment::create_anonymous("dp-ready-" + name, protocol::kFencePageBytes, false);
    for (std::uint32_t i = 0; i < spec.slots; ++i) new (&ready_word(i)) protocol::AtomicU64(0);
    mirror_ = std::thread([this] { mirror_loop(); });
  }
  ~VulkanProducer() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    mirror_.join();
    // Our own submissions may still write the memory: let them finish before it is freed.
    // Consumers hold their own references (their imports).
    try {
      ctx_->wait_idle();
    } catch (const std::exception& e) {
      log_cleanup_failure(std::string("Vulkan producer: waiting for the queue: ") + e.what());
    }
  }

  void* slot_data(std::uint32_t slot) override { return reinterpret_cast<void*>(static_cast<std::uintptr_t>(slot * stride_)); }
  std::size_t slot_stride() const override { return stride_; }
  std::vector<int> export_fds() const override { return {mem_fd_.get(), ready_.fd().get(), sem_fd_.get()}; }
  nlohmann::json describe() const override {
    return {{"device_uuid", ctx_->uuid()},       {"memory_bytes", mem_.allocation_size()},
            {"memory_handle", "vulkan-opaque-fd"}, {"dedicated", mem_.dedicated()},
            {"buffer_bytes", mem_.size()},
            {"fence_handle", "posix-fd"},          {"semaphore_handle", "vulkan-timeline-opaque-fd"},
            {"writer", "vulkan"}};
  }
  protocol::AtomicU64& ready_word(std::uint32_t slot) override { return fence::page_word(ready_.data(), slot); }
  void attach(ReleasePageView&, platform::Segment&) override {}
  void detach(ReleasePageView&, platform::Segment&&) noexcept override {}
  void wait_released(GpuStream, const ReleasePageView&, std::uint32_t, std::uint64_t) override {
    // gpu_waits() is false: a slot is taken only once its releases were seen on the CPU.
  }
  void signal_ready(GpuStream stream, std::uint32_t slot, std::uint64_t seq) override {
    DP_EXPECTS(stream == nullptr,
               "a Vulkan producer publishes on the process's queue (vk::Context::submit): pass no stream");
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!mirror_error_.empty()) throw vk::VulkanError("Vulkan producer cannot publish: " + mirror_error_);
    }
    // After everything submitted to the queue before, i.e. the application's writes of the frame.
    sem_.queue_signal(seq);
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.emplace_back(slot, seq);
    }
    cv_.notify_one();
  }
  bool gpu_side() const override { return true; }
  std::uint64_t vulkan_buffer() const override { return reinterpret_cast<std::uint64_t>(mem_.get()); }

 private:
  // Stores each published slot's ready word once the semaphore has reached its seq, in order.
  void mirror_loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !pending_.empty(); });
      if (pending_.empty()) return;  // stopping
      auto [slot, seq] = pending_.front();
      lock.unlock();
      bool reached = false;
      try {
        while (!(reached = sem_.wait(seq, std::chrono::milliseconds(50)))) {
          std::lock_guard<std::mutex> l(mu_);
          if (stop_) break;
        }
      } catch (const std::exception& e) {
        // No ready word would be stored again: the next publish() throws with this.
        lock.lock();
        mirror_error_ = std::string("waiting for a frame's semaphore failed: ") + e.what();
        return;
      }
      lock.lock();
      if (!reached) return;
      pending_.pop_front();
      fence::host_signal(ready_word(slot), seq);
    }
  }

  StreamSpec spec_;
  std::shared_ptr<vk::Context> ctx_;
  std::size_t stride_;
  vk::Buffer mem_;
  platform::UniqueFd mem_fd_;
  vk::Timeline sem_;
  platform::UniqueFd sem_fd_;
  platform::Segment ready_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::uint32_t, std::uint64_t>> pending_;
  bool stop_ = false;
  std::string mirror_error_;  // why the mirror thread stopped (under mu_)
  std::thread mirror_;
};

class VulkanConsumer final : public ConsumerTransport {
 public:
  explicit VulkanConsumer(TransportImport imp) : spec_(*imp.spec), stride_(imp.slot_stride) {
    const auto& d = imp.description;
    if (spec_.fence != FenceKind::vulkan_timeline) {
      throw ValidationError("stream '" + spec_.name + "' signals its frames with '" + fence_kind_name(spec_.fence) +
                            "' fences, which Vulkan cannot wait on: its producer must use the fence kind "
                            "'vulkan-timeline' for a Vulkan reader");
    }
    if (spec_.memory != MemoryKind::vulkan && spec_.memory != MemoryKind::cuda_vmm) {
      throw ValidationError("a Vulkan reader maps 'vulkan' or 'cuda-vmm' memory, not '" +
                            std::string(memory_kind_name(spec_.memory)) + "' (stream '" + spec_.name + "')");
    }
    if (imp.fds.size() != 3) throw ValidationError("a Vulkan-read stream needs 3 descriptors (memory, ready page, semaphore)");
    ctx_ = vk::Context::get(d.at("device_uuid").get<std::string>());
    const auto bytes = d.at("memory_bytes").get<std::size_t>();
    if (bytes < stride_ * spec_.slots) throw ValidationError("stream memory smaller than its slots");
    const bool dedicated = spec_.memory == MemoryKind::vulkan && d.value("dedicated", false);
    mem_ = vk::Buffer::import_fd(ctx_, std::move(imp.fds[0]), bytes, dedicated, d.value("buffer_bytes", std::size_t{0}));
    ready_fd_ = std::move(imp.fds[1]);
    ready_ = platform::Segment::map_fd(ready_fd_.dup(), protocol::kFencePageBytes, platform::Access::read_only);
    sem_ = vk::Timeline::import_fd(ctx_, std::move(imp.fds[2]));
  }

  const void* slot_data(std::uint32_t slot) const override {
    return reinterpret_cast<const void*>(static_cast<std::uintptr_t>(slot * stride_));
  }
  bool wait_ready(GpuStream stream, std::uint32_t slot, std::uint64_t seq, std::chrono::nanoseconds timeout) override {
    DP_EXPECTS(stream == nullptr, "a Vulkan reader waits on the CPU: pass no stream");
    if (ready_value(slot) >= seq) return true;
    return sem_.wait(seq, timeout);
  }
  void signal_released(GpuStream stream, protocol::ReleaseRecord& rec, std::uint64_t seq) override {
    DP_EXPECTS(stream == nullptr, "a Vulkan reader releases on the CPU, once its reads are done: pass no stream");
    fence::host_signal(rec.released, seq);
  }
  std::uint64_t ready_value(std::uint32_t slot) const override {
    return fence::page_word(ready_.data(), slot).load(std::memory_order_acquire);
  }
  void force_ready(std::uint32_t slot, std::uint64_t word, std::uint64_t semaphore_value) noexcept override {
    try {
      fence::raise_in_page(ready_fd_, slot, word);
      // Nothing if the semaphore is there already; every survivor raises it to the same value, so
      // one that loses the race to another (Vulkan wants a rising value) loses nothing.
      sem_.host_signal(semaphore_value);
    } catch (const std::exception& e) {
      log_cleanup_failure(std::string("releasing a dead producer's Vulkan semaphore: ") + e.what());
    }
  }
  std::uint64_t vulkan_buffer() const override { return reinterpret_cast<std::uint64_t>(mem_.get()); }
  std::uint64_t vulkan_buffer_bytes() const override { return mem_.size(); }

 private:
  StreamSpec spec_;
  std::size_t stride_;
  std::shared_ptr<vk::Context> ctx_;
  vk::Buffer mem_;
  platform::UniqueFd ready_fd_;
  platform::Segment ready_;
  vk::Timeline sem_;
};

}  // namespace

std::unique_ptr<ProducerTransport> make_vulkan_producer_transport(const StreamSpec& spec, const std::string& name) {
  return std::make_unique<VulkanProducer>(spec, name);
}

std::unique_ptr<ConsumerTransport> make_vulkan_consumer_transport(TransportImport imp) {
  return std::make_unique<VulkanConsumer>(std::move(imp));
}

}  // namespace dp

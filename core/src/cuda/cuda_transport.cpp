// CUDA backends: `cuda-vmm` memory (cuMemCreate + POSIX fd, mapped read-only by consumers) and
// `cuda-ipc` (legacy cudaIpcMemHandle_t), both with `cuda-memop` fences: 64-bit timeline words in
// host fence pages registered with the device, signalled with cuStreamWriteValue64 and waited on
// with cuStreamWaitValue64 (GEQ): GPU to GPU with no CPU on the path.
// With Vulkan (docs/VULKAN.md), CUDA is also the writer or reader of `vulkan` memory (imported with
// cudaImportExternalMemory) and signals or waits on `vulkan-timeline` fences (a Vulkan timeline
// semaphore imported with cudaImportExternalSemaphore; the ready words then mirror it).
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "directport/core/fence.hpp"
#include "directport/core/transport.hpp"
#include "directport/cuda/device.hpp"
#include "directport/cuda/driver.hpp"
#include "directport/platform/process.hpp"
#include "directport/vulkan/vulkan.hpp"

namespace dp {
namespace {

using cuda::driver;

std::size_t round_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

int current_device() {
  int d = 0;
  DP_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

CUstream as_cu(GpuStream s) { return reinterpret_cast<CUstream>(s); }

// A host page registered with the device (DEVICEMAP), unregistered on destruction.
class RegisteredPage {
 public:
  RegisteredPage() = default;
  RegisteredPage(platform::Segment seg, bool read_only) : seg_(std::move(seg)) {
    unsigned flags = CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_PORTABLE;
    if (read_only) flags |= CU_MEMHOSTREGISTER_READ_ONLY;
    DP_CU_CHECK(cuMemHostRegister, seg_.data(), seg_.size(), flags);
    registered_ = true;
    DP_CU_CHECK(cuMemHostGetDevicePointer, &dptr_, seg_.data(), 0);
  }
  RegisteredPage(RegisteredPage&& o) noexcept
      : seg_(std::move(o.seg_)), dptr_(o.dptr_), registered_(std::exchange(o.registered_, false)) {}
  RegisteredPage& operator=(RegisteredPage&& o) noexcept {
    if (this != &o) {
      reset();
      seg_ = std::move(o.seg_);
      dptr_ = o.dptr_;
      registered_ = std::exchange(o.registered_, false);
    }
    return *this;
  }
  ~RegisteredPage() { reset(); }
  CUdeviceptr dptr() const { return dptr_; }
  platform::Segment& segment() { return seg_; }
  const platform::Segment& segment() const { return seg_; }

 private:
  void reset() noexcept {
    if (registered_) {
      CUresult rc = driver().cuMemHostUnregister(seg_.data());
      if (rc != CUDA_SUCCESS && rc != CUDA_ERROR_DEINITIALIZED) log_cleanup_failure("cuMemHostUnregister");
      registered_ = false;
    }
  }
  platform::Segment seg_;
  CUdeviceptr dptr_ = 0;
  bool registered_ = false;
};

bool read_only_register_supported(int device) {
  CUdevice dev;
  DP_CU_CHECK(cuDeviceGet, &dev, device);
  int v = 0;
  DP_CU_CHECK(cuDeviceGetAttribute, &v, CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED, dev);
  return v != 0;
}

// Registers a page someone else owns. Read-only where the device supports it; otherwise a
// writable mapping is registered but never written through except to release a dead peer.
RegisteredPage register_peer_page(const platform::UniqueFd& fd, int device) {
  bool ro = read_only_register_supported(device);
  auto seg = platform::Segment::map_fd(fd.dup(), protocol::kFencePageBytes,
                                       ro ? platform::Access::read_only : platform::Access::read_write);
  return RegisteredPage(std::move(seg), ro);
}

CUmemAllocationProp vmm_prop(int device) {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  return prop;
}

std::size_t vmm_granularity(int device) {
  auto prop = vmm_prop(device);
  std::size_t g = 0;
  DP_CU_CHECK(cuMemGetAllocationGranularity, &g, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
  return g;
}

// Owners of the pieces of a VMM mapping and of the runtime allocations, so that a constructor
// that fails half-way gives back what it took (members are destroyed in reverse order: the
// mapping before the address range before the allocation handle).
class VmmHandle {
 public:
  VmmHandle() = default;
  explicit VmmHandle(CUmemGenericAllocationHandle h) : h_(h) {}
  VmmHandle(VmmHandle&& o) noexcept : h_(std::exchange(o.h_, 0)) {}
  VmmHandle& operator=(VmmHandle&& o) noexcept {
    std::swap(h_, o.h_);
    return *this;
  }
  ~VmmHandle() {
    if (h_ && driver().cuMemRelease(h_) != CUDA_SUCCESS) log_cleanup_failure("cuMemRelease");
  }
  CUmemGenericAllocationHandle get() const { return h_; }

 private:
  CUmemGenericAllocationHandle h_ = 0;
};

class VaRange {
 public:
  VaRange() = default;
  VaRange(std::size_t bytes, std::size_t alignment) : bytes_(bytes) {
    DP_CU_CHECK(cuMemAddressReserve, &base_, bytes, alignment, 0, 0);
  }
  VaRange(VaRange&& o) noexcept : base_(std::exchange(o.base_, 0)), bytes_(o.bytes_) {}
  VaRange& operator=(VaRange&& o) noexcept {
    std::swap(base_, o.base_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~VaRange() {
    if (base_ && driver().cuMemAddressFree(base_, bytes_) != CUDA_SUCCESS) log_cleanup_failure("cuMemAddressFree");
  }
  CUdeviceptr base() const { return base_; }

 private:
  CUdeviceptr base_ = 0;
  std::size_t bytes_ = 0;
};

class VaMapping {
 public:
  VaMapping() = default;
  VaMapping(const VaRange& range, std::size_t bytes, const VmmHandle& handle) : base_(range.base()), bytes_(bytes) {
    DP_CU_CHECK(cuMemMap, base_, bytes, 0, handle.get(), 0);
  }
  VaMapping(VaMapping&& o) noexcept : base_(std::exchange(o.base_, 0)), bytes_(o.bytes_) {}
  VaMapping& operator=(VaMapping&& o) noexcept {
    std::swap(base_, o.base_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~VaMapping() {
    if (base_ && driver().cuMemUnmap(base_, bytes_) != CUDA_SUCCESS) log_cleanup_failure("cuMemUnmap");
  }

 private:
  CUdeviceptr base_ = 0;
  std::size_t bytes_ = 0;
};

// One VMM allocation mapped into this process: its handle, a reserved range and the mapping,
// destroyed in the reverse order (unmap, free the range, release the handle). The producer creates
// and exports it (slots, device ready words); a consumer imports it from the producer's fd.
class VmmMemory {
 public:
  VmmMemory() = default;
  // A new allocation of `bytes` (a multiple of the granularity) on `device`, read-write here.
  static VmmMemory create(int device, std::size_t bytes, std::size_t granularity) {
    auto prop = vmm_prop(device);
    CUmemGenericAllocationHandle h = 0;
    DP_CU_CHECK(cuMemCreate, &h, bytes, &prop, 0);
    return VmmMemory(VmmHandle(h), device, bytes, granularity, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
  }
  // The peer's allocation behind `fd` (POSIX-FD handle), with `access` here; the fd may be closed
  // afterwards: the import holds the memory.
  static VmmMemory import(int fd, int device, std::size_t bytes, std::size_t granularity, CUmemAccess_flags access) {
    CUmemGenericAllocationHandle h = 0;
    DP_CU_CHECK(cuMemImportFromShareableHandle, &h, reinterpret_cast<void*>(static_cast<std::uintptr_t>(fd)),
                CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    return VmmMemory(VmmHandle(h), device, bytes, granularity, access);
  }
  CUdeviceptr base() const { return range_.base(); }
  // A POSIX fd of the allocation, for a consumer.
  platform::UniqueFd export_fd() const {
    int fd = -1;
    DP_CU_CHECK(cuMemExportToShareableHandle, &fd, handle_.get(), CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    return platform::UniqueFd(fd);
  }

 private:
  VmmMemory(VmmHandle handle, int device, std::size_t bytes, std::size_t granularity, CUmemAccess_flags access)
      : handle_(std::move(handle)), range_(bytes, granularity), mapping_(range_, bytes, handle_) {
    CUmemAccessDesc acc{};
    acc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    acc.location.id = device;
    acc.flags = access;
    DP_CU_CHECK(cuMemSetAccess, range_.base(), bytes, &acc, 1);
  }
  VmmHandle handle_;
  VaRange range_;
  VaMapping mapping_;
};

// cudaMalloc'd memory (producer, cuda-ipc) or a peer's cudaIpcOpenMemHandle mapping (consumer).
class RuntimeMemory {
 public:
  enum class Kind { none, malloc, ipc_open };
  RuntimeMemory() = default;
  RuntimeMemory(void* p, Kind k) : p_(p), kind_(k) {}
  RuntimeMemory(RuntimeMemory&& o) noexcept : p_(std::exchange(o.p_, nullptr)), kind_(o.kind_) {}
  RuntimeMemory& operator=(RuntimeMemory&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(kind_, o.kind_);
    return *this;
  }
  ~RuntimeMemory() {
    if (!p_) return;
    cudaError_t rc = kind_ == Kind::malloc ? cudaFree(p_) : cudaIpcCloseMemHandle(p_);
    if (rc != cudaSuccess && rc != cudaErrorCudartUnloading) log_cleanup_failure(kind_ == Kind::malloc ? "cudaFree" : "cudaIpcCloseMemHandle");
  }

 private:
  void* p_ = nullptr;
  Kind kind_ = Kind::none;
};

// A CUDA event without timing.
class Event {
 public:
  Event() { DP_CUDA_CHECK(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming)); }
  Event(Event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  Event& operator=(Event&& o) noexcept {
    std::swap(e_, o.e_);
    return *this;
  }
  ~Event() {
    if (e_) cudaEventDestroy(e_);
  }
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

// Opaque-fd memory exported by Vulkan, imported and mapped as one buffer. CUDA's external-memory
// API maps it read-write: the GPU does not enforce read-only access to `vulkan` memory
// (docs/VULKAN.md says what that leaves).
class ExternalMemory {
 public:
  ExternalMemory() = default;
  ExternalMemory(platform::UniqueFd fd, std::size_t bytes, bool dedicated) {
    cudaExternalMemoryHandleDesc d{};
    d.type = cudaExternalMemoryHandleTypeOpaqueFd;
    d.handle.fd = fd.get();
    d.size = bytes;
    d.flags = dedicated ? cudaExternalMemoryDedicated : 0;
    DP_CUDA_CHECK(cudaImportExternalMemory(&ext_, &d));
    fd.release();  // CUDA owns it now
    cudaExternalMemoryBufferDesc b{};
    b.offset = 0;
    b.size = bytes;
    cudaError_t rc = cudaExternalMemoryGetMappedBuffer(&ptr_, ext_, &b);
    if (rc != cudaSuccess) {
      cudaDestroyExternalMemory(ext_);
      ext_ = nullptr;
      DP_CUDA_CHECK(rc);
    }
  }
  ExternalMemory(ExternalMemory&& o) noexcept : ext_(std::exchange(o.ext_, nullptr)), ptr_(std::exchange(o.ptr_, nullptr)) {}
  ExternalMemory& operator=(ExternalMemory&& o) noexcept {
    std::swap(ext_, o.ext_);
    std::swap(ptr_, o.ptr_);
    return *this;
  }
  ~ExternalMemory() {
    if (ptr_ && cudaFree(ptr_) != cudaSuccess) log_cleanup_failure("cudaFree of an external memory mapping");
    if (ext_ && cudaDestroyExternalMemory(ext_) != cudaSuccess) log_cleanup_failure("cudaDestroyExternalMemory");
  }
  void* get() const { return ptr_; }

 private:
  cudaExternalMemory_t ext_ = nullptr;
  void* ptr_ = nullptr;
};

// A Vulkan timeline semaphore imported from an opaque fd, signalled and waited on CUDA streams.
class ExternalSemaphore {
 public:
  ExternalSemaphore() = default;
  explicit ExternalSemaphore(platform::UniqueFd fd) {
    cudaExternalSemaphoreHandleDesc d{};
    d.type = cudaExternalSemaphoreHandleTypeTimelineSemaphoreFd;
    d.handle.fd = fd.get();
    DP_CUDA_CHECK(cudaImportExternalSemaphore(&sem_, &d));
    fd.release();  // CUDA owns it now
  }
  ExternalSemaphore(ExternalSemaphore&& o) noexcept : sem_(std::exchange(o.sem_, nullptr)) {}
  ExternalSemaphore& operator=(ExternalSemaphore&& o) noexcept {
    std::swap(sem_, o.sem_);
    return *this;
  }
  ~ExternalSemaphore() {
    if (sem_ && cudaDestroyExternalSemaphore(sem_) != cudaSuccess) log_cleanup_failure("cudaDestroyExternalSemaphore");
  }
  explicit operator bool() const { return sem_ != nullptr; }
  void signal(cudaStream_t s, std::uint64_t v) {
    cudaExternalSemaphoreSignalParams p{};
    p.params.fence.value = v;
    DP_CUDA_CHECK(cudaSignalExternalSemaphoresAsync(&sem_, &p, 1, s));
  }
  void wait(cudaStream_t s, std::uint64_t v) {
    cudaExternalSemaphoreWaitParams p{};
    p.params.fence.value = v;
    DP_CUDA_CHECK(cudaWaitExternalSemaphoresAsync(&sem_, &p, 1, s));
  }

 private:
  cudaExternalSemaphore_t sem_ = nullptr;
};

#if DIRECTPORT_HAS_VULKAN
using VulkanContext = std::shared_ptr<vk::Context>;
#else
using VulkanContext = std::shared_ptr<void>;
[[noreturn]] void no_vulkan(const StreamSpec& spec) {
  throw vk::VulkanError("stream '" + spec.name + "' uses a Vulkan kind: " + vk::availability().reason);
}
#endif

// ---------------------------------------------------------------- producer

class CudaProducer final : public ProducerTransport {
 public:
  CudaProducer(const StreamSpec& spec, const std::string& name) : spec_(spec) {
    device_ = current_device();
    cuda::use_device(device_);
    uuid_ = cuda::device_uuid(device_);
    gpu_waits_ = cuda::fence_waits(device_).on_gpu;
    stride_ = round_up(spec.frame_bytes(), 256);
    if (spec.memory == MemoryKind::cuda_vmm) {
      granularity_ = vmm_granularity(device_);
      bytes_ = round_up(stride_ * spec.slots, granularity_);
      vmm_ = VmmMemory::create(device_, bytes_, granularity_);
      base_ = vmm_.base();
      mem_fd_ = vmm_.export_fd();
    } else if (spec.memory == MemoryKind::vulkan) {
#if DIRECTPORT_HAS_VULKAN
      vk_ = vk::Context::get(uuid_);
      vk_mem_ = vk::Buffer(vk_, stride_ * spec.slots, vk::Buffer::Where::device_exportable);
      bytes_ = vk_mem_.allocation_size();
      mem_fd_ = vk_mem_.export_fd();
      ext_mem_ = ExternalMemory(vk_mem_.export_fd(), bytes_, vk_mem_.dedicated());
      base_ = reinterpret_cast<CUdeviceptr>(ext_mem_.get());
#else
      no_vulkan(spec);
#endif
    } else {
      bytes_ = stride_ * spec.slots;
      void* p = nullptr;
      DP_CUDA_CHECK(cudaMalloc(&p, bytes_));
      runtime_ = RuntimeMemory(p, RuntimeMemory::Kind::malloc);
      base_ = reinterpret_cast<CUdeviceptr>(p);
      DP_CUDA_CHECK(cudaIpcGetMemHandle(&ipc_, p));
    }
    DP_CUDA_CHECK(cudaMemset(reinterpret_cast<void*>(base_), 0, bytes_));
    DP_CUDA_CHECK(cudaDeviceSynchronize());
    ready_ = RegisteredPage(platform::Segment::create_anonymous("dp-ready-" + name, protocol::kFencePageBytes, false),
                            false);
    for (std::uint32_t i = 0; i < spec.slots; ++i) new (&ready_word(i)) protocol::AtomicU64(0);
    if (spec.memory == MemoryKind::cuda_vmm && spec.fence == FenceKind::cuda_memop && cuda::ready_words(device_).on_device) {
      // The ready words the consumers' GPU streams wait on, in device memory (one granule, shared
      // like the slots); the host page above stays their mirror for CPU checks.
      words_vmm_ = VmmMemory::create(device_, granularity_, granularity_);
      words_ = words_vmm_.base();
      DP_CUDA_CHECK(cudaMemset(reinterpret_cast<void*>(words_), 0, granularity_));
      DP_CUDA_CHECK(cudaDeviceSynchronize());
      words_fd_ = words_vmm_.export_fd();
    }
    if (spec.fence == FenceKind::vulkan_timeline) {
#if DIRECTPORT_HAS_VULKAN
      if (!vk_) vk_ = vk::Context::get(uuid_);
      vk_sem_ = vk::Timeline(vk_, true);
      sem_fd_ = vk_sem_.export_fd();
      ext_sem_ = ExternalSemaphore(vk_sem_.export_fd());
#else
      no_vulkan(spec);
#endif
    }
  }

  ~CudaProducer() override {
    // Consumers keep their own references to VMM memory: freeing ours is safe even while they
    // map it. Wait for our own work first; the members then give back the memory.
    cudaDeviceSynchronize();
    graveyard_.clear();
  }

  void* slot_data(std::uint32_t slot) override { return reinterpret_cast<void*>(base_ + slot * stride_); }
  std::size_t slot_stride() const override { return stride_; }
  // Memory (cuda-vmm, vulkan), ready page, semaphore (vulkan-timeline), device ready words
  // (`ready_words: device`).
  std::vector<int> export_fds() const override {
    std::vector<int> fds;
    if (mem_fd_) fds.push_back(mem_fd_.get());
    fds.push_back(ready_.segment().fd().get());
    if (sem_fd_) fds.push_back(sem_fd_.get());
    if (words_fd_) fds.push_back(words_fd_.get());
    return fds;
  }
  nlohmann::json describe() const override {
    nlohmann::json j{{"device_uuid", uuid_}, {"memory_bytes", bytes_}, {"fence_handle", "posix-fd"}};
    if (sem_fd_) j["semaphore_handle"] = "vulkan-timeline-opaque-fd";
    j["ready_words"] = words_fd_ ? "device" : "host";
    if (words_fd_) j["ready_words_bytes"] = granularity_;
    if (spec_.memory == MemoryKind::cuda_vmm) {
      j["memory_handle"] = "posix-fd";
      j["granularity"] = granularity_;
    } else if (spec_.memory == MemoryKind::vulkan) {
      j["memory_handle"] = "vulkan-opaque-fd";
#if DIRECTPORT_HAS_VULKAN
      j["dedicated"] = vk_mem_.dedicated();
      j["buffer_bytes"] = vk_mem_.size();
#endif
      j["writer"] = "cuda";
    } else {
      static const char* hex = "0123456789abcdef";
      std::string h;
      for (unsigned char c : std::string(ipc_.reserved, sizeof ipc_.reserved)) {
        h += hex[c >> 4];
        h += hex[c & 15];
      }
      j["memory_handle"] = "cuda-ipc";
      j["ipc_handle"] = h;
    }
    return j;
  }
  protocol::AtomicU64& ready_word(std::uint32_t slot) override { return fence::page_word(ready_.segment().data(), slot); }
  void attach(ReleasePageView& page, platform::Segment& mapping) override {
    cuda::use_device(device_);
    PeerPage pp{register_peer_page(mapping.fd(), device_), Event()};
    page.gpu_handle = reinterpret_cast<void*>(pp.reg.dptr());
    std::lock_guard<std::mutex> lock(mu_);
    pages_.emplace(page.gpu_handle, std::move(pp));
  }
  void detach(ReleasePageView& page, platform::Segment&&) noexcept override {
    // Waits enqueued earlier may still read this page (its words were raised, so they will
    // finish): keep the registration until the event recorded after its last wait has passed.
    // Checked without blocking, here and at each later detach: the broker thread never waits.
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pages_.find(page.gpu_handle);
    if (it != pages_.end()) {
      graveyard_.push_back(std::move(it->second));
      pages_.erase(it);
    }
    graveyard_.erase(std::remove_if(graveyard_.begin(), graveyard_.end(),
                                    [](const PeerPage& p) {
                                      return !p.waited || cudaEventQuery(p.done.get()) != cudaErrorNotReady;
                                    }),
                     graveyard_.end());
  }
  void wait_released(GpuStream stream, const ReleasePageView& page, std::uint32_t slot, std::uint64_t value) override {
    auto addr = reinterpret_cast<CUdeviceptr>(page.gpu_handle) + slot * protocol::kFenceStride +
                offsetof(protocol::ReleaseRecord, released);
    DP_CU_CHECK(cuStreamWaitValue64, as_cu(stream), addr, value, CU_STREAM_WAIT_VALUE_GEQ);
    // Mark the page's last use on this stream, for detach().
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pages_.find(page.gpu_handle);
    if (it != pages_.end()) {
      DP_CUDA_CHECK(cudaEventRecord(it->second.done.get(), reinterpret_cast<cudaStream_t>(stream)));
      it->second.waited = true;
    }
  }
  void signal_ready(GpuStream stream, std::uint32_t slot, std::uint64_t seq) override {
    // vulkan-timeline: the semaphore first (Vulkan readers and CUDA readers' GPU waits), then
    // its mirror in the ready page, in stream order.
    if (ext_sem_) ext_sem_.signal(reinterpret_cast<cudaStream_t>(stream), seq);
    // The default (barrier) flavour orders the application's earlier writes before the value.
    const CUdeviceptr host_word = ready_.dptr() + slot * protocol::kFenceStride;
    if (!words_) {
      DP_CU_CHECK(cuStreamWriteValue64, as_cu(stream), host_word, seq, 0);
      return;
    }
    // Device word first (the consumers' GPU waits), then its host mirror (CPU checks: a mirror at
    // seq means the device word is too), in one call.
    CUstreamBatchMemOpParams ops[2];
    std::memset(ops, 0, sizeof ops);
    ops[0].writeValue.operation = CU_STREAM_MEM_OP_WRITE_VALUE_64;
    ops[0].writeValue.address = words_ + slot * protocol::kFenceStride;
    ops[0].writeValue.value64 = seq;
    ops[1].writeValue = ops[0].writeValue;
    ops[1].writeValue.address = host_word;
    DP_CU_CHECK(cuStreamBatchMemOp, as_cu(stream), 2, ops, 0);
  }
  bool gpu_side() const override { return true; }
  bool gpu_waits() const override { return gpu_waits_; }

 private:
  struct PeerPage {
    RegisteredPage reg;
    Event done;           // recorded after each GPU wait on this page
    bool waited = false;  // `done` was recorded at least once
  };
  StreamSpec spec_;
  int device_ = 0;
  bool gpu_waits_ = true;  // cuda::fence_waits()
  std::string uuid_;
  std::size_t stride_ = 0, bytes_ = 0, granularity_ = 0;
  VmmMemory vmm_;
  RuntimeMemory runtime_;
  CUdeviceptr base_ = 0;
  cudaIpcMemHandle_t ipc_{};
  // Vulkan objects before their CUDA imports: the imports go first.
  VulkanContext vk_;
#if DIRECTPORT_HAS_VULKAN
  vk::Buffer vk_mem_;
  vk::Timeline vk_sem_;
#endif
  ExternalMemory ext_mem_;
  ExternalSemaphore ext_sem_;
  platform::UniqueFd mem_fd_, sem_fd_;
  RegisteredPage ready_;
  // Device ready words (`ready_words: device`).
  VmmMemory words_vmm_;
  CUdeviceptr words_ = 0;
  platform::UniqueFd words_fd_;
  std::mutex mu_;
  std::map<void*, PeerPage> pages_;
  std::vector<PeerPage> graveyard_;
};

// ---------------------------------------------------------------- consumer

class CudaConsumer final : public ConsumerTransport {
 public:
  explicit CudaConsumer(TransportImport imp) : spec_(*imp.spec), stride_(imp.slot_stride) {
    device_ = current_device();
    cuda::use_device(device_);
    gpu_waits_ = cuda::fence_waits(device_).on_gpu;
    const auto& d = imp.description;
    auto theirs = d.at("device_uuid").get<std::string>();
    auto ours = cuda::device_uuid(device_);
    if (theirs != ours) {
      throw ValidationError("stream '" + spec_.name + "' lives on GPU " + theirs + " but this process uses GPU " +
                            ours + " (device " + std::to_string(device_) +
                            "); cross-GPU subscriptions are not supported: select the producer's GPU "
                            "(cudaSetDevice / CUDA_VISIBLE_DEVICES)");
    }
    bytes_ = d.at("memory_bytes").get<std::size_t>();
    if (bytes_ < stride_ * spec_.slots) throw ValidationError("stream memory smaller than its slots");
    // Descriptors: memory (cuda-vmm, vulkan), ready page, semaphore (vulkan-timeline), device
    // ready words (`ready_words: device`).
    const bool timeline = spec_.fence == FenceKind::vulkan_timeline;
    const auto words_where = d.value("ready_words", std::string("host"));
    if (words_where != "host" && words_where != "device") {
      throw ValidationError("stream '" + spec_.name + "': ready_words is '" + words_where + "', not host or device");
    }
    const bool device_words = words_where == "device";
    if (device_words && (spec_.memory != MemoryKind::cuda_vmm || spec_.fence != FenceKind::cuda_memop)) {
      throw ValidationError("stream '" + spec_.name + "': device ready words come only with cuda-vmm memory and "
                            "cuda-memop fences, not " + memory_kind_name(spec_.memory) + " / " +
                            fence_kind_name(spec_.fence));
    }
    const std::size_t want_fds =
        (spec_.memory == MemoryKind::cuda_ipc ? 0 : 1) + 1 + (timeline ? 1 : 0) + (device_words ? 1 : 0);
    if (imp.fds.size() != want_fds) {
      throw ValidationError("stream '" + spec_.name + "' (" + memory_kind_name(spec_.memory) + ", " +
                            fence_kind_name(spec_.fence) + ") needs " + std::to_string(want_fds) +
                            " descriptors, the producer sent " + std::to_string(imp.fds.size()));
    }
    std::size_t fence_index = 0;
    if (spec_.memory == MemoryKind::cuda_vmm) {
      std::size_t g = vmm_granularity(device_);
      if (bytes_ % g != 0) throw ValidationError("cuda-vmm memory size is not a multiple of the granularity");
      // Read-only, enforced by the GPU.
      vmm_ = VmmMemory::import(imp.fds[0].get(), device_, bytes_, g, CU_MEM_ACCESS_FLAGS_PROT_READ);
      imp.fds[0].reset();  // the import holds the memory now
      base_ = vmm_.base();
      fence_index = 1;
    } else if (spec_.memory == MemoryKind::vulkan) {
      ext_mem_ = ExternalMemory(std::move(imp.fds[0]), bytes_, d.value("dedicated", false));
      base_ = reinterpret_cast<CUdeviceptr>(ext_mem_.get());
      fence_index = 1;
    } else {
      auto hex = d.at("ipc_handle").get<std::string>();
      if (hex.size() != 2 * sizeof(cudaIpcMemHandle_t)) throw ValidationError("malformed ipc_handle");
      cudaIpcMemHandle_t h{};
      for (std::size_t i = 0; i < sizeof h.reserved; ++i) {
        h.reserved[i] = static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
      }
      void* p = nullptr;
      DP_CUDA_CHECK(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess));
      runtime_ = RuntimeMemory(p, RuntimeMemory::Kind::ipc_open);
      base_ = reinterpret_cast<CUdeviceptr>(p);
    }
    ready_fd_ = std::move(imp.fds[fence_index]);
    ready_ = register_peer_page(ready_fd_, device_);
    if (timeline) ext_sem_ = ExternalSemaphore(std::move(imp.fds[fence_index + 1]));
    if (device_words) {
      // Mapped read-write: written only to release our own waits when the producer dies.
      std::size_t g = vmm_granularity(device_);
      words_bytes_ = d.value("ready_words_bytes", std::size_t{0});
      if (words_bytes_ < protocol::kMaxSlots * protocol::kFenceStride || words_bytes_ % g != 0) {
        throw ValidationError("stream '" + spec_.name + "': ready_words_bytes " + std::to_string(words_bytes_) +
                              " is not a positive multiple of the granularity (" + std::to_string(g) + ")");
      }
      auto& fd = imp.fds[fence_index + 1];
      words_vmm_ = VmmMemory::import(fd.get(), device_, words_bytes_, g, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
      fd.reset();
      words_ = words_vmm_.base();
    }
    DP_EXPECTS(imp.release_page != nullptr, "CUDA consumer needs its release page");
    own_base_ = static_cast<char*>(imp.release_page->data());
    own_ = RegisteredPage(platform::Segment::map_fd(imp.release_page->fd().dup(), protocol::kFencePageBytes,
                                                    platform::Access::read_write),
                          false);
  }

  ~CudaConsumer() override {
    // The application's kernels may still read frames it released (release() only enqueues):
    // let this process's work drain before the members unmap the memory and unregister the
    // pages. A faulted context returns at once with its error.
    cudaDeviceSynchronize();
    if (force_stream_) cudaStreamDestroy(force_stream_);
  }

  const void* slot_data(std::uint32_t slot) const override { return reinterpret_cast<const void*>(base_ + slot * stride_); }
  bool wait_ready(GpuStream stream, std::uint32_t slot, std::uint64_t seq, std::chrono::nanoseconds timeout) override {
    // Already signalled: the frame's writes are done and visible to any later kernel of ours,
    // and nothing needs enqueuing.
    if (ready_value(slot) >= seq) return true;
    if (gpu_waits_) {
      if (ext_sem_) {
        ext_sem_.wait(reinterpret_cast<cudaStream_t>(stream), seq);
      } else {
        DP_CU_CHECK(cuStreamWaitValue64, as_cu(stream), (words_ ? words_ : ready_.dptr()) + slot * protocol::kFenceStride,
                    seq, CU_STREAM_WAIT_VALUE_GEQ);
      }
      return true;
    }
    // CPU wait on the same word (cuda::fence_waits): poll briefly, then in short sleeps. The
    // producer's GPU is at most `slots` frames behind its publish() calls, so this is short.
    const std::int64_t start = platform::monotonic_ns();
    const std::int64_t deadline = start + timeout.count();
    for (;;) {
      if (ready_value(slot) >= seq) return true;
      const std::int64_t now = platform::monotonic_ns();
      if (now >= deadline) return false;
      if (now - start > 50000) std::this_thread::sleep_for(std::chrono::microseconds(10));
    }
  }
  void signal_released(GpuStream stream, protocol::ReleaseRecord& rec, std::uint64_t seq) override {
    auto off = reinterpret_cast<char*>(&rec.released) - own_base_;
    DP_CU_CHECK(cuStreamWriteValue64, as_cu(stream), own_.dptr() + off, seq, 0);
  }
  std::uint64_t ready_value(std::uint32_t slot) const override {
    return fence::page_word(ready_.segment().data(), slot).load(std::memory_order_acquire);
  }
  void force_ready(std::uint32_t slot, std::uint64_t word, std::uint64_t semaphore_value) noexcept override {
    try {
      fence::raise_in_page(ready_fd_, slot, word);
      if (ext_sem_ || words_) {
        // Our GPU waits are on the semaphore or the device words: raise them too, from a stream of our own (the
        // watchdog's thread; the application's stream may be blocked on this very wait). CUDA
        // sets the value, so every survivor sets the same one (force_ready's contract). The
        // calling thread's current device is left as it was.
        std::lock_guard<std::mutex> lock(force_mu_);
        int previous = -1;
        cudaGetDevice(&previous);
        cuda::use_device(device_);
        if (!force_stream_) DP_CUDA_CHECK(cudaStreamCreateWithFlags(&force_stream_, cudaStreamNonBlocking));
        if (ext_sem_) ext_sem_.signal(force_stream_, semaphore_value);
        // Device ready words: the same forced value as the host word (GEQ waits pass on it).
        if (words_) DP_CU_CHECK(cuStreamWriteValue64, as_cu(reinterpret_cast<GpuStream>(force_stream_)),
                                words_ + slot * protocol::kFenceStride, word, 0);
        if (previous >= 0 && previous != device_) cudaSetDevice(previous);
      }
    } catch (const std::exception& e) {
      log_cleanup_failure(std::string("releasing a dead producer's ready fence: ") + e.what());
    }
  }

 private:
  StreamSpec spec_;
  int device_ = 0;
  bool gpu_waits_ = true;  // cuda::fence_waits()
  std::size_t stride_ = 0, bytes_ = 0;
  VmmMemory vmm_;
  RuntimeMemory runtime_;
  CUdeviceptr base_ = 0;
  ExternalMemory ext_mem_;
  ExternalSemaphore ext_sem_;
  std::mutex force_mu_;
  cudaStream_t force_stream_ = nullptr;
  platform::UniqueFd ready_fd_;
  RegisteredPage ready_;
  // Device ready words (`ready_words: device`), mapped read-write (force_ready).
  std::size_t words_bytes_ = 0;
  VmmMemory words_vmm_;
  CUdeviceptr words_ = 0;
  char* own_base_ = nullptr;
  RegisteredPage own_;
};

}  // namespace

std::unique_ptr<ProducerTransport> make_cuda_producer_transport(const StreamSpec& spec, const std::string& name) {
  cuda::driver();  // throws "CUDA is not usable here: ..." with the reason
  return std::make_unique<CudaProducer>(spec, name);
}

std::unique_ptr<ConsumerTransport> make_cuda_consumer_transport(TransportImport imp) {
  cuda::driver();
  return std::make_unique<CudaConsumer>(std::move(imp));
}

}  // namespace dp

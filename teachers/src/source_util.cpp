#include "source_util.hpp"

#include <cstring>

#include "directport/core/error.hpp"
#include "directport/core/runtime.hpp"
#include "directport/cuda/device.hpp"
#include "directport/platform/process.hpp"
#if DIRECTPORT_HAS_CUDA
#include <cuda_runtime_api.h>

#include "directport/cuda/driver.hpp"
#endif

namespace dp::teachers::detail {

void rethrow_keyed(const ValidationError& e) {
  const std::string m = e.what();
  const std::string head = "param '";
  const auto end = m.find("': ", head.size());
  if (m.rfind(head, 0) == 0 && end != std::string::npos) {
    throw ValidationError(m.substr(head.size(), end - head.size()) + ": " + m.substr(end + 3));
  }
  throw e;
}

MemoryKind choose_memory(const std::string& m, const std::string& param) {
  if (m == "auto") return cuda::gpu_available() ? MemoryKind::cuda_vmm : MemoryKind::host;
  MemoryKind k;
  try {
    k = parse_memory_kind(m);
  } catch (const ValidationError& e) {
    throw ValidationError("param '" + param + "': " + e.what() + "; or 'auto' (GPU if there is one)");
  }
#if !DIRECTPORT_HAS_CUDA
  if (k != MemoryKind::host) throw ValidationError("param '" + param + "': " + m + " needs CUDA, and this build has none");
#endif
  return k;
}

Ticker::Ticker(double rate_hz, bool clock_ids) : rate_(rate_hz), clock_ids_(clock_ids) {
  if (!(rate_hz > 0 && rate_hz <= 10000)) {
    throw ValidationError("param 'rate_hz' must be in (0, 10000], got " + std::to_string(rate_hz));
  }
  period_ns_ = static_cast<std::int64_t>(1e9 / rate_hz);
}

std::optional<Ticker::Tick> Ticker::next() {
  const auto now = platform::realtime_ns();
  std::int64_t tick = now / period_ns_ + 1;
  if (tick <= last_tick_) tick = last_tick_ + 1;  // the clock stepped back: never repeat an id
  if (!NodeContext::sleep_for(std::chrono::nanoseconds(tick * period_ns_ - now))) return std::nullopt;
  last_tick_ = tick;
  Tick t;
  t.t_source_ns = platform::realtime_ns();
  if (clock_ids_) {
    t.frame_id = static_cast<std::uint64_t>(tick) * static_cast<std::uint64_t>(period_ns_) / 1'000'000;
    t.t_seconds = static_cast<double>(t.frame_id) / 1000.0;
  } else {
    t.frame_id = ++count_;
    t.t_seconds = static_cast<double>(t.frame_id - 1) / rate_;
  }
  return t;
}

#if DIRECTPORT_HAS_CUDA
SourceGpu::SourceGpu(bool on_gpu) {
  if (!on_gpu) return;
  cudaStream_t s = nullptr;
  DP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = reinterpret_cast<GpuStream>(s);
}
SourceGpu::~SourceGpu() {
  if (!stream_) return;
  auto s = reinterpret_cast<cudaStream_t>(stream_);
  if (cudaStreamSynchronize(s) != cudaSuccess) log_cleanup_failure("source: cudaStreamSynchronize");
  cudaStreamDestroy(s);
}
void SourceGpu::sync() {
  if (stream_) DP_CUDA_CHECK(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream_)));
}
void SourceGpu::upload(const SlotLease& lease, const void* src, std::size_t bytes) {
  DP_EXPECTS(bytes <= lease.bytes, "upload larger than the slot");
  if (!stream_) {
    std::memcpy(lease.data, src, bytes);
    return;
  }
  DP_CUDA_CHECK(cudaMemcpyAsync(lease.data, src, bytes, cudaMemcpyHostToDevice, reinterpret_cast<cudaStream_t>(stream_)));
}
#else
SourceGpu::SourceGpu(bool on_gpu) {
  if (on_gpu) throw CudaError("this build has no CUDA (DIRECTPORT_WITH_CUDA=OFF)");
}
SourceGpu::~SourceGpu() = default;
void SourceGpu::sync() {}
void SourceGpu::upload(const SlotLease& lease, const void* src, std::size_t bytes) {
  DP_EXPECTS(bytes <= lease.bytes, "upload larger than the slot");
  std::memcpy(lease.data, src, bytes);
}
#endif

}  // namespace dp::teachers::detail

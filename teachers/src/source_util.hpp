// What the sensor and file-source nodes share: the memory choice, wall-clock ticks as frame ids,
// and getting host-made bytes into a slot on either backend.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "directport/core/error.hpp"
#include "directport/core/stream.hpp"
#include "directport/core/types.hpp"

namespace dp::teachers::detail {

// For checks run while a graph config is validated (a node type's publishes/subscribes): the
// launcher prefixes the message with the node's params path, so "param 'K': why" becomes "K: why"
// ("nodes[1] (edges).params.scales: ..."). Other messages are rethrown as they are.
[[noreturn]] void rethrow_keyed(const ValidationError& e);

// "auto" | "host" | "cuda-vmm" | "cuda-ipc" -> the memory kind here; errors name `param`.
MemoryKind choose_memory(const std::string& m, const std::string& param = "memory");
inline FenceKind fence_for(MemoryKind m) { return m == MemoryKind::host ? FenceKind::host_futex : FenceKind::cuda_memop; }

// Frame ids for sources. With clock ids (the default), frames are published on the ticks of the
// wall clock (multiples of the period since the epoch) and frame_id is the tick's time in
// milliseconds, as tensor-source does: sources started apart, restarted or at different rates
// stamp the same id on the same instant, and ids keep increasing across restarts (the
// compositor drops ids older than the last it fused). Without, ids count frames from 1.
class Ticker {
 public:
  Ticker(double rate_hz, bool clock_ids);
  struct Tick {
    std::uint64_t frame_id;
    std::int64_t t_source_ns;  // wall clock at the tick
    double t_seconds;          // the source's time for this frame: frame_id / 1000 with clock ids,
                               // (frame_id - 1) / rate otherwise
  };
  // Sleeps until the next tick; nullopt if a stop was requested meanwhile.
  std::optional<Tick> next();

 private:
  std::int64_t period_ns_;
  double rate_;
  bool clock_ids_;
  std::uint64_t count_ = 0;
  std::int64_t last_tick_ = -1;
};

// A CUDA stream for a source's copies and kernels (nullptr on the host backend).
class SourceGpu {
 public:
  explicit SourceGpu(bool on_gpu);
  ~SourceGpu();
  SourceGpu(const SourceGpu&) = delete;
  SourceGpu& operator=(const SourceGpu&) = delete;
  GpuStream stream() const { return stream_; }
  bool on_gpu() const { return stream_ != nullptr; }
  // Waits for the work enqueued so far (host staging buffers may then be reused).
  void sync();
  // Copies `bytes` from host memory into the slot: memcpy on the host backend, an asynchronous
  // copy on the stream on the GPU (call sync() before reusing `src`).
  void upload(const SlotLease& lease, const void* src, std::size_t bytes);

 private:
  GpuStream stream_ = nullptr;
};

}  // namespace dp::teachers::detail

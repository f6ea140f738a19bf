// What this machine offers the GPU path, for `directport doctor` and for choosing defaults.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

namespace dp::cuda {

// {"usable": bool, "reason": ..., "driver_version", "runtime_version", "devices": [{name, uuid,
//  vmm, posix_fd, memops_64, host_register, read_only_host_register, ipc}], "memory_kind": ...}.
// Never throws. With `measure`, also times fence round trips on device 0 (see docs/PROTOCOL.md).
nlohmann::json probe(bool measure);

// True when CUDA is built in and a device can be used.
bool gpu_available() noexcept;

// Where the fence waits of CUDA streams run in this process: on the GPU (cuStreamWaitValue64
// enqueued on the reader's stream: no CPU on the path), the default; or, with
// DIRECTPORT_GPU_WAITS=cpu, polled on the CPU, with nothing enqueued (docs/TRANSPORT.md has
// both measured). Either way a wait already reached enqueues nothing. Any other value throws
// ValidationError naming it.
struct FenceWaits {
  bool on_gpu = true;
  std::string why;
};
FenceWaits fence_waits(int device);

// Where a `cuda-vmm` stream with `cuda-memop` fences keeps the ready words its consumers' GPU
// streams wait on: in the host ready page (the default), or, with DIRECTPORT_READY_WORDS=device,
// in a small VMM allocation on the device, shared like the slots (a wait then polls device
// memory, not host memory across the bus), with the host page kept as the mirror that CPU checks
// read. Between processes the two measured the same (docs/TRANSPORT.md), so the default is the
// simpler one. The producer decides and says so in its manifest (`ready_words`); consumers
// follow. Any other value throws ValidationError naming it.
struct ReadyWords {
  bool on_device = false;
  std::string why;
};
ReadyWords ready_words(int device);

// Whether this process's contexts on `device` are MPS clients. Without MPS each process has its
// own context and the GPU time-slices between them: a hand-off between processes then costs
// context switches (docs/TRANSPORT.md, "Time-slicing and MPS").
bool mps_enabled(int device) noexcept;

// GPU memory in use per process (pid -> bytes, summed over devices), from NVML (libnvidia-ml,
// part of the driver, opened at run time). Where it cannot be had, `ok` is false and `why` says
// why: a build without NVML's header (it comes with the CUDA toolkit's NVML package), no
// driver, or NVML refusing. Never throws.
struct ProcessGpuMemory {
  bool ok = false;
  std::string why;
  std::map<long long, std::uint64_t> bytes;
};
ProcessGpuMemory process_gpu_memory() noexcept;

// Memory in use on one device (NVML's numbering), all processes together; `ok` and `why` as
// above. dp_chaos compares it before and after a run of kills to find GPU memory that outlived
// the processes that allocated or imported it.
struct DeviceGpuMemory {
  bool ok = false;
  std::string why;
  std::uint64_t used = 0, total = 0;
};
DeviceGpuMemory device_gpu_memory(int device) noexcept;

}  // namespace dp::cuda

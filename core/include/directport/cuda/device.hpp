// What this machine offers the GPU path, for `directport doctor` and for choosing defaults.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace dp::cuda {

// {"usable": bool, "reason": ..., "driver_version", "runtime_version", "devices": [{name, uuid,
//  vmm, posix_fd, memops_64, host_register, read_only_host_register, ipc}], "memory_kind": ...}.
// Never throws. With `measure`, also times fence round trips on device 0 (see docs/PROTOCOL.md).
nlohmann::json probe(bool measure);

// True when CUDA is built in and a device can be used.
bool gpu_available() noexcept;

// Where the fence waits of CUDA streams run in this process (docs/TRANSPORT.md, "Time-slicing
// and MPS"). On the GPU (cuStreamWaitValue64: no CPU on the path) when the device's contexts are
// shared through MPS; on the CPU otherwise: without MPS each process has its own context, the
// contexts are time-sliced, and one whose stream waits for a word that another process writes
// holds the GPU while it waits, so that every hand-off costs context switches. A CPU wait polls
// the same fence word, and nothing is enqueued when it has been reached. DIRECTPORT_GPU_WAITS
// (gpu | cpu | auto, default auto) overrides; any other value throws ValidationError naming it.
struct FenceWaits {
  bool on_gpu = false;
  std::string why;
};
FenceWaits fence_waits(int device);

}  // namespace dp::cuda

// What this machine offers the GPU path, for `directport doctor` and for choosing defaults.
#pragma once

#include <nlohmann/json.hpp>

namespace dp::cuda {

// {"usable": bool, "reason": ..., "driver_version", "runtime_version", "devices": [{name, uuid,
//  vmm, posix_fd, memops_64, host_register, read_only_host_register, ipc}], "memory_kind": ...}.
// Never throws. With `measure`, also times fence round trips on device 0 (see docs/PROTOCOL.md).
nlohmann::json probe(bool measure);

// True when CUDA is built in and a device can be used.
bool gpu_available() noexcept;

}  // namespace dp::cuda

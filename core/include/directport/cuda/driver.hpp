// The CUDA driver API, reached through the runtime's entry-point query so that binaries link
// no libcuda and start on machines without a driver (they then report why there is no GPU).
// Host-only header: no device code.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <string>

#include "directport/core/error.hpp"

namespace dp::cuda {

#define DP_CUDA_DRIVER_FUNCTIONS(X)                                                            \
  X(cuGetErrorName) X(cuGetErrorString) X(cuDriverGetVersion) X(cuDeviceGet)                   \
  X(cuDeviceGetAttribute) X(cuDeviceGetUuid) X(cuDeviceGetName) X(cuMemGetAllocationGranularity) \
  X(cuMemCreate) X(cuMemRelease) X(cuMemExportToShareableHandle) X(cuMemImportFromShareableHandle) \
  X(cuMemAddressReserve) X(cuMemAddressFree) X(cuMemMap) X(cuMemUnmap) X(cuMemSetAccess)       \
  X(cuMemHostRegister) X(cuMemHostUnregister) X(cuMemHostGetDevicePointer)                     \
  X(cuStreamWriteValue64) X(cuStreamWaitValue64) X(cuStreamBatchMemOp)

struct DriverApi {
#define DP_DECLARE_FN(name) decltype(&::name) name = nullptr;
  DP_CUDA_DRIVER_FUNCTIONS(DP_DECLARE_FN)
#undef DP_DECLARE_FN
};

struct Availability {
  bool usable = false;
  int device_count = 0;
  int driver_version = 0;   // e.g. 13000
  int runtime_version = 0;
  std::string reason;       // why not usable
};

// Probes once (thread-safe): is there a driver and a device? Never throws.
const Availability& availability();
// The driver table; throws CudaError saying why when CUDA is not usable here.
const DriverApi& driver();

[[noreturn]] void throw_driver(CUresult rc, const char* call, const char* file, int line);
[[noreturn]] void throw_runtime(cudaError_t rc, const char* call, const char* file, int line);

// Makes `device`'s primary context current on the calling thread.
void use_device(int device);
// The 16-byte device UUID as "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".
std::string device_uuid(int device);
std::string device_name(int device);

}  // namespace dp::cuda

// Driver call through the table: throws CudaError naming the call and the driver's error.
#define DP_CU_CHECK(call_name, ...)                                                   \
  do {                                                                                \
    CUresult dp_rc_ = ::dp::cuda::driver().call_name(__VA_ARGS__);                    \
    if (dp_rc_ != CUDA_SUCCESS) ::dp::cuda::throw_driver(dp_rc_, #call_name, __FILE__, __LINE__); \
  } while (0)

// Runtime call: throws CudaError with cudaGetErrorName + string and clears the sticky error.
#define DP_CUDA_CHECK(call)                                                          \
  do {                                                                               \
    cudaError_t dp_rc_ = (call);                                                     \
    if (dp_rc_ != cudaSuccess) ::dp::cuda::throw_runtime(dp_rc_, #call, __FILE__, __LINE__); \
  } while (0)

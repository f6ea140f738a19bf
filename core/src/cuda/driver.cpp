#include "directport/cuda/driver.hpp"

#include <cstdio>
#include <mutex>

namespace dp::cuda {
namespace {

DriverApi g_api;
Availability g_avail;
std::once_flag g_once;

void probe() {
  cudaRuntimeGetVersion(&g_avail.runtime_version);
  int n = 0;
  cudaError_t rc = cudaGetDeviceCount(&n);
  if (rc != cudaSuccess) {
    g_avail.reason = std::string(cudaGetErrorName(rc)) + ": " + cudaGetErrorString(rc) +
                     (rc == cudaErrorInsufficientDriver || rc == cudaErrorNoDevice
                          ? " (no NVIDIA driver or GPU on this machine: libcuda.so.1 was not found or found no device)"
                          : "");
    cudaGetLastError();
    return;
  }
  cudaDriverGetVersion(&g_avail.driver_version);
  g_avail.device_count = n;
  if (n == 0) {
    g_avail.reason = "the driver reports no CUDA device";
    return;
  }
  cudaDriverEntryPointQueryResult q{};
#define DP_LOAD_FN(name)                                                                          \
  if (cudaGetDriverEntryPointByVersion(#name, reinterpret_cast<void**>(&g_api.name), CUDART_VERSION, \
                                       cudaEnableDefault, &q) != cudaSuccess ||                   \
      q != cudaDriverEntryPointSuccess || !g_api.name) {                                          \
    g_avail.reason = "the driver lacks " #name " (driver too old for CUDA " +                     \
                     std::to_string(CUDART_VERSION / 1000) + "?)";                                \
    cudaGetLastError();                                                                           \
    return;                                                                                       \
  }
  DP_CUDA_DRIVER_FUNCTIONS(DP_LOAD_FN)
#undef DP_LOAD_FN
  g_avail.usable = true;
}

}  // namespace

const Availability& availability() {
  std::call_once(g_once, probe);
  return g_avail;
}

const DriverApi& driver() {
  const auto& a = availability();
  if (!a.usable) throw CudaError("CUDA is not usable here: " + a.reason);
  return g_api;
}

void throw_driver(CUresult rc, const char* call, const char* file, int line) {
  const char* name = "?";
  const char* text = "?";
  if (g_api.cuGetErrorName) g_api.cuGetErrorName(rc, &name);
  if (g_api.cuGetErrorString) g_api.cuGetErrorString(rc, &text);
  throw CudaError(std::string(call) + " failed: " + name + " (" + text + ") at " + file + ":" + std::to_string(line));
}

void throw_runtime(cudaError_t rc, const char* call, const char* file, int line) {
  cudaGetLastError();  // clear the sticky error where it is not fatal
  throw CudaError(std::string(call) + " failed: " + cudaGetErrorName(rc) + " (" + cudaGetErrorString(rc) + ") at " +
                  file + ":" + std::to_string(line));
}

void use_device(int device) { DP_CUDA_CHECK(cudaSetDevice(device)); DP_CUDA_CHECK(cudaFree(nullptr)); }

std::string device_uuid(int device) {
  CUdevice dev;
  DP_CU_CHECK(cuDeviceGet, &dev, device);
  CUuuid u;
  DP_CU_CHECK(cuDeviceGetUuid, &u, dev);
  char buf[64];
  const auto* b = reinterpret_cast<const unsigned char*>(u.bytes);
  std::snprintf(buf, sizeof buf, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return buf;
}

std::string device_name(int device) {
  CUdevice dev;
  DP_CU_CHECK(cuDeviceGet, &dev, device);
  char buf[256] = {};
  DP_CU_CHECK(cuDeviceGetName, buf, sizeof buf - 1, dev);
  return buf;
}

}  // namespace dp::cuda

#include "directport/cuda/device.hpp"

#include <dlfcn.h>
#if __has_include(<nvml.h>)
#include <nvml.h>
#define DP_HAVE_NVML_HEADER 1
#endif

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <vector>

#include "directport/core/error.hpp"
#include "directport/core/fence.hpp"
#include "directport/core/protocol.hpp"
#include "directport/cuda/driver.hpp"
#include "directport/platform/shm.hpp"

namespace dp::cuda {
namespace {

int attr(CUdevice dev, CUdevice_attribute a) {
  int v = 0;
  if (driver().cuDeviceGetAttribute(&v, a, dev) != CUDA_SUCCESS) return -1;
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Two streams ping-pong `n` round trips through words `ping` and `pong` (GPU to GPU, no CPU on
// the path), held back by `gate` until everything is enqueued so that the GPU-event time is the
// fences' own: microseconds per round trip.
double pingpong_us(CUdeviceptr gate, CUdeviceptr ping, CUdeviceptr pong, protocol::AtomicU64& gate_word,
                   std::uint64_t base) {
  constexpr int n = 256;  // 2n operations a stream: well within a stream's queue
  cudaStream_t a, b;
  DP_CUDA_CHECK(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking));
  DP_CUDA_CHECK(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  DP_CUDA_CHECK(cudaEventCreate(&e0));
  DP_CUDA_CHECK(cudaEventCreate(&e1));
  auto cs = [](cudaStream_t s) { return reinterpret_cast<CUstream>(s); };
  DP_CU_CHECK(cuStreamWaitValue64, cs(a), gate, base + 1, CU_STREAM_WAIT_VALUE_GEQ);
  DP_CUDA_CHECK(cudaEventRecord(e0, a));
  for (std::uint64_t i = base + 1; i <= base + n; ++i) {
    DP_CU_CHECK(cuStreamWriteValue64, cs(a), ping, i, 0);
    DP_CU_CHECK(cuStreamWaitValue64, cs(a), pong, i, CU_STREAM_WAIT_VALUE_GEQ);
    DP_CU_CHECK(cuStreamWaitValue64, cs(b), ping, i, CU_STREAM_WAIT_VALUE_GEQ);
    DP_CU_CHECK(cuStreamWriteValue64, cs(b), pong, i, 0);
  }
  DP_CUDA_CHECK(cudaEventRecord(e1, a));
  fence::host_signal(gate_word, base + 1);
  DP_CUDA_CHECK(cudaStreamSynchronize(a));
  DP_CUDA_CHECK(cudaStreamSynchronize(b));
  float ms = 0;
  DP_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(a);
  cudaStreamDestroy(b);
  return double(ms) * 1e3 / n;
}

// CPU writes a host-mapped word, a GPU stream waiting on it writes an ack word, the CPU polls the
// ack: the latency of a CPU -> GPU -> CPU fence hop. Then two streams ping-pong through two
// words, GPU to GPU, to give the per-hop cost with no CPU on the path.
nlohmann::json measure_fences() {
  use_device(0);
  auto seg = platform::Segment::create_anonymous("dp-doctor", protocol::kFencePageBytes, false);
  auto* words = static_cast<protocol::AtomicU64*>(seg.data());
  for (int i = 0; i < 6; ++i) new (&words[i * 8]) protocol::AtomicU64(0);
  DP_CU_CHECK(cuMemHostRegister, seg.data(), seg.size(), CU_MEMHOSTREGISTER_DEVICEMAP);
  CUdeviceptr d = 0;
  DP_CU_CHECK(cuMemHostGetDevicePointer, &d, seg.data(), 0);
  CUdeviceptr go = d, ack = d + 64, ping = d + 128, pong = d + 192;
  cudaStream_t a, b;
  DP_CUDA_CHECK(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking));
  DP_CUDA_CHECK(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking));
  auto cs = [](cudaStream_t s) { return reinterpret_cast<CUstream>(s); };

  std::vector<double> hop;
  for (std::uint64_t i = 1; i <= 2000; ++i) {
    DP_CU_CHECK(cuStreamWaitValue64, cs(a), go, i, CU_STREAM_WAIT_VALUE_GEQ);
    DP_CU_CHECK(cuStreamWriteValue64, cs(a), ack, i, 0);
    auto t0 = std::chrono::steady_clock::now();
    words[0].store(i, std::memory_order_release);
    while (words[8].load(std::memory_order_acquire) < i) {
      if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(1)) {
        throw CudaError("the GPU did not answer a fence write within 1 s");
      }
    }
    hop.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  const int n = 2000;
  for (int i = 1; i <= n; ++i) {
    DP_CU_CHECK(cuStreamWriteValue64, cs(a), ping, i, 0);
    DP_CU_CHECK(cuStreamWaitValue64, cs(a), pong, i, CU_STREAM_WAIT_VALUE_GEQ);
    DP_CU_CHECK(cuStreamWaitValue64, cs(b), ping, i, CU_STREAM_WAIT_VALUE_GEQ);
    DP_CU_CHECK(cuStreamWriteValue64, cs(b), pong, i, 0);
  }
  auto t0 = std::chrono::steady_clock::now();
  DP_CUDA_CHECK(cudaStreamSynchronize(a));
  double total_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  // The enqueue loop above already let the GPU run; time the whole ping-pong from GPU events
  // would be more exact, but the host-side bound is an honest upper bound per round trip.
  DP_CUDA_CHECK(cudaStreamSynchronize(b));
  cudaStreamDestroy(a);
  cudaStreamDestroy(b);
  // Where the fence words live: host pages registered with the device (what the transport uses)
  // against device memory. The median of 5 runs each, GPU-event timed.
  std::vector<double> host_rt, dev_rt;
  void* dwords = nullptr;
  DP_CUDA_CHECK(cudaMalloc(&dwords, 256));
  DP_CUDA_CHECK(cudaMemset(dwords, 0, 256));
  const auto dd = reinterpret_cast<CUdeviceptr>(dwords);
  std::uint64_t base = 100000;
  for (int r = 0; r < 5; ++r, base += 1000) {
    host_rt.push_back(pingpong_us(go, d + 256, d + 320, words[0], base));
    base += 1000;
    dev_rt.push_back(pingpong_us(go, dd, dd + 64, words[0], base));
  }
  cudaFree(dwords);
  driver().cuMemHostUnregister(seg.data());
  return {{"cpu_gpu_cpu_hop_us_p50", median(hop)},
          {"gpu_gpu_pingpong_drain_us_per_round_trip_upper_bound", total_us / n},
          {"gpu_gpu_round_trip_us_host_words", median(host_rt)},
          {"gpu_gpu_round_trip_us_device_words", median(dev_rt)},
          {"samples", hop.size()}};
}

}  // namespace

bool gpu_available() noexcept { return availability().usable; }

FenceWaits fence_waits(int) {
  const char* env = std::getenv("DIRECTPORT_GPU_WAITS");
  std::string choice = env && *env ? env : "gpu";
  if (choice == "gpu") return {true, env && *env ? "DIRECTPORT_GPU_WAITS=gpu" : "the default"};
  if (choice == "cpu") return {false, "DIRECTPORT_GPU_WAITS=cpu"};
  throw ValidationError("DIRECTPORT_GPU_WAITS is '" + choice + "': use gpu (the default) or cpu");
}

ReadyWords ready_words(int) {
  const char* env = std::getenv("DIRECTPORT_READY_WORDS");
  std::string choice = env && *env ? env : "host";
  if (choice == "host") return {false, env && *env ? "DIRECTPORT_READY_WORDS=host" : "the default"};
  if (choice == "device") return {true, "DIRECTPORT_READY_WORDS=device"};
  throw ValidationError("DIRECTPORT_READY_WORDS is '" + choice + "': use host (the default) or device");
}

#if DP_HAVE_NVML_HEADER
namespace {

// NVML (libnvidia-ml, part of the driver), opened once and kept: its init is costly, and `top`
// asks every second. `init` is null where it cannot be had, and `why` says why.
struct Nvml {
  decltype(&nvmlInit_v2) init = nullptr;
  decltype(&nvmlDeviceGetCount_v2) count = nullptr;
  decltype(&nvmlDeviceGetHandleByIndex_v2) handle = nullptr;
  decltype(&nvmlDeviceGetComputeRunningProcesses_v3) processes = nullptr;
  decltype(&nvmlDeviceGetMemoryInfo) memory = nullptr;
  std::string why;
};

const Nvml& nvml() {
  static const Nvml nvml = [] {
    Nvml n;
    void* lib = ::dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      n.why = "libnvidia-ml.so.1 (NVML, part of the NVIDIA driver) is not installed";
      return n;
    }
    n.init = reinterpret_cast<decltype(&nvmlInit_v2)>(::dlsym(lib, "nvmlInit_v2"));
    n.count = reinterpret_cast<decltype(&nvmlDeviceGetCount_v2)>(::dlsym(lib, "nvmlDeviceGetCount_v2"));
    n.handle = reinterpret_cast<decltype(&nvmlDeviceGetHandleByIndex_v2)>(::dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
    n.processes = reinterpret_cast<decltype(&nvmlDeviceGetComputeRunningProcesses_v3)>(
        ::dlsym(lib, "nvmlDeviceGetComputeRunningProcesses_v3"));
    n.memory = reinterpret_cast<decltype(&nvmlDeviceGetMemoryInfo)>(::dlsym(lib, "nvmlDeviceGetMemoryInfo"));
    if (!n.init || !n.count || !n.handle || !n.processes || !n.memory) {
      n.why = "libnvidia-ml.so.1 lacks nvmlDeviceGetComputeRunningProcesses_v3 or nvmlDeviceGetMemoryInfo (driver too old)";
      n.init = nullptr;
    } else if (n.init() != NVML_SUCCESS) {
      n.why = "nvmlInit failed";
      n.init = nullptr;
    }
    return n;
  }();
  return nvml;
}

}  // namespace
#endif

ProcessGpuMemory process_gpu_memory() noexcept {
#if DP_HAVE_NVML_HEADER
  ProcessGpuMemory r;
  const Nvml& nv = nvml();
  if (!nv.init) {
    r.why = nv.why;
    return r;
  }
  unsigned devices = 0;
  if (nv.count(&devices) != NVML_SUCCESS) {
    r.why = "nvmlDeviceGetCount failed";
    return r;
  }
  for (unsigned i = 0; i < devices; ++i) {
    nvmlDevice_t d;
    if (nv.handle(i, &d) != NVML_SUCCESS) continue;
    std::vector<nvmlProcessInfo_t> procs(64);
    unsigned n = static_cast<unsigned>(procs.size());
    nvmlReturn_t rc = nv.processes(d, &n, procs.data());
    if (rc == NVML_ERROR_INSUFFICIENT_SIZE) {
      procs.resize(n + 16);
      n = static_cast<unsigned>(procs.size());
      rc = nv.processes(d, &n, procs.data());
    }
    if (rc != NVML_SUCCESS) continue;
    for (unsigned k = 0; k < n && k < procs.size(); ++k) {
      // NVML_VALUE_NOT_AVAILABLE (all ones) where the driver cannot tell, e.g. some containers.
      if (procs[k].usedGpuMemory != static_cast<unsigned long long>(-1)) {
        r.bytes[static_cast<long long>(procs[k].pid)] += procs[k].usedGpuMemory;
      }
    }
  }
  r.ok = true;
  return r;
#else
  return {false, "this build has no NVML header (nvml.h, the CUDA toolkit's NVML package)", {}};
#endif
}

DeviceGpuMemory device_gpu_memory(int device) noexcept {
  DeviceGpuMemory r;
#if DP_HAVE_NVML_HEADER
  const Nvml& nv = nvml();
  if (!nv.init) {
    r.why = nv.why;
    return r;
  }
  nvmlDevice_t d;
  nvmlMemory_t m{};
  if (device < 0 || nv.handle(static_cast<unsigned>(device), &d) != NVML_SUCCESS) {
    r.why = "NVML has no device " + std::to_string(device);
  } else if (nv.memory(d, &m) != NVML_SUCCESS) {
    r.why = "nvmlDeviceGetMemoryInfo failed";
  } else {
    r.ok = true;
    r.used = m.used;
    r.total = m.total;
  }
#else
  (void)device;
  r.why = "this build has no NVML header (nvml.h, the CUDA toolkit's NVML package)";
#endif
  return r;
}

bool mps_enabled(int device) noexcept {
  int mps = 0;
  if (cudaDeviceGetAttribute(&mps, cudaDevAttrMpsEnabled, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return mps != 0;
}

nlohmann::json probe(bool measure) {
  const auto& a = availability();
  nlohmann::json j{{"built_with_cuda", true},
                   {"usable", a.usable},
                   {"runtime_version", a.runtime_version},
                   {"driver_version", a.driver_version},
                   {"device_count", a.device_count}};
  if (!a.usable) {
    j["reason"] = a.reason;
    return j;
  }
  try {
    nlohmann::json devs = nlohmann::json::array();
    bool all_vmm = true;
    for (int i = 0; i < a.device_count; ++i) {
      CUdevice dev;
      DP_CU_CHECK(cuDeviceGet, &dev, i);
      int ipc = 0;
      cudaDeviceGetAttribute(&ipc, cudaDevAttrIpcEventSupport, i);
      nlohmann::json d{{"index", i},
                       {"name", device_name(i)},
                       {"uuid", device_uuid(i)},
                       {"vmm", attr(dev, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED) == 1},
                       {"posix_fd", attr(dev, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED) == 1},
                       {"memops_64", attr(dev, CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS) == 1},
                       {"host_register", attr(dev, CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED) == 1},
                       {"read_only_host_register", attr(dev, CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED) == 1},
                       {"ipc", ipc == 1}};
      all_vmm = all_vmm && d["vmm"] && d["posix_fd"];
      devs.push_back(d);
    }
    j["devices"] = devs;
    j["memory_kind"] = all_vmm ? "cuda-vmm" : "cuda-ipc";
    try {
      auto w = fence_waits(0);
      j["fence_waits"] = {{"where", w.on_gpu ? "gpu" : "cpu"}, {"why", w.why}};
      auto r = ready_words(0);
      j["ready_words"] = {{"where", r.on_device ? "device" : "host"}, {"why", r.why}};
      j["mps"] = mps_enabled(0);
    } catch (const std::exception& e) {
      j["fence_waits"] = {{"where", "error"}, {"why", e.what()}};
    }
    if (measure) {
      try {
        j["fences"] = measure_fences();
      } catch (const std::exception& e) {
        j["fences"] = {{"error", e.what()}};  // the device is still usable; the measurement failed
      }
    }
  } catch (const std::exception& e) {
    j["usable"] = false;
    j["reason"] = e.what();
  }
  return j;
}

}  // namespace dp::cuda

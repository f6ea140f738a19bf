// libdp_bench_clock: the benchmark's GPU clock (kernels/timing.hpp) behind a C ABI, so that the
// PyTorch peer (bench/handoff_torch.py, through ctypes) stamps and reads its frames with the very
// kernels the native methods use, on the stream torch gives it. Its latency on the GPU clock is
// then measured exactly as theirs is.
#include <cstdint>
#include <exception>
#include <string>

#include "directport/kernels/timing.hpp"

namespace {
thread_local std::string g_error;

template <class F>
int guarded(F&& f) noexcept {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    g_error = e.what();
  } catch (...) {
    g_error = "unknown exception";
  }
  return 1;
}
}  // namespace

#define DP_EXPORT __attribute__((visibility("default")))

extern "C" {

// dst[0] = %globaltimer when the kernel runs, dst[1] = seq; enqueued on `stream` (a cudaStream_t).
// 0 on success, 1 on failure (dp_bench_clock_error() says why).
DP_EXPORT int dp_bench_clock_stamp(void* dst, std::uint64_t seq, void* stream) {
  return guarded([&] { dp::kernels::stamp_time_gpu(static_cast<std::uint64_t*>(dst), seq, static_cast<dp::GpuStream>(stream)); });
}

// out[0] = %globaltimer - frame[0] (ns), out[1] = frame[1]; enqueued on `stream`.
DP_EXPORT int dp_bench_clock_since(const void* frame, void* out, void* stream) {
  return guarded([&] {
    dp::kernels::measure_since_gpu(static_cast<const std::uint64_t*>(frame), static_cast<std::uint64_t*>(out),
                                   static_cast<dp::GpuStream>(stream));
  });
}

// The last failure's message on this thread ("" if none).
DP_EXPORT const char* dp_bench_clock_error() { return g_error.c_str(); }
}

// Per-frame records of a benchmark's consumer, shared by the benchmark programs that read the
// GPU clock (dp_bench_handoff, dp_bench_transport).
#pragma once

#include <cstdint>
#include <vector>

#include <cuda_runtime_api.h>

#include "directport/cuda/driver.hpp"

namespace dp::bench {

// What a consumer's read kernel (kernels::measure_since_gpu) or its CPU recorded of frames
// 1..n: [2 * seq] the latency in ns, [2 * seq + 1] the seq the frame carried. Host-mapped where
// a GPU kernel writes it.
class Records {
 public:
  static constexpr std::uint64_t kWarmup = 10;  // the first frames touch the mapping and the kernels first

  Records(std::uint64_t n, bool mapped) : mapped_(mapped) {
    const std::size_t words = (n + 1) * 2;
    if (mapped_) {
      DP_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host_), words * sizeof(std::uint64_t), cudaHostAllocMapped));
      DP_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dev_), host_, 0));
    } else {
      plain_.resize(words);
      host_ = plain_.data();
    }
  }
  ~Records() {
    if (mapped_) cudaFreeHost(host_);
  }
  Records(const Records&) = delete;
  Records& operator=(const Records&) = delete;

  std::uint64_t* host(std::uint64_t seq) { return host_ + 2 * seq; }
  std::uint64_t* dev(std::uint64_t seq) { return dev_ + 2 * seq; }

  // Frames 1..last: those that carried the wrong seq are added to `bad`; the latencies in µs of
  // all but the first kWarmup.
  std::vector<double> latencies_us(std::uint64_t last, std::uint64_t& bad) const {
    std::vector<double> lat;
    for (std::uint64_t seq = 1; seq <= last; ++seq) {
      if (host_[2 * seq + 1] != seq) ++bad;
      if (seq > kWarmup) lat.push_back(double(host_[2 * seq]) / 1e3);
    }
    return lat;
  }

 private:
  bool mapped_;
  std::uint64_t* host_ = nullptr;
  std::uint64_t* dev_ = nullptr;
  std::vector<std::uint64_t> plain_;
};

// CPU-clock latencies of a paced phase, less the first Records::kWarmup where there are enough.
inline void drop_warmup(std::vector<double>& lat) {
  if (lat.size() > 2 * Records::kWarmup) lat.erase(lat.begin(), lat.begin() + Records::kWarmup);
}

}  // namespace dp::bench

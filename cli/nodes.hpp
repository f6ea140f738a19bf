// Node types the `directport` binary knows, registered into the runtime's registry at start.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/core/runtime.hpp"

namespace dp::cli {

void register_builtin_nodes(NodeRegistry& r);
// A sample of at most kMaxSamples timings: past that, each new one replaces an old one in turn,
// so a node that runs for days keeps a bounded, recent sample.
inline constexpr std::size_t kMaxSamples = 1 << 16;
void sample(std::vector<double>& v, std::uint64_t& seen, double x);
// {"p50", "p99", "max", "n"} of a sample in microseconds (empty: {}), for the nodes' reports.
nlohmann::json percentiles(std::vector<double> v);
// The sinks' wait for frames: next() timed (next_us), and giving up after `timeout_s` without one.
class FrameWaiter {
 public:
  FrameWaiter(Subscriber& sub, std::string from, double timeout_s)
      : sub_(sub), from_(std::move(from)), timeout_s_(timeout_s), last_(std::chrono::steady_clock::now()) {}
  // The next frame, or nullopt: none within 100 ms (try again), or gave_up() (stop).
  std::optional<Frame> next(GpuStream stream = nullptr);
  bool gave_up() const { return gave_up_; }
  nlohmann::json next_us() const { return percentiles(next_us_); }

 private:
  Subscriber& sub_;
  std::string from_;
  double timeout_s_;
  std::chrono::steady_clock::time_point last_;
  bool gave_up_ = false;
  std::vector<double> next_us_;
  std::uint64_t next_seen_ = 0;
};
// The stream of self-verifying frames pattern-source and vulkan-source publish, from their params
// `stream`, `bytes` (checked: a multiple of 8, at least kernels::kMinStampedBytes) and `slots`;
// memory and fence are the caller's.
StreamSpec stamped_frames_spec(const nlohmann::json& params);
// The params of those two sources: the three stamped_frames_spec() reads, then `kind_params`
// (each source's memory and fence choices, if any), then the pacing both share (`rate_hz`,
// `frames`, `wait_subscribers`).
std::vector<ParamSpec> stamped_source_params(std::vector<ParamSpec> kind_params = {});
// vulkan-source and vulkan-sink (nodes_vulkan.cpp); called by register_builtin_nodes.
void register_vulkan_nodes(NodeRegistry& r);
// "auto" | "host" | "cuda-vmm" | "cuda-ipc" -> the memory kind to use here.
MemoryKind parse_memory_choice(const std::string& m);

}  // namespace dp::cli

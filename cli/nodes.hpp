// Node types the `directport` binary knows, registered into the runtime's registry at start.
#pragma once

#include <cstdint>
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
// vulkan-source and vulkan-sink (nodes_vulkan.cpp); called by register_builtin_nodes.
void register_vulkan_nodes(NodeRegistry& r);
// "auto" | "host" | "cuda-vmm" | "cuda-ipc" -> the memory kind to use here.
MemoryKind parse_memory_choice(const std::string& m);

}  // namespace dp::cli

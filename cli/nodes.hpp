// Node types the `directport` binary knows, registered into the runtime's registry at start.
#pragma once

#include <string>

#include "directport/core/runtime.hpp"

namespace dp::cli {

void register_builtin_nodes(NodeRegistry& r);
// vulkan-source and vulkan-sink (nodes_vulkan.cpp); called by register_builtin_nodes.
void register_vulkan_nodes(NodeRegistry& r);
// "auto" | "host" | "cuda-vmm" | "cuda-ipc" -> the memory kind to use here.
MemoryKind parse_memory_choice(const std::string& m);

}  // namespace dp::cli

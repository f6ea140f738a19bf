// The compositor node (DESIGN §7, docs/FUSION.md): subscribes to the teachers named in its
// params, aligns their frames by frame_id (aligner.hpp), fuses them with the fusion kernel
// (kernels/fusion.hpp; its CPU reference on the host backend) and publishes the fused stream,
// whose manifest entry carries the layout of its segments and of the validity mask.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/core/runtime.hpp"
#include "directport/kernels/fusion.hpp"

namespace dp::compositor {

// One entry of the `teachers` param, checked.
struct TeacherConfig {
  std::string from;  // NODE/STREAM
  std::string name;  // the segment's name (default: NODE)
  kernels::NormMode norm = kernels::NormMode::channel;
  std::optional<DType> dtype;                       // declared: no need to wait for the teacher
  std::optional<std::vector<std::int64_t>> shape;   // [C, H, W] or [C]
};

// Checks the `teachers` param (errors name "teachers[i].key"); `default_norm` fills in `norm`.
std::vector<TeacherConfig> parse_teachers(const nlohmann::json& teachers, kernels::NormMode default_norm);

// A teacher stream's shape as the fusion takes it: [C, H, W] or [C] ([1, C, H, W] and [1, C]
// drop their leading 1). Throws ValidationError naming `who` otherwise.
std::vector<std::int64_t> fusion_shape(const std::vector<std::int64_t>& stream_shape, const std::string& who);

void register_compositor_node(NodeRegistry& r);

}  // namespace dp::compositor

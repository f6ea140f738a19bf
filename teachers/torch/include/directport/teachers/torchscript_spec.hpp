// The `torchscript` teacher's params and node type description, without LibTorch: `directport`
// validates configs with them and hands the node to `directport-torch` (NodeType::runner).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/core/runtime.hpp"
#include "directport/core/types.hpp"

namespace dp::teachers {

struct TorchScriptSpec {
  std::string model;
  // Preprocessing, in this order: crop_last (keep the last N entries of the last dimension),
  // resize (bilinear to [H, W], a [C, H, W] input), x * scale + offset, (x - mean[c]) / std[c],
  // a leading batch dimension.
  std::int64_t crop_last = 0;
  std::optional<std::pair<std::int64_t, std::int64_t>> resize;
  double scale = 1.0, offset = 0.0;
  std::vector<double> mean, std;
  bool batch = true;
  std::vector<nlohmann::json> args;  // extra forward() arguments (numbers)
  std::vector<std::int64_t> output_shape;
  DType output_dtype = DType::f32;
};

// Checks the params of a `torchscript` node (errors name the key: "preprocess.std: ...").
TorchScriptSpec parse_torchscript_params(const nlohmann::json& params);

// The node type without its body (params, publishes, subscribes).
NodeType torchscript_node_type();

}  // namespace dp::teachers

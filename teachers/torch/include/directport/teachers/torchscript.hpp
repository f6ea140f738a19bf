// The `torchscript` teacher (LibTorch): any TorchScript model, its preprocessing and output spec
// declared in JSON params. Built where LibTorch is found, like the student.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/core/runtime.hpp"
#include "directport/core/types.hpp"
#include "directport/teachers/torchscript_spec.hpp"

namespace dp::teachers {

// The declared preprocessing applied to a frame (any dtype; result float32, same device).
torch::Tensor preprocess(const TorchScriptSpec& spec, torch::Tensor frame);

void register_torchscript_teacher(NodeRegistry& r);

}  // namespace dp::teachers

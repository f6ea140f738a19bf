// The `torchscript` node type's description and params (no LibTorch here: `directport` validates
// configs with it, and runs the node through `directport-torch`).
#include "directport/teachers/torchscript_spec.hpp"

#include <string>

#include "directport/core/error.hpp"

namespace dp::teachers {

using nlohmann::json;

TorchScriptSpec parse_torchscript_params(const json& p) {
  TorchScriptSpec s;
  s.model = p.at("model").get<std::string>();
  const auto& pre = p.at("preprocess");
  if (!pre.is_object()) throw ValidationError("preprocess: expected an object");
  for (auto& [k, v] : pre.items()) {
    const std::string at = "preprocess." + k;
    if (k == "scale") {
      if (!v.is_number()) throw ValidationError(at + ": expected a number");
      s.scale = v.get<double>();
    } else if (k == "offset") {
      if (!v.is_number()) throw ValidationError(at + ": expected a number");
      s.offset = v.get<double>();
    } else if (k == "mean" || k == "std") {
      if (!v.is_array()) throw ValidationError(at + ": expected an array of numbers, one per channel");
      std::vector<double> xs;
      for (auto& x : v) {
        if (!x.is_number()) throw ValidationError(at + ": expected numbers");
        xs.push_back(x.get<double>());
      }
      if (k == "std") {
        for (double x : xs) {
          if (!(x > 0)) throw ValidationError(at + ": entries must be positive");
        }
      }
      (k == "mean" ? s.mean : s.std) = xs;
    } else if (k == "resize") {
      if (!v.is_array() || v.size() != 2 || !v[0].is_number_integer() || !v[1].is_number_integer() || v[0].get<int>() < 1 ||
          v[1].get<int>() < 1) {
        throw ValidationError(at + ": expected [H, W]");
      }
      s.resize = {v[0].get<std::int64_t>(), v[1].get<std::int64_t>()};
    } else if (k == "crop_last") {
      if (!v.is_number_integer() || v.get<std::int64_t>() < 1) throw ValidationError(at + ": expected a positive integer");
      s.crop_last = v.get<std::int64_t>();
    } else if (k == "batch") {
      if (!v.is_boolean()) throw ValidationError(at + ": expected true or false");
      s.batch = v.get<bool>();
    } else {
      throw ValidationError(at + ": unknown key (known: scale, offset, mean, std, resize, crop_last, batch)");
    }
  }
  if (!s.std.empty() && !s.mean.empty() && s.std.size() != s.mean.size()) {
    throw ValidationError("preprocess.std: " + std::to_string(s.std.size()) + " entries but preprocess.mean has " +
                          std::to_string(s.mean.size()));
  }
  const auto& args = p.at("args");
  if (!args.is_array()) throw ValidationError("args: expected an array of numbers (extra forward() arguments)");
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (!args[i].is_number()) throw ValidationError("args[" + std::to_string(i) + "]: expected a number");
    s.args.push_back(args[i]);
  }
  const auto& out = p.at("output");
  if (!out.is_object() || !out.contains("shape") || !out["shape"].is_array()) {
    throw ValidationError("output: expected {\"shape\": [...], \"dtype\": \"f32\"}");
  }
  for (auto& d : out["shape"]) {
    if (!d.is_number_integer() || d.get<std::int64_t>() < 1) throw ValidationError("output.shape: expected positive integers");
    s.output_shape.push_back(d.get<std::int64_t>());
  }
  if (out.contains("dtype")) {
    try {
      s.output_dtype = parse_dtype(out["dtype"].get<std::string>());
    } catch (const ValidationError& e) {
      throw ValidationError(std::string("output.dtype: ") + e.what());
    }
  }
  if (s.output_dtype != DType::f32 && s.output_dtype != DType::f16 && s.output_dtype != DType::bf16) {
    throw ValidationError("output.dtype: teachers publish f32, f16 or bf16");
  }
  for (auto& [k, v] : out.items()) {
    (void)v;
    if (k != "shape" && k != "dtype") throw ValidationError("output." + k + ": unknown key (known: shape, dtype)");
  }
  return s;
}

NodeType torchscript_node_type() {
  using T = ParamType;
  NodeType t;
  t.type = "torchscript";
  t.help = "a teacher running any TorchScript model through LibTorch, its preprocessing and output declared in params";
  t.params = {
      {"from", T::string, nullptr, true, "the input stream, NODE/STREAM"},
      {"model", T::string, nullptr, true, "path of the TorchScript file (.pt, .jit)"},
      {"output", T::object, nullptr, true, "{\"shape\": [...], \"dtype\": \"f32\"|\"f16\"|\"bf16\"}: what the teacher publishes"},
      {"preprocess", T::object, json::object(), false,
       "{\"crop_last\": N, \"resize\": [H, W], \"scale\", \"offset\", \"mean\": [...], \"std\": [...], \"batch\": true}"},
      {"args", T::array, json::array(), false, "extra forward() arguments after the tensor (numbers), e.g. [16000]"},
      {"stream", T::string, "out", false, "name of the published stream"},
      {"threads", T::integer, 1, false, "torch intra-op threads on the CPU (0: torch's default)"},
      {"frames", T::integer, 0, false, "stop after this many frames (0: until stopped)"}};
  t.publishes = [](const json& p) {
    parse_torchscript_params(p);  // checks the declared preprocessing and output before anything starts
    return std::vector<std::string>{p["stream"].get<std::string>()};
  };
  t.subscribes = [](const json& p) { return std::vector<std::string>{p["from"].get<std::string>()}; };
  return t;
}

}  // namespace dp::teachers

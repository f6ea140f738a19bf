// The `student` node type's description and params (no LibTorch here: `directport` validates
// configs with it, and runs the node through `directport-torch`).
#include "directport/student/student_type.hpp"

#include <string>
#include <vector>

namespace dp::student {

using nlohmann::json;

NodeType student_node_type() {
  using T = ParamType;
  NodeType t;
  t.type = "student";
  t.help = "trains a LibTorch model online on sensor frames to match the compositor's fused tensor";
  t.params = {{"input", T::string, nullptr, true, "the sensor stream, NODE/STREAM ([C, H, W], f32/f16/bf16)"},
              {"target", T::string, nullptr, true, "the fused stream, NODE/STREAM (a compositor's output)"},
              {"stream", T::string, "prediction", false, "name of the published prediction (the fused layout)"},
              {"lr", T::number, 1e-3, false, "Adam learning rate"},
              {"width", T::integer, 32, false, "encoder width (channels of its first layer)"},
              {"weights", T::object, json::object(), false, "{teacher: weight} of the loss (1 when absent)"},
              {"replay", T::integer, 0, false, "recent pairs kept for replay (0: none)"},
              {"replay_batch", T::integer, 4, false, "replayed pairs added to each step"},
              {"checkpoint", T::string, "", false, "checkpoint path prefix (PREFIX.json, .model.pt, .optim.pt); resumed from when present"},
              {"checkpoint_every", T::integer, 200, false, "steps between checkpoints (0: only at exit)"},
              {"grow_threshold", T::number, 0.3, false, "a head grows when its error EMA stays above this after a plateau"},
              {"plateau_steps", T::integer, 300, false, "steps without 1 % improvement that make a plateau"},
              {"grow_every", T::integer, 1000, false, "steps between two growths, at least"},
              {"max_growth", T::integer, 3, false, "adapters a head may grow"},
              {"report", T::string, "", false, "CSV file of the losses (appended to)"},
              {"report_every", T::integer, 10, false, "steps between CSV rows"},
              {"progress_s", T::number, 2.0, false, "seconds between progress lines"},
              {"steps", T::integer, 0, false, "stop after this many steps in total (0: until stopped)"},
              {"startup_timeout_s", T::number, 30.0, false, "how long to wait for the input and target streams"},
              {"seed", T::integer, 1, false, "initialisation and replay sampling"},
              {"threads", T::integer, 1, false, "torch intra-op threads on the CPU (0: torch's default)"}};
  t.publishes = [](const json& p) { return std::vector<std::string>{p["stream"].get<std::string>()}; };
  t.subscribes = [](const json& p) {
    return std::vector<std::string>{p["input"].get<std::string>(), p["target"].get<std::string>()};
  };
  return t;
}

}  // namespace dp::student

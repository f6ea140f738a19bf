// The student node (DESIGN §7, docs/STUDENT.md): pairs sensor frames with fused targets by
// frame_id, trains the Trainer on them in place (torch::from_blob on the mapped frames, the fence
// waits enqueued on the stream torch runs on), publishes its prediction, reports, checkpoints,
// resumes and grows.
#pragma once

#include "directport/core/runtime.hpp"

namespace dp::student {

void register_student_node(NodeRegistry& r);

}  // namespace dp::student

// The `student` node type without its body (params, publishes, subscribes) and without LibTorch:
// `directport` validates configs with it and hands the node to `directport-torch`
// (NodeType::runner).
#pragma once

#include "directport/core/runtime.hpp"

namespace dp::student {

NodeType student_node_type();

}  // namespace dp::student

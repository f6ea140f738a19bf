// The node types of the teachers library: the `scene` sensor, the file sources (`image-folder`,
// `wav-file`, `text-file`) and one node type per registered teacher (teacher.hpp).
#pragma once

#include "directport/core/runtime.hpp"

namespace dp::teachers {

void register_teacher_nodes(NodeRegistry& r);

// The parts, for programs that want only some of them.
void register_scene_node(NodeRegistry& r);
void register_file_source_nodes(NodeRegistry& r);
void register_teacher_node_types(NodeRegistry& r);  // one per TeacherRegistry entry

}  // namespace dp::teachers

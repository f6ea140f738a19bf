// Built without CUDA: the GPU entry points of the library say so.
#include "directport/core/error.hpp"
#include "directport/teachers/scene.hpp"

namespace dp::teachers {
void Scene::render_gpu(const SceneFrame&, float*, float*, GpuStream) {
  throw CudaError("this build has no CUDA (DIRECTPORT_WITH_CUDA=OFF)");
}
}  // namespace dp::teachers

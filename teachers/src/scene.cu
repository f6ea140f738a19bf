// The scene renderer on the GPU: one thread per pixel, the same pixel function as the CPU
// renderer (scene_pixel.cuh), compiled without FMA contraction: bit-identical images.
#include <cuda_runtime.h>

#include "directport/cuda/driver.hpp"
#include "directport/teachers/scene.hpp"
#include "scene_pixel.cuh"

namespace dp::teachers {
namespace {

__global__ void render_kernel(const SceneFrame f, float* __restrict__ rgb, float* __restrict__ depth) {
  const int x = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int y = static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
  if (x >= f.width || y >= f.height) return;
  const std::size_t plane = static_cast<std::size_t>(f.width) * f.height;
  const std::size_t k = static_cast<std::size_t>(y) * f.width + x;
  float r, g, b, z;
  detail::scene_pixel(f, x, y, r, g, b, z);
  if (rgb) {
    rgb[k] = r;
    rgb[plane + k] = g;
    rgb[2 * plane + k] = b;
  }
  if (depth) depth[k] = z;
}

}  // namespace

void Scene::render_gpu(const SceneFrame& f, float* rgb, float* depth, GpuStream stream) {
  const dim3 block(32, 8);
  const dim3 grid((f.width + 31) / 32, (f.height + 7) / 8);
  render_kernel<<<grid, block, 0, reinterpret_cast<cudaStream_t>(stream)>>>(f, rgb, depth);
  DP_CUDA_CHECK(cudaGetLastError());
}

}  // namespace dp::teachers

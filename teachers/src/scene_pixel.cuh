// One pixel of the scene (scene.hpp), shared by the CPU renderer and the CUDA kernel. Only
// IEEE-exact operations (+, -, *, /, comparisons, floorf, integer hashing) on values computed on
// the host, and both sides are compiled without contraction into fused multiply-adds: the GPU
// image is the CPU image bit for bit.
#pragma once

#include <math.h>
#include <cstdint>

#include "directport/teachers/scene.hpp"

#if defined(__CUDACC__)
#define DP_SCENE_HD __host__ __device__ __forceinline__
#else
#define DP_SCENE_HD inline
#endif

namespace dp::teachers::detail {

DP_SCENE_HD std::uint32_t scene_hash(std::uint32_t x, std::uint32_t y, std::uint32_t s) {
  std::uint32_t h = x * 0x8da6b343u ^ y * 0xd8163841u ^ s * 0xcb1ab31fu;
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h *= 0x846ca68bu;
  h ^= h >> 16;
  return h;
}

DP_SCENE_HD float scene_background_depth(int y, int height) {
  return 6.0f + 6.0f * (1.0f - (static_cast<float>(y) + 0.5f) / static_cast<float>(height));
}

DP_SCENE_HD float scene_clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

DP_SCENE_HD void scene_pixel(const SceneFrame& f, int x, int y, float& r, float& g, float& b, float& z) {
  const float px = static_cast<float>(x) + 0.5f, py = static_cast<float>(y) + 0.5f;
  // The plane: a scrolling checker of two blue-greys, darker towards the far (top) rows, with a
  // static grain.
  z = scene_background_depth(y, f.height);
  const int tx = static_cast<int>(floorf((px + f.bg_offset) * 0.0625f));
  const int ty = static_cast<int>(floorf(py * 0.0625f));
  const bool light = ((tx + ty) & 1) != 0;
  const float grain =
      static_cast<float>(scene_hash(static_cast<std::uint32_t>(x), static_cast<std::uint32_t>(y), f.seed) & 255u) * (0.08f / 255.0f) -
      0.04f;
  const float shade = 0.55f + 0.45f * (py / static_cast<float>(f.height));
  r = (light ? 0.50f : 0.34f) * shade + grain;
  g = (light ? 0.55f : 0.38f) * shade + grain;
  b = (light ? 0.62f : 0.45f) * shade + grain;
  for (int i = 0; i < f.objects; ++i) {
    const SceneObject& o = f.obj[i];
    const float dx = px - o.cx, dy = py - o.cy;
    const bool covered = o.shape == static_cast<std::int32_t>(SceneShape::disc)
                             ? dx * dx + dy * dy <= o.half * o.half
                             : (fabsf(dx) <= o.half && fabsf(dy) <= o.half);
    if (!covered || !(o.depth < z)) continue;
    z = o.depth;
    float k;
    if (o.texture == static_cast<std::int32_t>(SceneTexture::stripes)) {
      k = (static_cast<int>(floorf((dx + dy) * o.inv_period)) & 1) ? 0.55f : 1.0f;
    } else if (o.texture == static_cast<std::int32_t>(SceneTexture::checker)) {
      k = ((static_cast<int>(floorf(dx * o.inv_period)) + static_cast<int>(floorf(dy * o.inv_period))) & 1) ? 0.55f : 1.0f;
    } else {
      const auto cu = static_cast<std::uint32_t>(static_cast<int>(floorf(dx * o.inv_period)));
      const auto cv = static_cast<std::uint32_t>(static_cast<int>(floorf(dy * o.inv_period)));
      k = 0.55f + static_cast<float>(scene_hash(cu, cv, o.hash) & 255u) * (0.45f / 255.0f);
    }
    r = o.r * k;
    g = o.g * k;
    b = o.b * k;
  }
  r = scene_clamp01(r);
  g = scene_clamp01(g);
  b = scene_clamp01(b);
}

}  // namespace dp::teachers::detail

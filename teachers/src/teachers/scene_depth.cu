// `scene-depth`: the depth teacher. An analytic expert, not a learned model: it passes on the
// scene generator's true depth, averaged over factor x factor blocks, as a depth expert's output.
// (A learned monocular depth model would take the rgb stream instead; it comes with the
// TorchScript teachers.)
//
// Input: f32 [1, H, W] (metres). Output: bf16 [1, H / factor, W / factor], each the mean of its
// block (summed row by row, left to right, in float, then divided by factor^2), rounded to
// nearest even.
#include "directport/kernels/half.hpp"
#include "directport/teachers/teacher.hpp"

#if DP_TEACHER_CUDA
#include <cuda_bf16.h>
#endif

namespace dp::teachers {
namespace {

DP_HD inline float block_mean(const float* d, int w, int f, int oy, int ox) {
  float s = 0.0f;
  for (int dy = 0; dy < f; ++dy) {
    const float* row = d + static_cast<std::size_t>(oy * f + dy) * w + static_cast<std::size_t>(ox) * f;
    for (int dx = 0; dx < f; ++dx) s += row[dx];
  }
  return s / static_cast<float>(f * f);
}

#if DP_TEACHER_CUDA
__global__ void depth_kernel(const float* __restrict__ d, int w, int f, int oh, int ow, __nv_bfloat16* __restrict__ out) {
  const int ox = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int oy = static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
  if (ox >= ow || oy >= oh) return;
  out[static_cast<std::size_t>(oy) * ow + ox] = __float2bfloat16_rn(block_mean(d, w, f, oy, ox));
}
#endif

class SceneDepth final : public Teacher {
 public:
  void configure(const nlohmann::json& params) override {
    factor_ = params["factor"].get<int>();
    if (factor_ < 1 || factor_ > 64) param_error("factor", "must be in 1..64, got " + std::to_string(factor_));
  }

  std::string accepts(const TensorSpec& in) const override {
    const auto& s = in.shape;
    if (in.dtype != DType::f32 || s.size() != 3 || s[0] != 1 || s[1] < factor_ || s[2] < factor_) {
      return "a depth map f32 [1, H, W] with H, W >= factor (" + std::to_string(factor_) + ")";
    }
    return "";
  }

  TensorSpec output_spec(const TensorSpec& in) const override {
    return {DType::bf16, {1, in.shape[1] / factor_, in.shape[2] / factor_}, {{"unit", "m"}, {"factor", factor_}}};
  }

  void infer(const TeacherInput& in, const TeacherOutput& out, GpuStream stream) override {
#if DP_TEACHER_CUDA
    const int w = static_cast<int>(in.shape()[2]);
    const int oh = static_cast<int>(out.shape()[1]), ow = static_cast<int>(out.shape()[2]);
    const dim3 block(32, 8);
    const dim3 grid(blocks_for(ow, 32), blocks_for(oh, 8));
    depth_kernel<<<grid, block, 0, cuda_stream(stream)>>>(in.f32(), w, factor_, oh, ow,
                                                          reinterpret_cast<__nv_bfloat16*>(out.bf16()));
    check_launch("scene-depth: depth_kernel");
#else
    (void)in, (void)out, (void)stream;
    no_cuda();
#endif
  }

  void infer_cpu(const TeacherInput& in, const TeacherOutput& out) override {
    const int w = static_cast<int>(in.shape()[2]);
    const int oh = static_cast<int>(out.shape()[1]), ow = static_cast<int>(out.shape()[2]);
    std::uint16_t* o = out.bf16();
    for (int oy = 0; oy < oh; ++oy) {
      for (int ox = 0; ox < ow; ++ox) {
        o[static_cast<std::size_t>(oy) * ow + ox] = kernels::float_to_bf16(block_mean(in.f32(), w, factor_, oy, ox));
      }
    }
  }

 private:
  int factor_ = 2;
};

}  // namespace

DP_REGISTER_TEACHER(SceneDepth, {"scene-depth", "depth",
                                 "analytic expert: the scene generator's true depth, block-averaged (a stand-in for a learned "
                                 "depth model)",
                                 "f32 [1, H, W] (metres)", "bf16 [1, H / factor, W / factor]",
                                 {{"factor", ParamType::integer, 2, false, "downsampling factor (block size)"}}});

}  // namespace dp::teachers

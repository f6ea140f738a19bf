// The template teacher: the smallest complete teacher, the one to copy (docs/teachers.md).
// It takes an image f32 [C, H, W] and gives the mean of each channel, f32 [C], times `scale`.
//
// A teacher is this one file: a class with accepts / output_spec / infer (GPU) / infer_cpu (host
// backend), and one DP_REGISTER_TEACHER line. The node around it (subscribing, checking,
// publishing with the input's frame_id) is the SDK's.
#include "directport/teachers/teacher.hpp"

namespace dp::teachers {
namespace {

#if DP_TEACHER_CUDA
// One block per channel: each thread sums a strided part of the plane, then a tree reduction.
constexpr int kThreads = 256;
__global__ void channel_mean_kernel(const float* __restrict__ in, std::size_t plane, float scale, float* __restrict__ out) {
  __shared__ float part[kThreads];
  const float* p = in + blockIdx.x * plane;
  float s = 0.0f;
  for (std::size_t i = threadIdx.x; i < plane; i += kThreads) s += p[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (static_cast<int>(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = part[0] / static_cast<float>(plane) * scale;
}
#endif

class ChannelMean final : public Teacher {
 public:
  void configure(const nlohmann::json& params) override {
    scale_ = params["scale"].get<float>();
    if (!(scale_ > 0.0f)) param_error("scale", "must be positive, got " + params["scale"].dump());
  }

  std::string accepts(const TensorSpec& in) const override {
    if (in.dtype != DType::f32 || in.shape.size() != 3) return "f32 [C, H, W]";
    return "";
  }

  TensorSpec output_spec(const TensorSpec& in) const override { return {DType::f32, {in.shape[0]}, nullptr}; }

  void infer(const TeacherInput& in, const TeacherOutput& out, GpuStream stream) override {
#if DP_TEACHER_CUDA
    const auto plane = static_cast<std::size_t>(in.shape()[1] * in.shape()[2]);
    channel_mean_kernel<<<static_cast<unsigned>(in.shape()[0]), kThreads, 0, cuda_stream(stream)>>>(in.f32(), plane, scale_,
                                                                                                     out.f32());
    check_launch("template: channel_mean_kernel");
#else
    (void)in, (void)out, (void)stream;
    no_cuda();
#endif
  }

  void infer_cpu(const TeacherInput& in, const TeacherOutput& out) override {
    const auto plane = static_cast<std::size_t>(in.shape()[1] * in.shape()[2]);
    const float* x = in.f32();
    float* y = out.f32();
    for (std::int64_t c = 0; c < in.shape()[0]; ++c) {
      double s = 0;
      for (std::size_t i = 0; i < plane; ++i) s += x[c * plane + i];
      y[c] = static_cast<float>(s / static_cast<double>(plane)) * scale_;
    }
  }

 private:
  float scale_ = 1.0f;
};

}  // namespace

DP_REGISTER_TEACHER(ChannelMean, {"template", "example", "the mean of each channel of an image (the teacher to copy)",
                                  "f32 [C, H, W]", "f32 [C]",
                                  {{"scale", ParamType::number, 1.0, false, "multiplies the means"}}});

}  // namespace dp::teachers

// `edges`: the vision teacher. An analytic expert, not a learned model: multi-scale Sobel edges
// of the image's luminance.
//
// Input: f32 [C, H, W], C = 1 (gray) or 3 (RGB; luminance 0.299 R + 0.587 G + 0.114 B).
// Output: f16 [3 S, H / stride, W / stride] for S scales: per scale r, three channels
//   m          the gradient magnitude sqrt(gx^2 + gy^2),
//   m cos 2θ   = (gx^2 - gy^2) / m,
//   m sin 2θ   = 2 gx gy / m          (0 where m = 0),
// θ the gradient's direction. The doubled angle makes the orientation an edge's, modulo 180°: a
// dark-to-light and a light-to-dark edge along the same line give the same (cos, sin), weighted by
// the edge's strength.
//
// Scale r: the 3x3 Sobel operator applied to r x r cells of mean luminance around the output
// pixel's anchor (input pixel (oy * stride + stride / 2, ox * stride + stride / 2)); cell (i, j),
// i, j in {-1, 0, 1}, covers rows anchor_y + i r - r / 2 .. + r - 1 (likewise columns), clamped
// at the border. gx = (right column - left column) / 8 with weights 1, 2, 1 (gy likewise, down
// minus up): a step of height h across the cells gives m = h / 2 at every scale.
#include "directport/kernels/half.hpp"
#include "directport/teachers/teacher.hpp"

#if DP_TEACHER_CUDA
#include <cuda_fp16.h>
#endif

namespace dp::teachers {
namespace {

constexpr int kMaxScales = 8;

struct EdgeParams {
  int channels, h, w, stride, oh, ow, scales;
  int scale[kMaxScales];
};

DP_HD inline float luminance(const float* img, const EdgeParams& p, int y, int x) {
  y = y < 0 ? 0 : (y >= p.h ? p.h - 1 : y);
  x = x < 0 ? 0 : (x >= p.w ? p.w - 1 : x);
  const std::size_t plane = static_cast<std::size_t>(p.h) * p.w;
  const std::size_t k = static_cast<std::size_t>(y) * p.w + x;
  if (p.channels == 1) return img[k];
  return 0.299f * img[k] + 0.587f * img[plane + k] + 0.114f * img[2 * plane + k];
}

DP_HD inline float cell_mean(const float* img, const EdgeParams& p, int y0, int x0, int r) {
  float s = 0.0f;
  for (int dy = 0; dy < r; ++dy) {
    for (int dx = 0; dx < r; ++dx) s += luminance(img, p, y0 + dy, x0 + dx);
  }
  return s / static_cast<float>(r * r);
}

// The three channels of scale index `si` at output pixel (oy, ox).
DP_HD inline void edge_at(const float* img, const EdgeParams& p, int si, int oy, int ox, float out[3]) {
  const int r = p.scale[si];
  const int ay = oy * p.stride + p.stride / 2, ax = ox * p.stride + p.stride / 2;
  float c[3][3];
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) c[i][j] = cell_mean(img, p, ay + (i - 1) * r - r / 2, ax + (j - 1) * r - r / 2, r);
  }
  const float gx = ((c[0][2] + 2.0f * c[1][2] + c[2][2]) - (c[0][0] + 2.0f * c[1][0] + c[2][0])) / 8.0f;
  const float gy = ((c[2][0] + 2.0f * c[2][1] + c[2][2]) - (c[0][0] + 2.0f * c[0][1] + c[0][2])) / 8.0f;
  const float xx = gx * gx, yy = gy * gy;
  const float m = sqrtf(xx + yy);
  out[0] = m;
  out[1] = m > 0.0f ? (xx - yy) / m : 0.0f;
  out[2] = m > 0.0f ? 2.0f * gx * gy / m : 0.0f;
}

#if DP_TEACHER_CUDA
__global__ void edges_kernel(const float* __restrict__ img, const EdgeParams p, __half* __restrict__ out) {
  const int ox = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int oy = static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
  if (ox >= p.ow || oy >= p.oh) return;
  const std::size_t plane = static_cast<std::size_t>(p.oh) * p.ow;
  const std::size_t k = static_cast<std::size_t>(oy) * p.ow + ox;
  for (int si = 0; si < p.scales; ++si) {
    float v[3];
    edge_at(img, p, si, oy, ox, v);
    for (int j = 0; j < 3; ++j) out[(3 * si + j) * plane + k] = __float2half_rn(v[j]);
  }
}
#endif

class Edges final : public Teacher {
 public:
  void configure(const nlohmann::json& params) override {
    const auto& s = params["scales"];
    if (s.empty() || s.size() > kMaxScales) param_error("scales", "give 1 to 8 cell sizes, e.g. [1, 2, 4]; got " + s.dump());
    for (const auto& v : s) {
      if (!v.is_number_integer() || v.get<int>() < 1 || v.get<int>() > 64) {
        param_error("scales", "each cell size must be an integer in 1..64; got " + s.dump());
      }
      scales_.push_back(v.get<int>());
    }
    stride_ = params["stride"].get<int>();
    if (stride_ < 1 || stride_ > 64) param_error("stride", "must be in 1..64, got " + std::to_string(stride_));
  }

  std::string accepts(const TensorSpec& in) const override {
    const auto& s = in.shape;
    if (in.dtype != DType::f32 || s.size() != 3 || (s[0] != 1 && s[0] != 3) || s[1] < stride_ || s[2] < stride_) {
      return "an image f32 [C, H, W] with C = 1 or 3 and H, W >= stride (" + std::to_string(stride_) + ")";
    }
    return "";
  }

  TensorSpec output_spec(const TensorSpec& in) const override {
    return {DType::f16, {3 * static_cast<std::int64_t>(scales_.size()), in.shape[1] / stride_, in.shape[2] / stride_},
            {{"channels", "per scale: magnitude, magnitude cos 2θ, magnitude sin 2θ"}, {"scales", scales_}, {"stride", stride_}}};
  }

  void infer(const TeacherInput& in, const TeacherOutput& out, GpuStream stream) override {
#if DP_TEACHER_CUDA
    const EdgeParams p = params_of(in);
    const dim3 block(16, 16);
    const dim3 grid(blocks_for(p.ow, 16), blocks_for(p.oh, 16));
    edges_kernel<<<grid, block, 0, cuda_stream(stream)>>>(in.f32(), p, reinterpret_cast<__half*>(out.f16()));
    check_launch("edges: edges_kernel");
#else
    (void)in, (void)out, (void)stream;
    no_cuda();
#endif
  }

  void infer_cpu(const TeacherInput& in, const TeacherOutput& out) override {
    const EdgeParams p = params_of(in);
    const float* img = in.f32();
    std::uint16_t* o = out.f16();
    const std::size_t plane = static_cast<std::size_t>(p.oh) * p.ow;
    for (int oy = 0; oy < p.oh; ++oy) {
      for (int ox = 0; ox < p.ow; ++ox) {
        const std::size_t k = static_cast<std::size_t>(oy) * p.ow + ox;
        for (int si = 0; si < p.scales; ++si) {
          float v[3];
          edge_at(img, p, si, oy, ox, v);
          for (int j = 0; j < 3; ++j) o[(3 * si + j) * plane + k] = kernels::float_to_half(v[j]);
        }
      }
    }
  }

 private:
  EdgeParams params_of(const TeacherInput& in) const {
    EdgeParams p{};
    p.channels = static_cast<int>(in.shape()[0]);
    p.h = static_cast<int>(in.shape()[1]);
    p.w = static_cast<int>(in.shape()[2]);
    p.stride = stride_;
    p.oh = p.h / stride_;
    p.ow = p.w / stride_;
    p.scales = static_cast<int>(scales_.size());
    for (std::size_t i = 0; i < scales_.size(); ++i) p.scale[i] = scales_[i];
    return p;
  }
  std::vector<int> scales_;
  int stride_ = 2;
};

}  // namespace

DP_REGISTER_TEACHER(Edges, {"edges", "vision",
                            "analytic expert: multi-scale Sobel edge magnitude and orientation (cos/sin of the doubled angle, "
                            "weighted by magnitude)",
                            "f32 [C, H, W], C = 1 or 3", "f16 [3 x scales, H / stride, W / stride]",
                            {{"scales", ParamType::array, nlohmann::json::array({1, 2, 4}), false,
                              "cell sizes in input pixels, one scale each"},
                             {"stride", ParamType::integer, 2, false, "output pixel = stride x stride input pixels"}}});

}  // namespace dp::teachers

// `audio-spectrum`: the audio (speech) teacher. An analytic expert, not a learned model: a small
// log-mel-like band-energy vector of each audio window.
//
// Input: f32 [N] samples (N = 16..65536) at the sample rate the stream's layout names
// ("sample_rate", as the scene and wav-file publish it) or the param `sample_rate`.
// Output: f32 [bands]: for band b, log(E_b + 1e-10) where
//   x'[n] = x[n] w[n],  w = the periodic Hann window 0.5 - 0.5 cos(2 pi n / N),
//   P[k]  = |sum_n x'[n] e^{-2 pi i k n / N}|^2 / N,  k = 0 .. N/2 (a direct DFT with a
//           twiddle table: N is whatever the stream's window is, not a power of two),
//   E_b   = sum_k F[b][k] P[k],  F the triangular filters of `bands` bands equally spaced on the
//           mel scale (2595 log10(1 + f / 700)) between fmin and fmax (peak 1 at the centre).
// Tables are built once in double on the host; the sums run in the same order on the CPU and
// the GPU (one thread per bin, then one per band), so they differ only by the last log.
#include <cmath>

#include "directport/teachers/teacher.hpp"

namespace dp::teachers {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr float kFloor = 1e-10f;

DP_HD inline float bin_power(const float* x, const float* win, const float* cos_t, const float* sin_t, int n, int k) {
  float re = 0.0f, im = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float v = x[i] * win[i];
    const int t = static_cast<int>((static_cast<long long>(k) * i) % n);
    re += v * cos_t[t];
    im -= v * sin_t[t];
  }
  return (re * re + im * im) / static_cast<float>(n);
}

DP_HD inline float band_energy(const float* fb, const float* power, int bins, int b) {
  float e = 0.0f;
  const float* row = fb + static_cast<std::size_t>(b) * bins;
  for (int k = 0; k < bins; ++k) e += row[k] * power[k];
  return e;
}

#if DP_TEACHER_CUDA
__global__ void power_kernel(const float* __restrict__ x, const float* __restrict__ win, const float* __restrict__ cos_t,
                             const float* __restrict__ sin_t, int n, float* __restrict__ power) {
  const int k = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (k <= n / 2) power[k] = bin_power(x, win, cos_t, sin_t, n, k);
}
__global__ void bands_kernel(const float* __restrict__ fb, const float* __restrict__ power, int bins, int bands,
                             float* __restrict__ out) {
  const int b = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (b < bands) out[b] = logf(band_energy(fb, power, bins, b) + kFloor);
}

struct DeviceBuffer {
  float* p = nullptr;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { reset(); }
  void reset() noexcept {
    if (p) cudaFree(p);
    p = nullptr;
  }
  void upload(const std::vector<float>& v) {
    reset();
    DP_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), v.size() * sizeof(float)));
    DP_CUDA_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
};
#endif

double hz_to_mel(double f) { return 2595.0 * std::log10(1.0 + f / 700.0); }
double mel_to_hz(double m) { return 700.0 * (std::pow(10.0, m / 2595.0) - 1.0); }

class AudioSpectrum final : public Teacher {
 public:
  void configure(const nlohmann::json& params) override {
    bands_ = params["bands"].get<int>();
    if (bands_ < 1 || bands_ > 512) param_error("bands", "must be in 1..512, got " + std::to_string(bands_));
    fmin_ = params["fmin"].get<double>();
    fmax_ = params["fmax"].get<double>();
    if (!(fmin_ >= 0)) param_error("fmin", "must be >= 0");
    if (!(fmax_ >= 0)) param_error("fmax", "must be >= 0 (0: half the sample rate)");
    rate_param_ = params["sample_rate"].get<int>();
    if (rate_param_ < 0) param_error("sample_rate", "must be >= 0 (0: from the input's layout)");
  }

  std::string accepts(const TensorSpec& in) const override {
    if (in.dtype != DType::f32 || in.shape.size() != 1 || in.shape[0] < 16 || in.shape[0] > 65536) {
      return "audio samples f32 [N] with N in 16..65536";
    }
    const int sr = rate_of(in);
    if (sr <= 0) return "the sample rate: in the input's layout (\"sample_rate\") or in the param 'sample_rate'";
    const double top = fmax_ > 0 ? fmax_ : sr / 2.0;
    if (top > sr / 2.0 || !(fmin_ < top)) {
      return "fmin < fmax <= half the sample rate (" + std::to_string(sr) + " Hz): fix 'fmin' and 'fmax'";
    }
    return "";
  }

  TensorSpec output_spec(const TensorSpec& in) const override {
    const int sr = rate_of(in);
    return {DType::f32,
            {bands_},
            {{"scale", "mel"}, {"log", "natural, of energy + 1e-10"}, {"sample_rate", sr}, {"fmin", fmin_},
             {"fmax", fmax_ > 0 ? fmax_ : sr / 2.0}}};
  }

  void setup(const TensorSpec& in, bool on_gpu) override {
    n_ = static_cast<int>(in.shape[0]);
    bins_ = n_ / 2 + 1;
    const int sr = rate_of(in);
    win_.resize(n_);
    cos_.resize(n_);
    sin_.resize(n_);
    for (int i = 0; i < n_; ++i) {
      win_[i] = static_cast<float>(0.5 - 0.5 * std::cos(kTwoPi * i / n_));
      cos_[i] = static_cast<float>(std::cos(kTwoPi * i / n_));
      sin_[i] = static_cast<float>(std::sin(kTwoPi * i / n_));
    }
    // Triangular mel filters: band b rises from point b to point b+1 and falls to point b+2.
    const double top = fmax_ > 0 ? fmax_ : sr / 2.0;
    const double m0 = hz_to_mel(fmin_), m1 = hz_to_mel(top);
    std::vector<double> pts(bands_ + 2);
    for (int i = 0; i < bands_ + 2; ++i) pts[i] = mel_to_hz(m0 + (m1 - m0) * i / (bands_ + 1));
    fb_.assign(static_cast<std::size_t>(bands_) * bins_, 0.0f);
    for (int b = 0; b < bands_; ++b) {
      for (int k = 0; k < bins_; ++k) {
        const double f = static_cast<double>(k) * sr / n_;
        double w = 0;
        if (f > pts[b] && f <= pts[b + 1]) w = (f - pts[b]) / (pts[b + 1] - pts[b]);
        if (f > pts[b + 1] && f < pts[b + 2]) w = (pts[b + 2] - f) / (pts[b + 2] - pts[b + 1]);
        fb_[static_cast<std::size_t>(b) * bins_ + k] = static_cast<float>(w);
      }
    }
    power_.assign(bins_, 0.0f);
#if DP_TEACHER_CUDA
    if (on_gpu) {
      d_win_.upload(win_);
      d_cos_.upload(cos_);
      d_sin_.upload(sin_);
      d_fb_.upload(fb_);
      d_power_.upload(power_);
    }
#else
    (void)on_gpu;
#endif
  }

  void infer(const TeacherInput& in, const TeacherOutput& out, GpuStream stream) override {
#if DP_TEACHER_CUDA
    power_kernel<<<blocks_for(bins_, 128), 128, 0, cuda_stream(stream)>>>(in.f32(), d_win_.p, d_cos_.p, d_sin_.p, n_,
                                                                          d_power_.p);
    check_launch("audio-spectrum: power_kernel");
    bands_kernel<<<blocks_for(bands_, 64), 64, 0, cuda_stream(stream)>>>(d_fb_.p, d_power_.p, bins_, bands_, out.f32());
    check_launch("audio-spectrum: bands_kernel");
#else
    (void)in, (void)out, (void)stream;
    no_cuda();
#endif
  }

  void infer_cpu(const TeacherInput& in, const TeacherOutput& out) override {
    const float* x = in.f32();
    for (int k = 0; k < bins_; ++k) power_[k] = bin_power(x, win_.data(), cos_.data(), sin_.data(), n_, k);
    float* o = out.f32();
    for (int b = 0; b < bands_; ++b) o[b] = std::log(band_energy(fb_.data(), power_.data(), bins_, b) + kFloor);
  }

 private:
  int rate_of(const TensorSpec& in) const {
    if (rate_param_ > 0) return rate_param_;
    if (in.layout.is_object() && in.layout.contains("sample_rate") && in.layout["sample_rate"].is_number_integer()) {
      return in.layout["sample_rate"].get<int>();
    }
    return 0;
  }
  int bands_ = 32, rate_param_ = 0;
  double fmin_ = 50, fmax_ = 0;
  int n_ = 0, bins_ = 0;
  std::vector<float> win_, cos_, sin_, fb_, power_;
#if DP_TEACHER_CUDA
  DeviceBuffer d_win_, d_cos_, d_sin_, d_fb_, d_power_;
#endif
};

}  // namespace

DP_REGISTER_TEACHER(AudioSpectrum, {"audio-spectrum", "audio",
                                    "analytic expert: log mel-band energies of each audio window (Hann window, direct DFT, "
                                    "triangular mel filters)",
                                    "f32 [N] audio samples (sample rate from the stream's layout or the param)", "f32 [bands]",
                                    {{"bands", ParamType::integer, 32, false, "mel bands"},
                                     {"fmin", ParamType::number, 50.0, false, "lowest band edge, Hz"},
                                     {"fmax", ParamType::number, 0.0, false, "highest band edge, Hz (0: half the sample rate)"},
                                     {"sample_rate", ParamType::integer, 0, false,
                                      "samples per second (0: the input stream's layout says)"}}});

}  // namespace dp::teachers

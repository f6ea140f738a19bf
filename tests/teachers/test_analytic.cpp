// The analytic teachers (template, edges, scene-depth, audio-spectrum, caption-hash): their CPU
// references on known inputs, checked against values worked out by hand or by independent
// float64 code; and, in the GPU suite (GpuTeachers.*), each CUDA kernel against its CPU reference
// on random inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "directport/core/error.hpp"
#include "directport/kernels/half.hpp"
#include "directport/teachers/teacher.hpp"
#include "support/gpu_test.hpp"
#include "support/test_support.hpp"

#if DIRECTPORT_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

namespace dp::teachers {
namespace {

using nlohmann::json;

template <typename T>
std::vector<T> run_cpu(TeacherSession& s, const void* in, std::uint64_t frame_id = 1) {
  std::vector<T> out(s.output_spec().bytes() / sizeof(T));
  EXPECT_EQ(out.size() * sizeof(T), s.output_spec().bytes());
  s.infer_cpu(in, frame_id, 0, out.data());
  return out;
}

float h2f(std::uint16_t h) { return kernels::half_to_float(h); }

// ------------------------------------------------------------------ template

TEST(TemplateTeacher, GivesTheMeanOfEachChannel) {
  const TensorSpec in{DType::f32, {3, 4, 5}, nullptr};
  std::vector<float> img(60);
  for (int c = 0; c < 3; ++c) {
    for (int k = 0; k < 20; ++k) img[c * 20 + k] = static_cast<float>(c) + (k % 2 ? 0.25f : 0.75f);  // mean c + 0.5
  }
  TeacherSession s("template", {{"scale", 2.0}}, in, "cam/rgb");
  EXPECT_EQ(s.output_spec().str(), "f32 [3]");
  auto out = run_cpu<float>(s, img.data());
  for (int c = 0; c < 3; ++c) EXPECT_EQ(out[c], 2.0f * (static_cast<float>(c) + 0.5f)) << "channel " << c;

  // Random values against a float64 mean.
  std::mt19937_64 rng(test::test_seed());
  std::uniform_real_distribution<float> u(-2, 3);
  const TensorSpec big{DType::f32, {2, 33, 47}, nullptr};
  std::vector<float> x(2 * 33 * 47);
  for (auto& v : x) v = u(rng);
  TeacherSession t("template", {}, big);
  auto m = run_cpu<float>(t, x.data());
  for (int c = 0; c < 2; ++c) {
    double want = 0;
    for (int k = 0; k < 33 * 47; ++k) want += x[c * 33 * 47 + k];
    EXPECT_NEAR(m[c], want / (33 * 47), 1e-6);
  }
  EXPECT_THROW(TeacherSession("template", {}, TensorSpec{DType::f32, {5}, nullptr}), ValidationError);
  EXPECT_THROW(TeacherSession("template", {{"scale", -1.0}}, in), ValidationError);
}

// ------------------------------------------------------------------ edges

// A one-channel image, 1 where `lit(y, x)`, else 0.
std::vector<float> binary_image(int h, int w, const std::function<bool(int, int)>& lit) {
  std::vector<float> img(static_cast<std::size_t>(h) * w);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) img[y * w + x] = lit(y, x) ? 1.0f : 0.0f;
  }
  return img;
}

TEST(EdgesTeacher, AStepGivesHalfItsHeightWithTheOrientationOfTheEdge) {
  const TensorSpec in{DType::f32, {1, 32, 32}, nullptr};
  TeacherSession s("edges", {{"scales", {1}}, {"stride", 1}}, in);
  EXPECT_EQ(s.output_spec().str(), "f16 [3,32,32]");
  const std::size_t plane = 32 * 32;
  auto at = [&](const std::vector<std::uint16_t>& o, int ch, int y, int x) { return h2f(o[ch * plane + y * 32 + x]); };

  // Vertical edge (dark left, light right): the gradient points along x, cos 2θ = 1.
  auto v = run_cpu<std::uint16_t>(s, binary_image(32, 32, [](int, int x) { return x >= 16; }).data());
  for (int x : {15, 16}) {
    EXPECT_EQ(at(v, 0, 10, x), 0.5f) << "magnitude next to the edge, x " << x;
    EXPECT_EQ(at(v, 1, 10, x), 0.5f) << "m cos 2θ";
    EXPECT_EQ(at(v, 2, 10, x), 0.0f) << "m sin 2θ";
  }
  for (int x : {5, 13, 18, 30}) EXPECT_EQ(at(v, 0, 10, x), 0.0f) << "flat at x " << x;
  // The reversed edge has the same orientation.
  auto r = run_cpu<std::uint16_t>(s, binary_image(32, 32, [](int, int x) { return x < 16; }).data());
  EXPECT_EQ(at(r, 0, 10, 15), 0.5f);
  EXPECT_EQ(at(r, 1, 10, 15), 0.5f);
  // Horizontal edge: cos 2θ = -1.
  auto hz = run_cpu<std::uint16_t>(s, binary_image(32, 32, [](int y, int) { return y >= 16; }).data());
  EXPECT_EQ(at(hz, 0, 16, 7), 0.5f);
  EXPECT_EQ(at(hz, 1, 16, 7), -0.5f);
  EXPECT_EQ(at(hz, 2, 16, 7), 0.0f);
  // Diagonal edge, light above the diagonal (x > y): gx > 0, gy < 0, so sin 2θ < 0 and cos 2θ = 0.
  auto d = run_cpu<std::uint16_t>(s, binary_image(32, 32, [](int y, int x) { return x > y; }).data());
  EXPECT_GT(at(d, 0, 12, 12), 0.3f);
  EXPECT_EQ(at(d, 1, 12, 12), 0.0f);
  EXPECT_LT(at(d, 2, 12, 12), -0.3f);
  EXPECT_NEAR(at(d, 2, 12, 12), -at(d, 0, 12, 12), 1e-3) << "all of the magnitude in sin 2θ";
}

TEST(EdgesTeacher, EveryScaleSeesAStepAndColourGoesThroughLuminance) {
  const TensorSpec in{DType::f32, {1, 32, 32}, nullptr};
  TeacherSession s("edges", json::object(), in);  // defaults: scales [1, 2, 4], stride 2
  EXPECT_EQ(s.output_spec().str(), "f16 [9,16,16]");
  auto o = run_cpu<std::uint16_t>(s, binary_image(32, 32, [](int, int x) { return x >= 16; }).data());
  const std::size_t plane = 16 * 16;
  for (int sc = 0; sc < 3; ++sc) {
    // Output pixel 7 is anchored at input column 15, next to the edge, at every scale.
    EXPECT_EQ(h2f(o[(3 * sc) * plane + 5 * 16 + 7]), 0.5f) << "scale " << sc;
    EXPECT_EQ(h2f(o[(3 * sc + 1) * plane + 5 * 16 + 7]), 0.5f) << "scale " << sc;
    // Output pixel 3 (input column 7): more than 4 cells of 4 away from the edge.
    EXPECT_EQ(h2f(o[(3 * sc) * plane + 5 * 16 + 3]), 0.0f) << "scale " << sc;
  }
  // Output pixel 6 (input column 13): only the coarsest scale reaches the edge.
  EXPECT_EQ(h2f(o[0 * plane + 5 * 16 + 6]), 0.0f);
  EXPECT_GT(h2f(o[6 * plane + 5 * 16 + 6]), 0.1f);

  // A red step: luminance 0.299.
  const TensorSpec rgb{DType::f32, {3, 32, 32}, nullptr};
  std::vector<float> img(3 * 32 * 32, 0.0f);
  for (int y = 0; y < 32; ++y) {
    for (int x = 16; x < 32; ++x) img[y * 32 + x] = 1.0f;
  }
  TeacherSession c("edges", {{"scales", {1}}, {"stride", 1}}, rgb);
  auto oc = run_cpu<std::uint16_t>(c, img.data());
  EXPECT_NEAR(h2f(oc[10 * 32 + 15]), 0.299f / 2, 2e-4);
  EXPECT_THROW(TeacherSession("edges", {}, TensorSpec{DType::f32, {2, 32, 32}, nullptr}), ValidationError);
  EXPECT_THROW(TeacherSession("edges", {{"scales", json::array()}}, in), ValidationError);
  EXPECT_THROW(TeacherSession("edges", {{"stride", 0}}, in), ValidationError);
}

// ------------------------------------------------------------------ scene-depth

TEST(SceneDepthTeacher, AveragesBlocksIntoBfloat16) {
  const TensorSpec in{DType::f32, {1, 6, 8}, nullptr};
  std::vector<float> d(48);
  for (int y = 0; y < 6; ++y) {
    for (int x = 0; x < 8; ++x) d[y * 8 + x] = static_cast<float>(y * 8 + x);
  }
  TeacherSession s("scene-depth", json::object(), in);
  EXPECT_EQ(s.output_spec().str(), "bf16 [1,3,4]");
  auto o = run_cpu<std::uint16_t>(s, d.data());
  for (int oy = 0; oy < 3; ++oy) {
    for (int ox = 0; ox < 4; ++ox) {
      // Block (oy, ox) holds 16 oy + 2 ox + {0, 1, 8, 9}: mean 16 oy + 2 ox + 4.5, exact in bfloat16.
      EXPECT_EQ(kernels::bf16_to_float(o[oy * 4 + ox]), 16.0f * oy + 2.0f * ox + 4.5f) << oy << "," << ox;
    }
  }
  TeacherSession t("scene-depth", {{"factor", 3}}, TensorSpec{DType::f32, {1, 7, 10}, nullptr});
  EXPECT_EQ(t.output_spec().str(), "bf16 [1,2,3]");
  EXPECT_THROW(TeacherSession("scene-depth", {}, TensorSpec{DType::f32, {3, 8, 8}, nullptr}), ValidationError);
}

// ------------------------------------------------------------------ audio-spectrum

double mel(double f) { return 2595.0 * std::log10(1.0 + f / 700.0); }
double imel(double m) { return 700.0 * (std::pow(10.0, m / 2595.0) - 1.0); }

// Independent float64 log mel energies: Hann window, DFT by the definition, triangular filters.
std::vector<double> reference_bands(const std::vector<float>& x, int sr, int bands, double fmin, double fmax) {
  const int n = static_cast<int>(x.size());
  std::vector<double> p(n / 2 + 1);
  for (int k = 0; k <= n / 2; ++k) {
    double re = 0, im = 0;
    for (int i = 0; i < n; ++i) {
      const double v = x[i] * (0.5 - 0.5 * std::cos(2 * M_PI * i / n));
      re += v * std::cos(2 * M_PI * k * i / n);
      im -= v * std::sin(2 * M_PI * k * i / n);
    }
    p[k] = (re * re + im * im) / n;
  }
  std::vector<double> pts(bands + 2), out(bands);
  for (int i = 0; i < bands + 2; ++i) pts[i] = imel(mel(fmin) + (mel(fmax) - mel(fmin)) * i / (bands + 1));
  for (int b = 0; b < bands; ++b) {
    double e = 0;
    for (int k = 0; k <= n / 2; ++k) {
      const double f = double(k) * sr / n;
      double w = 0;
      if (f > pts[b] && f <= pts[b + 1]) w = (f - pts[b]) / (pts[b + 1] - pts[b]);
      if (f > pts[b + 1] && f < pts[b + 2]) w = (pts[b + 2] - f) / (pts[b + 2] - pts[b + 1]);
      e += w * p[k];
    }
    out[b] = std::log(e + 1e-10);
  }
  return out;
}

TEST(AudioSpectrumTeacher, ATonePeaksInItsBandAndMatchesFloat64) {
  const int sr = 16000, n = 512;
  const TensorSpec in{DType::f32, {n}, {{"kind", "audio"}, {"sample_rate", sr}}};
  TeacherSession s("audio-spectrum", {{"bands", 24}, {"fmin", 50.0}}, in, "mic/audio");
  EXPECT_EQ(s.output_spec().str(), "f32 [24]");
  EXPECT_EQ(s.output_spec().layout["sample_rate"], sr) << "taken from the input's layout";
  std::vector<float> tone(n);
  for (int i = 0; i < n; ++i) tone[i] = 0.5f * static_cast<float>(std::sin(2 * M_PI * 1000.0 * i / sr));
  auto o = run_cpu<float>(s, tone.data());
  // The band whose centre is nearest 1 kHz.
  int nearest = 0;
  double best = 1e9;
  for (int b = 0; b < 24; ++b) {
    const double c = imel(mel(50) + (mel(8000) - mel(50)) * (b + 1) / 25);
    if (std::fabs(c - 1000) < best) best = std::fabs(c - 1000), nearest = b;
  }
  EXPECT_EQ(std::max_element(o.begin(), o.end()) - o.begin(), nearest);
  EXPECT_GT(o[nearest] - o[0], 10.0) << "far bands hold (almost) nothing";
  auto want = reference_bands(tone, sr, 24, 50, 8000);
  for (int b = 0; b < 24; ++b) {
    if (want[b] > -15) {  // bands with energy (in float)
      EXPECT_NEAR(o[b], want[b], 2e-3) << "band " << b;
    }
  }
  // Noise: every band against float64.
  std::mt19937_64 rng(test::test_seed());
  std::normal_distribution<float> g(0, 0.3f);
  std::vector<float> noise(n);
  for (auto& v : noise) v = g(rng);
  auto on = run_cpu<float>(s, noise.data());
  want = reference_bands(noise, sr, 24, 50, 8000);
  for (int b = 0; b < 24; ++b) EXPECT_NEAR(on[b], want[b], 2e-3) << "band " << b;
  // Silence: the floor.
  std::vector<float> zero(n, 0.0f);
  for (float v : run_cpu<float>(s, zero.data())) EXPECT_EQ(v, std::log(1e-10f));
}

TEST(AudioSpectrumTeacher, NeedsASampleRate) {
  const TensorSpec bare{DType::f32, {400}, nullptr};
  try {
    TeacherSession("audio-spectrum", json::object(), bare, "mic/audio");
    FAIL() << "accepted audio without a sample rate";
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find("param 'sample_rate'"), std::string::npos) << e.what();
  }
  TeacherSession s("audio-spectrum", {{"sample_rate", 8000}}, bare);
  EXPECT_EQ(s.output_spec().layout["fmax"], 4000.0);
  EXPECT_THROW(TeacherSession("audio-spectrum", {{"sample_rate", 8000}, {"fmax", 6000.0}}, bare), ValidationError);
}

// ------------------------------------------------------------------ caption-hash

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// The expected embedding of `words` (already lower-cased), by the definition.
std::vector<float> expected_embedding(const std::vector<std::string>& words, int dim) {
  std::vector<int> counts(dim, 0);
  for (auto& w : words) {
    const auto h = fnv1a(w);
    counts[h % dim] += (h >> 63) ? -1 : 1;
  }
  long long ss = 0;
  for (int c : counts) ss += c * c;
  std::vector<float> out(dim, 0.0f);
  for (int b = 0; b < dim; ++b) out[b] = ss ? static_cast<float>(counts[b]) / std::sqrt(static_cast<float>(ss)) : 0.0f;
  return out;
}

std::vector<std::uint8_t> padded(const std::string& s, std::size_t len) {
  std::vector<std::uint8_t> v(len, 0);
  std::memcpy(v.data(), s.data(), std::min(len, s.size()));
  return v;
}

TEST(CaptionHashTeacher, IsTheNormalisedSignedCountOfHashedWords) {
  const TensorSpec in{DType::u8, {64}, nullptr};
  TeacherSession s("caption-hash", {{"dim", 32}}, in);
  EXPECT_EQ(s.output_spec().str(), "f32 [32]");
  auto o = run_cpu<float>(s, padded("a red disc moves left", 64).data());
  EXPECT_EQ(o, expected_embedding({"a", "red", "disc", "moves", "left"}, 32));
  double norm = 0;
  for (float v : o) norm += double(v) * v;
  EXPECT_NEAR(norm, 1.0, 1e-6);
  // Case and punctuation do not matter; word order does not either (a bag of words).
  EXPECT_EQ(run_cpu<float>(s, padded("  A RED, disc -- Moves LEFT!", 64).data()), o);
  EXPECT_EQ(run_cpu<float>(s, padded("left moves disc red a", 64).data()), o);
  // A UTF-8 word is one word.
  EXPECT_EQ(run_cpu<float>(s, padded("caf\xc3\xa9 au lait", 64).data()), expected_embedding({"caf\xc3\xa9", "au", "lait"}, 32));
  // No words: zeros.
  for (float v : run_cpu<float>(s, padded("", 64).data())) EXPECT_EQ(v, 0.0f);
  // Bigrams add the pairs; then order matters.
  TeacherSession b("caption-hash", {{"dim", 32}, {"bigrams", true}}, in);
  EXPECT_EQ(run_cpu<float>(b, padded("a red disc", 64).data()), expected_embedding({"a", "red", "disc", "a red", "red disc"}, 32));
  EXPECT_NE(run_cpu<float>(b, padded("disc red a", 64).data()), run_cpu<float>(b, padded("a red disc", 64).data()));
  EXPECT_THROW(TeacherSession("caption-hash", json::object(), TensorSpec{DType::f32, {64}, nullptr}), ValidationError);
}

// ------------------------------------------------------------------ GPU against the CPU reference

class GpuTeachers : public test::GpuTest {};

#if DIRECTPORT_HAS_CUDA
struct DeviceBytes {
  void* p = nullptr;
  explicit DeviceBytes(std::size_t n) {
    if (cudaMalloc(&p, n ? n : 8) != cudaSuccess) p = nullptr;
  }
  ~DeviceBytes() {
    if (p) cudaFree(p);
  }
};

// Runs `type` on the CPU and on the GPU over the same input; returns both outputs' bytes.
void both(const std::string& type, const json& params, const TensorSpec& spec, const std::vector<std::uint8_t>& input,
          std::vector<std::uint8_t>& cpu, std::vector<std::uint8_t>& gpu) {
  TeacherSession c(type, params, spec), g(type, params, spec);
  ASSERT_EQ(input.size(), spec.bytes());
  cpu.assign(c.output_spec().bytes(), 0);
  gpu.assign(g.output_spec().bytes(), 0);
  c.infer_cpu(input.data(), 1, 0, cpu.data());
  DeviceBytes din(input.size()), dout(gpu.size());
  ASSERT_TRUE(din.p && dout.p);
  ASSERT_EQ(cudaMemcpy(din.p, input.data(), input.size(), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(dout.p, 0xff, gpu.size()), cudaSuccess);  // every element must be written
  for (int k = 0; k < 2; ++k) g.infer_gpu(din.p, 1, 0, dout.p, nullptr);  // twice: no state left behind
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(gpu.data(), dout.p, gpu.size(), cudaMemcpyDeviceToHost), cudaSuccess);
}

std::vector<std::uint8_t> random_f32(std::mt19937_64& rng, std::size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<std::uint8_t> b(n * 4);
  for (std::size_t i = 0; i < n; ++i) {
    const float v = u(rng);
    std::memcpy(b.data() + 4 * i, &v, 4);
  }
  return b;
}

std::vector<float> as_f32(const std::vector<std::uint8_t>& b) {
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), b.size());
  return v;
}
#endif

TEST_F(GpuTeachers, TemplateMatchesTheCpu) {
#if DIRECTPORT_HAS_CUDA
  std::mt19937_64 rng(test::test_seed());
  const TensorSpec spec{DType::f32, {5, 61, 83}, nullptr};
  std::vector<std::uint8_t> c, g;
  both("template", {{"scale", 1.5}}, spec, random_f32(rng, spec.elements(), -1, 4), c, g);
  auto vc = as_f32(c), vg = as_f32(g);
  for (std::size_t i = 0; i < vc.size(); ++i) EXPECT_NEAR(vg[i], vc[i], 1e-5 * (1 + std::fabs(vc[i]))) << "channel " << i;
#endif
}

TEST_F(GpuTeachers, EdgesMatchTheCpuBitForBit) {
#if DIRECTPORT_HAS_CUDA
  std::mt19937_64 rng(test::test_seed());
  for (auto [c, h, w, stride] : {std::tuple{3, 96, 128, 2}, std::tuple{1, 37, 53, 3}, std::tuple{3, 17, 9, 1}}) {
    const TensorSpec spec{DType::f32, {c, h, w}, nullptr};
    std::vector<std::uint8_t> oc, og;
    both("edges", {{"scales", {1, 2, 4, 3}}, {"stride", stride}}, spec, random_f32(rng, spec.elements(), 0, 1), oc, og);
    EXPECT_EQ(oc, og) << "edges on [" << c << "," << h << "," << w << "], stride " << stride;
  }
#endif
}

TEST_F(GpuTeachers, SceneDepthMatchesTheCpuBitForBit) {
#if DIRECTPORT_HAS_CUDA
  std::mt19937_64 rng(test::test_seed());
  for (int factor : {1, 2, 3}) {
    const TensorSpec spec{DType::f32, {1, 95, 130}, nullptr};
    std::vector<std::uint8_t> oc, og;
    both("scene-depth", {{"factor", factor}}, spec, random_f32(rng, spec.elements(), 1.5f, 12.0f), oc, og);
    EXPECT_EQ(oc, og) << "factor " << factor;
  }
#endif
}

TEST_F(GpuTeachers, AudioSpectrumMatchesTheCpu) {
#if DIRECTPORT_HAS_CUDA
  std::mt19937_64 rng(test::test_seed());
  for (int n : {533, 512, 1600}) {
    const TensorSpec spec{DType::f32, {n}, {{"sample_rate", 16000}}};
    std::vector<std::uint8_t> oc, og;
    both("audio-spectrum", {{"bands", 40}}, spec, random_f32(rng, spec.elements(), -0.8f, 0.8f), oc, og);
    auto vc = as_f32(oc), vg = as_f32(og);
    // The same float sums in the same order; only the last logf may differ by an ulp or two.
    for (std::size_t b = 0; b < vc.size(); ++b) EXPECT_NEAR(vg[b], vc[b], 1e-5 * (1 + std::fabs(vc[b]))) << "N " << n << " band " << b;
  }
#endif
}

TEST_F(GpuTeachers, CaptionHashMatchesTheCpuBitForBit) {
#if DIRECTPORT_HAS_CUDA
  std::mt19937_64 rng(test::test_seed());
  const char* words[] = {"a", "red", "disc", "moves", "left", "Above", "BLUE", "square", "caf\xc3\xa9", "x9"};
  for (int len : {64, 700, 5000}) {
    std::string text;
    while (text.size() + 12 < static_cast<std::size_t>(len)) {
      text += words[rng() % 10];
      text += (rng() % 3) ? " " : ", ";
    }
    const TensorSpec spec{DType::u8, {len}, nullptr};
    for (bool bigrams : {false, true}) {
      std::vector<std::uint8_t> oc, og;
      both("caption-hash", {{"dim", 96}, {"bigrams", bigrams}}, spec, padded(text, static_cast<std::size_t>(len)), oc, og);
      EXPECT_EQ(oc, og) << "length " << len << ", bigrams " << bigrams;
    }
  }
#endif
}

}  // namespace
}  // namespace dp::teachers

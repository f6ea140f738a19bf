// The `torchscript` teacher: its params and preprocessing, a model the test itself creates run in
// a launched graph (values checked frame by frame, frame_id passed through), a model whose output
// disagrees with the declared spec or that is missing (named, non-zero exit, the rest of the
// graph undisturbed), and the real Silero VAD weights where scripts/fetch-models has put them.
#include <gtest/gtest.h>
#include <signal.h>
#include <torch/script.h>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "directport/core/error.hpp"
#include "directport/core/stream.hpp"
#include "directport/kernels/pattern.hpp"
#include "directport/teachers/torchscript.hpp"
#include "support/fixtures.hpp"
#include "support/launch.hpp"
#include "support/test_support.hpp"

#ifndef DP_CLI
#error "DP_CLI (the path of the directport binary) must be defined by CMake"
#endif
#ifndef DP_SOURCE_DIR
#error "DP_SOURCE_DIR must be defined by CMake"
#endif

namespace dp::teachers {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

json params(json extra) {
  json p{{"from", "src/out"}, {"model", "/nonexistent.pt"}, {"output", {{"shape", {4}}}},
         {"preprocess", json::object()}, {"args", json::array()}};
  for (auto& [k, v] : extra.items()) p[k] = v;
  return p;
}

void expect_named(const json& p, const std::string& needle) {
  try {
    parse_torchscript_params(p);
    ADD_FAILURE() << "accepted " << p.dump();
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TorchScriptParams, EveryBadKeyIsNamed) {
  expect_named(params({{"preprocess", {{"scael", 1}}}}), "preprocess.scael: unknown key");
  expect_named(params({{"preprocess", {{"std", {1.0, 0.0}}}}}), "preprocess.std: entries must be positive");
  expect_named(params({{"preprocess", {{"mean", {1.0}}, {"std", {1.0, 2.0}}}}}), "preprocess.std: 2 entries");
  expect_named(params({{"preprocess", {{"resize", {4}}}}}), "preprocess.resize: expected [H, W]");
  expect_named(params({{"preprocess", {{"crop_last", -3}}}}), "preprocess.crop_last");
  expect_named(params({{"args", {"sixteen"}}}), "args[0]: expected a number");
  expect_named(params({{"output", {{"shape", {0}}}}}), "output.shape");
  expect_named(params({{"output", {{"shape", {4}}, {"dtype", "u8"}}}}), "output.dtype");
  expect_named(params({{"output", {{"shape", {4}}, {"dtpye", "f32"}}}}), "output.dtpye: unknown key");
  auto s = parse_torchscript_params(params({{"args", {16000, 0.5}}, {"output", {{"shape", {1, 3}}, {"dtype", "bf16"}}}}));
  EXPECT_EQ(s.args.size(), 2u);
  EXPECT_EQ(s.output_shape, (std::vector<std::int64_t>{1, 3}));
  EXPECT_EQ(s.output_dtype, DType::bf16);
}

TEST(TorchScriptParams, PreprocessingInItsOrder) {
  auto s = parse_torchscript_params(
      params({{"preprocess", {{"scale", 2.0}, {"offset", 1.0}, {"mean", {1.0, 3.0}}, {"std", {2.0, 4.0}}}}}));
  auto x = torch::tensor({{1.0f, 2.0f}, {3.0f, 4.0f}});  // [C=2, 2]
  auto y = preprocess(s, x);
  ASSERT_EQ(y.sizes().vec(), (std::vector<std::int64_t>{1, 2, 2}));
  // ((x * 2 + 1) - mean[c]) / std[c]
  EXPECT_FLOAT_EQ(y[0][0][0].item<float>(), ((1 * 2 + 1) - 1) / 2.0f);
  EXPECT_FLOAT_EQ(y[0][1][1].item<float>(), ((4 * 2 + 1) - 3) / 4.0f);
  auto c = parse_torchscript_params(params({{"preprocess", {{"crop_last", 3}, {"batch", false}}}}));
  auto z = preprocess(c, torch::arange(10, torch::kFloat32));
  EXPECT_TRUE(torch::equal(z, torch::tensor({7.0f, 8.0f, 9.0f})));
  EXPECT_THROW(preprocess(c, torch::arange(2, torch::kFloat32)), ValidationError);
  auto r = parse_torchscript_params(params({{"preprocess", {{"resize", {2, 3}}}}}));
  EXPECT_EQ(preprocess(r, torch::ones({3, 8, 8})).sizes().vec(), (std::vector<std::int64_t>{1, 3, 2, 3}));
}

class TorchScriptMP : public test::GraphTest {
 protected:
  void SetUp() override {
    DomainTest::SetUp();
    char tmpl[] = "/tmp/dp_test_ts_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    // A model made here: y = x * k + 1 with k a forward() argument.
    torch::jit::Module m("AffineTeacher");
    m.define(R"(
def forward(self, x, k: float):
    return x * k + 1.0
)");
    m.save(dir_ + "/affine.pt");
  }
  void TearDown() override {
    // Not std::filesystem: libtorch.so exports std::filesystem symbols that calls may bind to.
    for (auto f : {"/affine.pt", "/graph.json"}) std::remove((dir_ + f).c_str());
    ::rmdir(dir_.c_str());
    GraphTest::TearDown();
  }
  std::string write(const json& g) {
    std::ofstream(dir_ + "/graph.json") << g.dump(2);
    return dir_ + "/graph.json";
  }
  json graph(const json& teacher_params, const json& source_shape = {4}) {
    return {{"domain", domain_},
            {"nodes",
             {{{"name", "src"},
               {"type", "tensor-source"},
               {"params", {{"memory", "host"}, {"shape", source_shape}, {"rate_hz", 100.0}, {"seed", 9}}}},
              {{"name", "teacher"}, {"type", "torchscript"}, {"restart", "never"}, {"params", teacher_params}}}}};
  }
  std::string dir_;
};

TEST_F(TorchScriptMP, AModelMadeByTheTestRunsFrameByFrame) {
  json tp{{"from", "src/out"}, {"model", dir_ + "/affine.pt"}, {"args", {2.5}}, {"output", {{"shape", {4}}}}};
  test::Launcher launch(DP_CLI, {write(graph(tp)), "-q"});
  SubscribeOptions o;
  o.domain = domain_;
  std::optional<Subscriber> sub;
  ASSERT_TRUE(test::wait_until(
      [&] {
        try {
          sub.emplace("teacher", "out", o);
          return true;
        } catch (const std::exception&) {
          return false;
        }
      },
      15s, 50ms))
      << launch.log();
  for (int k = 0; k < 20; ++k) {
    auto f = sub->next(2s);
    ASSERT_TRUE(f) << launch.log();
    const auto* y = static_cast<const float*>(f->data);
    for (std::uint64_t i = 0; i < 4; ++i) {
      // The source's element i of this frame_id, through the model: the frame_id was passed on.
      const float x = kernels::pattern_value(9, f->frame_id, i, 1);
      ASSERT_FLOAT_EQ(y[i], x * 2.5f + 1.0f) << "frame " << f->frame_id << " element " << i;
    }
    sub->release(*f);
  }
  sub.reset();
  launch.signal(SIGINT);
  ASSERT_TRUE(launch.wait(15s));
}

TEST_F(TorchScriptMP, AWrongOutputOrAMissingModelIsNamedAndOnlyThatTeacherStops) {
  // Declared 5 outputs; the model gives 4.
  json tp{{"from", "src/out"}, {"model", dir_ + "/affine.pt"}, {"args", {1.0}}, {"output", {{"shape", {5}}}}};
  json g = graph(tp);
  g["nodes"][1]["required"] = false;
  json missing{{"from", "src/out"}, {"model", dir_ + "/nothing-here.pt"}, {"output", {{"shape", {4}}}}};
  g["nodes"].push_back({{"name", "ghost"}, {"type", "torchscript"}, {"restart", "never"}, {"required", false}, {"params", missing}});
  test::Launcher launch(DP_CLI, {write(g), "-q"});
  ASSERT_TRUE(launch.wait_log("param 'output.shape' declares [5]", 20s)) << launch.log();
  ASSERT_TRUE(launch.wait_log("nothing-here.pt is not there", 20s)) << launch.log();
  // The source goes on publishing.
  SubscribeOptions o;
  o.domain = domain_;
  Subscriber src("src", "out", o);
  EXPECT_TRUE(src.next(2s)) << launch.log();
  launch.signal(SIGINT);
  auto rc = launch.wait(15s);
  ASSERT_TRUE(rc);
}

// The real Silero VAD weights (from the PyPI package silero-vad, scripts/fetch-models).
TEST(SileroVad, RealWeightsGiveASpeechProbability) {
  const std::string path = std::string(DP_SOURCE_DIR) + "/models/silero_vad.jit";
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) GTEST_SKIP() << path << " is not there: run scripts/fetch-models";
  torch::set_num_threads(1);
  auto m = torch::jit::load(path);
  m.eval();
  torch::NoGradGuard g;
  auto silence = torch::zeros({1, 512});
  auto p0 = m.forward({silence, 16000}).toTensor();
  ASSERT_EQ(p0.numel(), 1);
  EXPECT_LT(p0.item<float>(), 0.2f) << "silence is not speech";
  EXPECT_GE(p0.item<float>(), 0.0f);
  auto noise = torch::rand({1, 512}) * 2 - 1;
  for (int i = 0; i < 5; ++i) {
    float p = m.forward({noise, 16000}).toTensor().item<float>();
    EXPECT_TRUE(p >= 0.0f && p <= 1.0f) << p;
  }
}

// MTCNN's P-Net with its real weights (from the PyPI package facenet-pytorch, scripts/fetch-models).
TEST(MtcnnPnet, RealWeightsGiveFeatureMapsAndAFaceProbability) {
  const std::string path = std::string(DP_SOURCE_DIR) + "/models/mtcnn_pnet.pt";
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) GTEST_SKIP() << path << " is not there: run scripts/fetch-models";
  torch::set_num_threads(1);
  auto m = torch::jit::load(path);
  m.eval();
  torch::NoGradGuard g;
  auto x = (torch::rand({1, 3, 128, 128}) * 255 - 127.5) * 0.0078125;
  auto y = m.forward({x}).toTensor();
  ASSERT_EQ(y.sizes().vec(), (std::vector<std::int64_t>{1, 33, 59, 59}));
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  auto face = y.select(1, 32);
  EXPECT_GE(face.min().item<float>(), 0.0f);
  EXPECT_LE(face.max().item<float>(), 1.0f);
  // Learned filters respond to structure: a flat image and a noisy one give different features.
  auto flat = m.forward({torch::zeros({1, 3, 128, 128})}).toTensor();
  EXPECT_GT((y.narrow(1, 0, 32) - flat.narrow(1, 0, 32)).abs().mean().item<float>(), 1e-3f);
}

}  // namespace
}  // namespace dp::teachers

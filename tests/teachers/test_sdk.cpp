// The teacher SDK's checks, in-process through TeacherSession (what the node body runs): bad
// params and inputs are refused naming the key, a teacher whose output does not match what it
// declared is caught, a producer that comes back with another spec is followed or refused, and
// registration refuses duplicates and reserved param names.
#include <gtest/gtest.h>

#include <cstring>

#include "directport/core/error.hpp"
#include "directport/teachers/teacher.hpp"

namespace dp::teachers {
namespace {

// Test teachers, registered in this test program only.

// Declares f16 [n] but writes f32: a teacher bug the SDK must catch.
class WritesWrongDtype final : public Teacher {
 public:
  std::string accepts(const TensorSpec& in) const override { return in.dtype == DType::f32 ? "" : "f32"; }
  TensorSpec output_spec(const TensorSpec& in) const override { return {DType::f16, in.shape, nullptr}; }
  void infer(const TeacherInput&, const TeacherOutput&, GpuStream) override { no_cuda(); }
  void infer_cpu(const TeacherInput& in, const TeacherOutput& out) override { out.f32()[0] = in.f32()[0]; }
};
DP_REGISTER_TEACHER(WritesWrongDtype, {"test-wrong-dtype", "test", "declares f16, writes f32", "f32 [N]", "f16 [N]", {}});

// Declares an output with a zero dimension.
class EmptyOutput final : public Teacher {
 public:
  std::string accepts(const TensorSpec&) const override { return ""; }
  TensorSpec output_spec(const TensorSpec&) const override { return {DType::f32, {4, 0}, nullptr}; }
  void infer(const TeacherInput&, const TeacherOutput&, GpuStream) override { no_cuda(); }
  void infer_cpu(const TeacherInput&, const TeacherOutput&) override {}
};
DP_REGISTER_TEACHER(EmptyOutput, {"test-empty-output", "test", "declares a shape with a zero", "any", "f32 [4, 0]", {}});

// Sums a vector, times `gain`; output f32 [1] whatever the input's length. Counts setup calls.
class Sum final : public Teacher {
 public:
  void configure(const nlohmann::json& p) override {
    gain_ = p["gain"].get<float>();
    if (gain_ == 0) param_error("gain", "must not be 0");
  }
  std::string accepts(const TensorSpec& in) const override {
    return in.dtype == DType::f32 && in.shape.size() == 1 ? "" : "f32 [N]";
  }
  TensorSpec output_spec(const TensorSpec&) const override { return {DType::f32, {1}, nullptr}; }
  void setup(const TensorSpec& in, bool) override {
    ++setups;
    n_ = in.shape[0];
  }
  void infer(const TeacherInput&, const TeacherOutput&, GpuStream) override { no_cuda(); }
  void infer_cpu(const TeacherInput& in, const TeacherOutput& out) override {
    float s = 0;
    for (std::int64_t i = 0; i < n_; ++i) s += in.f32()[i];
    out.f32()[0] = s * gain_;
  }
  int setups = 0;

 private:
  float gain_ = 1;
  std::int64_t n_ = 0;
};
DP_REGISTER_TEACHER(Sum, {"test-sum", "test", "sum of a vector", "f32 [N]", "f32 [1]",
                          {{"gain", ParamType::number, 1.0, false, "multiplies the sum"}}});

TensorSpec vec(std::int64_t n) { return {DType::f32, {n}, nullptr}; }

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(TeacherSdk, RunsATeacherOnTheCpuWithItsParams) {
  TeacherSession s("test-sum", {{"gain", 2.0}}, vec(3), "src/x");
  EXPECT_TRUE(s.output_spec().same_tensor(TensorSpec{DType::f32, {1}, nullptr}));
  EXPECT_EQ(s.info().modality, "test");
  const float in[3] = {1.5f, 2.0f, -0.25f};
  float out = 0;
  s.infer_cpu(in, 7, 0, &out);
  EXPECT_EQ(out, 6.5f);
  s.infer_cpu(in, 8, 0, &out);
  EXPECT_EQ(static_cast<Sum&>(s.teacher()).setups, 1) << "setup runs once, before the first frame";
}

TEST(TeacherSdk, BadParamsAndUnknownTypesAreNamed) {
  auto m = message_of([] { TeacherSession("test-sum", {{"gain", 0.0}}, vec(3)); });
  EXPECT_NE(m.find("param 'gain'"), std::string::npos) << m;
  EXPECT_NE(m.find("test-sum"), std::string::npos) << m;
  m = message_of([] { TeacherSession("test-sum", {{"gian", 2.0}}, vec(3)); });
  EXPECT_NE(m.find("params.gian"), std::string::npos) << m;
  EXPECT_NE(m.find("known: gain"), std::string::npos) << m;
  m = message_of([] { TeacherSession("test-sum", {{"gain", "loud"}}, vec(3)); });
  EXPECT_NE(m.find("params.gain: expected number"), std::string::npos) << m;
  m = message_of([] { TeacherSession("no-such-teacher", {}, vec(3)); });
  EXPECT_NE(m.find("unknown teacher type 'no-such-teacher'"), std::string::npos) << m;
  EXPECT_NE(m.find("test-sum"), std::string::npos) << "the known types are listed: " << m;
  EXPECT_THROW(TeacherSession("test-sum", {{"gain", 0.0}}, vec(3)), ValidationError);
}

TEST(TeacherSdk, AnInputTheTeacherDoesNotTakeIsRefusedNamingFrom) {
  const TensorSpec bytes{DType::u8, {16}, nullptr};
  auto m = message_of([&] { TeacherSession("test-sum", {}, bytes, "cam/caption"); });
  EXPECT_NE(m.find("param 'from'"), std::string::npos) << m;
  EXPECT_NE(m.find("cam/caption is u8 [16]"), std::string::npos) << m;
  EXPECT_NE(m.find("needs f32 [N]"), std::string::npos) << m;
  EXPECT_THROW(TeacherSession("test-sum", {}, bytes), ValidationError);
}

TEST(TeacherSdk, AnOutputOtherThanDeclaredIsCaught) {
  // Writing f32 into an output declared f16.
  TeacherSession s("test-wrong-dtype", {}, vec(4));
  float in[4] = {1, 2, 3, 4};
  std::uint16_t out[4] = {};
  auto m = message_of([&] { s.infer_cpu(in, 1, 0, out); });
  EXPECT_NE(m.find("writes its output as f32 but declared f16 [4]"), std::string::npos) << m;
  EXPECT_THROW(s.infer_cpu(in, 1, 0, out), OutputMismatch);
  EXPECT_EQ(out[0], 0) << "nothing written";
  // A declared shape that is no tensor.
  m = message_of([] { TeacherSession("test-empty-output", {}, vec(4)); });
  EXPECT_NE(m.find("f32 [4,0]"), std::string::npos) << m;
  EXPECT_NE(m.find("every dimension at least 1"), std::string::npos) << m;
  EXPECT_THROW(TeacherSession("test-empty-output", {}, vec(4)), OutputMismatch);
}

TEST(TeacherSdk, AProducerBackWithAnotherSpecIsFollowedOrRefused) {
  TeacherSession s("test-sum", {}, vec(3), "src/x");
  const float in3[3] = {1, 2, 3};
  float out = 0;
  s.infer_cpu(in3, 1, 0, &out);
  EXPECT_EQ(out, 6.0f);
  // Another length, same output [1]: followed, and the teacher is set up again for it.
  s.input_changed(vec(5));
  const float in5[5] = {1, 1, 1, 1, 1};
  s.infer_cpu(in5, 2, 0, &out);
  EXPECT_EQ(out, 5.0f);
  EXPECT_EQ(static_cast<Sum&>(s.teacher()).setups, 2);
  // An input it does not take: refused naming from.
  auto m = message_of([&] { s.input_changed(TensorSpec{DType::u8, {5}, nullptr}); });
  EXPECT_NE(m.find("param 'from': src/x came back as u8 [5]"), std::string::npos) << m;

  // A teacher whose output follows the input: its output would change, which the announced
  // stream cannot follow.
  TeacherSession w("test-wrong-dtype", {}, vec(4), "src/y");
  m = message_of([&] { w.input_changed(vec(8)); });
  EXPECT_NE(m.find("the output would be f16 [8] but the stream was announced as f16 [4]"), std::string::npos) << m;
  EXPECT_THROW(w.input_changed(vec(8)), OutputMismatch);
}

TEST(TeacherSdk, RegistrationRefusesDuplicatesAndReservedParams) {
  auto make = [] { return std::unique_ptr<Teacher>(new Sum); };
  TeacherInfo dup{{"test-sum", "test", "", "", "", {}}, make};
  EXPECT_THROW(TeacherRegistry::instance().add(dup), PreconditionError);
  TeacherInfo reserved{{"test-reserved", "test", "", "", "", {{"from", ParamType::string, "", false, ""}}}, make};
  auto m = message_of([&] { TeacherRegistry::instance().add(reserved); });
  EXPECT_NE(m.find("declares param 'from'"), std::string::npos) << m;
  EXPECT_EQ(TeacherRegistry::instance().find("test-reserved"), nullptr);
  // The library's own teachers are all there.
  for (const char* t : {"template", "edges", "scene-depth", "audio-spectrum", "caption-hash"}) {
    EXPECT_NE(TeacherRegistry::instance().find(t), nullptr) << t;
  }
}

}  // namespace
}  // namespace dp::teachers

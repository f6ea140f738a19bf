// The student: pairing by frame_id (shuffled arrivals, gaps, bounds), the trainer (its loss falls
// on a learnable task, masked teachers get no gradient, growth preserves the function,
// checkpoints round-trip and refuse another layout), on the CPU with LibTorch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>

#include "directport/core/error.hpp"
#include "directport/student/pairer.hpp"
#include "directport/student/trainer.hpp"
#include "support/gpu_test.hpp"
#include "support/test_support.hpp"

namespace dp::student {
namespace {

using kernels::FusionInput;
using kernels::FusionLayout;
using kernels::NormMode;

// ------------------------------------------------------------------ pairing

TEST(Pairer, PairsByFrameIdAndDropsWhatCannotPair) {
  Pairer p(4, 4);
  std::vector<Pairer::Handle> rel;
  p.add(Pairer::input, 1, 101, rel);
  p.add(Pairer::input, 2, 102, rel);
  p.add(Pairer::input, 3, 103, rel);
  EXPECT_FALSE(p.pop(rel));
  p.add(Pairer::target, 2, 202, rel);  // input 1 can no longer pair
  auto pr = p.pop(rel);
  ASSERT_TRUE(pr);
  EXPECT_EQ(pr->frame_id, 2u);
  EXPECT_EQ(pr->input, 102u);
  EXPECT_EQ(pr->target, 202u);
  EXPECT_EQ(rel, std::vector<Pairer::Handle>{101});
  EXPECT_EQ(p.counters().unmatched_input, 1u);
  rel.clear();
  p.add(Pairer::target, 2, 2022, rel);  // late: 2 is paired already
  p.add(Pairer::target, 1, 201, rel);   // late
  EXPECT_EQ(rel, (std::vector<Pairer::Handle>{2022, 201}));
  EXPECT_EQ(p.counters().unmatched_target, 2u);
  EXPECT_EQ(p.held(Pairer::input), 1u);
}

TEST(Pairer, HoldsAtMostItsBoundPerSide) {
  Pairer p(2, 1);
  std::vector<Pairer::Handle> rel;
  for (std::uint64_t id = 1; id <= 5; ++id) p.add(Pairer::input, id, id, rel);
  EXPECT_EQ(p.held(Pairer::input), 2u);
  EXPECT_EQ(rel, (std::vector<Pairer::Handle>{1, 2, 3}));
  p.add(Pairer::target, 9, 900, rel);
  p.add(Pairer::target, 10, 1000, rel);
  EXPECT_EQ(p.held(Pairer::target), 1u);
  EXPECT_EQ(rel.back(), 900u);
}

// Shuffled arrivals of two streams with gaps: every frame comes back exactly once (paired or
// handed back) and no pair mixes ids.
TEST(Pairer, ShuffledArrivalsNeverMix) {
  std::mt19937_64 rng(test::test_seed());
  Pairer p(3, 3);
  struct Arrival {
    Pairer::Side side;
    std::uint64_t id;
  };
  std::vector<Arrival> a;
  for (std::uint64_t id = 1; id <= 500; ++id) {
    if (rng() % 6) a.push_back({Pairer::input, id});
    if (rng() % 4) a.push_back({Pairer::target, id});
  }
  for (std::size_t i = 0; i + 1 < a.size(); ++i) std::swap(a[i], a[std::min(a.size() - 1, i + rng() % 4)]);
  std::multiset<Pairer::Handle> sent, back;
  std::vector<Pairer::Handle> rel;
  std::uint64_t last = 0, pairs = 0;
  for (auto& x : a) {
    const Pairer::Handle h = (x.side == Pairer::input ? 1'000'000 : 2'000'000) + x.id;
    sent.insert(h);
    p.add(x.side, x.id, h, rel);
    while (auto pr = p.pop(rel)) {
      EXPECT_EQ(pr->input % 1'000'000, pr->frame_id);
      EXPECT_EQ(pr->target % 1'000'000, pr->frame_id);
      EXPECT_GT(pr->frame_id, last);
      last = pr->frame_id;
      back.insert(pr->input);
      back.insert(pr->target);
      ++pairs;
    }
  }
  for (auto h : rel) back.insert(h);
  for (auto h : p.drain()) back.insert(h);
  EXPECT_EQ(back, sent);
  EXPECT_EQ(p.counters().paired, pairs);
  EXPECT_GT(pairs, 150u);
}

// ------------------------------------------------------------------ the trainer

// A learnable task: the spatial teacher is a 4x4 average pool of the input's first two channels,
// the vector teacher the input's channel means times fixed weights; mask bits as given.
struct Task {
  FusionLayout layout{{{"pool", DType::f32, {2, 8, 8}, NormMode::none}, {"stats", DType::f32, {4}, NormMode::none}},
                      8, 8, DType::f32};
  std::vector<std::int64_t> input_shape{3, 32, 32};
  torch::Tensor input(std::mt19937_64& rng) {
    return torch::rand({3, 32, 32}, torch::TensorOptions().dtype(torch::kFloat32)) * 2 - 1 +
           static_cast<float>(rng() % 100) / 100.0f;
  }
  torch::Tensor fused(const torch::Tensor& x, bool pool_present = true, bool stats_present = true) {
    auto pool = torch::avg_pool2d(x.narrow(0, 0, 2).unsqueeze(0), 4).squeeze(0);  // [2, 8, 8]
    auto m = x.mean({1, 2});
    auto stats = torch::stack({m[0], m[1] * 2, m[2] - m[0], m.sum()});
    if (!pool_present) pool = torch::zeros_like(pool);
    if (!stats_present) stats = torch::zeros_like(stats);
    auto mask = torch::tensor({pool_present ? 1.0f : 0.0f, stats_present ? 1.0f : 0.0f});
    return torch::cat({pool.flatten(), stats, mask});
  }
};

TrainerOptions cpu_options() {
  // One intra-op thread: the CI machine has two cores and the tests run in parallel.
  torch::set_num_threads(1);
  TrainerOptions o;
  o.lr = 3e-3;
  o.width = 8;
  o.plateau_steps = 1'000'000;  // no growth unless a test asks
  return o;
}

TEST(Trainer, LossFallsOnALearnableTask) {
  torch::manual_seed(1);
  std::mt19937_64 rng(test::test_seed());
  Task task;
  Trainer t(task.layout, task.input_shape, cpu_options());
  double first = 0, last = 0;
  const int steps = 300, window = 30;
  for (int s = 0; s < steps; ++s) {
    auto x = task.input(rng);
    auto r = t.step(x, task.fused(x));
    ASSERT_TRUE(std::isfinite(r.loss)) << "step " << s;
    ASSERT_EQ(r.teacher_loss.size(), 2u);
    if (s < window) first += r.loss / window;
    if (s >= steps - window) last += r.loss / window;
  }
  EXPECT_EQ(t.steps(), static_cast<std::uint64_t>(steps));
  EXPECT_LT(last, 0.5 * first) << "loss over the first " << window << " steps " << first << ", over the last " << last;
  // The prediction has the fused layout: segments, then a mask of ones.
  auto x = task.input(rng);
  auto pred = t.predict_flat(x);
  ASSERT_EQ(pred.numel(), static_cast<std::int64_t>(task.layout.total_elements()));
  EXPECT_EQ(pred[task.layout.mask_offset()].item<float>(), 1.0f);
}

TEST(Trainer, AMaskedTeacherContributesNoLossAndNoErrorEstimate) {
  std::mt19937_64 rng(test::test_seed());
  Task task;
  Trainer t(task.layout, task.input_shape, cpu_options());
  auto probe = task.input(rng);
  auto before = t.predict_flat(probe);
  auto x = task.input(rng);
  auto r = t.step(x, task.fused(x, /*pool_present=*/true, /*stats_present=*/false));
  EXPECT_TRUE(std::isnan(r.teacher_loss[1])) << "a masked teacher reports no loss";
  EXPECT_FALSE(std::isnan(r.teacher_loss[0]));
  auto after = t.predict_flat(probe);
  // The vector head's own projection got no gradient; the shared encoder moved, so compare the
  // head's parameters through the error estimate instead: it is still unset.
  EXPECT_TRUE(std::isnan(t.error_ema()[1]));
  EXPECT_FALSE(torch::equal(before, after)) << "the present teacher trained the model";
}

TEST(Trainer, GrowthPreservesTheFunctionAndIsRateLimited) {
  std::mt19937_64 rng(test::test_seed());
  Task task;
  auto o = cpu_options();
  o.plateau_steps = 1;
  o.grow_threshold = 0.0;
  o.grow_every = 5;
  o.max_growth = 2;
  o.lr = 1e-12;  // the weights hardly move: only growth could change the output
  Trainer t(task.layout, task.input_shape, o);
  auto probe = task.input(rng);
  std::vector<std::uint64_t> grew_at;
  for (int s = 0; s < 40; ++s) {
    auto before = t.predict_flat(probe);
    auto x = task.input(rng);
    auto r = t.step(x, task.fused(x));
    if (r.grew) {
      grew_at.push_back(r.step);
      // The adapter starts at zero: the output after growth is the output before (up to the
      // negligible step).
      EXPECT_TRUE(torch::allclose(before, t.predict_flat(probe), 1e-5, 1e-6)) << "growth at step " << r.step;
    }
  }
  ASSERT_EQ(grew_at.size(), 4u) << "two heads, two adapters each";
  for (std::size_t i = 1; i < grew_at.size(); ++i) EXPECT_GE(grew_at[i] - grew_at[i - 1], 5u) << "rate limit";
  EXPECT_EQ(t.growth(), (std::vector<int>{2, 2}));
}

TEST(Trainer, CheckpointRoundTripContinuesExactly) {
  std::mt19937_64 rng(test::test_seed());
  Task task;
  auto o = cpu_options();
  o.plateau_steps = 0;  // every head is a candidate at once: growth at steps 1 and 5
  o.grow_threshold = 0.0;
  o.grow_every = 4;
  o.max_growth = 1;
  char tmpl[] = "/tmp/dp_test_student_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string prefix = std::string(tmpl) + "/ckpt";
  Trainer a(task.layout, task.input_shape, o);
  for (int s = 0; s < 15; ++s) {
    auto x = task.input(rng);
    a.step(x, task.fused(x));
  }
  ASSERT_EQ(a.growth(), (std::vector<int>{1, 1})) << "the checkpoint covers grown adapters too";
  a.save(prefix);
  Trainer b(task.layout, task.input_shape, o);
  ASSERT_TRUE(b.load(prefix));
  EXPECT_EQ(b.steps(), 15u);
  EXPECT_EQ(b.growth(), a.growth());
  auto probe = task.input(rng);
  EXPECT_TRUE(torch::equal(a.predict_flat(probe), b.predict_flat(probe)));
  // The optimizer's state came back too: the next step is the same step.
  auto x = task.input(rng);
  auto ra = a.step(x, task.fused(x));
  auto rb = b.step(x, task.fused(x));
  EXPECT_DOUBLE_EQ(ra.loss, rb.loss);
  EXPECT_TRUE(torch::equal(a.predict_flat(probe), b.predict_flat(probe)));

  // Another layout, input or width is refused, naming the difference.
  FusionLayout other({{"pool", DType::f32, {3, 8, 8}, NormMode::none}}, 8, 8, DType::f32);
  Trainer c(other, task.input_shape, o);
  try {
    c.load(prefix);
    ADD_FAILURE() << "a checkpoint of another layout was loaded";
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find("another fused layout"), std::string::npos) << e.what();
  }
  auto w = o;
  w.width = 16;
  Trainer d(task.layout, task.input_shape, w);
  EXPECT_THROW(d.load(prefix), ValidationError);
  // No checkpoint: a fresh start.
  Trainer e(task.layout, task.input_shape, o);
  EXPECT_FALSE(e.load(prefix + "-none"));
  for (auto ext : {".json", ".model.pt", ".optim.pt"}) std::remove((prefix + ext).c_str());
  ::rmdir(tmpl);
}

TEST(Trainer, BadOptionsAreNamed) {
  Task task;
  auto o = cpu_options();
  o.weights["nobody"] = 1.0;
  try {
    Trainer t(task.layout, task.input_shape, o);
    ADD_FAILURE() << "accepted a weight for an unknown teacher";
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find("weights.nobody"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Trainer(task.layout, {3, 2, 2}, cpu_options()), ValidationError);
  EXPECT_THROW(Trainer(task.layout, {32, 32}, cpu_options()), ValidationError);
}

TEST(Trainer, ReplayAddsPastPairsToTheBatch) {
  std::mt19937_64 rng(test::test_seed());
  Task task;
  auto o = cpu_options();
  o.replay = 8;
  o.replay_batch = 3;
  Trainer t(task.layout, task.input_shape, o);
  for (int s = 0; s < 30; ++s) {
    auto x = task.input(rng);
    auto r = t.step(x, task.fused(x));
    ASSERT_TRUE(std::isfinite(r.loss));
  }
  EXPECT_EQ(t.steps(), 30u);
}

// The same learnable task on the GPU: the trainer's tensors on the device, torch on a stream of
// ours (as the node runs it), the inputs wrapped in place with from_blob.
class GpuStudent : public test::GpuTest {};

TEST_F(GpuStudent, TrainsOnTheDeviceFromFramesWrappedInPlace) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "this LibTorch sees no CUDA device";
  std::mt19937_64 rng(test::test_seed());
  Task task;
  auto o = cpu_options();
  o.device = torch::Device(torch::kCUDA, 0);
  Trainer t(task.layout, task.input_shape, o);
  auto dev = torch::TensorOptions().device(torch::kCUDA, 0);
  // Device buffers standing for mapped frames.
  auto in_buf = torch::empty({3, 32, 32}, dev);
  auto tg_buf = torch::empty({static_cast<std::int64_t>(task.layout.total_elements())}, dev);
  double first = 0, last = 0;
  const int steps = 300, window = 30;
  for (int s = 0; s < steps; ++s) {
    auto x = task.input(rng);
    in_buf.copy_(x);
    tg_buf.copy_(task.fused(x));
    auto xi = torch::from_blob(in_buf.data_ptr(), {3, 32, 32}, dev);
    auto yi = torch::from_blob(tg_buf.data_ptr(), {tg_buf.numel()}, dev);
    auto r = t.step(xi, yi);
    ASSERT_TRUE(std::isfinite(r.loss));
    if (s < window) first += r.loss / window;
    if (s >= steps - window) last += r.loss / window;
  }
  EXPECT_LT(last, 0.5 * first);
  EXPECT_TRUE(t.predict_flat(in_buf).is_cuda());
}

}  // namespace
}  // namespace dp::student

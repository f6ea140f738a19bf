// The student's model and its online training (DESIGN §7, VISION "The Student"): an encoder of
// the sensor frame with one head per teacher segment of the fused tensor, trained step by step to
// match the fused target, masked by its validity mask.
//
// Model. Encoder: conv 3x3 stride 2 -> GELU -> conv 3x3 stride 2 -> GELU -> conv 3x3 -> GELU,
// widths w, 2w, 2w: features at a quarter of the input's size. A spatial head (segment
// [C, Hg, Wg]) resamples the features bilinearly to the grid and projects them with a 1x1 conv; a
// vector head (segment [C]) averages the features over space and projects them with a linear
// layer. Each head can grow adapters: residual blocks (1x1 conv or linear, GELU, 1x1 conv or
// linear) in front of its projection whose last layer starts at zero, so that adding one does
// not change the student's output (function-preserving growth).
//
// Loss of teacher i on a sample whose mask says it is present:
//   cos_weight * (1 - cosine similarity over channels, averaged over positions)
//   + l1_weight * smooth-L1(prediction, target), times the teacher's weight.
// A single-channel segment (a depth map, a probability) takes smooth-L1 alone: cosine over one
// channel is only its sign. Teachers masked out contribute nothing (and their error estimate is
// left alone).
//
// Growth: per teacher, an EMA of its loss; when it has not improved by 1 % for `plateau_steps`
// steps and stays above `grow_threshold`, the head grows one adapter, at most `max_growth` per
// head and at most one growth every `grow_every` steps over the whole model.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/kernels/fusion.hpp"

namespace dp::student {

struct TrainerOptions {
  double lr = 1e-3;
  std::int64_t width = 32;
  std::map<std::string, double> weights;  // per teacher name; 1 when absent
  double cos_weight = 1.0;
  double l1_weight = 1.0;
  std::int64_t replay = 0;        // pairs kept for replay (copies on the training device); 0: none
  std::int64_t replay_batch = 4;  // replayed pairs added to each step
  double ema = 0.02;              // momentum of the per-teacher error estimate
  double grow_threshold = 0.3;
  std::int64_t plateau_steps = 300;
  std::int64_t grow_every = 1000;
  int max_growth = 3;
  std::uint64_t seed = 1;
  torch::Device device = torch::kCPU;
};

struct StepReport {
  std::uint64_t step = 0;
  double loss = 0;                   // weighted total of this step
  std::vector<double> teacher_loss;  // per teacher; NaN where masked out
  std::optional<std::size_t> grew;   // the head that grew at this step
};

class Trainer {
 public:
  // `input_shape`: the sensor frame, [C, H, W]. Throws ValidationError on a shape it cannot take.
  Trainer(kernels::FusionLayout layout, std::vector<std::int64_t> input_shape, TrainerOptions opts);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // One optimisation step on one pair (plus replayed pairs). `input`: [C, H, W] of any floating
  // dtype; `fused`: the flat fused tensor (layout().total_elements(), the fused dtype). Both may
  // be views of frames in shared memory: they are only read.
  StepReport step(const torch::Tensor& input, const torch::Tensor& fused);

  // The prediction for `input` in the fused layout (mask all ones), `layout().out_dtype()`.
  torch::Tensor predict_flat(const torch::Tensor& input);

  // Checkpoints: `prefix`.json (the commit point, written last), `prefix`.model.pt and
  // `prefix`.optim.pt, each written to a temporary name and renamed.
  void save(const std::string& prefix) const;
  // Loads a checkpoint if `prefix`.json exists (true), after checking that it was made for the
  // same layout, input and width (ValidationError naming the difference otherwise).
  bool load(const std::string& prefix);

  const kernels::FusionLayout& layout() const { return layout_; }
  std::uint64_t steps() const;
  std::vector<int> growth() const;        // adapters per head
  std::vector<double> error_ema() const;  // per teacher; NaN before its first sample
  nlohmann::json status() const;

 private:
  struct Impl;
  kernels::FusionLayout layout_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dp::student

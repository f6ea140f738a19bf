// The fusion kernel of the compositor (DESIGN §7, docs/FUSION.md): N teacher outputs of
// different shapes and dtypes become one fused tensor in one pass over the data.
//
// For each teacher, in the order given:
//   - a spatial map C x H x W (fp32, fp16 or bf16) is resampled bilinearly to the common grid
//     Hg x Wg with half-pixel centres (PyTorch's align_corners=False: src = (dst + 0.5) * in/out
//     - 0.5, clamped at 0, neighbours clamped at the edge); a global vector [C] is copied;
//   - each channel is standardised with running statistics: x' = (x - mean_c) * scale_c, where
//       channel:   scale_c = 1 / sqrt(var_c + eps)
//       isotropic: scale_c = 1 / sqrt(mean over channels of var_c + eps)  (one scale per
//                  teacher, channels keep their relative spread: the scalar-variance
//                  standardisation of PHI-S, without its Hadamard rotation)
//       none:      mean 0, scale 1;
//   - cast to the fused dtype (fp32, fp16 or bf16; round to nearest even) and written at the
//     teacher's offset.
// After the last teacher comes the mask: one element per teacher, 1 if the teacher's input was
// there, 0 if not (its segment is then all zeros and its statistics are left alone).
//
// Running statistics: per teacher and channel, the EMA of the first two moments of the values
// the segment holds (after resampling): M1 <- (1-m) M1 + m E[x], M2 <- (1-m) M2 + m E[x^2],
// var = max(M2 - M1^2, 0), kept in float64. A teacher's first frame initialises them (M = E);
// later frames are standardised with the statistics as they stood before the frame and then
// update them, so that the GPU reads every input once. The first frame of a teacher is
// standardised with its own statistics (one extra statistics pass, once).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/core/types.hpp"

namespace dp::kernels {

enum class NormMode : std::uint8_t { none, channel, isotropic };
const char* norm_mode_name(NormMode m);
NormMode parse_norm_mode(const std::string& s);  // throws ValidationError listing the names

// One teacher's output as the fusion sees it.
struct FusionInput {
  std::string name;
  DType dtype = DType::f32;           // f32, f16 or bf16
  std::vector<std::int64_t> shape;    // [C, H, W] (a spatial map) or [C] (a global vector)
  NormMode norm = NormMode::channel;

  bool spatial() const { return shape.size() == 3; }
  std::int64_t channels() const { return shape.empty() ? 0 : shape[0]; }
};

// Where everything lies in the fused tensor (element offsets, in the fused dtype).
class FusionLayout {
 public:
  static constexpr std::size_t kMaxTeachers = 32;

  // Validates everything; errors are ValidationErrors naming the teacher and the field.
  FusionLayout(std::vector<FusionInput> inputs, std::int64_t grid_h, std::int64_t grid_w, DType out_dtype,
               double momentum = 0.01, double eps = 1e-5);

  const std::vector<FusionInput>& inputs() const { return inputs_; }
  std::size_t teachers() const { return inputs_.size(); }
  std::int64_t grid_h() const { return grid_h_; }
  std::int64_t grid_w() const { return grid_w_; }
  DType out_dtype() const { return out_dtype_; }
  double momentum() const { return momentum_; }
  double eps() const { return eps_; }

  std::size_t offset(std::size_t teacher) const { return offsets_[teacher]; }  // elements
  // Shape of a teacher's segment: [C, Hg, Wg] or [C].
  std::vector<std::int64_t> segment_shape(std::size_t teacher) const;
  std::size_t segment_elements(std::size_t teacher) const;
  std::size_t mask_offset() const { return mask_offset_; }
  std::size_t total_elements() const { return total_; }
  std::size_t total_bytes() const { return total_ * dtype_size(out_dtype_); }
  // Channels over all teachers (the length of the statistics arrays), and where teacher i's
  // channels start in them.
  std::size_t total_channels() const { return channel_base_.back(); }
  std::size_t channel_base(std::size_t teacher) const { return channel_base_[teacher]; }
  // Bytes of one input frame of teacher i.
  std::size_t input_bytes(std::size_t teacher) const;

  // The layout as published in the fused stream's manifest (docs/FUSION.md).
  nlohmann::json to_json() const;
  // Back from that JSON (a consumer taking a fused stream apart): checked field by field and
  // against the offsets it implies; a ValidationError names the bad key.
  static FusionLayout from_json(const nlohmann::json& j);

 private:
  std::vector<FusionInput> inputs_;
  std::int64_t grid_h_, grid_w_;
  DType out_dtype_;
  double momentum_, eps_;
  std::vector<std::size_t> offsets_;
  std::vector<std::size_t> channel_base_;
  std::size_t mask_offset_ = 0;
  std::size_t total_ = 0;
};

// One teacher's running statistics (float64, per channel) and how many frames fed them.
struct RunningStats {
  std::vector<double> m1, m2;
  std::uint64_t frames = 0;
  double mean(std::size_t c) const { return m1[c]; }
  double var(std::size_t c) const;  // max(m2 - m1^2, 0)
};

// The CPU reference, also what the compositor runs on the host backend.
class FusionCpu {
 public:
  explicit FusionCpu(FusionLayout layout);
  // inputs[i]: teacher i's frame (layout.input_bytes(i) bytes) or nullptr if it is missing.
  // `out`: layout.total_bytes() bytes.
  void fuse(const std::vector<const void*>& inputs, void* out);
  const FusionLayout& layout() const { return layout_; }
  const RunningStats& stats(std::size_t teacher) const { return stats_[teacher]; }

 private:
  FusionLayout layout_;
  std::vector<RunningStats> stats_;
  std::vector<float> scratch_;
};

// The GPU kernel. Everything is enqueued on the given stream and never synchronised, except
// stats(), which copies the statistics back. One FusionGpu serves one stream at a time: its
// statistics and the counters its launch shares out work with are its own, so two fuse() calls
// in flight on different streams would corrupt both the statistics and the output.
class FusionGpu {
 public:
  explicit FusionGpu(FusionLayout layout);  // allocates the device tables and statistics
  ~FusionGpu();
  FusionGpu(const FusionGpu&) = delete;
  FusionGpu& operator=(const FusionGpu&) = delete;
  // As FusionCpu::fuse; pointers are device pointers (or mapped VRAM of other processes).
  void fuse(const std::vector<const void*>& inputs, void* out, GpuStream stream);
  const FusionLayout& layout() const { return layout_; }
  RunningStats stats(std::size_t teacher, GpuStream stream) const;

 private:
  struct Device;
  FusionLayout layout_;
  std::vector<std::uint64_t> frames_;  // per teacher, frames folded into its statistics
  std::unique_ptr<Device> dev_;
};

}  // namespace dp::kernels

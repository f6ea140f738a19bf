// The fusion layout and the CPU reference of the fusion kernel (fusion.hpp, docs/FUSION.md).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "directport/core/error.hpp"
#include "directport/core/names.hpp"
#include "directport/kernels/fusion.hpp"
#include "directport/kernels/fusion_math.hpp"
#include "directport/kernels/half.hpp"

namespace dp::kernels {

const char* norm_mode_name(NormMode m) {
  switch (m) {
    case NormMode::none: return "none";
    case NormMode::channel: return "channel";
    case NormMode::isotropic: return "isotropic";
  }
  return "?";
}

NormMode parse_norm_mode(const std::string& s) {
  if (s == "none") return NormMode::none;
  if (s == "channel") return NormMode::channel;
  if (s == "isotropic") return NormMode::isotropic;
  throw ValidationError("unknown normalisation '" + s + "' (valid: channel, isotropic, none)");
}

double RunningStats::var(std::size_t c) const { return std::max(m2[c] - m1[c] * m1[c], 0.0); }

namespace {

bool fusable(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

// The layout's limits: channel planes in all (the GPU launch groups them by 32 into its grid's
// y dimension, at most 65535, so this bound keeps well inside it); elements of a plane by int.
constexpr std::size_t kMaxPlanes = 65535;
constexpr std::int64_t kMaxGridSide = 16384;
constexpr std::int64_t kMaxPlaneElements = std::int64_t(1) << 30;

}  // namespace

FusionLayout::FusionLayout(std::vector<FusionInput> inputs, std::int64_t grid_h, std::int64_t grid_w, DType out_dtype,
                           double momentum, double eps)
    : inputs_(std::move(inputs)), grid_h_(grid_h), grid_w_(grid_w), out_dtype_(out_dtype), momentum_(momentum), eps_(eps) {
  if (inputs_.empty() || inputs_.size() > kMaxTeachers) {
    throw ValidationError("fusion needs 1 to " + std::to_string(kMaxTeachers) + " teachers, got " +
                          std::to_string(inputs_.size()));
  }
  if (grid_h_ < 1 || grid_w_ < 1 || grid_h_ > kMaxGridSide || grid_w_ > kMaxGridSide) {
    throw ValidationError("fusion grid must be 1.." + std::to_string(kMaxGridSide) + " on each side, got " +
                          std::to_string(grid_h_) + "x" + std::to_string(grid_w_));
  }
  if (!fusable(out_dtype_)) {
    throw ValidationError(std::string("fused dtype must be f32, f16 or bf16, got ") + dtype_name(out_dtype_));
  }
  if (!(momentum_ > 0.0 && momentum_ <= 1.0)) {
    throw ValidationError("fusion momentum must be in (0, 1], got " + std::to_string(momentum_));
  }
  if (!(eps_ > 0.0 && eps_ < 1.0)) throw ValidationError("fusion eps must be in (0, 1), got " + std::to_string(eps_));
  std::set<std::string> names;
  std::size_t offset = 0, planes = 0, channels = 0;
  channel_base_.push_back(0);
  for (std::size_t i = 0; i < inputs_.size(); ++i) {
    const auto& in = inputs_[i];
    const std::string where = "teacher " + std::to_string(i) + " ('" + in.name + "'): ";
    validate_name("teacher name", in.name);
    if (!names.insert(in.name).second) throw ValidationError(where + "name used twice");
    if (!fusable(in.dtype)) {
      throw ValidationError(where + "dtype must be f32, f16 or bf16, got " + dtype_name(in.dtype));
    }
    if (in.shape.size() != 1 && in.shape.size() != 3) {
      throw ValidationError(where + "shape must be [C, H, W] (a map) or [C] (a vector), got " +
                            nlohmann::json(in.shape).dump());
    }
    for (auto d : in.shape) {
      if (d < 1 || d > kMaxPlaneElements) {
        throw ValidationError(where + "shape entries must be 1.." + std::to_string(kMaxPlaneElements) + ", got " +
                              nlohmann::json(in.shape).dump());
      }
    }
    if (in.spatial() && in.shape[1] * in.shape[2] > kMaxPlaneElements) {
      throw ValidationError(where + "a channel of over 2^30 elements");
    }
    offsets_.push_back(offset);
    offset += segment_elements(i);
    planes += in.spatial() ? static_cast<std::size_t>(in.shape[0]) : 1;
    if (!in.spatial() && in.shape[0] > kMaxPlaneElements) throw ValidationError(where + "a vector of over 2^30 elements");
    channels += static_cast<std::size_t>(in.shape[0]);
    channel_base_.push_back(channels);
  }
  if (planes > kMaxPlanes) {
    throw ValidationError("fusion of " + std::to_string(planes) + " channel planes; at most " + std::to_string(kMaxPlanes));
  }
  mask_offset_ = offset;
  total_ = offset + inputs_.size();
  if (total_ * dtype_size(out_dtype_) > (std::size_t(16) << 30)) throw ValidationError("fused tensor larger than 16 GiB");
}

std::vector<std::int64_t> FusionLayout::segment_shape(std::size_t i) const {
  const auto& in = inputs_.at(i);
  if (in.spatial()) return {in.shape[0], grid_h_, grid_w_};
  return {in.shape[0]};
}

std::size_t FusionLayout::segment_elements(std::size_t i) const {
  std::size_t n = 1;
  for (auto d : segment_shape(i)) n *= static_cast<std::size_t>(d);
  return n;
}

std::size_t FusionLayout::input_bytes(std::size_t i) const {
  std::size_t n = dtype_size(inputs_.at(i).dtype);
  for (auto d : inputs_[i].shape) n *= static_cast<std::size_t>(d);
  return n;
}

nlohmann::json FusionLayout::to_json() const {
  nlohmann::json segs = nlohmann::json::array();
  for (std::size_t i = 0; i < inputs_.size(); ++i) {
    segs.push_back({{"teacher", inputs_[i].name},
                    {"offset", offsets_[i]},
                    {"shape", segment_shape(i)},
                    {"source_shape", inputs_[i].shape},
                    {"source_dtype", dtype_name(inputs_[i].dtype)},
                    {"norm", norm_mode_name(inputs_[i].norm)}});
  }
  return {{"kind", "fused"},
          {"version", 1},
          {"dtype", dtype_name(out_dtype_)},
          {"elements", total_},
          {"grid", {grid_h_, grid_w_}},
          {"resample", "bilinear, align_corners=false"},
          {"momentum", momentum_},
          {"eps", eps_},
          {"segments", segs},
          {"mask", {{"offset", mask_offset_}, {"length", inputs_.size()}}}};
}

FusionLayout FusionLayout::from_json(const nlohmann::json& j) {
  auto bad = [](const std::string& key, const std::string& why) { return ValidationError("fused layout: '" + key + "' " + why); };
  if (!j.is_object()) throw ValidationError("fused layout: expected a JSON object, got " + j.dump().substr(0, 80));
  auto field = [&](const nlohmann::json& o, const std::string& key, const std::string& where) -> const nlohmann::json& {
    auto it = o.find(key);
    if (it == o.end()) throw bad(where + key, "is missing");
    return *it;
  };
  try {
    if (field(j, "kind", "") != "fused") throw bad("kind", "is not \"fused\"");
    if (field(j, "version", "") != 1) throw bad("version", "is not 1 (a layout of another version of DirectPort)");
    const auto& grid = field(j, "grid", "");
    if (!grid.is_array() || grid.size() != 2) throw bad("grid", "is not [H, W]");
    std::vector<FusionInput> inputs;
    const auto& segs = field(j, "segments", "");
    if (!segs.is_array()) throw bad("segments", "is not an array");
    for (std::size_t i = 0; i < segs.size(); ++i) {
      const std::string at = "segments[" + std::to_string(i) + "].";
      const auto& sg = segs[i];
      if (!sg.is_object()) throw bad(at, "is not an object");
      FusionInput in;
      in.name = field(sg, "teacher", at).get<std::string>();
      in.dtype = parse_dtype(field(sg, "source_dtype", at).get<std::string>());
      in.shape = field(sg, "source_shape", at).get<std::vector<std::int64_t>>();
      in.norm = parse_norm_mode(field(sg, "norm", at).get<std::string>());
      inputs.push_back(std::move(in));
    }
    FusionLayout L(std::move(inputs), grid[0].get<std::int64_t>(), grid[1].get<std::int64_t>(),
                   parse_dtype(field(j, "dtype", "").get<std::string>()), field(j, "momentum", "").get<double>(),
                   field(j, "eps", "").get<double>());
    // The offsets and shapes it states must be the ones it implies.
    if (field(j, "elements", "").get<std::size_t>() != L.total_elements()) throw bad("elements", "disagrees with the segments");
    for (std::size_t i = 0; i < L.teachers(); ++i) {
      const std::string at = "segments[" + std::to_string(i) + "].";
      if (field(segs[i], "offset", at).get<std::size_t>() != L.offset(i)) throw bad(at + "offset", "disagrees with the segments before it");
      if (field(segs[i], "shape", at).get<std::vector<std::int64_t>>() != L.segment_shape(i)) {
        throw bad(at + "shape", "disagrees with the grid and the source shape");
      }
    }
    const auto& mask = field(j, "mask", "");
    if (field(mask, "offset", "mask.").get<std::size_t>() != L.mask_offset() ||
        field(mask, "length", "mask.").get<std::size_t>() != L.teachers()) {
      throw bad("mask", "disagrees with the segments");
    }
    return L;
  } catch (const nlohmann::json::exception& e) {
    throw ValidationError(std::string("fused layout: a field has the wrong type: ") + e.what());
  }
}

// ---------------------------------------------------------------------------------------------

FusionCpu::FusionCpu(FusionLayout layout) : layout_(std::move(layout)) {
  for (std::size_t i = 0; i < layout_.teachers(); ++i) {
    auto c = static_cast<std::size_t>(layout_.inputs()[i].channels());
    stats_.push_back({std::vector<double>(c, 0.0), std::vector<double>(c, 0.0), 0});
  }
}

namespace {

float load(const void* p, DType t, std::size_t i) {
  switch (t) {
    case DType::f16: return half_to_float(static_cast<const std::uint16_t*>(p)[i]);
    case DType::bf16: return bf16_to_float(static_cast<const std::uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

void store(void* p, DType t, std::size_t i, float v) {
  switch (t) {
    case DType::f16: static_cast<std::uint16_t*>(p)[i] = float_to_half(v); break;
    case DType::bf16: static_cast<std::uint16_t*>(p)[i] = float_to_bf16(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

// Per-channel (mean, scale) from running statistics, in float as the kernel uses them.
void norm_params(const RunningStats& s, NormMode mode, double eps, std::vector<float>& mean, std::vector<float>& scale) {
  const std::size_t C = s.m1.size();
  mean.assign(C, 0.0f);
  scale.assign(C, 1.0f);
  if (mode == NormMode::none) return;
  double var_sum = 0.0;
  for (std::size_t c = 0; c < C; ++c) var_sum += s.var(c);
  for (std::size_t c = 0; c < C; ++c) {
    mean[c] = static_cast<float>(s.m1[c]);
    const double v = mode == NormMode::channel ? s.var(c) : var_sum / static_cast<double>(C);
    scale[c] = static_cast<float>(1.0 / std::sqrt(v + eps));
  }
}

}  // namespace

void FusionCpu::fuse(const std::vector<const void*>& inputs, void* out) {
  const auto& L = layout_;
  if (inputs.size() != L.teachers()) {
    throw PreconditionError("fuse() got " + std::to_string(inputs.size()) + " inputs for " +
                            std::to_string(L.teachers()) + " teachers");
  }
  const auto Hg = L.grid_h(), Wg = L.grid_w();
  std::vector<float> mean, scale;
  for (std::size_t i = 0; i < L.teachers(); ++i) {
    const auto& in = L.inputs()[i];
    const std::size_t n = L.segment_elements(i);
    const std::size_t base = L.offset(i);
    if (!inputs[i]) {
      for (std::size_t k = 0; k < n; ++k) store(out, L.out_dtype(), base + k, 0.0f);
      store(out, L.out_dtype(), L.mask_offset() + i, 0.0f);
      continue;
    }
    store(out, L.out_dtype(), L.mask_offset() + i, 1.0f);
    // The segment's values before standardisation.
    scratch_.resize(n);
    const std::size_t C = static_cast<std::size_t>(in.channels());
    if (in.spatial()) {
      const auto H = in.shape[1], W = in.shape[2];
      const Resample ry = make_resample(H, Hg), rx = make_resample(W, Wg);
      for (std::size_t c = 0; c < C; ++c) {
        const std::size_t plane = c * static_cast<std::size_t>(H * W);
        for (std::int64_t y = 0; y < Hg; ++y) {
          const Tap ty = tap(ry, y, H);
          for (std::int64_t x = 0; x < Wg; ++x) {
            const Tap tx = tap(rx, x, W);
            auto at = [&](std::int64_t yy, std::int64_t xx) {
              return load(inputs[i], in.dtype, plane + static_cast<std::size_t>(yy * W + xx));
            };
            scratch_[(c * Hg + y) * Wg + x] =
                bilinear(at(ty.i0, tx.i0), at(ty.i0, tx.i1), at(ty.i1, tx.i0), at(ty.i1, tx.i1), ty, tx);
          }
        }
      }
    } else {
      for (std::size_t c = 0; c < C; ++c) scratch_[c] = load(inputs[i], in.dtype, c);
    }
    // This frame's moments per channel, in float64.
    const std::size_t per = in.spatial() ? static_cast<std::size_t>(Hg * Wg) : 1;
    std::vector<double> e1(C, 0.0), e2(C, 0.0);
    for (std::size_t c = 0; c < C; ++c) {
      double s1 = 0, s2 = 0;
      for (std::size_t k = 0; k < per; ++k) {
        const double v = scratch_[c * per + k];
        s1 += v;
        s2 += v * v;
      }
      e1[c] = s1 / static_cast<double>(per);
      e2[c] = s2 / static_cast<double>(per);
    }
    auto& st = stats_[i];
    auto update = [&] {
      for (std::size_t c = 0; c < C; ++c) {
        st.m1[c] = st.frames ? ema(st.m1[c], e1[c], L.momentum()) : e1[c];
        st.m2[c] = st.frames ? ema(st.m2[c], e2[c], L.momentum()) : e2[c];
      }
      ++st.frames;
    };
    const bool first = st.frames == 0;
    if (first) update();  // a teacher's first frame is standardised with its own statistics
    norm_params(st, in.norm, L.eps(), mean, scale);
    for (std::size_t c = 0; c < C; ++c) {
      for (std::size_t k = 0; k < per; ++k) {
        store(out, L.out_dtype(), base + c * per + k, standardise(scratch_[c * per + k], mean[c], scale[c]));
      }
    }
    if (!first) update();
  }
}

}  // namespace dp::kernels

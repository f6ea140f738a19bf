#include "directport/student/trainer.hpp"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <random>

#include "directport/core/error.hpp"

namespace dp::student {
namespace {

namespace F = torch::nn::functional;
using torch::Tensor;
using nlohmann::json;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A residual block whose output layer starts at zero: adding it leaves the function unchanged.
struct AdapterImpl : torch::nn::Module {
  AdapterImpl(std::int64_t f, bool spatial) : spatial(spatial) {
    if (spatial) {
      c1 = register_module("c1", torch::nn::Conv2d(torch::nn::Conv2dOptions(f, f, 1)));
      c2 = register_module("c2", torch::nn::Conv2d(torch::nn::Conv2dOptions(f, f, 1)));
      torch::NoGradGuard g;
      c2->weight.zero_();
      c2->bias.zero_();
    } else {
      l1 = register_module("l1", torch::nn::Linear(f, f));
      l2 = register_module("l2", torch::nn::Linear(f, f));
      torch::NoGradGuard g;
      l2->weight.zero_();
      l2->bias.zero_();
    }
  }
  Tensor forward(const Tensor& x) { return spatial ? x + c2(F::gelu(c1(x))) : x + l2(F::gelu(l1(x))); }
  bool spatial;
  torch::nn::Conv2d c1{nullptr}, c2{nullptr};
  torch::nn::Linear l1{nullptr}, l2{nullptr};
};
TORCH_MODULE(Adapter);

struct HeadImpl : torch::nn::Module {
  HeadImpl(std::int64_t f, const std::vector<std::int64_t>& segment) : features(f), shape(segment) {
    spatial = segment.size() == 3;
    adapters = register_module("adapters", torch::nn::ModuleList());
    if (spatial) {
      proj = register_module("proj", torch::nn::Conv2d(torch::nn::Conv2dOptions(f, segment[0], 1)));
    } else {
      lin = register_module("lin", torch::nn::Linear(f, segment[0]));
    }
  }
  Tensor forward(const Tensor& feat) {  // feat: [B, F, h, w]
    Tensor x = spatial ? F::interpolate(feat, F::InterpolateFuncOptions()
                                                  .size(std::vector<std::int64_t>{shape[1], shape[2]})
                                                  .mode(torch::kBilinear)
                                                  .align_corners(false))
                       : feat.mean({2, 3});
    for (const auto& m : *adapters) x = m->as<AdapterImpl>()->forward(x);
    return spatial ? proj(x) : lin(x);
  }
  std::vector<Tensor> grow(torch::Device device) {
    Adapter a(features, spatial);
    a->to(device);
    adapters->push_back(a);
    return a->parameters();
  }
  std::int64_t features;
  std::vector<std::int64_t> shape;
  bool spatial = true;
  torch::nn::ModuleList adapters{nullptr};
  torch::nn::Conv2d proj{nullptr};
  torch::nn::Linear lin{nullptr};
};
TORCH_MODULE(Head);

struct NetImpl : torch::nn::Module {
  NetImpl(std::int64_t in_channels, std::int64_t w, const kernels::FusionLayout& L) {
    using torch::nn::Conv2dOptions;
    encoder = register_module(
        "encoder", torch::nn::Sequential(torch::nn::Conv2d(Conv2dOptions(in_channels, w, 3).stride(2).padding(1)),
                                         torch::nn::GELU(),
                                         torch::nn::Conv2d(Conv2dOptions(w, 2 * w, 3).stride(2).padding(1)),
                                         torch::nn::GELU(), torch::nn::Conv2d(Conv2dOptions(2 * w, 2 * w, 3).padding(1)),
                                         torch::nn::GELU()));
    heads = register_module("heads", torch::nn::ModuleList());
    for (std::size_t i = 0; i < L.teachers(); ++i) heads->push_back(Head(2 * w, L.segment_shape(i)));
  }
  std::vector<Tensor> forward(const Tensor& x) {
    Tensor feat = encoder->forward(x);
    std::vector<Tensor> out;
    for (const auto& h : *heads) out.push_back(h->as<HeadImpl>()->forward(feat));
    return out;
  }
  HeadImpl& head(std::size_t i) { return *(*heads)[i]->as<HeadImpl>(); }
  torch::nn::Sequential encoder{nullptr};
  torch::nn::ModuleList heads{nullptr};
};
TORCH_MODULE(Net);

void write_atomically(const std::string& path, const std::function<void(const std::string&)>& write) {
  const std::string tmp = path + ".tmp";
  write(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw SystemError("renaming " + tmp + " to " + path, errno);
}

}  // namespace

struct Trainer::Impl {
  Impl(const kernels::FusionLayout& L, std::vector<std::int64_t> in_shape, TrainerOptions o)
      : input_shape(std::move(in_shape)), opts(std::move(o)), rng(opts.seed) {
    torch::manual_seed(opts.seed);
    net = Net(input_shape[0], opts.width, L);
    net->to(opts.device);
    optimizer = std::make_unique<torch::optim::Adam>(net->parameters(), torch::optim::AdamOptions(opts.lr));
    const std::size_t n = L.teachers();
    weights.resize(n, 1.0);
    for (std::size_t i = 0; i < n; ++i) {
      auto it = opts.weights.find(L.inputs()[i].name);
      if (it != opts.weights.end()) weights[i] = it->second;
    }
    growth.assign(n, 0);
    ema.assign(n, kNaN);
    best.assign(n, kNaN);
    since.assign(n, 0);
  }

  void grow(std::size_t i) {
    auto params = net->head(i).grow(opts.device);
    optimizer->add_param_group(torch::optim::OptimizerParamGroup(params, std::make_unique<torch::optim::AdamOptions>(opts.lr)));
    ++growth[i];
    growth_order.push_back(static_cast<int>(i));
  }

  std::vector<std::int64_t> input_shape;
  TrainerOptions opts;
  Net net{nullptr};
  std::unique_ptr<torch::optim::Adam> optimizer;
  std::vector<double> weights;
  std::vector<int> growth;
  std::vector<int> growth_order;  // heads in the order they grew (the optimizer's groups)
  std::vector<double> ema, best;
  std::vector<std::int64_t> since;
  std::uint64_t step = 0;
  std::int64_t last_growth = std::numeric_limits<std::int64_t>::min() / 2;
  std::vector<std::pair<Tensor, Tensor>> replay;  // (input, fused), float, on the device
  std::size_t replay_next = 0;
  std::mt19937_64 rng;
};

Trainer::Trainer(kernels::FusionLayout layout, std::vector<std::int64_t> input_shape, TrainerOptions opts)
    : layout_(std::move(layout)) {
  if (input_shape.size() != 3 || input_shape[0] < 1 || input_shape[1] < 4 || input_shape[2] < 4) {
    throw ValidationError("the student's input must be a [C, H, W] frame with H, W >= 4, got " + json(input_shape).dump());
  }
  if (opts.width < 1 || opts.width > 1024) throw ValidationError("the student's width must be 1..1024, got " + std::to_string(opts.width));
  if (!(opts.lr > 0)) throw ValidationError("the learning rate must be positive");
  for (auto& [name, w] : opts.weights) {
    bool known = false;
    for (auto& in : layout_.inputs()) known = known || in.name == name;
    if (!known) throw ValidationError("weights." + name + ": no teacher of that name in the fused layout");
    if (!(w >= 0)) throw ValidationError("weights." + name + ": must be >= 0");
  }
  impl_ = std::make_unique<Impl>(layout_, std::move(input_shape), std::move(opts));
}

Trainer::~Trainer() = default;

std::uint64_t Trainer::steps() const { return impl_->step; }
std::vector<int> Trainer::growth() const { return impl_->growth; }
std::vector<double> Trainer::error_ema() const { return impl_->ema; }

StepReport Trainer::step(const Tensor& input, const Tensor& fused) {
  auto& I = *impl_;
  const auto& L = layout_;
  const auto dev = I.opts.device;
  DP_EXPECTS(input.dim() == 3 && input.sizes().vec() == I.input_shape, "step() with an input of another shape");
  DP_EXPECTS(fused.dim() == 1 && fused.size(0) == static_cast<std::int64_t>(L.total_elements()),
             "step() with a fused tensor of another size");
  Tensor x = input.to(dev, torch::kFloat32).unsqueeze(0);
  Tensor y = fused.to(dev, torch::kFloat32).unsqueeze(0);
  const std::size_t batch_replay = I.replay.empty() ? 0 : static_cast<std::size_t>(I.opts.replay_batch);
  if (batch_replay) {
    std::vector<Tensor> xs{x}, ys{y};
    for (std::size_t k = 0; k < batch_replay; ++k) {
      const auto& r = I.replay[I.rng() % I.replay.size()];
      xs.push_back(r.first.unsqueeze(0));
      ys.push_back(r.second.unsqueeze(0));
    }
    x = torch::cat(xs);
    y = torch::cat(ys);
  }
  const auto B = x.size(0);
  const auto N = static_cast<std::int64_t>(L.teachers());
  Tensor mask = y.narrow(1, static_cast<std::int64_t>(L.mask_offset()), N);  // [B, N]
  auto preds = I.net->forward(x);
  Tensor total = torch::zeros({}, x.options());
  std::vector<Tensor> current;  // per teacher: sample 0's loss
  for (std::int64_t i = 0; i < N; ++i) {
    const auto seg = L.segment_shape(static_cast<std::size_t>(i));
    std::vector<std::int64_t> shape{B};
    shape.insert(shape.end(), seg.begin(), seg.end());
    Tensor t = y.narrow(1, static_cast<std::int64_t>(L.offset(static_cast<std::size_t>(i))),
                        static_cast<std::int64_t>(L.segment_elements(static_cast<std::size_t>(i))))
                   .view(shape);
    const Tensor& p = preds[static_cast<std::size_t>(i)];
    // Cosine over one channel is only the sign: single-channel segments take smooth-L1 alone.
    const bool use_cos = seg[0] >= 2;
    Tensor cos = use_cos ? 1 - F::cosine_similarity(p, t, F::CosineSimilarityFuncOptions().dim(1))
                         : torch::zeros(seg.size() == 3 ? std::vector<std::int64_t>{B, seg[1], seg[2]} : std::vector<std::int64_t>{B},
                                        x.options());
    Tensor l1 = F::smooth_l1_loss(p, t, F::SmoothL1LossFuncOptions().reduction(torch::kNone));
    if (seg.size() == 3) {
      cos = cos.mean({1, 2});
      l1 = l1.mean({1, 2, 3});
    } else {
      l1 = l1.mean(1);
    }
    Tensor per_sample = I.opts.cos_weight * cos + I.opts.l1_weight * l1;  // [B]
    Tensor m = mask.select(1, i);
    total = total + I.weights[static_cast<std::size_t>(i)] * (per_sample * m).sum() / static_cast<double>(B);
    current.push_back(torch::where(m[0] > 0.5, per_sample[0].detach(), torch::full({}, kNaN, x.options())));
  }
  I.optimizer->zero_grad();
  total.backward();
  I.optimizer->step();
  ++I.step;

  StepReport r;
  r.step = I.step;
  Tensor cur = torch::stack(current).to(torch::kCPU, torch::kFloat64);  // one synchronisation
  r.loss = total.item<double>();
  auto* c = cur.data_ptr<double>();
  for (std::int64_t i = 0; i < N; ++i) r.teacher_loss.push_back(c[i]);

  // Error estimates, plateaus, growth.
  std::optional<std::size_t> candidate;
  for (std::size_t i = 0; i < static_cast<std::size_t>(N); ++i) {
    const double e = r.teacher_loss[i];
    if (std::isnan(e)) continue;
    I.ema[i] = std::isnan(I.ema[i]) ? e : (1 - I.opts.ema) * I.ema[i] + I.opts.ema * e;
    if (std::isnan(I.best[i]) || I.ema[i] < I.best[i] * 0.99) {
      I.best[i] = I.ema[i];
      I.since[i] = 0;
    } else {
      ++I.since[i];
    }
    if (I.since[i] >= I.opts.plateau_steps && I.ema[i] > I.opts.grow_threshold && I.growth[i] < I.opts.max_growth &&
        (!candidate || I.ema[i] > I.ema[*candidate])) {
      candidate = i;
    }
  }
  if (candidate && static_cast<std::int64_t>(I.step) - I.last_growth >= I.opts.grow_every) {
    I.grow(*candidate);
    I.last_growth = static_cast<std::int64_t>(I.step);
    I.since[*candidate] = 0;
    I.best[*candidate] = I.ema[*candidate];
    r.grew = *candidate;
  }
  if (I.opts.replay > 0) {
    auto pair = std::make_pair(input.to(dev, torch::kFloat32).clone(), fused.to(dev, torch::kFloat32).clone());
    if (static_cast<std::int64_t>(I.replay.size()) < I.opts.replay) {
      I.replay.push_back(std::move(pair));
    } else {
      I.replay[I.replay_next] = std::move(pair);
      I.replay_next = (I.replay_next + 1) % I.replay.size();
    }
  }
  return r;
}

Tensor Trainer::predict_flat(const Tensor& input) {
  auto& I = *impl_;
  torch::NoGradGuard g;
  auto preds = I.net->forward(input.to(I.opts.device, torch::kFloat32).unsqueeze(0));
  std::vector<Tensor> parts;
  for (auto& p : preds) parts.push_back(p.flatten());
  parts.push_back(torch::ones({static_cast<std::int64_t>(layout_.teachers())}, parts.front().options()));
  const auto out = layout_.out_dtype() == DType::f16 ? torch::kFloat16 : layout_.out_dtype() == DType::bf16 ? torch::kBFloat16 : torch::kFloat32;
  return torch::cat(parts).to(out);
}

json Trainer::status() const {
  const auto& I = *impl_;
  json per = json::array();
  for (std::size_t i = 0; i < layout_.teachers(); ++i) {
    per.push_back({{"teacher", layout_.inputs()[i].name},
                   {"weight", I.weights[i]},
                   {"error_ema", std::isnan(I.ema[i]) ? json() : json(I.ema[i])},
                   {"adapters", I.growth[i]}});
  }
  return {{"step", I.step}, {"teachers", per}};
}

void Trainer::save(const std::string& prefix) const {
  const auto& I = *impl_;
  write_atomically(prefix + ".model.pt", [&](const std::string& p) { torch::save(I.net, p); });
  write_atomically(prefix + ".optim.pt", [&](const std::string& p) { torch::save(*I.optimizer, p); });
  json meta{{"version", 1},
            {"step", I.step},
            {"layout", layout_.to_json()},
            {"input_shape", I.input_shape},
            {"width", I.opts.width},
            {"growth_order", I.growth_order},
            {"last_growth", I.last_growth},
            {"ema", I.ema},
            {"best", I.best},
            {"since", I.since}};
  // NaN is not JSON: before a teacher's first sample its estimates are null.
  for (const char* k : {"ema", "best"}) {
    for (std::size_t i = 0; i < meta[k].size(); ++i) {
      if (std::isnan(meta[k][i].get<double>())) meta[k][i] = nullptr;
    }
  }
  write_atomically(prefix + ".json", [&](const std::string& p) {
    std::ofstream f(p);
    f << meta.dump(2) << "\n";
    if (!f) throw SystemError("writing " + p, errno);
  });
}

bool Trainer::load(const std::string& prefix) {
  auto& I = *impl_;
  std::ifstream f(prefix + ".json");
  if (!f) return false;
  const std::string where = "checkpoint " + prefix + ".json: ";
  json meta = json::parse(f, nullptr, false);
  if (meta.is_discarded() || !meta.is_object()) throw ValidationError(where + "not a JSON object (a torn or foreign file)");
  try {
    if (meta.at("version") != 1) throw ValidationError(where + "version " + meta.at("version").dump() + ", expected 1");
    if (meta.at("layout") != layout_.to_json()) {
      throw ValidationError(where + "made for another fused layout (other teachers, shapes or grid); remove it or point "
                                    "'checkpoint' elsewhere");
    }
    if (meta.at("input_shape").get<std::vector<std::int64_t>>() != I.input_shape) {
      throw ValidationError(where + "made for input " + meta["input_shape"].dump() + ", not " + json(I.input_shape).dump());
    }
    if (meta.at("width").get<std::int64_t>() != I.opts.width) {
      throw ValidationError(where + "made with width " + meta["width"].dump() + ", not " + std::to_string(I.opts.width));
    }
    // Rebuild the grown adapters in their order (the optimizer's groups follow it), then load.
    for (int h : meta.at("growth_order").get<std::vector<int>>()) {
      if (h < 0 || h >= static_cast<int>(layout_.teachers())) throw ValidationError(where + "growth_order names head " + std::to_string(h));
      I.grow(static_cast<std::size_t>(h));
    }
    torch::load(I.net, prefix + ".model.pt");
    torch::load(*I.optimizer, prefix + ".optim.pt");
    I.net->to(I.opts.device);
    I.step = meta.at("step").get<std::uint64_t>();
    I.last_growth = meta.at("last_growth").get<std::int64_t>();
    auto vec = [&](const char* k, std::vector<double>& out) {
      const auto& a = meta.at(k);
      for (std::size_t i = 0; i < out.size() && i < a.size(); ++i) out[i] = a[i].is_null() ? kNaN : a[i].get<double>();
    };
    vec("ema", I.ema);
    vec("best", I.best);
    I.since = meta.at("since").get<std::vector<std::int64_t>>();
    I.since.resize(layout_.teachers(), 0);
  } catch (const json::exception& e) {
    throw ValidationError(where + "a field is missing or of the wrong type: " + e.what());
  } catch (const c10::Error& e) {
    throw ValidationError(where + "its tensors do not load (" + std::string(e.what_without_backtrace()) + ")");
  }
  return true;
}

}  // namespace dp::student

// The `torchscript` teacher: any TorchScript model (`.pt`, `.jit`) loaded through LibTorch, its
// input preprocessing and its output spec declared in the node's JSON params (docs/teachers.md).
//
// Per input frame: the frame is wrapped in place (torch::from_blob, never written), converted to
// float, preprocessed (crop_last, resize, scale and offset, per-channel mean and std, a batch
// dimension), passed to forward() with the declared extra arguments, and the result is checked
// against the declared output (element count; every value finite), cast to the declared dtype and
// published with the input's frame_id and source time. On the GPU the module and the frames live
// on the device and torch runs on the stream the fence waits are enqueued on.
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdio>
#include <sys/stat.h>

#include <iostream>
#include <thread>

#include "directport/core/error.hpp"
#include "directport/core/runtime.hpp"
#include "directport/platform/process.hpp"
#include "directport/teachers/torchscript.hpp"
#if DIRECTPORT_HAS_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "directport/cuda/driver.hpp"
#endif

namespace dp::teachers {
namespace {

using nlohmann::json;

torch::ScalarType scalar_type(DType t, const std::string& who) {
  switch (t) {
    case DType::f32: return torch::kFloat32;
    case DType::f16: return torch::kFloat16;
    case DType::bf16: return torch::kBFloat16;
    case DType::u8: return torch::kUInt8;
    case DType::i8: return torch::kInt8;
    case DType::i16: return torch::kInt16;
    case DType::i32: return torch::kInt32;
    case DType::i64: return torch::kInt64;
    case DType::f64: return torch::kFloat64;
    default: throw ValidationError(who + ": dtype " + dtype_name(t) + " has no torch equivalent here");
  }
}

}  // namespace

torch::Tensor preprocess(const TorchScriptSpec& s, torch::Tensor x) {
  x = x.to(torch::kFloat32);
  if (s.crop_last > 0) {
    const auto n = x.size(-1);
    if (n < s.crop_last) {
      throw ValidationError("preprocess.crop_last: " + std::to_string(s.crop_last) + " but the input's last dimension has " +
                            std::to_string(n));
    }
    x = x.narrow(-1, n - s.crop_last, s.crop_last);
  }
  if (s.resize) {
    if (x.dim() != 3) throw ValidationError("preprocess.resize: needs a [C, H, W] input");
    x = torch::nn::functional::interpolate(x.unsqueeze(0), torch::nn::functional::InterpolateFuncOptions()
                                                               .size(std::vector<std::int64_t>{s.resize->first, s.resize->second})
                                                               .mode(torch::kBilinear)
                                                               .align_corners(false))
            .squeeze(0);
  }
  if (s.scale != 1.0 || s.offset != 0.0) x = x * s.scale + s.offset;
  if (!s.mean.empty() || !s.std.empty()) {
    const auto C = static_cast<std::int64_t>(s.mean.empty() ? s.std.size() : s.mean.size());
    if (x.dim() < 1 || x.size(0) != C) {
      throw ValidationError("preprocess.mean/std: " + std::to_string(C) + " channels but the input has " +
                            (x.dim() ? std::to_string(x.size(0)) : std::string("none")));
    }
    std::vector<std::int64_t> shape(static_cast<std::size_t>(x.dim()), 1);
    shape[0] = C;
    auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(x.device());
    if (!s.mean.empty()) x = x - torch::tensor(s.mean, torch::TensorOptions().dtype(torch::kFloat64)).to(opts).view(shape);
    if (!s.std.empty()) x = x / torch::tensor(s.std, torch::TensorOptions().dtype(torch::kFloat64)).to(opts).view(shape);
  }
  if (s.batch) x = x.unsqueeze(0);
  return x;
}

namespace {

int run_torchscript(NodeContext& ctx) {
  const auto& p = ctx.params();
  const auto spec = parse_torchscript_params(p);
  const auto from = p["from"].get<std::string>();
  Node& node = ctx.node();
  // stat(2), not std::filesystem: libtorch.so exports std::filesystem symbols of its own, which
  // the dynamic linker may bind our calls to.
  struct stat st {};
  if (::stat(spec.model.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    throw ValidationError("param 'model': " + spec.model +
                          " is not there (a real-weights model comes from scripts/fetch-models; see docs/teachers.md)");
  }
  SubscribeOptions so;
  so.connect_timeout = std::chrono::milliseconds(500);
  so.wait_for_producer = std::chrono::seconds(30);  // ended early by SIGTERM
  std::optional<Subscriber> sub;
  try {
    sub.emplace(node.subscribe(from, so));
  } catch (const std::exception& e) {
    if (NodeContext::stop_requested()) return 0;
    throw Error("param 'from': " + from + ": " + e.what());
  }
  const auto in_spec = sub->spec();
  const auto in_type = scalar_type(in_spec.dtype, "param 'from': " + from);
  const bool on_gpu = in_spec.memory != MemoryKind::host;
  torch::Device device(torch::kCPU);
  GpuStream gs = nullptr;
#if DIRECTPORT_HAS_CUDA
  cudaStream_t cuda_stream = nullptr;
  std::optional<c10::cuda::CUDAStreamGuard> guard;
  if (on_gpu) {
    int dev = 0;
    DP_CUDA_CHECK(cudaGetDevice(&dev));
    DP_CUDA_CHECK(cudaStreamCreateWithFlags(&cuda_stream, cudaStreamNonBlocking));
    gs = reinterpret_cast<GpuStream>(cuda_stream);
    device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(dev));
    guard.emplace(c10::cuda::getStreamFromExternal(cuda_stream, static_cast<c10::DeviceIndex>(dev)));
  }
#else
  if (on_gpu) throw Error("param 'from': " + from + " is on the GPU but this build has no CUDA");
#endif
  if (p["threads"].get<int>() > 0) torch::set_num_threads(p["threads"].get<int>());
  torch::jit::Module module;
  try {
    module = torch::jit::load(spec.model, device);
  } catch (const c10::Error& e) {
    throw ValidationError("param 'model': " + spec.model + " does not load as TorchScript: " + e.what_without_backtrace());
  }
  module.eval();
  torch::NoGradGuard no_grad;

  StreamSpec out;
  out.name = p["stream"].get<std::string>();
  out.dtype = spec.output_dtype;
  out.shape = spec.output_shape;
  out.slots = 3;
  out.memory = on_gpu ? MemoryKind::cuda_vmm : MemoryKind::host;
  out.fence = on_gpu ? FenceKind::cuda_memop : FenceKind::host_futex;
  out.validate();
  auto& pub = node.advertise(out);
  node.set_running();
  std::fprintf(stderr, "teacher %s: %s on %s -> %s/%s %s %s (%s)\n", ctx.name().c_str(), spec.model.c_str(), from.c_str(),
               ctx.name().c_str(), out.name.c_str(), dtype_name(out.dtype), json(out.shape).dump().c_str(),
               on_gpu ? "GPU" : "CPU");
  const auto out_type = scalar_type(out.dtype, "output.dtype");
  const auto out_elements = static_cast<std::int64_t>(out.frame_bytes() / dtype_size(out.dtype));
  std::uint64_t frames = 0;
  const auto limit = p["frames"].get<std::uint64_t>();
  auto opts = torch::TensorOptions().dtype(in_type).device(device);
  while (!NodeContext::stop_requested() && (limit == 0 || frames < limit)) {
    auto f = sub->next(std::chrono::milliseconds(100), gs);
    if (!f) continue;
    if (sub->spec().shape != in_spec.shape || sub->spec().dtype != in_spec.dtype) {
      throw ValidationError("param 'from': " + from + " came back as " + dtype_name(sub->spec().dtype) +
                            json(sub->spec().shape).dump() + "; this teacher was started on " + dtype_name(in_spec.dtype) +
                            json(in_spec.shape).dump());
    }
    torch::Tensor x = torch::from_blob(const_cast<void*>(f->data), in_spec.shape, opts);
    std::vector<torch::jit::IValue> inputs{preprocess(spec, x)};
    for (auto& a : spec.args) {
      if (a.is_number_integer()) inputs.emplace_back(a.get<std::int64_t>());
      else inputs.emplace_back(a.get<double>());
    }
    torch::jit::IValue r;
    try {
      r = module.forward(inputs);
    } catch (const c10::Error& e) {
      throw ValidationError("model " + spec.model + " failed on a frame of " + from + ": " + e.what_without_backtrace());
    }
    if (r.isTuple()) r = r.toTuple()->elements().at(0);  // the first output, by convention
    if (!r.isTensor()) throw ValidationError("model " + spec.model + " returned " + r.tagKind() + ", not a tensor");
    torch::Tensor y = r.toTensor();
    if (y.numel() != out_elements) {
      throw ValidationError("model " + spec.model + " returned " + json(y.sizes().vec()).dump() + " (" +
                            std::to_string(y.numel()) + " elements); param 'output.shape' declares " +
                            json(out.shape).dump() + " (" + std::to_string(out_elements) + ")");
    }
    if (!y.is_floating_point()) {
      throw ValidationError("model " + spec.model + " returned " + std::string(c10::toString(y.scalar_type())) +
                            "; teachers publish floating-point outputs");
    }
    if (auto lease = pub.acquire(gs)) {
      torch::from_blob(lease->data, out.shape, torch::TensorOptions().dtype(out_type).device(device))
          .copy_(y.reshape(out.shape));
      pub.publish(*lease, {f->frame_id, f->t_source_ns, 0}, gs);
    }
    sub->release(*f, gs);
    ++frames;
  }
#if DIRECTPORT_HAS_CUDA
  if (cuda_stream) cudaStreamSynchronize(cuda_stream);
  guard.reset();
  if (cuda_stream) cudaStreamDestroy(cuda_stream);
#endif
  std::cout << json{{"node", ctx.name()}, {"type", "torchscript"}, {"model", spec.model}, {"frames", frames}}.dump()
            << std::endl;
  return 0;
}

}  // namespace

void register_torchscript_teacher(NodeRegistry& r) {
  NodeType t = torchscript_node_type();
  t.run = run_torchscript;
  r.add(std::move(t));
}

}  // namespace dp::teachers

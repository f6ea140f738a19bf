// dp_bench_fusion: the fusion kernel's achieved bandwidth against the card's copy bandwidth and
// against the same fusion in PyTorch (eager, and torch.compile where it runs), in one run on
// one card.
//
//   dp_bench_fusion [--workload distill|maps|all] [--iters N] [--json FILE] [--python python3]
//                   [--no-torch] [--no-compile]
//   dp_bench_fusion --plan [--blocks N] [--fixed F] [--workload ...] [--json FILE]
//
// --plan needs no GPU: for each workload, the kernel's work units under the even cut of a plane
// and under kernel 6's (both, whatever DIRECTPORT_FUSION_EVEN says), and how N resident blocks
// taking them as the kernel hands them out would share them (kernels::plan::estimate_balance():
// the longest block's work and the mean, a unit costing its elements plus F; compare the longest
// between plans, since more units also raise the mean). DIRECTPORT_FUSION_UNIT and
// DIRECTPORT_FUSION_GROUP apply.
//
// Bandwidth of the fusion = (bytes of every input + bytes of the fused tensor) / median time of
// one fused frame: the least traffic the job needs. Copy bandwidth = 2 x bytes / median time of
// a device-to-device cudaMemcpyAsync of a 256 MiB buffer. Times are CUDA-event medians. For
// scale, each workload also times one copy that moves as many bytes as the fusion, and the frame's
// traffic alone: one launch that reads the inputs and writes the output, nothing else.
#include <cuda_runtime_api.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common.hpp"
#include "directport/core/error.hpp"
#include "directport/cuda/driver.hpp"
#include "directport/kernels/fusion.hpp"
#include "directport/kernels/fusion_plan.hpp"
#include "directport/kernels/half.hpp"
#include "directport/kernels/traffic.hpp"
#include "directport/platform/child.hpp"

namespace {

using dp::DType;
using dp::kernels::FusionInput;
using dp::kernels::FusionLayout;
using dp::kernels::NormMode;
using nlohmann::json;

struct Workload {
  std::string name;
  std::vector<FusionInput> teachers;
  std::int64_t h, w;
  DType out;
};

std::vector<Workload> workloads() {
  return {
      // What the distillation graph fuses: patch features (upsampled 14x), an edge map at the grid's
      // size, a depth map at twice the size, and two global vectors.
      {"distill",
       {{"vision", DType::f16, {384, 16, 16}, NormMode::channel},
        {"edges", DType::f32, {8, 224, 224}, NormMode::channel},
        {"depth", DType::bf16, {1, 448, 448}, NormMode::channel},
        {"audio", DType::f16, {512}, NormMode::isotropic},
        {"text", DType::f32, {384}, NormMode::isotropic}},
       224, 224, DType::bf16},
      // Dense maps at three resolutions: same size, 2x down, 2x up.
      {"maps",
       {{"same", DType::f16, {64, 256, 256}, NormMode::channel},
        {"down", DType::bf16, {32, 512, 512}, NormMode::channel},
        {"up", DType::f32, {16, 128, 128}, NormMode::isotropic}},
       256, 256, DType::f16},
  };
}

struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(std::size_t n) { DP_CUDA_CHECK(cudaMalloc(&p, n)); }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

template <typename F>
double median_ms(int iters, cudaStream_t s, F&& body) {
  cudaEvent_t a, b;
  DP_CUDA_CHECK(cudaEventCreate(&a));
  DP_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < std::max(3, iters / 10); ++i) body();  // warm-up
  DP_CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    DP_CUDA_CHECK(cudaEventRecord(a, s));
    body();
    DP_CUDA_CHECK(cudaEventRecord(b, s));
    DP_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    DP_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

json torch_peer(const std::string& python, const FusionLayout& L, int iters, bool compile) {
  json teachers = json::array();
  for (auto& t : L.inputs()) teachers.push_back({{"shape", t.shape}, {"dtype", dp::dtype_name(t.dtype)}});
  json spec{{"grid", {L.grid_h(), L.grid_w()}}, {"dtype", dp::dtype_name(L.out_dtype())}, {"momentum", L.momentum()},
            {"eps", L.eps()}, {"teachers", teachers}};
  std::vector<std::string> args{python, DP_BENCH_DIR "/fusion_torch.py", "--spec", spec.dump(), "--iters",
                                std::to_string(iters)};
  if (!compile) args.push_back("--no-compile");
  try {
    auto c = dp::platform::Child::spawn(args, {true, false});
    auto rc = c.wait_for(std::chrono::minutes(5));
    if (!rc) {
      c.signal(9);
      return {{"error", "the PyTorch peer did not finish within 5 minutes"}};
    }
    auto out = c.output();
    auto nl = out.find_last_of('{');
    auto j = json::parse(nl == std::string::npos ? out : out.substr(nl), nullptr, false);
    if (j.is_discarded()) return {{"error", "the PyTorch peer printed no JSON (exit " + std::to_string(*rc) + "): " + out}};
    return j;
  } catch (const std::exception& e) {
    return {{"error", std::string("could not run ") + python + ": " + e.what()}};
  }
}

// --plan: the work units of each workload under both cuts of a plane, and their balance.
int plan_only(const std::string& which, unsigned blocks, double fixed, const std::string& json_path) {
  namespace plan = dp::kernels::plan;
  const auto unit = plan::unit_elements_from_env();
  const int group = plan::unit_group_from_env();
  std::printf("work units of the fusion kernel (no GPU): %lld output elements a unit, %d channel(s), %u resident blocks, "
              "a fixed cost of %.0f elements a unit\n",
              static_cast<long long>(unit), group, blocks, fixed);
  std::printf("%-8s %-18s %7s %7s %12s %12s %13s\n", "workload", "cut of a plane", "units", "blocks", "longest",
              "mean", "longest/mean");
  json rows = json::array();
  for (auto& w : workloads()) {
    if (which != "all" && which != w.name) continue;
    const FusionLayout L(w.teachers, w.h, w.w, w.out, 0.01);
    for (bool even : {true, false}) {
      const auto b = plan::estimate_balance(plan::plan_fusion(L, unit, group, even), blocks, fixed);
      const char* cut = even ? "even" : "kernel 6 (EVEN=0)";
      std::printf("%-8s %-18s %7zu %7u %12.0f %12.0f %13.3f\n", w.name.c_str(), cut, b.units, b.blocks, b.longest, b.mean,
                  b.longest / b.mean);
      rows.push_back({{"workload", w.name}, {"even", even}, {"units", b.units}, {"blocks", b.blocks}, {"fixed", fixed},
                      {"longest", b.longest}, {"mean", b.mean}, {"longest_over_mean", b.longest / b.mean}});
    }
  }
  if (!json_path.empty()) {
    std::ofstream(json_path) << json{{"unit_elements", unit}, {"group", group}, {"plans", rows}}.dump(2) << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dp_bench_fusion: the fusion kernel against copy bandwidth and PyTorch, on one card"};
  std::string which = "all", json_path, python = "python3";
  int iters = 200;
  bool no_torch = false, no_compile = false;
  app.add_option("--workload", which, "distill | maps | all")->check(CLI::IsMember({"distill", "maps", "all"}));
  app.add_option("--iters", iters, "timed iterations per figure (median)")->check(CLI::Range(5, 100000));
  app.add_option("--json", json_path, "write the results here");
  app.add_option("--python", python, "python with torch, for the PyTorch peer");
  app.add_flag("--no-torch", no_torch, "skip the PyTorch peer");
  app.add_flag("--no-compile", no_compile, "skip torch.compile (eager only)");
  bool plan = false;
  unsigned blocks = 528;
  double fixed = 1500;
  auto* plan_flag = app.add_flag("--plan", plan,
                                 "no GPU: the work units of each workload under both cuts of a plane (whatever "
                                 "DIRECTPORT_FUSION_EVEN says), and how long the longest of --blocks blocks works");
  app.add_option("--blocks", blocks, "with --plan: resident blocks (default 528: 132 SMs x 4, an H100 or H200)")
      ->check(CLI::Range(1u, 1u << 20))
      ->needs(plan_flag);
  app.add_option("--fixed", fixed, "with --plan: a unit's fixed cost, in output elements (default 1500)")
      ->check(CLI::Range(0.0, 1e9))
      ->needs(plan_flag);
  if (auto rc = dp::bench::parse_args(app, argc, argv)) return *rc;
  try {
    if (plan) return plan_only(which, blocks, fixed, json_path);
    const auto& avail = dp::cuda::availability();
    if (!avail.usable) {
      std::fprintf(stderr, "dp_bench_fusion: no usable CUDA device: %s\n", avail.reason.c_str());
      return 2;
    }
    int dev = 0;
    cudaDeviceProp prop{};
    DP_CUDA_CHECK(cudaGetDevice(&dev));
    DP_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    cudaStream_t s;
    DP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

    // The card's copy bandwidth: device-to-device, 256 MiB.
    const std::size_t copy_bytes = std::size_t(256) << 20;
    DeviceBuffer ca(copy_bytes), cb(copy_bytes);
    const double copy_ms = median_ms(iters, s, [&] {
      DP_CUDA_CHECK(cudaMemcpyAsync(cb.p, ca.p, copy_bytes, cudaMemcpyDeviceToDevice, s));
    });
    const double copy_gbs = 2.0 * double(copy_bytes) / (copy_ms * 1e-3) / 1e9;
    std::printf("card: %s; copy bandwidth (D2D, 256 MiB): %.0f GB/s\n", prop.name, copy_gbs);

    json results{{"card", prop.name}, {"copy_gbs", copy_gbs}, {"iters", iters}, {"workloads", json::array()}};
    std::printf("%-8s %10s %10s %9s %8s %11s %8s %12s %8s\n", "workload", "MB moved", "fusion ms", "GB/s", "of copy",
                "torch eager", "ratio", "torch.compile", "ratio");
    for (auto& w : workloads()) {
      if (which != "all" && which != w.name) continue;
      FusionLayout L(w.teachers, w.h, w.w, w.out, 0.01);
      std::vector<std::unique_ptr<DeviceBuffer>> in;
      std::vector<const void*> ptrs;
      std::size_t bytes = L.total_bytes();
      std::mt19937 rng(1);
      std::normal_distribution<float> nd(0, 1);
      for (std::size_t i = 0; i < L.teachers(); ++i) {
        const auto n = L.input_bytes(i);
        bytes += n;
        in.push_back(std::make_unique<DeviceBuffer>(n));
        std::vector<std::uint8_t> host(n);
        const auto es = dp::dtype_size(L.inputs()[i].dtype);
        for (std::size_t k = 0; k < n / es; ++k) {
          const float v = nd(rng);
          if (es == 4) {
            std::memcpy(host.data() + 4 * k, &v, 4);
          } else {
            const std::uint16_t h = L.inputs()[i].dtype == DType::f16 ? dp::kernels::float_to_half(v) : dp::kernels::float_to_bf16(v);
            std::memcpy(host.data() + 2 * k, &h, 2);
          }
        }
        DP_CUDA_CHECK(cudaMemcpy(in.back()->p, host.data(), n, cudaMemcpyHostToDevice));
        ptrs.push_back(in.back()->p);
      }
      DeviceBuffer out(L.total_bytes());
      dp::kernels::FusionGpu fusion(L);
      const double ms = median_ms(iters, s, [&] { fusion.fuse(ptrs, out.p, reinterpret_cast<dp::GpuStream>(s)); });
      const double gbs = double(bytes) / (ms * 1e-3) / 1e9;
      // For scale: one device-to-device copy that moves as many bytes (half read, half written),
      // timed the same way. At this size a launch's fixed costs are part of either figure.
      const double same_ms = median_ms(iters, s, [&] {
        DP_CUDA_CHECK(cudaMemcpyAsync(cb.p, ca.p, std::min(copy_bytes, bytes / 2), cudaMemcpyDeviceToDevice, s));
      });
      // The floor: one launch that reads every input and writes the output once in 16-byte
      // accesses, nothing else (kernels/traffic.hpp), timed the same way.
      std::vector<dp::kernels::TrafficInput> traffic;
      for (std::size_t i = 0; i < L.teachers(); ++i) traffic.push_back({ptrs[i], L.input_bytes(i)});
      const double floor_ms = median_ms(iters, s, [&] {
        dp::kernels::traffic_floor_gpu(traffic, out.p, L.total_bytes(), reinterpret_cast<dp::GpuStream>(s));
      });
      // And the driver's memset of the output alone (writes only), to check the floor's kernel.
      const double memset_ms = median_ms(iters, s, [&] { DP_CUDA_CHECK(cudaMemsetAsync(out.p, 0, L.total_bytes(), s)); });
      json peer = no_torch ? json{{"error", "skipped (--no-torch)"}} : torch_peer(python, L, iters, !no_compile);
      auto fig = [&](const char* key) -> std::optional<double> {
        if (peer.contains(key) && peer[key].is_number()) return peer[key].get<double>();
        return std::nullopt;
      };
      auto eager = fig("eager_ms"), compiled = fig("compile_ms");
      auto cell = [](std::optional<double> v, int width) {
        char b[32];
        if (v) std::snprintf(b, sizeof b, "%*.3f", width, *v);
        else std::snprintf(b, sizeof b, "%*s", width, "-");
        return std::string(b);
      };
      auto ratio = [&](std::optional<double> v) { return v ? std::optional<double>(*v / ms) : std::nullopt; };
      std::printf("%-8s %10.1f %10.4f %9.0f %7.0f%% %11s %7sx %12s %7sx\n", w.name.c_str(), double(bytes) / 1e6, ms, gbs,
                  100.0 * gbs / copy_gbs, cell(eager, 11).c_str(), cell(ratio(eager), 7).c_str(),
                  cell(compiled, 12).c_str(), cell(ratio(compiled), 7).c_str());
      std::printf("  a copy moving the same %.1f MB: %.4f ms (%.0f GB/s)\n", double(bytes) / 1e6, same_ms,
                  double(bytes) / (same_ms * 1e-3) / 1e9);
      std::printf("  the frame's traffic alone (inputs read, output written, one launch): %.4f ms (%.0f GB/s, %.0f%% of copy)\n",
                  floor_ms, double(bytes) / (floor_ms * 1e-3) / 1e9, 100.0 * double(bytes) / (floor_ms * 1e-3) / 1e9 / copy_gbs);
      std::printf("  cudaMemsetAsync of the output alone (%.1f MB written): %.4f ms\n", double(L.total_bytes()) / 1e6, memset_ms);
      if (peer.contains("error")) std::printf("  PyTorch peer: %s\n", peer["error"].get<std::string>().c_str());
      if (peer.contains("compile_error")) std::printf("  torch.compile: %s\n", peer["compile_error"].get<std::string>().c_str());
      results["workloads"].push_back({{"name", w.name},
                                      {"layout", L.to_json()},
                                      {"bytes", bytes},
                                      {"fusion_ms", ms},
                                      {"fusion_gbs", gbs},
                                      {"of_copy", gbs / copy_gbs},
                                      {"copy_same_bytes_ms", same_ms},
                                      {"traffic_floor_ms", floor_ms},
                                      {"memset_output_ms", memset_ms},
                                      {"torch", peer},
                                      {"speedup_eager", eager ? json(*eager / ms) : json()},
                                      {"speedup_compile", compiled ? json(*compiled / ms) : json()}});
    }
    cudaStreamDestroy(s);
    if (!json_path.empty()) std::ofstream(json_path) << results.dump(2) << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dp_bench_fusion: %s\n", e.what());
    return 1;
  }
}

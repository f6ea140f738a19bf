// Built without CUDA: the GPU entry points say so.
#include "directport/core/error.hpp"
#include "directport/kernels/checksum.hpp"
#include "directport/kernels/frame_check.hpp"
#include "directport/kernels/fusion.hpp"
#include "directport/kernels/timing.hpp"
#include "directport/kernels/traffic.hpp"

namespace dp::kernels {
namespace {
[[noreturn]] void no_cuda() { throw CudaError("this build has no CUDA (DIRECTPORT_WITH_CUDA=OFF)"); }
}  // namespace
void fill_gpu(void*, std::size_t, std::uint64_t, GpuStream) { no_cuda(); }
void checksum_gpu(const void*, std::size_t, std::uint64_t*, GpuStream) { no_cuda(); }
void poke_gpu(void*, std::uint64_t, GpuStream) { no_cuda(); }
void stamp_frame_gpu(void*, std::size_t, std::uint64_t, std::uint64_t, std::uint64_t*, GpuStream) { no_cuda(); }
void verify_frame_gpu(const void*, std::size_t, std::uint64_t, std::uint64_t*, std::uint64_t*, GpuStream) { no_cuda(); }
void stamp_time_gpu(std::uint64_t*, std::uint64_t, GpuStream) { no_cuda(); }
void measure_since_gpu(const std::uint64_t*, std::uint64_t*, GpuStream) { no_cuda(); }
void hold_stream(std::uint64_t, GpuStream) { no_cuda(); }
void traffic_floor_gpu(const std::vector<TrafficInput>&, void*, std::size_t, GpuStream) { no_cuda(); }

struct FusionGpu::Device {};
FusionGpu::FusionGpu(FusionLayout layout) : layout_(std::move(layout)) { no_cuda(); }
FusionGpu::~FusionGpu() = default;
void FusionGpu::fuse(const std::vector<const void*>&, void*, GpuStream) { no_cuda(); }
RunningStats FusionGpu::stats(std::size_t, GpuStream) const { no_cuda(); }
}  // namespace dp::kernels

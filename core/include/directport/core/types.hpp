// Stream specifications, element types and the frame views passed across the API.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

namespace dp {

enum class DType : std::uint8_t { u8, i8, u16, i16, i32, u32, i64, u64, f16, bf16, f32, f64 };
std::size_t dtype_size(DType t);
const char* dtype_name(DType t);
DType parse_dtype(const std::string& s);  // throws ValidationError listing the valid names

// Where a stream's slots live. `vulkan`: Vulkan device memory exported as an opaque fd
// (docs/VULKAN.md), written by a Vulkan or a CUDA producer.
enum class MemoryKind : std::uint8_t { host, cuda_vmm, cuda_ipc, vulkan };
const char* memory_kind_name(MemoryKind k);
MemoryKind parse_memory_kind(const std::string& s);

// How "ready"/"released" timelines are signalled. `vulkan-timeline`: "ready" is an exportable
// Vulkan timeline semaphore (its value the frame's seq) that CUDA imports; releases stay
// 64-bit words in fence pages (docs/VULKAN.md).
enum class FenceKind : std::uint8_t { host_futex, cuda_memop, vulkan_timeline };
const char* fence_kind_name(FenceKind k);
FenceKind parse_fence_kind(const std::string& s);

struct StreamSpec {
  std::string name;
  DType dtype = DType::u8;
  std::vector<std::int64_t> shape;  // row-major, contiguous
  std::uint32_t slots = 3;
  MemoryKind memory = MemoryKind::host;
  FenceKind fence = FenceKind::host_futex;
  // When every slot is held by consumers, acquire() waits this long for one, then drops the
  // frame and counts it. Never infinite: a consumer can't block its producer.
  std::chrono::microseconds acquire_timeout{2000};
  // GPU streams: how long a consumer's release may hold the producer's stream once the stream has
  // reached its wait for it (the consumer alive, its own stream stalled). Past it the consumer is
  // cut off: told so, its connection closed and its releases raised, so that the producer's
  // stream and the other consumers go on (PROTOCOL.md §10.3).
  std::chrono::milliseconds release_timeout{5000};
  // How the frame is organised, for consumers that take it apart (the compositor's segments):
  // null, or a JSON object of at most kMaxLayoutBytes once serialised. Carried in the manifest
  // and the subscribe reply; the transport ignores it.
  nlohmann::json layout;
  static constexpr std::size_t kMaxLayoutBytes = 16 * 1024;

  std::size_t frame_bytes() const;
  void validate() const;  // throws ValidationError naming the bad field
};

nlohmann::json spec_to_json(const StreamSpec& s);
StreamSpec spec_from_json(const nlohmann::json& j);  // validates

// Opaque CUDA stream type (cudaStream_t is `CUstream_st*`): the core API takes it without
// including CUDA headers. nullptr means "host side" (or the default stream on the GPU).
struct CUstream_st;
using GpuStream = CUstream_st*;

// What a producer states about a frame when publishing it.
struct FrameInfo {
  std::uint64_t frame_id = 0;
  std::int64_t t_source_ns = 0;  // 0: use publish time
  std::uint64_t checksum = 0;    // optional, carried in the slot metadata
};

// A writable slot handed out by Publisher::acquire(). Trivially copyable view.
struct SlotLease {
  void* data = nullptr;
  std::size_t bytes = 0;
  std::uint32_t slot = 0;
  std::uint64_t seq = 0;
};

// A published frame as a consumer sees it. Trivially copyable view; valid until released.
struct Frame {
  const void* data = nullptr;
  std::size_t bytes = 0;
  std::uint64_t seq = 0;
  std::uint64_t frame_id = 0;
  std::int64_t t_source_ns = 0;
  std::int64_t t_publish_ns = 0;
  std::uint64_t checksum = 0;
  std::uint32_t slot = 0;
  std::uint32_t generation = 0;  // which connection to the producer it came through
  bool valid = true;             // false: the producer died before completing it
};
static_assert(std::is_trivially_copyable_v<SlotLease> && std::is_trivially_copyable_v<Frame>);

}  // namespace dp

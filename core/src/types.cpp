#include "directport/core/types.hpp"

#include <array>
#include <limits>
#include <optional>

#include "directport/core/error.hpp"
#include "directport/core/names.hpp"
#include "directport/core/protocol.hpp"

namespace dp {
namespace {

struct DTypeInfo {
  DType t;
  const char* name;
  std::size_t size;
};
constexpr std::array<DTypeInfo, 12> kDTypes{{{DType::u8, "u8", 1},     {DType::i8, "i8", 1},
                                             {DType::u16, "u16", 2},   {DType::i16, "i16", 2},
                                             {DType::i32, "i32", 4},   {DType::u32, "u32", 4},
                                             {DType::i64, "i64", 8},   {DType::u64, "u64", 8},
                                             {DType::f16, "f16", 2},   {DType::bf16, "bf16", 2},
                                             {DType::f32, "f32", 4},   {DType::f64, "f64", 8}}};

template <typename E, std::size_t N>
E parse_enum(const std::string& s, const std::array<std::pair<E, const char*>, N>& table,
             const char* what) {
  std::string valid;
  for (auto& [e, n] : table) {
    if (s == n) return e;
    valid += valid.empty() ? n : std::string(", ") + n;
  }
  throw ValidationError(std::string("unknown ") + what + " '" + s + "' (valid: " + valid + ")");
}

constexpr std::array<std::pair<MemoryKind, const char*>, 4> kMemoryKinds{{{MemoryKind::host, "host"},
                                                                         {MemoryKind::cuda_vmm, "cuda-vmm"},
                                                                         {MemoryKind::cuda_ipc, "cuda-ipc"},
                                                                         {MemoryKind::vulkan, "vulkan"}}};
constexpr std::array<std::pair<FenceKind, const char*>, 3> kFenceKinds{{{FenceKind::host_futex, "host-futex"},
                                                                       {FenceKind::cuda_memop, "cuda-memop"},
                                                                       {FenceKind::vulkan_timeline, "vulkan-timeline"}}};

}  // namespace

std::size_t dtype_size(DType t) { return kDTypes.at(static_cast<std::size_t>(t)).size; }
const char* dtype_name(DType t) { return kDTypes.at(static_cast<std::size_t>(t)).name; }

DType parse_dtype(const std::string& s) {
  std::string valid;
  for (auto& d : kDTypes) {
    if (s == d.name) return d.t;
    valid += valid.empty() ? d.name : std::string(", ") + d.name;
  }
  throw ValidationError("unknown dtype '" + s + "' (valid: " + valid + ")");
}

const char* memory_kind_name(MemoryKind k) { return kMemoryKinds.at(static_cast<std::size_t>(k)).second; }
MemoryKind parse_memory_kind(const std::string& s) { return parse_enum(s, kMemoryKinds, "memory kind"); }
const char* fence_kind_name(FenceKind k) { return kFenceKinds.at(static_cast<std::size_t>(k)).second; }
FenceKind parse_fence_kind(const std::string& s) { return parse_enum(s, kFenceKinds, "fence kind"); }

std::size_t StreamSpec::frame_bytes() const {
  std::size_t n = dtype_size(dtype);
  for (auto d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

void StreamSpec::validate() const {
  validate_name("stream name", name);
  auto where = "stream '" + name + "': ";
  if (shape.empty() || shape.size() > 8) {
    throw ValidationError(where + "shape must have 1 to 8 dimensions");
  }
  // Bound the frame at 16 GiB and guard the product against overflow.
  constexpr std::uint64_t kMaxFrame = 16ull << 30;
  std::uint64_t n = dtype_size(dtype);
  for (auto d : shape) {
    if (d <= 0) throw ValidationError(where + "shape entries must be positive, got " + std::to_string(d));
    if (static_cast<std::uint64_t>(d) > kMaxFrame / n) {
      throw ValidationError(where + "frame larger than 16 GiB");
    }
    n *= static_cast<std::uint64_t>(d);
  }
  if (slots < 2 || slots > protocol::kMaxSlots) {
    throw ValidationError(where + "slots must be 2.." + std::to_string(protocol::kMaxSlots) +
                          ", got " + std::to_string(slots));
  }
  // host memory: host fences; CUDA memory: either GPU fence; Vulkan memory: the Vulkan fence
  // (its producer may be a Vulkan program, which cannot signal CUDA's fences).
  const bool fits = memory == MemoryKind::host     ? fence == FenceKind::host_futex
                    : memory == MemoryKind::vulkan ? fence == FenceKind::vulkan_timeline
                                                   : fence != FenceKind::host_futex;
  if (!fits) {
    const char* want = memory == MemoryKind::host     ? "'host-futex'"
                       : memory == MemoryKind::vulkan ? "'vulkan-timeline'"
                                                      : "'cuda-memop' or 'vulkan-timeline'";
    throw ValidationError(where + "memory '" + memory_kind_name(memory) + "' needs the fence kind " + want +
                          ", not '" + fence_kind_name(fence) + "'");
  }
  if (acquire_timeout.count() < 0 || acquire_timeout > std::chrono::seconds(60)) {
    throw ValidationError(where + "acquire_timeout must be 0..60 s");
  }
  if (release_timeout.count() < 1 || release_timeout > std::chrono::hours(1)) {
    throw ValidationError(where + "release_timeout must be 1 ms..1 h, got " + std::to_string(release_timeout.count()) +
                          " ms");
  }
  if (!layout.is_null()) {
    if (!layout.is_object()) throw ValidationError(where + "layout must be a JSON object");
    if (layout.dump().size() > kMaxLayoutBytes) {
      throw ValidationError(where + "layout exceeds " + std::to_string(kMaxLayoutBytes) + " bytes");
    }
  }
}

nlohmann::json spec_to_json(const StreamSpec& s) {
  nlohmann::json j{{"name", s.name},
                   {"dtype", dtype_name(s.dtype)},
                   {"shape", s.shape},
                   {"slots", s.slots},
                   {"frame_bytes", s.frame_bytes()},
                   {"memory", memory_kind_name(s.memory)},
                   {"fence", fence_kind_name(s.fence)},
                   {"acquire_timeout_us", s.acquire_timeout.count()},
                   {"release_timeout_ms", s.release_timeout.count()}};
  if (!s.layout.is_null()) j["layout"] = s.layout;
  return j;
}

StreamSpec spec_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw ValidationError("stream spec must be a JSON object");
  auto field = [&](const char* k) -> const nlohmann::json& {
    auto it = j.find(k);
    if (it == j.end()) throw ValidationError(std::string("stream spec lacks '") + k + "'");
    return *it;
  };
  StreamSpec s;
  try {
    s.name = field("name").get<std::string>();
    s.dtype = parse_dtype(field("dtype").get<std::string>());
    const auto& shape = field("shape");
    if (!shape.is_array()) throw ValidationError("stream spec 'shape' has the wrong type: not an array");
    for (const auto& d : shape) {
      if (!d.is_number_integer()) throw ValidationError("stream spec 'shape' has the wrong type: non-integer entry");
    }
    s.shape = shape.get<std::vector<std::int64_t>>();
    const auto& slots = field("slots");
    if (!slots.is_number_integer()) throw ValidationError("stream spec 'slots' has the wrong type: not an integer");
    if (slots.get<std::int64_t>() < 0 || slots.get<std::int64_t>() > std::int64_t(protocol::kMaxSlots)) {
      throw ValidationError("stream spec: slots must be 2.." + std::to_string(protocol::kMaxSlots) + ", got " + slots.dump());
    }
    s.slots = slots.get<std::uint32_t>();
    s.memory = parse_memory_kind(field("memory").get<std::string>());
    s.fence = parse_fence_kind(field("fence").get<std::string>());
    // An optional integer key, or nullopt when absent.
    auto optional_integer = [&](const char* key) -> std::optional<std::int64_t> {
      if (!j.contains(key)) return std::nullopt;
      if (!j[key].is_number_integer()) {
        throw ValidationError(std::string("stream spec '") + key + "' has the wrong type: not an integer");
      }
      return j[key].get<std::int64_t>();
    };
    if (auto v = optional_integer("acquire_timeout_us")) s.acquire_timeout = std::chrono::microseconds(*v);
    if (auto v = optional_integer("release_timeout_ms")) s.release_timeout = std::chrono::milliseconds(*v);
    if (j.contains("layout")) s.layout = j["layout"];  // checked by validate()
  } catch (const nlohmann::json::exception& e) {
    throw ValidationError(std::string("stream spec has a field of the wrong type: ") + e.what());
  }
  s.validate();
  if (j.contains("frame_bytes") &&
      (!j["frame_bytes"].is_number_unsigned() || j["frame_bytes"].get<std::uint64_t>() != s.frame_bytes())) {
    throw ValidationError("stream '" + s.name + "': frame_bytes disagrees with dtype and shape");
  }
  return s;
}

}  // namespace dp

// StreamSpec validation, JSON round trip, element types.
#include <gtest/gtest.h>

#include "directport/core/error.hpp"
#include "directport/core/protocol.hpp"
#include "directport/core/types.hpp"

namespace dp {
namespace {

StreamSpec good() {
  StreamSpec s;
  s.name = "rgb";
  s.dtype = DType::f16;
  s.shape = {3, 480, 641};
  s.slots = 4;
  s.memory = MemoryKind::host;
  s.fence = FenceKind::host_futex;
  s.acquire_timeout = std::chrono::microseconds(1234);
  return s;
}

void expect_invalid(const StreamSpec& s, const std::string& needle) {
  try {
    s.validate();
    FAIL() << "validate() accepted a spec that should fail with '" << needle << "'";
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Types, DtypeTable) {
  const std::pair<const char*, std::size_t> expected[] = {
      {"u8", 1},  {"i8", 1},  {"u16", 2}, {"i16", 2},  {"i32", 4}, {"u32", 4},
      {"i64", 8}, {"u64", 8}, {"f16", 2}, {"bf16", 2}, {"f32", 4}, {"f64", 8}};
  for (auto [name, size] : expected) {
    DType t = parse_dtype(name);
    EXPECT_STREQ(dtype_name(t), name);
    EXPECT_EQ(dtype_size(t), size) << name;
  }
}

TEST(Types, UnknownNamesListTheValidOnes) {
  for (std::string bad : {"", "float32", "F32", "u 8", "u128", "f32 "}) {
    try {
      parse_dtype(bad);
      FAIL() << "accepted dtype '" << bad << "'";
    } catch (const ValidationError& e) {
      std::string m = e.what();
      EXPECT_NE(m.find("'" + bad + "'"), std::string::npos) << m;
      EXPECT_NE(m.find("bf16"), std::string::npos) << "lists the valid names: " << m;
    }
  }
  EXPECT_THROW(parse_memory_kind("cuda"), ValidationError);
  EXPECT_THROW(parse_fence_kind("futex"), ValidationError);
  EXPECT_EQ(parse_memory_kind("cuda-vmm"), MemoryKind::cuda_vmm);
  EXPECT_EQ(parse_fence_kind("cuda-memop"), FenceKind::cuda_memop);
}

TEST(Types, FrameBytes) {
  EXPECT_EQ(good().frame_bytes(), 2u * 3 * 480 * 641);
  EXPECT_NO_THROW(good().validate());
}

TEST(Types, ValidateShape) {
  auto s = good();
  s.shape = {};
  expect_invalid(s, "1 to 8 dimensions");
  s.shape = std::vector<std::int64_t>(9, 1);
  expect_invalid(s, "1 to 8 dimensions");
  s.shape = {3, 0, 4};
  expect_invalid(s, "positive");
  s.shape = {3, -4};
  expect_invalid(s, "positive");
  s.shape = {1 << 20, 1 << 20};
  expect_invalid(s, "16 GiB");
  // Overflow of the product must not wrap into an acceptable size.
  s.shape = {1LL << 33, 1LL << 33, 1LL << 33};
  expect_invalid(s, "16 GiB");
  s.shape = {INT64_MAX};
  expect_invalid(s, "16 GiB");
}

TEST(Types, ValidateShapeProductMustNotWrap) {
  // 2^32 * 2^32 elements of one byte: the 64-bit product wraps to 0, which must not pass as a
  // valid (empty) frame.
  auto s = good();
  s.dtype = DType::u8;
  s.shape = {1LL << 32, 1LL << 32};
  expect_invalid(s, "16 GiB");
  s.shape = {1LL << 32, 1LL << 32, 5};
  expect_invalid(s, "16 GiB");
  s.dtype = DType::f64;
  s.shape = {1LL << 31, 1LL << 31, 3};  // 8 * 2^62 wraps to 0 as well
  expect_invalid(s, "16 GiB");
  s.dtype = DType::u8;
  s.shape = {16LL << 30};
  EXPECT_NO_THROW(s.validate()) << "exactly 16 GiB is allowed";
  s.shape = {(16LL << 30) + 1};
  expect_invalid(s, "16 GiB");
}

TEST(Types, ValidateSlotsAndName) {
  auto s = good();
  for (std::uint32_t bad : {0u, 1u, protocol::kMaxSlots + 1, 1000u}) {
    s.slots = bad;
    expect_invalid(s, "slots");
  }
  for (std::uint32_t ok : {2u, protocol::kMaxSlots}) {
    s.slots = ok;
    EXPECT_NO_THROW(s.validate());
  }
  s = good();
  s.name = "a/b";
  expect_invalid(s, "stream name");
  s.name = "";
  expect_invalid(s, "stream name");
}

TEST(Types, ValidateMemoryFenceMatch) {
  auto s = good();
  s.fence = FenceKind::cuda_memop;
  expect_invalid(s, "host");
  s.memory = MemoryKind::cuda_vmm;
  EXPECT_NO_THROW(s.validate());
  s.fence = FenceKind::host_futex;
  expect_invalid(s, "cuda");
  s.memory = MemoryKind::cuda_ipc;
  expect_invalid(s, "cuda-ipc");
}

TEST(Types, ValidateVulkanKinds) {
  auto s = good();
  s.memory = MemoryKind::vulkan;
  s.fence = FenceKind::cuda_memop;  // a Vulkan writer cannot signal CUDA's fences
  expect_invalid(s, "vulkan-timeline");
  s.fence = FenceKind::host_futex;
  expect_invalid(s, "vulkan-timeline");
  s.fence = FenceKind::vulkan_timeline;
  EXPECT_NO_THROW(s.validate());
  s.memory = MemoryKind::cuda_vmm;  // CUDA memory, a semaphore Vulkan readers can wait on
  EXPECT_NO_THROW(s.validate());
  s.memory = MemoryKind::host;
  expect_invalid(s, "host-futex");
  EXPECT_EQ(parse_memory_kind("vulkan"), MemoryKind::vulkan);
  EXPECT_EQ(parse_fence_kind("vulkan-timeline"), FenceKind::vulkan_timeline);
  StreamSpec v = good();
  v.memory = MemoryKind::vulkan;
  v.fence = FenceKind::vulkan_timeline;
  EXPECT_EQ(spec_to_json(spec_from_json(spec_to_json(v))), spec_to_json(v));
}

TEST(Types, ValidateAcquireTimeout) {
  auto s = good();
  s.acquire_timeout = std::chrono::microseconds(-1);
  expect_invalid(s, "acquire_timeout");
  s.acquire_timeout = std::chrono::seconds(61);
  expect_invalid(s, "acquire_timeout");
  s.acquire_timeout = std::chrono::microseconds(0);
  EXPECT_NO_THROW(s.validate());
}

TEST(Types, ValidateReleaseTimeout) {
  auto s = good();
  s.release_timeout = std::chrono::milliseconds(0);
  expect_invalid(s, "release_timeout");
  s.release_timeout = std::chrono::hours(2);
  expect_invalid(s, "release_timeout");
  s.release_timeout = std::chrono::milliseconds(1);
  EXPECT_NO_THROW(s.validate());
  // Carried in the manifest and the subscribe reply; an old manifest without it gets the default.
  s.release_timeout = std::chrono::milliseconds(750);
  auto j = spec_to_json(s);
  EXPECT_EQ(j["release_timeout_ms"], 750);
  EXPECT_EQ(spec_from_json(j).release_timeout, s.release_timeout);
  j.erase("release_timeout_ms");
  EXPECT_EQ(spec_from_json(j).release_timeout, StreamSpec{}.release_timeout);
  j["release_timeout_ms"] = "later";
  EXPECT_THROW(spec_from_json(j), ValidationError);
  j["release_timeout_ms"] = 0;
  EXPECT_THROW(spec_from_json(j), ValidationError);
}

TEST(Types, JsonRoundTrip) {
  for (auto mem : {MemoryKind::host, MemoryKind::cuda_vmm, MemoryKind::cuda_ipc}) {
    auto s = good();
    s.memory = mem;
    s.fence = mem == MemoryKind::host ? FenceKind::host_futex : FenceKind::cuda_memop;
    auto j = spec_to_json(s);
    EXPECT_EQ(j["frame_bytes"], s.frame_bytes());
    EXPECT_EQ(j["memory"], memory_kind_name(mem));
    StreamSpec back = spec_from_json(j);
    EXPECT_EQ(back.name, s.name);
    EXPECT_EQ(back.dtype, s.dtype);
    EXPECT_EQ(back.shape, s.shape);
    EXPECT_EQ(back.slots, s.slots);
    EXPECT_EQ(back.memory, s.memory);
    EXPECT_EQ(back.fence, s.fence);
    EXPECT_EQ(back.acquire_timeout, s.acquire_timeout);
    EXPECT_EQ(spec_to_json(back), j);
  }
  // Without the optional keys.
  auto j = spec_to_json(good());
  j.erase("acquire_timeout_us");
  j.erase("frame_bytes");
  EXPECT_EQ(spec_from_json(j).acquire_timeout, StreamSpec{}.acquire_timeout);
}

TEST(Types, FromJsonRejectsBadInput) {
  auto base = spec_to_json(good());
  auto expect_bad = [&](nlohmann::json j, const std::string& needle) {
    try {
      spec_from_json(j);
      FAIL() << "accepted " << j.dump();
    } catch (const ValidationError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_bad(nlohmann::json::array(), "object");
  expect_bad(42, "object");
  for (const char* key : {"name", "dtype", "shape", "slots", "memory", "fence"}) {
    auto j = base;
    j.erase(key);
    expect_bad(j, key);
  }
  auto j = base;
  j["slots"] = "4";
  expect_bad(j, "wrong type");
  j = base;
  j["shape"] = "3x480";
  expect_bad(j, "wrong type");
  j = base;
  j["name"] = 7;
  expect_bad(j, "wrong type");
  j = base;
  j["dtype"] = "complex64";
  expect_bad(j, "complex64");
  j = base;
  j["name"] = "../../etc/passwd";
  expect_bad(j, "stream name");
  j = base;
  j["frame_bytes"] = 12;
  expect_bad(j, "frame_bytes");
  j = base;
  j["frame_bytes"] = -1;
  expect_bad(j, "frame_bytes");
  j = base;
  j["slots"] = -3;
  expect_bad(j, "slots");
  j = base;
  j["acquire_timeout_us"] = "soon";
  expect_bad(j, "wrong type");
}

// A value that does not fit the field must be refused, not wrapped or truncated into a valid one.
TEST(Types, FromJsonRejectsValuesThatOnlyFitAfterConversion) {
  auto base = spec_to_json(good());
  auto j = base;
  j["slots"] = (1ull << 32) + 4;  // would wrap to 4 in a uint32
  EXPECT_THROW(spec_from_json(j), ValidationError) << j["slots"];
  j = base;
  j["slots"] = 4.5;
  EXPECT_THROW(spec_from_json(j), ValidationError) << "slots must be an integer";
  j = base;
  j["shape"] = {3, 480.5, 641};
  EXPECT_THROW(spec_from_json(j), ValidationError) << "shape entries must be integers";
  // Numbers too large for any integer type arrive as doubles; converting them to the field's type
  // is undefined behaviour (found by tests/fuzz: UBSan flags it), so they must be refused first.
  j = base;
  j["slots"] = 8.9e86;
  EXPECT_THROW(spec_from_json(j), ValidationError);
  j = base;
  j["shape"] = {3, 1e300, 641};
  EXPECT_THROW(spec_from_json(j), ValidationError);
  j = base;
  j["acquire_timeout_us"] = 2e23;
  EXPECT_THROW(spec_from_json(j), ValidationError);
  j = base;
  j["acquire_timeout_us"] = 2000.5;
  EXPECT_THROW(spec_from_json(j), ValidationError) << "acquire_timeout_us must be an integer";
}

}  // namespace
}  // namespace dp

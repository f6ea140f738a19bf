// Frame integrity kernels: the CPU reference (fill_cpu, checksum_cpu) and the CUDA versions,
// which must agree bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "directport/core/error.hpp"
#include "directport/kernels/checksum.hpp"
#include "support/gpu_test.hpp"
#include "support/test_support.hpp"

#if DIRECTPORT_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

namespace dp::kernels {
namespace {

std::vector<std::uint64_t> filled(std::size_t words, std::uint64_t seed) {
  std::vector<std::uint64_t> v(words);
  fill_cpu(v.data(), words * 8, seed);
  return v;
}

TEST(Checksum, Mix64IsSplitMix64) {
  // Published first outputs of splitmix64 from state 0: the GPU code, the CPU code and other
  // languages reading docs/PROTOCOL.md must all produce these.
  EXPECT_EQ(mix64(0), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(mix64(0x9E3779B97F4A7C15ull), 0x6E789E6AA1B965F4ull);
}

TEST(Checksum, FillIsDeterministicBySeed) {
  std::mt19937_64 rng(test::test_seed());
  for (std::size_t words : {1u, 7u, 1001u, 4099u}) {
    std::uint64_t seed = rng();
    auto a = filled(words, seed), b = filled(words, seed);
    EXPECT_EQ(a, b);
    for (std::size_t i = 0; i < words; ++i)
      ASSERT_EQ(a[i], mix64(seed * 0x100000001B3ull + i)) << i;
    auto c = filled(words, seed + 1);
    std::size_t same = 0;
    for (std::size_t i = 0; i < words; ++i) same += a[i] == c[i];
    EXPECT_EQ(same, 0u) << "another seed gives other content";
  }
  // Filling a prefix gives the prefix of a longer fill.
  auto longer = filled(100, 42), shorter = filled(37, 42);
  EXPECT_TRUE(std::equal(shorter.begin(), shorter.end(), longer.begin()));
}

TEST(Checksum, ChecksumIsTheDocumentedSum) {
  auto v = filled(513, test::test_seed());
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < v.size(); ++i) sum += mix64(v[i] ^ (i * 0xD6E8FEB86659FD93ull));
  EXPECT_EQ(checksum_cpu(v.data(), v.size() * 8), sum);
  EXPECT_EQ(checksum_cpu(v.data(), 0), 0u);
  // Unaligned input is fine (the frame may start anywhere in a byte buffer).
  std::vector<unsigned char> bytes(v.size() * 8 + 1);
  std::memcpy(bytes.data() + 1, v.data(), v.size() * 8);
  EXPECT_EQ(checksum_cpu(bytes.data() + 1, v.size() * 8), sum);
}

TEST(Checksum, EveryBitFlipChangesTheSum) {
  auto v = filled(37, test::test_seed());
  const std::uint64_t base = checksum_cpu(v.data(), v.size() * 8);
  for (std::size_t bit = 0; bit < v.size() * 64; ++bit) {
    v[bit / 64] ^= 1ull << (bit % 64);
    ASSERT_NE(checksum_cpu(v.data(), v.size() * 8), base)
        << "flipping bit " << bit << " went unnoticed";
    v[bit / 64] ^= 1ull << (bit % 64);
  }
  // In a large frame, at random places.
  std::mt19937_64 rng(test::test_seed() + 1);
  auto big = filled(8 * 4099, rng());
  const std::uint64_t big_sum = checksum_cpu(big.data(), big.size() * 8);
  for (int k = 0; k < 200; ++k) {
    std::size_t bit = rng() % (big.size() * 64);
    big[bit / 64] ^= 1ull << (bit % 64);
    ASSERT_NE(checksum_cpu(big.data(), big.size() * 8), big_sum) << "bit " << bit;
    big[bit / 64] ^= 1ull << (bit % 64);
  }
}

TEST(Checksum, PositionMatters) {
  auto v = filled(64, test::test_seed());
  const std::uint64_t base = checksum_cpu(v.data(), v.size() * 8);
  std::swap(v[3], v[40]);
  EXPECT_NE(checksum_cpu(v.data(), v.size() * 8), base) << "swapped words must be noticed";
  std::swap(v[3], v[40]);
  // A frame of another seq (stale content) has another sum.
  EXPECT_NE(checksum_cpu(filled(64, test::test_seed() + 1).data(), 64 * 8), base);
}

TEST(Checksum, SizesMustBeWholeWords) {
  std::vector<std::uint64_t> v(4);
  EXPECT_THROW(fill_cpu(v.data(), 12, 1), PreconditionError);
  EXPECT_THROW(checksum_cpu(v.data(), 31), PreconditionError);
}

TEST(Checksum, GpuEntryPointsFailCleanlyWithoutADevice) {
#if DIRECTPORT_HAS_CUDA
  if (dp::cuda::availability().usable) GTEST_SKIP() << "a device is present: see GpuChecksum";
#endif
  std::uint64_t out = 0;
  EXPECT_THROW(fill_gpu(&out, 8, 1, nullptr), CudaError);
  EXPECT_THROW(checksum_gpu(&out, 8, &out, nullptr), CudaError);
}

// ------------------------------------------------------------------ GPU against the CPU reference

class GpuChecksum : public test::GpuTest {};

#if DIRECTPORT_HAS_CUDA
struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(std::size_t n) {
    if (cudaMalloc(&p, n ? n : 8) != cudaSuccess) p = nullptr;
  }
  ~DeviceBuffer() {
    if (p) cudaFree(p);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};
#endif

TEST_F(GpuChecksum, FillAndChecksumMatchTheCpuOnRandomSeedsAndOddSizes) {
#if DIRECTPORT_HAS_CUDA
  std::mt19937_64 rng(test::test_seed());
  for (std::size_t words :
       {std::size_t(1), std::size_t(7), std::size_t(31), std::size_t(33), std::size_t(255),
        std::size_t(257), std::size_t(4099), std::size_t(1) << 20, (std::size_t(1) << 22) + 3}) {
    SCOPED_TRACE("words " + std::to_string(words));
    const std::size_t bytes = words * 8;
    const std::uint64_t seed = rng();
    DeviceBuffer buf(bytes), sum(8);
    ASSERT_TRUE(buf.p && sum.p);
    fill_gpu(buf.p, bytes, seed, nullptr);
    checksum_gpu(buf.p, bytes, static_cast<std::uint64_t*>(sum.p), nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<std::uint64_t> host(words);
    std::uint64_t gpu_sum = 0;
    ASSERT_EQ(cudaMemcpy(host.data(), buf.p, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(&gpu_sum, sum.p, 8, cudaMemcpyDeviceToHost), cudaSuccess);
    auto expect = filled(words, seed);
    ASSERT_EQ(host, expect) << "fill_gpu differs from fill_cpu";
    EXPECT_EQ(gpu_sum, checksum_cpu(expect.data(), bytes));

    // The GPU checksum of CPU-made content, with one bit flipped at a random place.
    std::size_t bit = rng() % (words * 64);
    expect[bit / 64] ^= 1ull << (bit % 64);
    ASSERT_EQ(cudaMemcpy(buf.p, expect.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
    checksum_gpu(buf.p, bytes, static_cast<std::uint64_t*>(sum.p), nullptr);
    ASSERT_EQ(cudaMemcpy(&gpu_sum, sum.p, 8, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(gpu_sum, checksum_cpu(expect.data(), bytes));
  }
#endif
}

TEST_F(GpuChecksum, SizesMustBeWholeWords) {
#if DIRECTPORT_HAS_CUDA
  DeviceBuffer buf(64);
  EXPECT_THROW(fill_gpu(buf.p, 12, 1, nullptr), PreconditionError);
  EXPECT_THROW(checksum_gpu(buf.p, 20, static_cast<std::uint64_t*>(buf.p), nullptr),
               PreconditionError);
#endif
}

}  // namespace
}  // namespace dp::kernels

// `caption-hash`: the language teacher. An analytic expert, not a learned model: a hashed
// bag-of-words embedding of the caption (the "hashing trick").
//
// Input: u8 [L], UTF-8 text zero-padded (the scene's caption, text-file). Output: f32 [dim].
// Words are maximal runs of ASCII letters and digits and of non-ASCII bytes (so a UTF-8 word stays
// whole); ASCII letters are lower-cased; every other byte separates words. Each word, and with
// `bigrams` each pair of neighbouring words joined by one space, is hashed with 64-bit FNV-1a
// (offset basis 14695981039346656037 xor `seed`, prime 1099511628211): it adds +1 (top bit of the
// hash 0) or -1 (top bit 1) to element hash % dim. The vector is then divided by its L2 norm (left
// all zero if there are no words). Counts are integers, so the GPU (atomic adds in any order) and
// the CPU give the same bits.
#include <cmath>

#include "directport/teachers/teacher.hpp"

namespace dp::teachers {
namespace {

constexpr std::uint64_t kFnvBasis = 14695981039346656037ull;
constexpr std::uint64_t kFnvPrime = 1099511628211ull;
constexpr int kThreads = 256;
constexpr int kMaxDim = 4096;

DP_HD inline bool is_word(std::uint8_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80;
}
DP_HD inline std::uint8_t fold(std::uint8_t c) { return (c >= 'A' && c <= 'Z') ? static_cast<std::uint8_t>(c + 32) : c; }

// Hashes the word starting at `i` into `h`; returns the index just past it.
DP_HD inline int hash_word(const std::uint8_t* s, int len, int i, std::uint64_t& h) {
  for (; i < len && is_word(s[i]); ++i) h = (h ^ fold(s[i])) * kFnvPrime;
  return i;
}

// The features of the word starting at `i`: itself and, with bigrams, it and the next word.
// Writes their buckets and signs; returns how many (1 or 2).
DP_HD inline int word_features(const std::uint8_t* s, int len, int i, std::uint64_t seed, int dim, bool bigrams, int bucket[2],
                               int sign[2]) {
  std::uint64_t h = kFnvBasis ^ seed;
  int j = hash_word(s, len, i, h);
  bucket[0] = static_cast<int>(h % static_cast<std::uint64_t>(dim));
  sign[0] = (h >> 63) ? -1 : 1;
  if (!bigrams) return 1;
  while (j < len && !is_word(s[j])) ++j;
  if (j >= len) return 1;
  h = (h ^ static_cast<std::uint8_t>(' ')) * kFnvPrime;
  hash_word(s, len, j, h);
  bucket[1] = static_cast<int>(h % static_cast<std::uint64_t>(dim));
  sign[1] = (h >> 63) ? -1 : 1;
  return 2;
}

DP_HD inline bool starts_word(const std::uint8_t* s, int i) { return is_word(s[i]) && (i == 0 || !is_word(s[i - 1])); }

#if DP_TEACHER_CUDA
// One block: every thread looks for word starts in its share of the text.
__global__ void hash_kernel(const std::uint8_t* __restrict__ s, int len, std::uint64_t seed, int dim, int bigrams,
                            float* __restrict__ out) {
  __shared__ int counts[kMaxDim];
  __shared__ long long part[kThreads];
  for (int b = threadIdx.x; b < dim; b += kThreads) counts[b] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < len; i += kThreads) {
    if (!starts_word(s, i)) continue;
    int bucket[2], sign[2];
    const int n = word_features(s, len, i, seed, dim, bigrams != 0, bucket, sign);
    for (int f = 0; f < n; ++f) atomicAdd(&counts[bucket[f]], sign[f]);
  }
  __syncthreads();
  long long ss = 0;
  for (int b = threadIdx.x; b < dim; b += kThreads) ss += static_cast<long long>(counts[b]) * counts[b];
  part[threadIdx.x] = ss;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (static_cast<int>(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  const float norm = sqrtf(static_cast<float>(part[0]));
  for (int b = threadIdx.x; b < dim; b += kThreads) out[b] = part[0] > 0 ? static_cast<float>(counts[b]) / norm : 0.0f;
}
#endif

class CaptionHash final : public Teacher {
 public:
  void configure(const nlohmann::json& params) override {
    dim_ = params["dim"].get<int>();
    if (dim_ < 1 || dim_ > kMaxDim) param_error("dim", "must be in 1..4096, got " + std::to_string(dim_));
    bigrams_ = params["bigrams"].get<bool>();
    seed_ = params["seed"].get<std::uint64_t>();
  }

  std::string accepts(const TensorSpec& in) const override {
    if (in.dtype != DType::u8 || in.shape.size() != 1 || in.shape[0] < 1 || in.shape[0] > (1 << 20)) {
      return "text u8 [L] (UTF-8, zero-padded), L <= 1048576";
    }
    return "";
  }

  TensorSpec output_spec(const TensorSpec&) const override {
    return {DType::f32, {dim_}, {{"embedding", "hashed bag of words, FNV-1a, L2-normalised"}, {"bigrams", bigrams_}}};
  }

  void infer(const TeacherInput& in, const TeacherOutput& out, GpuStream stream) override {
#if DP_TEACHER_CUDA
    hash_kernel<<<1, kThreads, 0, cuda_stream(stream)>>>(in.u8(), static_cast<int>(in.shape()[0]), seed_, dim_, bigrams_ ? 1 : 0,
                                                         out.f32());
    check_launch("caption-hash: hash_kernel");
#else
    (void)in, (void)out, (void)stream;
    no_cuda();
#endif
  }

  void infer_cpu(const TeacherInput& in, const TeacherOutput& out) override {
    const std::uint8_t* s = in.u8();
    const int len = static_cast<int>(in.shape()[0]);
    std::vector<int> counts(dim_, 0);
    for (int i = 0; i < len; ++i) {
      if (!starts_word(s, i)) continue;
      int bucket[2], sign[2];
      const int n = word_features(s, len, i, seed_, dim_, bigrams_, bucket, sign);
      for (int f = 0; f < n; ++f) counts[bucket[f]] += sign[f];
    }
    long long ss = 0;
    for (int c : counts) ss += static_cast<long long>(c) * c;
    const float norm = std::sqrt(static_cast<float>(ss));
    float* o = out.f32();
    for (int b = 0; b < dim_; ++b) o[b] = ss > 0 ? static_cast<float>(counts[b]) / norm : 0.0f;
  }

 private:
  int dim_ = 64;
  bool bigrams_ = false;
  std::uint64_t seed_ = 0;
};

}  // namespace

DP_REGISTER_TEACHER(CaptionHash, {"caption-hash", "language",
                                  "analytic expert: a hashed bag-of-words embedding of the text (FNV-1a, signed buckets, "
                                  "L2-normalised)",
                                  "u8 [L] UTF-8 text, zero-padded", "f32 [dim]",
                                  {{"dim", ParamType::integer, 64, false, "embedding size (1..4096)"},
                                   {"bigrams", ParamType::boolean, false, false, "also hash pairs of neighbouring words"},
                                   {"seed", ParamType::integer, 0, false, "xor-ed into the hash's offset basis"}}});

}  // namespace dp::teachers

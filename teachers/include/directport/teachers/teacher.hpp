// The teacher SDK (DESIGN §7, docs/teachers.md). A teacher is one source file: a class derived
// from Teacher and one DP_REGISTER_TEACHER line. The SDK turns it into a node type whose one
// generic body (teacher_node.cpp) subscribes to the input stream named by the `from` param,
// checks the input against what the teacher accepts, calls infer() (GPU) or infer_cpu() (host
// backend) for every frame, publishes the output with the input's frame_id and t_source, and
// releases the input on the same stream.
//
// A teacher's .cu file is compiled by nvcc where CUDA is built (DP_TEACHER_CUDA is 1 there) and
// as C++ otherwise: keep kernels and launches inside `#if DP_TEACHER_CUDA`. Functions shared by
// the CPU reference and the kernel are DP_HD (host and device). Teacher sources are compiled
// without floating-point contraction on both sides (--fmad=false, -ffp-contract=off), so that
// the same arithmetic rounds the same way on the CPU and the GPU.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/core/error.hpp"
#include "directport/core/runtime.hpp"
#include "directport/core/types.hpp"

#if defined(__CUDACC__)
#define DP_TEACHER_CUDA 1
#define DP_HD __host__ __device__
#include <cuda_runtime.h>

#include "directport/cuda/driver.hpp"
#else
#define DP_TEACHER_CUDA 0
#define DP_HD
#endif

namespace dp::teachers {

// A tensor's element type and shape, and for an input the layout note its producer published
// (e.g. {"kind": "audio", "sample_rate": 16000}); null if none.
struct TensorSpec {
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  nlohmann::json layout;

  std::size_t elements() const;
  std::size_t bytes() const { return elements() * dtype_size(dtype); }
  std::string str() const;  // "f32 [3,96,128]"
  // Same dtype and shape (the layout note is not compared).
  bool same_tensor(const TensorSpec& o) const { return dtype == o.dtype && shape == o.shape; }
};

// One input frame as the teacher reads it: device memory on the GPU path, host memory on the
// CPU path. Valid for the duration of the infer call (on the GPU: until the work enqueued on
// the call's stream has run). The typed accessors check the input's dtype.
struct TeacherInput {
  const void* data = nullptr;
  const TensorSpec* spec = nullptr;
  std::uint64_t frame_id = 0;
  std::int64_t t_source_ns = 0;
  const char* teacher = "";  // for messages

  const float* f32() const { return static_cast<const float*>(typed(DType::f32)); }
  const std::uint16_t* f16() const { return static_cast<const std::uint16_t*>(typed(DType::f16)); }
  const std::uint16_t* bf16() const { return static_cast<const std::uint16_t*>(typed(DType::bf16)); }
  const std::uint8_t* u8() const { return static_cast<const std::uint8_t*>(typed(DType::u8)); }
  const std::vector<std::int64_t>& shape() const { return spec->shape; }
  std::size_t elements() const { return spec->elements(); }

 private:
  const void* typed(DType want) const;
};

// The slot a teacher writes its output into: exactly output_spec()'s dtype and shape. Asking for
// the data as another dtype is a teacher bug: it throws OutputMismatch (the node exits non-zero).
struct TeacherOutput {
  void* data = nullptr;
  const TensorSpec* spec = nullptr;
  const char* teacher = "";

  float* f32() const { return static_cast<float*>(typed(DType::f32)); }
  std::uint16_t* f16() const { return static_cast<std::uint16_t*>(typed(DType::f16)); }    // binary16 bits
  std::uint16_t* bf16() const { return static_cast<std::uint16_t*>(typed(DType::bf16)); }  // bfloat16 bits
  std::uint8_t* u8() const { return static_cast<std::uint8_t*>(typed(DType::u8)); }
  const std::vector<std::int64_t>& shape() const { return spec->shape; }
  std::size_t elements() const { return spec->elements(); }

 private:
  void* typed(DType want) const;
};

// A teacher that does not do what it declared (its output spec is not a tensor, or it writes
// another dtype than it declared).
class OutputMismatch : public Error {
 public:
  using Error::Error;
};

// Base of every teacher. One instance per node; called from one thread.
class Teacher {
 public:
  virtual ~Teacher() = default;
  // The teacher's own params (those declared at registration), checked for type and with their
  // defaults filled in. Throw ValidationError naming the param for a bad value
  // (param_error("scales", "...")). Also called on a throwaway instance when a graph config is
  // validated (`launch --check`): no device work here.
  virtual void configure(const nlohmann::json& params) { (void)params; }
  // Whether this input can be taken: "" if it can, else what the teacher needs, said so that it
  // reads after "needs" ("f32 [C, H, W] with C = 1 or 3").
  virtual std::string accepts(const TensorSpec& input) const = 0;
  // The output for an input it accepts. Also published as the stream's spec.
  virtual TensorSpec output_spec(const TensorSpec& input) const = 0;
  // Called before the first frame, with the input's spec and where it runs: allocate device
  // memory, upload tables. Called again (on the same side) if the input's producer comes back with
  // another shape for which output_spec() is unchanged.
  virtual void setup(const TensorSpec& input, bool on_gpu) {
    (void)input;
    (void)on_gpu;
  }
  // GPU: enqueue the work on `stream` (never synchronise it); `in` and `out` are device memory.
  virtual void infer(const TeacherInput& in, const TeacherOutput& out, GpuStream stream) = 0;
  // Host backend: the CPU reference. Must compute what infer() computes.
  virtual void infer_cpu(const TeacherInput& in, const TeacherOutput& out) = 0;

 protected:
  [[noreturn]] static void param_error(const std::string& param, const std::string& what) {
    throw ValidationError("param '" + param + "': " + what);
  }
  // For infer() in a build without CUDA (never reached: such a build has no GPU streams).
  [[noreturn]] static void no_cuda() { throw CudaError("this build has no CUDA (DIRECTPORT_WITH_CUDA=OFF)"); }
};

// What a teacher says about itself at registration.
struct TeacherDescription {
  std::string type;      // the node type, e.g. "edges"
  std::string modality;  // "vision", "depth", "audio", "language", "example"
  std::string help;      // one line
  std::string input;     // what it takes, for `node --help` and the docs
  std::string output;    // what it gives
  std::vector<ParamSpec> params;  // its own params (the SDK adds from, stream, memory, ...)
};

// What the registry holds: the description and a factory.
struct TeacherInfo : TeacherDescription {
  std::function<std::unique_ptr<Teacher>()> make;
};

// Every teacher linked into this program, by type.
class TeacherRegistry {
 public:
  static TeacherRegistry& instance();
  void add(TeacherInfo info);  // throws PreconditionError on a duplicate or a reserved param name
  const TeacherInfo* find(const std::string& type) const;
  std::vector<const TeacherInfo*> all() const;  // sorted by type

 private:
  std::vector<TeacherInfo> teachers_;
};

struct TeacherRegistrar {
  TeacherRegistrar(TeacherDescription description, std::function<std::unique_ptr<Teacher>()> make);
};

// Params the SDK gives every teacher node; a teacher may not declare these.
const std::vector<ParamSpec>& sdk_params();

// One teacher with its input and output specs fixed: what the node body runs, and what tests and
// tools use to run a teacher without processes.
class TeacherSession {
 public:
  // Makes the registered teacher `type`, configures it with `params` (its own params only; errors
  // name "params.KEY"), checks `input` (errors name `from`, the stream it comes from) and its
  // output spec. Throws ValidationError for bad params or input, OutputMismatch for a bad output spec.
  TeacherSession(const std::string& type, const nlohmann::json& params, const TensorSpec& input,
                 const std::string& from = "the input");
  ~TeacherSession();
  TeacherSession(TeacherSession&&) noexcept;
  TeacherSession& operator=(TeacherSession&&) noexcept;

  const TeacherInfo& info() const { return *info_; }
  const TensorSpec& input_spec() const { return input_; }
  const TensorSpec& output_spec() const { return output_; }
  Teacher& teacher() { return *teacher_; }

  // `in`: input_spec().bytes() bytes; `out`: output_spec().bytes() bytes. setup() runs before
  // the first call.
  void infer_cpu(const void* in, std::uint64_t frame_id, std::int64_t t_source_ns, void* out);
  void infer_gpu(const void* in, std::uint64_t frame_id, std::int64_t t_source_ns, void* out, GpuStream stream);

  // The producer of the input came back with `input`: throws ValidationError if the teacher cannot
  // take it, OutputMismatch if its output would differ from the published one; else adopts it.
  void input_changed(const TensorSpec& input);

 private:
  void ready(bool on_gpu);
  const TeacherInfo* info_ = nullptr;
  std::unique_ptr<Teacher> teacher_;
  std::string from_;
  TensorSpec input_, output_;
  int setup_ = -1;  // -1: not yet; 0: CPU; 1: GPU
};

// Grid size for a 1-D launch of `n` threads in blocks of `block`.
inline unsigned blocks_for(std::size_t n, unsigned block) {
  return static_cast<unsigned>((n + block - 1) / block ? (n + block - 1) / block : 1);
}

#if DP_TEACHER_CUDA
inline cudaStream_t cuda_stream(GpuStream s) { return reinterpret_cast<cudaStream_t>(s); }
// After a launch: throws CudaError naming `what` if the launch failed.
inline void check_launch(const char* what) {
  cudaError_t rc = cudaGetLastError();
  if (rc != cudaSuccess) ::dp::cuda::throw_runtime(rc, what, __FILE__, __LINE__);
}
#endif

}  // namespace dp::teachers

#define DP_TEACHER_CONCAT2(a, b) a##b
#define DP_TEACHER_CONCAT(a, b) DP_TEACHER_CONCAT2(a, b)
// DP_REGISTER_TEACHER(Class, {"type", "modality", "help", "input", "output", {params...}});
// at namespace scope, once per teacher. The teachers library is linked whole (an OBJECT
// library), so the registration runs in every program that links it.
#define DP_REGISTER_TEACHER(Class, ...)                                                       \
  static const ::dp::teachers::TeacherRegistrar DP_TEACHER_CONCAT(dp_teacher_registrar_, __LINE__)( \
      ::dp::teachers::TeacherDescription __VA_ARGS__, [] { return std::unique_ptr<::dp::teachers::Teacher>(new Class); })

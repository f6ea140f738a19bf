// The teacher SDK outside the node: the registry, specs, and TeacherSession (the checks every
// teacher goes through, in a node or in a test).
#include "directport/teachers/teacher.hpp"

#include <algorithm>
#include <limits>

namespace dp::teachers {

using nlohmann::json;

std::size_t TensorSpec::elements() const {
  std::size_t n = 1;
  for (auto d : shape) n *= d > 0 ? static_cast<std::size_t>(d) : 0;
  return n;
}

std::string TensorSpec::str() const { return std::string(dtype_name(dtype)) + " " + json(shape).dump(); }

const void* TeacherInput::typed(DType want) const {
  if (spec->dtype != want) {
    throw OutputMismatch(std::string("teacher '") + teacher + "' reads its input as " + dtype_name(want) + " but the input is " +
                         spec->str() + ": its accepts() let through an input its infer() does not handle");
  }
  return data;
}

void* TeacherOutput::typed(DType want) const {
  if (spec->dtype != want) {
    throw OutputMismatch(std::string("teacher '") + teacher + "' writes its output as " + dtype_name(want) + " but declared " +
                         spec->str() + " in output_spec(): make infer() and output_spec() agree");
  }
  return data;
}

const std::vector<ParamSpec>& sdk_params() {
  using T = ParamType;
  static const std::vector<ParamSpec> p = {
      {"from", T::string, nullptr, true, "the input stream, NODE/STREAM"},
      {"stream", T::string, "out", false, "name of the published stream"},
      {"memory", T::string, "auto", false, "auto (the input's side: GPU or host) | host | cuda-vmm | cuda-ipc"},
      {"slots", T::integer, 3, false, "slots in the output ring (2..16)"},
      {"take", T::string, "latest", false, "latest (skip to the newest input frame) | next (every frame, oldest first)"},
      {"frames", T::integer, 0, false, "stop after this many outputs (0: until stopped)"},
      {"startup_timeout_s", T::number, 30.0, false, "how long to wait for the input stream to appear"}};
  return p;
}

TeacherRegistry& TeacherRegistry::instance() {
  static TeacherRegistry r;
  return r;
}

void TeacherRegistry::add(TeacherInfo info) {
  DP_EXPECTS(!info.type.empty() && info.make, "a teacher needs a type and a factory");
  if (find(info.type)) throw PreconditionError("teacher type '" + info.type + "' is registered twice");
  for (auto& p : info.params) {
    for (auto& s : sdk_params()) {
      if (p.name == s.name) {
        throw PreconditionError("teacher '" + info.type + "' declares param '" + p.name + "', which the SDK gives every teacher");
      }
    }
  }
  teachers_.push_back(std::move(info));
}

const TeacherInfo* TeacherRegistry::find(const std::string& type) const {
  for (auto& t : teachers_) {
    if (t.type == type) return &t;
  }
  return nullptr;
}

std::vector<const TeacherInfo*> TeacherRegistry::all() const {
  std::vector<const TeacherInfo*> out;
  for (auto& t : teachers_) out.push_back(&t);
  std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->type < b->type; });
  return out;
}

TeacherRegistrar::TeacherRegistrar(TeacherDescription description, std::function<std::unique_ptr<Teacher>()> make) {
  TeacherInfo info;
  static_cast<TeacherDescription&>(info) = std::move(description);
  info.make = std::move(make);
  TeacherRegistry::instance().add(std::move(info));
}

namespace {

// A spec a stream can carry: a real shape, at most 2 GiB.
void check_output_spec(const TeacherInfo& info, const TensorSpec& out, const TensorSpec& in) {
  std::string why;
  if (out.shape.empty() || out.shape.size() > 8) {
    why = "a shape of 1 to 8 dimensions";
  } else {
    for (auto d : out.shape) {
      if (d < 1) why = "every dimension at least 1";
    }
  }
  if (why.empty() && out.bytes() > (std::size_t{1} << 31)) why = "at most 2 GiB";
  if (!why.empty()) {
    throw OutputMismatch("teacher '" + info.type + "' declares its output for input " + in.str() + " as " + out.str() +
                         ": an output needs " + why);
  }
}

}  // namespace

TeacherSession::TeacherSession(const std::string& type, const json& params, const TensorSpec& input, const std::string& from)
    : from_(from), input_(input) {
  info_ = TeacherRegistry::instance().find(type);
  if (!info_) {
    std::string known;
    for (auto* t : TeacherRegistry::instance().all()) known += (known.empty() ? "" : ", ") + t->type;
    throw ValidationError("unknown teacher type '" + type + "' (known: " + known + ")");
  }
  NodeType as_node;
  as_node.type = type;
  as_node.params = info_->params;
  auto checked = validate_params(as_node, params.is_null() ? json::object() : params, "params");
  teacher_ = info_->make();
  try {
    teacher_->configure(checked);
  } catch (const ValidationError& e) {
    throw ValidationError("teacher '" + type + "': " + e.what());
  }
  const std::string why = teacher_->accepts(input_);
  if (!why.empty()) {
    throw ValidationError("param 'from': " + from_ + " is " + input_.str() + ", but teacher '" + type + "' needs " + why);
  }
  output_ = teacher_->output_spec(input_);
  check_output_spec(*info_, output_, input_);
}

TeacherSession::~TeacherSession() = default;
TeacherSession::TeacherSession(TeacherSession&&) noexcept = default;
TeacherSession& TeacherSession::operator=(TeacherSession&&) noexcept = default;

void TeacherSession::ready(bool on_gpu) {
  const int want = on_gpu ? 1 : 0;
  if (setup_ == want) return;
  DP_EXPECTS(setup_ < 0, "a teacher session runs on the CPU or on the GPU, not both");
  teacher_->setup(input_, on_gpu);
  setup_ = want;
}

void TeacherSession::infer_cpu(const void* in, std::uint64_t frame_id, std::int64_t t_source_ns, void* out) {
  ready(false);
  TeacherInput i{in, &input_, frame_id, t_source_ns, info_->type.c_str()};
  TeacherOutput o{out, &output_, info_->type.c_str()};
  teacher_->infer_cpu(i, o);
}

void TeacherSession::infer_gpu(const void* in, std::uint64_t frame_id, std::int64_t t_source_ns, void* out, GpuStream stream) {
  ready(true);
  TeacherInput i{in, &input_, frame_id, t_source_ns, info_->type.c_str()};
  TeacherOutput o{out, &output_, info_->type.c_str()};
  teacher_->infer(i, o, stream);
}

void TeacherSession::input_changed(const TensorSpec& input) {
  if (input.same_tensor(input_)) {
    input_.layout = input.layout;
    return;
  }
  const std::string why = teacher_->accepts(input);
  if (!why.empty()) {
    throw ValidationError("param 'from': " + from_ + " came back as " + input.str() + " (was " + input_.str() + "), but teacher '" +
                          info_->type + "' needs " + why);
  }
  auto out = teacher_->output_spec(input);
  check_output_spec(*info_, out, input);
  if (!out.same_tensor(output_)) {
    throw OutputMismatch("teacher '" + info_->type + "': " + from_ + " came back as " + input.str() + " (was " + input_.str() +
                         "); the output would be " + out.str() + " but the stream was announced as " + output_.str() +
                         ": restart the teacher to publish the new shape");
  }
  // Same output from another input shape: the teacher must set up again for it.
  const int was = setup_;
  input_ = input;
  if (was >= 0) {
    setup_ = -1;
    ready(was == 1);
  }
}

}  // namespace dp::teachers

#include "directport/kernels/pattern.hpp"

#include <string>

#include "directport/core/error.hpp"
#include "directport/kernels/half.hpp"

namespace dp::kernels {

void fill_pattern_cpu(void* dst, DType dtype, std::size_t elements, std::uint64_t plane, std::uint64_t seed,
                      std::uint64_t frame_id) {
  DP_EXPECTS(plane > 0, "a pattern's channel length must be positive");
  switch (dtype) {
    case DType::f32: {
      auto* o = static_cast<float*>(dst);
      for (std::size_t k = 0; k < elements; ++k) o[k] = pattern_value(seed, frame_id, k, plane);
      return;
    }
    case DType::f16:
    case DType::bf16: {
      auto* o = static_cast<std::uint16_t*>(dst);
      for (std::size_t k = 0; k < elements; ++k) {
        const float v = pattern_value(seed, frame_id, k, plane);
        o[k] = dtype == DType::f16 ? float_to_half(v) : float_to_bf16(v);
      }
      return;
    }
    default:
      throw ValidationError(std::string("pattern tensors are f32, f16 or bf16, not ") + dtype_name(dtype));
  }
}

}  // namespace dp::kernels

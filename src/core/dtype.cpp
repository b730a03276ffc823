#include "core/dtype.h"

#include <bit>

namespace mamba {

size_t dtype_size(DType dtype) { return dtype == DType::F32 ? 4 : 2; }

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
  }
  return "?";
}

bool parse_dtype(std::string_view name, DType* out) {
  if (name == "F32" || name == "f32" || name == "fp32" || name == "float32") {
    *out = DType::F32;
  } else if (name == "F16" || name == "f16" || name == "fp16" || name == "float16") {
    *out = DType::F16;
  } else if (name == "BF16" || name == "bf16" || name == "bfloat16") {
    *out = DType::BF16;
  } else {
    return false;
  }
  return true;
}

void convert_to_f32(float* out, const void* in, DType dtype, size_t n) {
  if (n == 0) return;  // an empty tensor may have no buffer at all
  const auto* bytes = static_cast<const uint8_t*>(in);
  if (dtype == DType::F32) {
    std::memcpy(out, in, n * 4);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    uint16_t h;
    std::memcpy(&h, bytes + 2 * i, 2);
    out[i] = dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
}

void convert_from_f32(void* out, const float* in, DType dtype, size_t n) {
  if (n == 0) return;
  auto* bytes = static_cast<uint8_t*>(out);
  if (dtype == DType::F32) {
    std::memcpy(out, in, n * 4);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    uint16_t h = dtype == DType::BF16 ? f32_to_bf16(in[i]) : f32_to_f16(in[i]);
    std::memcpy(bytes + 2 * i, &h, 2);
  }
}

}  // namespace mamba

#include "core/dtype.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace mamba {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
    case DType::I8: return 1;
  }
  return 4;
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I8: return "I8";
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
  } else if (name == "I8" || name == "i8" || name == "int8" || name == "q8_0") {
    *out = DType::I8;
  } else {
    return false;
  }
  return true;
}

void convert_to_f32(float* out, const void* in, DType dtype, size_t n) {
  if (n == 0) return;  // an empty tensor may have no buffer at all
  const auto* bytes = static_cast<const uint8_t*>(in);
  if (dtype == DType::F32) {
    if (n) std::memcpy(out, in, n * 4);  // an empty vector's data() may be null
    return;
  }
  if (dtype == DType::I8) {  // the integers themselves; a quantized weight's scales are applied by dequantize_q8
    for (size_t i = 0; i < n; i++) out[i] = static_cast<float>(static_cast<int8_t>(bytes[i]));
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
    if (n) std::memcpy(out, in, n * 4);  // an empty vector's data() may be null
    return;
  }
  if (dtype == DType::I8) {  // rounded and clamped to [−128, 127]
    for (size_t i = 0; i < n; i++) {
      bytes[i] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(std::nearbyint(in[i]), -128.0f, 127.0f)));
    }
    return;
  }
  for (size_t i = 0; i < n; i++) {
    uint16_t h = dtype == DType::BF16 ? f32_to_bf16(in[i]) : f32_to_f16(in[i]);
    std::memcpy(bytes + 2 * i, &h, 2);
  }
}

void convert(void* out, DType out_dtype, const void* in, DType in_dtype, size_t n) {
  constexpr size_t kPiece = 1024;
  float tmp[kPiece];
  const auto* src = static_cast<const uint8_t*>(in);
  auto* dst = static_cast<uint8_t*>(out);
  for (size_t i = 0; i < n; i += kPiece) {
    const size_t len = std::min(kPiece, n - i);
    convert_to_f32(tmp, src + i * dtype_size(in_dtype), in_dtype, len);
    convert_from_f32(dst + i * dtype_size(out_dtype), tmp, out_dtype, len);
  }
}

void quantize_q8(int8_t* q, uint16_t* scales, const float* w, int64_t rows, int64_t cols) {
  const int64_t blocks = q8_blocks(cols);
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t b = 0; b < blocks; b++) {
      const int64_t k0 = b * kQ8Block, k1 = std::min<int64_t>(cols, k0 + kQ8Block);
      const float* x = w + r * cols;
      float amax = 0.0f;
      for (int64_t k = k0; k < k1; k++) amax = std::max(amax, std::abs(x[k]));
      // As ggml's quantize_row_q8_0_ref: the values divide by the unrounded d, the F16 d is stored.
      const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
      scales[r * blocks + b] = f32_to_f16(d);
      for (int64_t k = k0; k < k1; k++) q[r * cols + k] = static_cast<int8_t>(std::round(x[k] * id));
    }
  }
}

void dequantize_q8(float* w, const int8_t* q, const uint16_t* scales, int64_t rows, int64_t cols) {
  const int64_t blocks = q8_blocks(cols);
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t k = 0; k < cols; k++) {
      uint16_t d;  // copied: a file's scales need not be 2-byte aligned (an odd-sized tensor before them)
      std::memcpy(&d, scales + r * blocks + k / kQ8Block, 2);
      w[r * cols + k] = f16_to_f32(d) * q[r * cols + k];
    }
  }
}

}  // namespace mamba

// Storage dtypes of checkpoint tensors and exact conversions to and from fp32.
#pragma once

#include <cstdint>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <string_view>

namespace mamba {

enum class DType { F32, F16, BF16 };

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);  // the safetensors spelling: "F32", "F16", "BF16"
bool parse_dtype(std::string_view name, DType* out);

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, as torch's .to(torch.bfloat16); NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// IEEE half precision in integer arithmetic, exact (round to nearest even), for compilers without
// _Float16 (clang before 15 on x86, which builds the fuzz targets). Tested against _Float16.
inline float f16_to_f32_soft(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa · 2^-24, exact in fp32
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  // Inf; NaN made quiet, as the hardware's conversion does; else the exponent rebiased from 15 to 127.
  const uint32_t bits = exponent == 0x1f ? sign | (mantissa ? 0x7fc00000u : 0x7f800000u) | (mantissa << 13)
                                         : sign | ((exponent + 112) << 23) | (mantissa << 13);
  return std::bit_cast<float>(bits);
}

inline uint16_t f32_to_f16_soft(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u | ((a >> 13) & 0x3ffu);  // NaN stays a (quiet) NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;                       // ≥ 65520 rounds to Inf
  if (a < 0x38800000u) {  // below 2^-14: a subnormal half, |f| · 2^24 rounded to an integer (< 1025)
    return sign | static_cast<uint16_t>(std::nearbyint(std::bit_cast<float>(a) * 0x1p24f));
  }
  a += 0xfffu + ((a >> 13) & 1u);  // round the 13 dropped bits to nearest even; a carry bumps the exponent
  return sign | static_cast<uint16_t>((a - (112u << 23)) >> 13);
}

#if defined(__FLT16_MAX__)
inline float f16_to_f32(uint16_t h) { return static_cast<float>(std::bit_cast<_Float16>(h)); }
inline uint16_t f32_to_f16(float f) { return std::bit_cast<uint16_t>(static_cast<_Float16>(f)); }
#else
inline float f16_to_f32(uint16_t h) { return f16_to_f32_soft(h); }
inline uint16_t f32_to_f16(float f) { return f32_to_f16_soft(f); }
#endif

// Converts n elements stored as `dtype` (little-endian, any alignment) to fp32.
void convert_to_f32(float* out, const void* in, DType dtype, size_t n);
// Converts n fp32 values to `dtype` bytes.
void convert_from_f32(void* out, const float* in, DType dtype, size_t n);

}  // namespace mamba

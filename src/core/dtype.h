// Storage dtypes of checkpoint tensors and exact conversions to and from fp32, and the int8 form of a
// weight matrix (blocks of kQ8Block values along each row with one F16 scale each: GGUF's q8_0).
#pragma once

#include <cstdint>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <string_view>

namespace mamba {

// I8 is a plain int8 tensor in a file; as a weight's type (WeightView) it is the quantized form below,
// whose scales live beside the values.
enum class DType { F32, F16, BF16, I8 };

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);  // the safetensors spelling: "F32", "F16", "BF16", "I8"
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
  float f;
  std::memcpy(&f, &bits, 4);  // not std::bit_cast: CUDA code includes this as C++17
  return f;
}

inline uint16_t f32_to_f16_soft(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u | ((a >> 13) & 0x3ffu);  // NaN stays a (quiet) NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;                       // ≥ 65520 rounds to Inf
  if (a < 0x38800000u) {  // below 2^-14: a subnormal half, |f| · 2^24 rounded to an integer (< 1025)
    float magnitude;
    std::memcpy(&magnitude, &a, 4);
    return sign | static_cast<uint16_t>(std::nearbyint(magnitude * 0x1p24f));
  }
  a += 0xfffu + ((a >> 13) & 1u);  // round the 13 dropped bits to nearest even; a carry bumps the exponent
  return sign | static_cast<uint16_t>((a - (112u << 23)) >> 13);
}

#if defined(__FLT16_MAX__) && !defined(__CUDACC__)  // nvcc's front end has no _Float16
inline float f16_to_f32(uint16_t h) { return static_cast<float>(std::bit_cast<_Float16>(h)); }
inline uint16_t f32_to_f16(float f) { return std::bit_cast<uint16_t>(static_cast<_Float16>(f)); }
#else
inline float f16_to_f32(uint16_t h) { return f16_to_f32_soft(h); }
inline uint16_t f32_to_f16(float f) { return f32_to_f16_soft(f); }
#endif

// ---- int8 weights: q8_0 in two planes ----
// Each row of a (rows, cols) matrix is cut into blocks of kQ8Block values (the last may be shorter);
// a block's scale is d = max|w| / 127 rounded to F16, and its values q = round(w / d) in [−127, 127],
// so that w ≈ d · q. Values and scales are GGUF's q8_0 blocks bit for bit (the same rounding), kept in
// two arrays instead of interleaved 34-byte blocks: the int8 values (rows, cols) row-major, then the
// scales (rows, q8_blocks(cols)) as F16.
constexpr int kQ8Block = 32;
inline int64_t q8_blocks(int64_t cols) { return (cols + kQ8Block - 1) / kQ8Block; }
void quantize_q8(int8_t* q, uint16_t* scales, const float* w, int64_t rows, int64_t cols);
void dequantize_q8(float* w, const int8_t* q, const uint16_t* scales, int64_t rows, int64_t cols);

// Converts n elements stored as `dtype` (little-endian, any alignment) to fp32.
void convert_to_f32(float* out, const void* in, DType dtype, size_t n);
// Converts n fp32 values to `dtype` bytes.
void convert_from_f32(void* out, const float* in, DType dtype, size_t n);
// Converts n elements between any two dtypes (through fp32, which holds every value of each exactly);
// `in` may have any alignment.
void convert(void* out, DType out_dtype, const void* in, DType in_dtype, size_t n);

}  // namespace mamba

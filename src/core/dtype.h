// Storage dtypes of checkpoint tensors and exact conversions to and from fp32.
#pragma once

#include <cstdint>
#include <bit>
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

#ifndef __CUDACC__  // nvcc's front end has no _Float16; CUDA code converts with cuda_fp16.h
inline float f16_to_f32(uint16_t h) { return static_cast<float>(std::bit_cast<_Float16>(h)); }
inline uint16_t f32_to_f16(float f) { return std::bit_cast<uint16_t>(static_cast<_Float16>(f)); }
#endif

// Converts n elements stored as `dtype` (little-endian, any alignment) to fp32.
void convert_to_f32(float* out, const void* in, DType dtype, size_t n);
// Converts n fp32 values to `dtype` bytes.
void convert_from_f32(void* out, const float* in, DType dtype, size_t n);
// Converts n elements between any two dtypes (through fp32, which holds every value of each exactly);
// `in` may have any alignment.
void convert(void* out, DType out_dtype, const void* in, DType in_dtype, size_t n);

}  // namespace mamba

// Helpers shared by the CUDA tests: whether a GPU is present, and the host side of the input dtypes
// (rounding fp32 to bf16 / fp16 bits and back, as the kernels read them).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ops/cuda/scan.h"

namespace mamba::cuda::test {

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

inline uint16_t bf16_bits(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_value(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f16_bits(float f) {  // round to nearest even (cuda_fp16.h's conversions run on the host too)
  return static_cast<__half_raw>(__float2half_rn(f)).x;
}
inline float f16_value(uint16_t u) {
  __half_raw r;
  r.x = u;
  return __half2float(__half(r));
}

inline size_t dtype_size(DType dtype) { return dtype == DType::f32 ? 4 : 2; }
inline const char* dtype_name(DType dtype) {
  return dtype == DType::bf16 ? "bf16" : dtype == DType::f16 ? "f16" : "f32";
}

}  // namespace mamba::cuda::test

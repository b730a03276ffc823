// Device helpers shared by the CUDA kernels: dtype conversion (fp32, bf16, fp16) and the elementwise
// functions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace mamba::cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// Keeps a value that only some lanes need computed by every lane, in straight-line code: without it
// the compiler sinks an expensive function (softplus, SiLU) under a branch per element, and the
// elements' latencies, which would overlap, are serialized (seen in the SASS: BSSY/BSYNC around each
// element's MUFU.EX2 + MUFU.RCP). The empty asm emits nothing.
__device__ __forceinline__ float unconditional(float x) {
  asm volatile("" : "+f"(x));
  return x;
}

constexpr float kLog2e = 1.4426950408889634f;

// softplus(x) = log(1 + eˣ) = max(x, 0) + log1p(y), y = e^−|x| ≤ 1; like torch (and the CPU oracle), x
// itself above 20. log1p(y) = 2·atanh(s) with s = y / (2 + y) ≤ 1/3, as its odd series to s¹³ (relative
// error < 2e-8): the SFU's log has an absolute error (~2⁻²²) too large next to a small log1p, and
// log1pf's branches would serialize the staging loop.
__device__ __forceinline__ float softplus(float x) {
  const float y = __expf(-fabsf(x));
  const float s = __fdividef(y, 2.0f + y), s2 = s * s;
  float p = 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  const float sp = fmaxf(x, 0.0f) + 2.0f * s * p;
  return x > 20.0f ? x : sp;
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }
__device__ __forceinline__ float silu(float x) { return x * sigmoid(x); }

}  // namespace mamba::cuda

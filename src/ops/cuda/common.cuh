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
// itself above 20. log1p(y) = y·p(y), p a degree-8 polynomial fitted to log1p(y)/y on [0, 1]
// (dev/cuda/fit_log1p.py; relative error ≤ 2.2e-7 evaluated in fp32): one SFU op, the exponential, and
// no division. The SFU's log has an absolute error (~2⁻²²) too large next to a small log1p, and
// log1pf's branches would serialize the staging loop.
__device__ __forceinline__ float softplus(float x) {
  const float y = __expf(-fabsf(x));
  float p = 0.005232889670878649f;
  p = p * y - 0.029506023973226547f;
  p = p * y + 0.07822722941637039f;
  p = p * y - 0.13663354516029358f;
  p = p * y + 0.19106058776378632f;
  p = p * y - 0.24842995405197144f;
  p = p * y + 0.3331909775733948f;
  p = p * y - 0.4999949336051941f;
  p = p * y + 0.9999999403953552f;
  const float sp = fmaxf(x, 0.0f) + y * p;
  return x > 20.0f ? x : sp;
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }
__device__ __forceinline__ float silu(float x) { return x * sigmoid(x); }

}  // namespace mamba::cuda

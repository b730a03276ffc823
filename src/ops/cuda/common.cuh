// Device helpers shared by the CUDA kernels: dtype conversion (fp32, bf16, fp16) and the elementwise
// functions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "core/dtype.h"
#include "ops/cuda/check.h"

namespace mamba::cuda {

using mamba::DType;

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

// Host side: calls f with a value of the C++ type of `dtype` (float, __nv_bfloat16, __half), for launchers
// that instantiate a kernel per dtype.
template <typename F>
void with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: f(float{}); break;
    case DType::BF16: f(__nv_bfloat16{}); break;
    case DType::F16: f(__half{}); break;
  }
}

// Host side: whether rows of elem_bytes-byte elements at ptr, stride elements apart, all start on 16 bytes.
inline bool rows_aligned16(const void* ptr, int64_t stride, int64_t elem_bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && stride * elem_bytes % 16 == 0;
}

// Vectors of kWords 32-bit words (4, 8, 16 bytes or a multiple of 16) between global memory and
// registers: one load or store instruction per 16 bytes. The address must be aligned to the vector (to
// 16 bytes past 16).
template <int kWords, typename Load>
__device__ __forceinline__ void load_words(uint32_t (&w)[kWords], const void* src, Load load) {
  if constexpr (kWords % 4 == 0) {
#pragma unroll
    for (int q = 0; q < kWords / 4; q++) {
      const uint4 v = load(static_cast<const uint4*>(src) + q);
      w[4 * q] = v.x, w[4 * q + 1] = v.y, w[4 * q + 2] = v.z, w[4 * q + 3] = v.w;
    }
  } else if constexpr (kWords == 2) {
    const uint2 v = load(static_cast<const uint2*>(src));
    w[0] = v.x, w[1] = v.y;
  } else {
    static_assert(kWords == 1, "vectors of 4, 8 or 16·k bytes");
    w[0] = load(static_cast<const unsigned*>(src));
  }
}
// Read-only data (the non-coherent path) and data written earlier in the same launch (through L2).
template <int kWords>
__device__ __forceinline__ void ldg_words(uint32_t (&w)[kWords], const void* src) {
  load_words(w, src, [](auto* p) { return __ldg(p); });
}
template <int kWords>
__device__ __forceinline__ void ldcg_words(uint32_t (&w)[kWords], const void* src) {
  load_words(w, src, [](auto* p) { return __ldcg(p); });
}
template <int kWords>
__device__ __forceinline__ void store_words(void* dst, const uint32_t (&w)[kWords]) {
  if constexpr (kWords % 4 == 0) {
#pragma unroll
    for (int q = 0; q < kWords / 4; q++) {
      static_cast<uint4*>(dst)[q] = make_uint4(w[4 * q], w[4 * q + 1], w[4 * q + 2], w[4 * q + 3]);
    }
  } else if constexpr (kWords == 2) {
    *static_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
  } else {
    static_assert(kWords == 1, "vectors of 4, 8 or 16·k bytes");
    *static_cast<unsigned*>(dst) = w[0];
  }
}

// Element i of T values packed in 32-bit words (two 16-bit values a word, the first in the low half),
// as fp32; and fp32 values packed back, rounded to nearest as from_float does.
template <typename T>
__device__ __forceinline__ float unpack(const uint32_t* w, int i) {
  if constexpr (sizeof(T) == 4) {
    return __uint_as_float(w[i]);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __uint_as_float(i % 2 ? w[i / 2] & 0xffff0000u : w[i / 2] << 16);
  } else {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(i % 2 ? w[i / 2] >> 16 : w[i / 2] & 0xffffu)));
  }
}
template <typename T, int n>
__device__ __forceinline__ void pack(uint32_t (&w)[n * sizeof(T) / 4], const float (&x)[n]) {
#pragma unroll
  for (int i = 0; i < n * static_cast<int>(sizeof(T)) / 4; i++) {
    if constexpr (sizeof(T) == 4) {
      w[i] = __float_as_uint(x[i]);
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      const __nv_bfloat162 v = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
      memcpy(&w[i], &v, 4);
    } else {
      const __half2 v = __floats2half2_rn(x[2 * i], x[2 * i + 1]);
      memcpy(&w[i], &v, 4);
    }
  }
}

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

// op over a block of kThreads values, in a fixed order (the warps' shuffles, then the warps in turn), so
// the result is the same bits on every run; every thread gets it. `shared` holds kThreads / 32 values and
// may be reused after the call. Every thread of the block must call it.
template <int kThreads, typename T, typename F>
__device__ __forceinline__ T block_reduce(T v, F op, T* shared) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  v = shared[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; w++) v = op(v, shared[w]);
  __syncthreads();
  return v;
}

// Programmatic dependent launch (Hopper and later): a decode step is ~150 kernels of a few microseconds,
// and the gap between two of them (the next one's launch and its blocks' start) is a large part of each.
// A kernel launched by launch_pdl may start while the one before it in the stream is still running; it
// calls pdl_wait() before reading anything an earlier kernel wrote (the wait returns once that kernel
// has finished and its writes are visible) and pdl_launch_dependents() to let the next one start early.
// Before the wait a kernel may prefetch into L2 (coherent for every SM), and read into registers only
// parameters (weights, A, D, biases): the kernels that write those (uploads, AdamW, the low-precision
// copies) are ordinary launches, which start after all earlier work has ended and let their dependents
// start only when they end, so no parameter changes while such a kernel is in flight. Anything else the
// kernel before it may still be writing. On older GPUs, or with MAMBA_CUDA_PDL=0 (to measure its
// worth), the launch is an ordinary one and the two calls do nothing.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// A hint to fetch the 128-byte line holding p into L2.
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

bool pdl_enabled();  // the current GPU has it (compute capability ≥ 9.0) and MAMBA_CUDA_PDL is not 0

template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = pdl_enabled() ? 1 : 0;
  MAMBA_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace mamba::cuda

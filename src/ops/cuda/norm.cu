// Residual add + RMSNorm (ops/norm.h): one block per row. The residual stream is fp32 whatever the
// activations' type (residual_in_fp32); the row's sum of squares is reduced in the block.
#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops.h"

namespace mamba::cuda {

namespace {

constexpr int kNormThreads = 256;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kNormThreads) rmsnorm_kernel(RmsNormParams p) {
  const int64_t m = blockIdx.x;
  float* r = p.residual + m * p.C;
  const T* x = static_cast<const T*>(p.inp) + m * p.C;
  T* out = static_cast<T*>(p.out) + m * p.C;
  float sum_sq = 0.0f;
  for (int c = threadIdx.x; c < p.C; c += kNormThreads) {
    const float v = p.first ? to_float(x[c]) : to_float(x[c]) + r[c];
    r[c] = v;  // read back below by the same thread only
    sum_sq += v * v;
  }
  __shared__ float partial[kNormThreads / 32];
  sum_sq = warp_sum(sum_sq);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum_sq;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < kNormThreads / 32 ? partial[threadIdx.x] : 0.0f;
    v = warp_sum(v);
    if (threadIdx.x == 0) partial[0] = v;
  }
  __syncthreads();
  const float rstd = rsqrtf(partial[0] / static_cast<float>(p.C) + p.eps);
  for (int c = threadIdx.x; c < p.C; c += kNormThreads) out[c] = from_float<T>(r[c] * rstd * p.weight[c]);
}

}  // namespace

void rmsnorm_fwd(const RmsNormParams& p, cudaStream_t stream) {
  if (p.M <= 0) return;
  if (p.M > 0x7fffffff || p.C <= 0 || !p.out || !p.residual || !p.inp || !p.weight) {
    throw std::invalid_argument("rmsnorm_fwd: bad arguments");
  }
  with_dtype(p.dtype, [&](auto zero) {
    rmsnorm_kernel<decltype(zero)><<<static_cast<unsigned>(p.M), kNormThreads, 0, stream>>>(p);
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba::cuda

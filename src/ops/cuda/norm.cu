// Residual add + RMSNorm (ops/norm.h): one block per row. The residual stream is fp32 whatever the
// activations' type (residual_in_fp32); the row's sum of squares is reduced in the block.
//
// The backward runs kNormBwdBlocks blocks over the rows (block k takes rows k, k + kNormBwdBlocks, ...),
// each thread holding its columns of a row in registers; the weight's gradient is summed per block in
// row order into a partial (kNormBwdBlocks, C), then the partials are added in block order by a second
// kernel: no atomics, and the same bits on every GPU (the block count is fixed, not the SM count's).
#include <string>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops.h"

namespace mamba::cuda {

namespace {

constexpr int kNormThreads = 256;
constexpr int kNormFwdCols = 12;  // columns a thread keeps in registers: C ≤ 3072 (the 2.8b's 2560)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kNormThreads) rmsnorm_kernel(RmsNormParams p) {
  const bool in_registers = p.C <= kNormFwdCols * kNormThreads;
  // The weight is read before waiting for the kernel before this one (a parameter: common.cuh), so its
  // loads overlap that kernel's tail.
  float wt[kNormFwdCols];
  if (in_registers) {
#pragma unroll
    for (int j = 0; j < kNormFwdCols; j++) {
      const int c = threadIdx.x + j * kNormThreads;
      wt[j] = c < p.C ? p.weight[c] : 0.0f;
    }
  }
  pdl_launch_dependents();  // launched by launch_pdl (common.cuh)
  pdl_wait();
  const int64_t m = blockIdx.x;
  float* r = p.residual + m * p.C;
  const T* x = p.inp ? static_cast<const T*>(p.inp) + m * p.C : nullptr;  // null: the residual as it is
  T* out = static_cast<T*>(p.out) + m * p.C;
  float sum_sq = 0.0f;
  float row[kNormFwdCols];
  if (in_registers) {
    // A row's loads all issued before the first is used: at decode (one row, one block) a loop that waits
    // on each load in turn is most of the kernel's time.
#pragma unroll
    for (int j = 0; j < kNormFwdCols; j++) {
      const int c = threadIdx.x + j * kNormThreads;
      row[j] = c >= p.C ? 0.0f : !x ? r[c] : p.first ? to_float(x[c]) : to_float(x[c]) + r[c];
    }
#pragma unroll
    for (int j = 0; j < kNormFwdCols; j++) {
      const int c = threadIdx.x + j * kNormThreads;
      if (c < p.C) r[c] = row[j];
      sum_sq += row[j] * row[j];
    }
  } else {
    for (int c = threadIdx.x; c < p.C; c += kNormThreads) {
      const float v = !x ? r[c] : p.first ? to_float(x[c]) : to_float(x[c]) + r[c];
      r[c] = v;
      sum_sq += v * v;
    }
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
  if (in_registers) {
    // The row and the weight are still in registers: no second round trip to memory after the reduction.
#pragma unroll
    for (int j = 0; j < kNormFwdCols; j++) {
      const int c = threadIdx.x + j * kNormThreads;
      if (c < p.C) out[c] = from_float<T>(row[j] * rstd * wt[j]);
    }
    return;
  }
#pragma unroll 8
  for (int c = threadIdx.x; c < p.C; c += kNormThreads) {
    out[c] = from_float<T>(r[c] * rstd * p.weight[c]);  // r[c] written above by this same thread
  }
}

constexpr int kNormBwdBlocks = 256;
constexpr int kNormBwdCols = 16;  // columns per thread: C ≤ 16 · 256 = 4096

// Sums two values over the block; every thread gets both sums.
__device__ __forceinline__ void block_sum2(float& a, float& b) {
  __shared__ float partial[2][kNormThreads / 32];
  a = warp_sum(a);
  b = warp_sum(b);
  if (threadIdx.x % 32 == 0) partial[0][threadIdx.x / 32] = a, partial[1][threadIdx.x / 32] = b;
  __syncthreads();
  a = 0.0f, b = 0.0f;
#pragma unroll
  for (int w = 0; w < kNormThreads / 32; w++) a += partial[0][w], b += partial[1][w];
  __syncthreads();  // partial is reused by the next row
}

template <typename T>
__global__ void __launch_bounds__(kNormThreads) rmsnorm_bwd_kernel(RmsNormBwdParams p, float* partial_dweight) {
  const int C = p.C;
  float acc[kNormBwdCols] = {};
  for (int64_t m = blockIdx.x; m < p.M; m += kNormBwdBlocks) {
    const float* r = p.residual + m * C;
    const T* g = static_cast<const T*>(p.dout) + m * C;
    float rv[kNormBwdCols], gv[kNormBwdCols];
    float sum_sq = 0.0f, dot = 0.0f;  // Σ r², Σ g·w·r
#pragma unroll
    for (int j = 0; j < kNormBwdCols; j++) {
      const int c = threadIdx.x + j * kNormThreads;
      rv[j] = c < C ? r[c] : 0.0f;
      gv[j] = c < C ? to_float(g[c]) : 0.0f;
      sum_sq += rv[j] * rv[j];
      dot += c < C ? gv[j] * p.weight[c] * rv[j] : 0.0f;
    }
    block_sum2(sum_sq, dot);
    const float rstd = rsqrtf(sum_sq / static_cast<float>(C) + p.eps);
    const float mean = dot * rstd / static_cast<float>(C);  // mean(g ⊙ w ⊙ r̂)
    float* dr = p.dresidual + m * C;
#pragma unroll
    for (int j = 0; j < kNormBwdCols; j++) {
      const int c = threadIdx.x + j * kNormThreads;
      if (c >= C) continue;
      const float rhat = rv[j] * rstd;
      acc[j] += gv[j] * rhat;
      dr[c] += rstd * (gv[j] * p.weight[c] - rhat * mean);
    }
  }
#pragma unroll
  for (int j = 0; j < kNormBwdCols; j++) {
    const int c = threadIdx.x + j * kNormThreads;
    if (c < C) partial_dweight[static_cast<int64_t>(blockIdx.x) * C + c] = acc[j];
  }
}

// dweight[c] += Σ_k partial[k][c], k in order.
__global__ void sum_partials_kernel(float* dweight, const float* partial, int blocks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float sum = 0.0f;
  for (int k = 0; k < blocks; k++) sum += partial[static_cast<int64_t>(k) * C + c];
  dweight[c] += sum;
}

}  // namespace

size_t rmsnorm_bwd_workspace(const RmsNormBwdParams& p) {
  return sizeof(float) * static_cast<size_t>(kNormBwdBlocks) * static_cast<size_t>(p.C > 0 ? p.C : 0);
}

void rmsnorm_bwd(const RmsNormBwdParams& p, void* workspace, cudaStream_t stream) {
  if (p.M <= 0) return;
  if (p.C <= 0 || !p.dresidual || !p.dweight || !p.dout || !p.residual || !p.weight || !workspace) {
    throw std::invalid_argument("rmsnorm_bwd: bad arguments");
  }
  if (p.C > kNormBwdCols * kNormThreads) {
    throw std::invalid_argument("rmsnorm_bwd: C = " + std::to_string(p.C) + " is above the kernel's " +
                                std::to_string(kNormBwdCols * kNormThreads));
  }
  auto* partial = static_cast<float*>(workspace);
  with_dtype(p.dtype, [&](auto zero) {
    rmsnorm_bwd_kernel<decltype(zero)><<<kNormBwdBlocks, kNormThreads, 0, stream>>>(p, partial);
  });
  MAMBA_CUDA_CHECK_LAUNCH();
  sum_partials_kernel<<<(p.C + 255) / 256, 256, 0, stream>>>(p.dweight, partial, kNormBwdBlocks, p.C);
  MAMBA_CUDA_CHECK_LAUNCH();
}

void rmsnorm_fwd(const RmsNormParams& p, cudaStream_t stream) {
  if (p.M <= 0) return;
  if (p.M > 0x7fffffff || p.C <= 0 || !p.out || !p.residual || !p.weight) {
    throw std::invalid_argument("rmsnorm_fwd: bad arguments");
  }
  with_dtype(p.dtype, [&](auto zero) {
    launch_pdl(rmsnorm_kernel<decltype(zero)>, dim3(static_cast<unsigned>(p.M)), dim3(kNormThreads), stream, p);
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba::cuda

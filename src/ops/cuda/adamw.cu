// The optimizer step (ops/adamw.h) in three launches over the flat fp32 buffers, cut into chunks of at
// most kChunk elements that each lie in one parameter range (a table uploaded with the step):
//   1. per chunk: g ← g · grad_scale (stored when ≠ 1) and its Σ g² in double, to partial[chunk];
//   2. one block: the partials summed in a fixed order, norm = √Σ written, the clipping factor decided;
//   3. per chunk: g ← g · factor (stored when clipping), then AdamW on p, m, v when the norm is finite.
// No atomics: a step gives the same bits on every run. Square root and division are IEEE-rounded here
// (__fsqrt_rn, __fdiv_rn) whatever --use_fast_math says, as the CPU's are.
#include <cmath>
#include <vector>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops.h"

namespace mamba::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 65536;  // elements per block

struct Chunk {
  int64_t offset;
  int count;
  int decay;
};

// Scalars of this step, in fp32 as the CPU's update uses them (decay: 1 − lr·λ, for the decayed ranges).
struct AdamScalars {
  float b1, one_minus_b1, b2, one_minus_b2, eps, step_size, bias2_sqrt, decay;
};

// The step's shared values, written by the reduction for the update.
struct ClipState {
  float factor;  // 1: no clipping
  int finite;    // whether the norm is finite (else the parameters are left alone)
};

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

std::vector<Chunk> chunks_of(const AdamWParams& p) {
  std::vector<Chunk> chunks;
  for (int r = 0; r < p.n_ranges; r++) {
    const AdamWRange& range = p.ranges[r];
    for (int64_t o = 0; o < range.numel; o += kChunk) {
      chunks.push_back({range.offset + o, static_cast<int>(std::min(kChunk, range.numel - o)), range.decay ? 1 : 0});
    }
  }
  return chunks;
}

__global__ void __launch_bounds__(kThreads) norm_partials_kernel(double* partial, float* grads, const Chunk* chunks,
                                                                 float grad_scale) {
  const Chunk c = chunks[blockIdx.x];
  float* g = grads + c.offset;
  double sum = 0.0;
  for (int i = threadIdx.x; i < c.count; i += kThreads) {
    float x = g[i];
    if (grad_scale != 1.0f) {
      x = __fmul_rn(x, grad_scale);
      g[i] = x;
    }
    sum += static_cast<double>(x) * x;
  }
  __shared__ double warps[kThreads / 32];
  sum = block_reduce<kThreads>(sum, [](double a, double b) { return a + b; }, warps);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void __launch_bounds__(kThreads) norm_reduce_kernel(double* norm, ClipState* state, const double* partial,
                                                               int n, double max_norm) {
  __shared__ double sums[kThreads];
  double sum = 0.0;
  for (int i = threadIdx.x; i < n; i += kThreads) sum += partial[i];
  sums[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double total = sqrt(sums[0]);
    *norm = total;
    // torch.nn.utils.clip_grad_norm_: factor max_norm / (norm + 1e-6) when below 1.
    const double factor = max_norm / (total + 1e-6);
    state->factor = max_norm > 0 && factor < 1.0 ? static_cast<float>(factor) : 1.0f;
    state->finite = isfinite(total) ? 1 : 0;
  }
}

// m and v hold the shard [shard_begin, shard_end) alone; elements outside it are clipped, not updated.
__global__ void __launch_bounds__(kThreads) adamw_kernel(float* params, float* grads, float* m, float* v,
                                                         const Chunk* chunks, const ClipState* state, AdamScalars s,
                                                         int64_t shard_begin, int64_t shard_end) {
  const Chunk c = chunks[blockIdx.x];
  const float factor = state->factor;
  const bool update = state->finite;
  const float decay = c.decay ? s.decay : 1.0f;
  for (int i = threadIdx.x; i < c.count; i += kThreads) {
    const int64_t k = c.offset + i;
    float g = grads[k];
    if (factor != 1.0f) {
      g = __fmul_rn(g, factor);
      grads[k] = g;
    }
    if (!update || k < shard_begin || k >= shard_end) continue;
    const int64_t j = k - shard_begin;
    const float w = params[k] * decay;
    const float mk = s.b1 * m[j] + s.one_minus_b1 * g;
    const float vk = s.b2 * v[j] + s.one_minus_b2 * g * g;
    m[j] = mk;
    v[j] = vk;
    const float denom = __fdiv_rn(__fsqrt_rn(vk), s.bias2_sqrt) + s.eps;
    params[k] = w - __fdiv_rn(s.step_size * mk, denom);
  }
}

}  // namespace

size_t adamw_workspace(const AdamWParams& p) {
  const size_t n = chunks_of(p).size();
  return align256(sizeof(Chunk) * n) + align256(sizeof(double) * n) + align256(sizeof(ClipState));
}

void adamw(const AdamWParams& p, void* workspace, cudaStream_t stream) {
  const bool empty_shard = p.shard_end >= 0 && p.shard_end <= p.shard_begin;  // its moments may be null
  if (!p.params || !p.grads || (!empty_shard && (!p.m || !p.v)) || !p.norm || (p.n_ranges > 0 && !p.ranges) ||
      p.step < 1 || p.shard_begin < 0 || (p.shard_end >= 0 && p.shard_end > p.n)) {
    throw std::invalid_argument("adamw: bad arguments");
  }
  const std::vector<Chunk> chunks = chunks_of(p);
  const int n = static_cast<int>(chunks.size());
  if (n == 0) {
    MAMBA_CUDA_CHECK(cudaMemsetAsync(p.norm, 0, sizeof(double), stream));
    return;
  }
  char* w = static_cast<char*>(workspace);
  auto* table = reinterpret_cast<Chunk*>(w);
  auto* partial = reinterpret_cast<double*>(w + align256(sizeof(Chunk) * n));
  auto* state = reinterpret_cast<ClipState*>(w + align256(sizeof(Chunk) * n) + align256(sizeof(double) * n));
  // From pageable memory: the copy returns once the table is staged, so the vector may go.
  MAMBA_CUDA_CHECK(cudaMemcpyAsync(table, chunks.data(), sizeof(Chunk) * n, cudaMemcpyHostToDevice, stream));

  // The bias corrections in double, then the scalars in fp32, as the CPU computes them.
  const double bias1 = 1.0 - std::pow(p.beta1, static_cast<double>(p.step));
  const double bias2_sqrt = std::sqrt(1.0 - std::pow(p.beta2, static_cast<double>(p.step)));
  AdamScalars s;
  s.b1 = static_cast<float>(p.beta1), s.one_minus_b1 = static_cast<float>(1 - p.beta1);
  s.b2 = static_cast<float>(p.beta2), s.one_minus_b2 = static_cast<float>(1 - p.beta2);
  s.eps = static_cast<float>(p.eps);
  s.step_size = static_cast<float>(p.lr / bias1);
  s.bias2_sqrt = static_cast<float>(bias2_sqrt);
  s.decay = static_cast<float>(1.0 - p.lr * p.weight_decay);

  norm_partials_kernel<<<n, kThreads, 0, stream>>>(partial, p.grads, table, p.grad_scale);
  MAMBA_CUDA_CHECK_LAUNCH();
  norm_reduce_kernel<<<1, kThreads, 0, stream>>>(p.norm, state, partial, n, p.max_norm);
  MAMBA_CUDA_CHECK_LAUNCH();
  adamw_kernel<<<n, kThreads, 0, stream>>>(p.params, p.grads, p.m, p.v, table, state, s, p.shard_begin,
                                           p.shard_end < 0 ? p.n : p.shard_end);
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba::cuda

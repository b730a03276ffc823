// Embedding lookup (ops/embedding.h) and argmax over rows (greedy decoding on the device).
#include <cfloat>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops.h"

namespace mamba::cuda {

namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void embedding_kernel(EmbeddingParams p) {
  const int64_t m = blockIdx.x;
  const T* row = static_cast<const T*>(p.table.data) + static_cast<int64_t>(p.tokens[m]) * p.C;
  T* out = static_cast<T*>(p.out) + m * p.C;
  for (int c = threadIdx.x; c < p.C; c += kThreads) out[c] = row[c];
}

// The larger of two (value, index) pairs; the smaller index on ties, as the CPU's std::max_element.
__device__ __forceinline__ void keep_max(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(int32_t* ids, const float* x, int N) {
  const float* row = x + static_cast<int64_t>(blockIdx.x) * N;
  float best = -FLT_MAX;
  int at = 0x7fffffff;
  for (int n = threadIdx.x; n < N; n += kThreads) keep_max(best, at, row[n], n);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    keep_max(best, at, __shfl_xor_sync(0xffffffffu, best, offset), __shfl_xor_sync(0xffffffffu, at, offset));
  }
  __shared__ float values[kThreads / 32];
  __shared__ int indices[kThreads / 32];
  if (threadIdx.x % 32 == 0) values[threadIdx.x / 32] = best, indices[threadIdx.x / 32] = at;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; w++) keep_max(best, at, values[w], indices[w]);
    ids[blockIdx.x] = at == 0x7fffffff ? 0 : at;
  }
}

}  // namespace

void embedding_fwd(const EmbeddingParams& p, cudaStream_t stream) {
  if (p.M <= 0) return;
  if (p.M > 0x7fffffff || p.C <= 0 || !p.out || !p.tokens || !p.table.data || p.table.dtype != p.dtype) {
    throw std::invalid_argument("embedding_fwd: bad arguments (the table must be in the activations' dtype)");
  }
  with_dtype(p.dtype, [&](auto zero) {
    embedding_kernel<decltype(zero)><<<static_cast<unsigned>(p.M), kThreads, 0, stream>>>(p);
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

void argmax_fwd(int32_t* ids, const float* x, int64_t M, int N, cudaStream_t stream) {
  if (M <= 0) return;
  if (M > 0x7fffffff || N <= 0 || !ids || !x) throw std::invalid_argument("argmax_fwd: bad arguments");
  argmax_kernel<<<static_cast<unsigned>(M), kThreads, 0, stream>>>(ids, x, N);
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba::cuda

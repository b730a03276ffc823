// Embedding lookup (ops/embedding.h) and its backward, and argmax over rows (greedy decoding on the device).
//
// The backward is deterministic without atomics: the row indices are sorted by token (CUB's radix sort,
// which is stable, so a token's rows stay in row order), then one block per run of equal tokens (and
// slice of columns) adds the run's rows to the table's row in that order, starting from the row's old
// value: the CPU's order of additions, so fp32 results equal the CPU's bit for bit.
#include <cub/device/device_radix_sort.cuh>

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

__global__ void iota_kernel(int32_t* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = static_cast<int32_t>(i);
}

// Block (i, slice): when sorted position i starts a run of equal tokens, its rows' columns
// [slice·kThreads, +kThreads) are added to the token's row of dtable in row order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    embedding_bwd_kernel(float* dtable, const T* dout, const uint32_t* sorted_tokens, const int32_t* sorted_rows,
                         int64_t M, int C) {
  const int64_t i = blockIdx.x;
  const uint32_t token = sorted_tokens[i];
  if (i > 0 && sorted_tokens[i - 1] == token) return;  // not the start of a run
  const int c = blockIdx.y * kThreads + threadIdx.x;
  if (c >= C) return;
  float* dst = dtable + static_cast<int64_t>(token) * C + c;
  float acc = *dst;
  for (int64_t j = i; j < M && sorted_tokens[j] == token; j++) acc += to_float(dout[static_cast<int64_t>(sorted_rows[j]) * C + c]);
  *dst = acc;
}

// The workspace's parts: sorted tokens, row indices before and after the sort, CUB's own scratch.
struct SortSpace {
  uint32_t* sorted_tokens;
  int32_t* rows;
  int32_t* sorted_rows;
  void* cub;
  size_t cub_bytes;
};

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

size_t cub_sort_bytes(int64_t M) {
  size_t bytes = 0;
  MAMBA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint32_t*>(nullptr),
                                                   static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                                   static_cast<int32_t*>(nullptr), static_cast<int>(M), 0, 31));
  return bytes;
}

SortSpace sort_space(void* workspace, int64_t M) {
  char* p = static_cast<char*>(workspace);
  const size_t ints = align256(sizeof(int32_t) * static_cast<size_t>(M));
  return SortSpace{reinterpret_cast<uint32_t*>(p), reinterpret_cast<int32_t*>(p + ints),
                   reinterpret_cast<int32_t*>(p + 2 * ints), p + 3 * ints, cub_sort_bytes(M)};
}

// The larger of two (value, index) pairs; the smaller index on ties, as the CPU's std::max_element.
__device__ __forceinline__ void keep_max(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(int32_t* ids, const float* x, int N) {
  pdl_launch_dependents();  // launched by launch_pdl (common.cuh)
  pdl_wait();
  const float* row = x + static_cast<int64_t>(blockIdx.x) * N;
  // kArgmaxWays independent (value, index) pairs a thread, so that as many loads are in flight rather
  // than one chain of load → compare, whose latency a one-block kernel over a 50,280-word row cannot hide.
  // keep_max orders the pairs totally (larger value, then smaller index; NaN never kept), so grouping them
  // changes nothing.
  constexpr int kArgmaxWays = 8;
  float bests[kArgmaxWays];
  int ats[kArgmaxWays];
#pragma unroll
  for (int k = 0; k < kArgmaxWays; k++) bests[k] = -FLT_MAX, ats[k] = 0x7fffffff;
  for (int n0 = threadIdx.x; n0 < N; n0 += kArgmaxWays * kThreads) {
    float v[kArgmaxWays];
#pragma unroll
    for (int k = 0; k < kArgmaxWays; k++) {
      const int n = n0 + k * kThreads;
      v[k] = n < N ? row[n] : -FLT_MAX;
    }
#pragma unroll
    for (int k = 0; k < kArgmaxWays; k++) {
      const int n = n0 + k * kThreads;
      if (n < N) keep_max(bests[k], ats[k], v[k], n);
    }
  }
  float best = bests[0];
  int at = ats[0];
#pragma unroll
  for (int k = 1; k < kArgmaxWays; k++) keep_max(best, at, bests[k], ats[k]);
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

size_t embedding_bwd_workspace(const EmbeddingBwdParams& p) {
  if (p.M <= 0) return 0;
  return 3 * align256(sizeof(int32_t) * static_cast<size_t>(p.M)) + cub_sort_bytes(p.M);
}

void embedding_bwd(const EmbeddingBwdParams& p, void* workspace, cudaStream_t stream) {
  if (p.M <= 0) return;
  if (p.M > 0x7fffffff || p.C <= 0 || !p.dtable || !p.dout || !p.tokens || !workspace) {
    throw std::invalid_argument("embedding_bwd: bad arguments");
  }
  SortSpace s = sort_space(workspace, p.M);
  iota_kernel<<<static_cast<unsigned>((p.M + kThreads - 1) / kThreads), kThreads, 0, stream>>>(s.rows, p.M);
  MAMBA_CUDA_CHECK_LAUNCH();
  // Token ids are in [0, V) ⊂ [0, 2^31): the low 31 bits order them.
  MAMBA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(s.cub, s.cub_bytes, reinterpret_cast<const uint32_t*>(p.tokens),
                                                   s.sorted_tokens, s.rows, s.sorted_rows, static_cast<int>(p.M), 0, 31,
                                                   stream));
  const dim3 grid(static_cast<unsigned>(p.M), static_cast<unsigned>((p.C + kThreads - 1) / kThreads));
  with_dtype(p.dtype, [&](auto zero) {
    using T = decltype(zero);
    embedding_bwd_kernel<T><<<grid, kThreads, 0, stream>>>(p.dtable, static_cast<const T*>(p.dout), s.sorted_tokens,
                                                           s.sorted_rows, p.M, p.C);
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

void argmax_fwd(int32_t* ids, const float* x, int64_t M, int N, cudaStream_t stream) {
  if (M <= 0) return;
  if (M > 0x7fffffff || N <= 0 || !ids || !x) throw std::invalid_argument("argmax_fwd: bad arguments");
  launch_pdl(argmax_kernel, dim3(static_cast<unsigned>(M)), dim3(kThreads), stream, ids, x, N);
}

}  // namespace mamba::cuda

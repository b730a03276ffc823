// The LM head fused with the cross-entropy loss (ops/xent.h), over the rows in chunks so that the (M, V)
// logits never exist at once: per chunk of R rows,
//   logits (R, V) fp32 = hidden · weightᵀ                       (cuBLAS, fp32 output)
//   dlogits = (softmax − onehot(target)) / count, in place       (one block per row, two passes)
//   dhidden (R, C) = dlogits · weight;  dweight (V, C) += dlogitsᵀ · hidden   (cuBLAS, fp32 accumulation)
// The count of targets that are not ignore_index is taken on the device first, and each row's loss is kept
// (in double) and summed in row order by one block at the end: no host synchronization and no atomics.
// The row kernel follows the CPU's lm_head_cross_entropy: the softmax shifted by the row's maximum, the
// probabilities of the classes other than the target summed apart (p_target − 1 = −Σ_{v≠target} p_v keeps
// the target's gradient where 1 − p_target would round to 0). It reads the row twice, not three times:
// the maximum and the sum come from one pass (online softmax), the gradient from the second.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <string>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ops.h"

namespace mamba::cuda {

namespace {

constexpr int kThreads = 256;
// Logits per chunk: 2^26 floats (256 MiB), e.g. 1334 rows of a 50,280-entry vocabulary.
constexpr int64_t kChunkLogits = int64_t{1} << 26;

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

int64_t chunk_rows(const XentParams& p) {
  return std::max<int64_t>(1, std::min<int64_t>(p.M, kChunkLogits / std::max(1, p.V)));
}

// count = the targets that are not ignore_index, by one block (integers: any order gives the same count);
// the caller's divisor instead when given and some target counts (XentParams::divisor).
__global__ void __launch_bounds__(kThreads) count_kernel(int* count, const int32_t* targets, int64_t M, int ignore,
                                                         int divisor) {
  int n = 0;
  for (int64_t m = threadIdx.x; m < M; m += kThreads) n += targets[m] != ignore;
  __shared__ int partial[kThreads / 32];
  n = block_reduce<kThreads>(n, [](int a, int b) { return a + b; }, partial);
  if (threadIdx.x == 0) *count = divisor > 0 && n > 0 ? divisor : n;
}

// A thread's running maximum m and Σ exp(z − m) over the classes other than the target, and another
// such pair folded in: the sum rescaled to the larger maximum (an empty pair is (−FLT_MAX, 0)).
__device__ __forceinline__ void fold(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  s = s * __expf(m - mm) + s2 * __expf(m2 - mm);
  m = mm;
}

constexpr int kXentBatch = 8;  // logits a thread folds in at once: one rescaling per 8

// One row of logits z (V) fp32 → dlogits in T (in place when T is float), times `scale` (the loss scale);
// its loss (double, unscaled) to row_loss.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_xent_kernel(T* dlogits, float* logits, double* row_loss, const int32_t* targets, const int* count, int V,
                        int ignore, float scale) {
  __shared__ float shared_m[kThreads / 32], shared_s[kThreads / 32];
  const int64_t r = blockIdx.x;
  const float* z = logits + r * V;
  T* dz = dlogits + r * V;
  const int32_t target = targets[r];
  if (target == ignore || *count == 0) {
    for (int v = threadIdx.x; v < V; v += kThreads) dz[v] = from_float<T>(0.0f);
    if (threadIdx.x == 0) row_loss[r] = 0.0;
    return;
  }
  const float z_target = z[target];  // read by every thread before the in-place writes below (the barriers)
  // Pass 1: the maximum and the sum of the other classes' exponentials together, kXentBatch logits a step.
  float mx = -FLT_MAX, others = 0.0f;
  for (int v0 = threadIdx.x; v0 < V; v0 += kThreads * kXentBatch) {
    float zb[kXentBatch];
    float bm = -FLT_MAX;
#pragma unroll
    for (int i = 0; i < kXentBatch; i++) {
      const int v = v0 + i * kThreads;
      zb[i] = v < V ? z[v] : -FLT_MAX;
      bm = fmaxf(bm, zb[i]);
    }
    const float m = fmaxf(mx, bm);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kXentBatch; i++) {
      const int v = v0 + i * kThreads;
      sum += v < V && v != target ? __expf(zb[i] - m) : 0.0f;
    }
    others = others * __expf(mx - m) + sum;
    mx = m;
  }
  // The block's pair, folded in a fixed order (lanes by shuffles, then the warps in turn by one thread).
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const float m2 = __shfl_down_sync(0xffffffffu, mx, offset), s2 = __shfl_down_sync(0xffffffffu, others, offset);
    fold(mx, others, m2, s2);
  }
  if (threadIdx.x % 32 == 0) shared_m[threadIdx.x / 32] = mx, shared_s[threadIdx.x / 32] = others;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; w++) fold(mx, others, shared_m[w], shared_s[w]);
    shared_m[0] = mx, shared_s[0] = others;
  }
  __syncthreads();
  mx = shared_m[0], others = shared_s[0];
  const float shifted_target = z_target - mx;
  const float sum = others + __expf(shifted_target);
  const float inv = (scale / static_cast<float>(*count)) / sum;
  // Pass 2: the gradient (each thread reads and writes its own elements: in place is safe).
  for (int v = threadIdx.x; v < V; v += kThreads) {
    dz[v] = from_float<T>(v == target ? -others * inv : __expf(z[v] - mx) * inv);
  }
  // loss = logsumexp(z) − z_target = log(sum) − (z_target − max): finite even where p_target underflows
  if (threadIdx.x == 0) row_loss[r] = log(static_cast<double>(sum)) - static_cast<double>(shifted_target);
}

// loss = Σ row_loss / count (0 when every target is ignored), the sum in a fixed order by one block.
__global__ void __launch_bounds__(kThreads) mean_loss_kernel(float* loss, const double* row_loss, const int* count,
                                                             int64_t M) {
  __shared__ double partial[kThreads];
  double sum = 0.0;
  for (int64_t m = threadIdx.x; m < M; m += kThreads) sum += row_loss[m];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = *count > 0 ? static_cast<float>(partial[0] / *count) : 0.0f;
}

// The workspace's parts: the chunk's logits (fp32), its dlogits in the activations' type (apart unless
// fp32), the rows' losses, the count.
struct XentSpace {
  float* logits;
  void* dlogits;
  double* row_loss;
  int* count;
};

XentSpace xent_space(const XentParams& p, void* workspace) {
  const int64_t R = chunk_rows(p);
  const size_t logits = align256(sizeof(float) * static_cast<size_t>(R * p.V));
  const size_t dlogits = p.dtype == DType::F32 ? 0 : align256(dtype_size(p.dtype) * static_cast<size_t>(R * p.V));
  char* w = static_cast<char*>(workspace);
  XentSpace s;
  s.logits = reinterpret_cast<float*>(w);
  s.dlogits = p.dtype == DType::F32 ? static_cast<void*>(w) : w + logits;
  s.row_loss = reinterpret_cast<double*>(w + logits + dlogits);
  s.count = reinterpret_cast<int*>(w + logits + dlogits + align256(sizeof(double) * static_cast<size_t>(p.M)));
  return s;
}

}  // namespace

size_t xent_workspace(const XentParams& p) {
  if (p.M <= 0 || p.V <= 0) return 0;
  const int64_t R = chunk_rows(p);
  const size_t dlogits = p.dtype == DType::F32 ? 0 : align256(dtype_size(p.dtype) * static_cast<size_t>(R * p.V));
  return align256(sizeof(float) * static_cast<size_t>(R * p.V)) + dlogits +
         align256(sizeof(double) * static_cast<size_t>(p.M)) + align256(sizeof(int));
}

void xent(cublasHandle_t handle, const XentParams& p, void* workspace, cudaStream_t stream) {
  if (p.M <= 0) {
    if (p.loss) MAMBA_CUDA_CHECK(cudaMemsetAsync(p.loss, 0, sizeof(float), stream));
    return;
  }
  if (p.M > INT_MAX || p.C <= 0 || p.V <= 0 || !p.loss || !p.hidden || !p.weight.data || !p.targets || !workspace ||
      p.weight.dtype != p.dtype || p.divisor < 0 || p.divisor > INT_MAX) {
    throw std::invalid_argument("xent: bad arguments (the head's weight must be in the activations' dtype)");
  }
  const XentSpace s = xent_space(p, workspace);
  const int64_t R = chunk_rows(p);
  const size_t e = dtype_size(p.dtype);
  count_kernel<<<1, kThreads, 0, stream>>>(s.count, p.targets, p.M, p.ignore_index, static_cast<int>(p.divisor));
  MAMBA_CUDA_CHECK_LAUNCH();
  for (int64_t m0 = 0; m0 < p.M; m0 += R) {
    const int rows = static_cast<int>(std::min(R, p.M - m0));
    const void* h = static_cast<const char*>(p.hidden) + static_cast<size_t>(m0) * p.C * e;
    // logits (rows, V) = hidden · weightᵀ
    gemm_ex(handle, true, false, p.V, rows, p.C, p.weight.data, p.dtype, p.C, h, p.dtype, p.C, 0.0f, s.logits,
            DType::F32, p.V, "xent, logits");
    with_dtype(p.dtype, [&](auto zero) {
      using T = decltype(zero);
      softmax_xent_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
          static_cast<T*>(s.dlogits), s.logits, s.row_loss + m0, p.targets + m0, s.count, p.V, p.ignore_index, p.scale);
    });
    MAMBA_CUDA_CHECK_LAUNCH();
    // dhidden (rows, C) = dlogits · weight;  dweight (V, C) += dlogitsᵀ · hidden
    if (p.dhidden) {
      gemm_ex(handle, false, false, p.C, rows, p.V, p.weight.data, p.dtype, p.C, s.dlogits, p.dtype, p.V, 0.0f,
              static_cast<char*>(p.dhidden) + static_cast<size_t>(m0) * p.C * e, p.dtype, p.C, "xent, dhidden");
    }
    if (p.dweight) {
      gemm_ex(handle, false, true, p.C, p.V, rows, h, p.dtype, p.C, s.dlogits, p.dtype, p.V, 1.0f, p.dweight,
              DType::F32, p.C, "xent, dweight");
    }
  }
  mean_loss_kernel<<<1, kThreads, 0, stream>>>(p.loss, s.row_loss, s.count, p.M);
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba::cuda

// The projections (ops/matmul.h) through cuBLAS: row-major out (M, N) = inp (M, K) · W (N, K)ᵀ is, in
// cuBLAS's column-major terms, outᵀ (N, M) = W_cm(K, N)ᵀ · inp_cm(K, M), with W read as a K × N
// column-major matrix (leading dimension K) and inp as K × M (leading dimension ldi). The bias, when
// given, is added by a kernel of its own.
//
// The backward is two more GEMMs in the same terms: dinp (K × M) = W (K × N) · dout (N × M), with
// β = 1 when the contract accumulates, and dweight (K × N) += inp (K × M) · doutᵀ (M × N), fp32 output
// from inputs of any dtype, β = 1. The bias's gradient is a column sum over the rows, one thread per
// column, in row order (deterministic).
//
// Products of a few rows (M ≤ kGemvRows: a decode step) are a kernel of our own instead: they are bound by
// reading the weight once, which GEMM kernels tiled for many rows do not stream at the memory's rate
// (measured in dev/notes/gpu-model.md). A warp (or a few) per output column walks its weight row in 16-byte
// loads against the input rows, and sums in a fixed order: deterministic, the bias added in the same pass.
#include <algorithm>
#include <climits>
#include <string>
#include <type_traits>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cublas.h"
#include "ops/cuda/ops.h"

namespace mamba::cuda {

namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
  }
  return CUDA_R_32F;
}

// out = src + bias, rounded once to T: the product stays fp32 until the bias is in it, as on the CPU and in
// the GEMV (rounding the product and then the sum again errs by the product's half ulp, which is larger than
// the output itself where the bias nearly cancels the product).
template <typename T>
__global__ void add_bias_kernel(T* out, int64_t ldo, const float* src, int64_t lds, const float* bias, int64_t M,
                                int N) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * N) return;
  const int64_t m = i / N;
  const int n = static_cast<int>(i % N);
  out[m * ldo + n] = from_float<T>(src[m * lds + n] + bias[n]);
}

// Rows of a biased bf16/fp16 product staged in fp32 at a time: the workspace stays under 64 MiB whatever M.
int64_t staged_rows(const MatmulParams& p) { return std::max<int64_t>(1, (int64_t{1} << 24) / p.N); }

bool staged(const MatmulParams& p) { return p.bias && p.out_dtype != DType::F32; }

template <typename T>
__global__ void bias_grad_kernel(float* dbias, const T* dout, int64_t ldo, int64_t M, int N) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  float sum = 0.0f;
  for (int64_t m = 0; m < M; m++) sum += to_float(dout[m * ldo + n]);
  dbias[n] += sum;
}

void gemm(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void* A,
          DType a_type, int64_t lda, const void* B, DType b_type, int64_t ldb, float beta, void* C, DType c_type,
          int64_t ldc, const char* what) {
  const float alpha = 1.0f;
  const cublasStatus_t status =
      blas::gemm_ex(handle, ta, tb, m, n, k, &alpha, A, cuda_type(a_type), static_cast<int>(lda), B, cuda_type(b_type),
                   static_cast<int>(ldb), &beta, C, cuda_type(c_type), static_cast<int>(ldc), CUBLAS_COMPUTE_32F,
                   CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("cublasGemmEx, ") + what + " (" + std::to_string(m) + " × " +
                             std::to_string(n) + " × " + std::to_string(k) + "): " + blas::status_string(status));
  }
}

constexpr int kGemvRows = 8;    // the most input rows one pass takes (accumulators a lane)
constexpr int kGemvWarps = 4;   // output columns a block
// 16-byte weight loads a lane issues before using the first: at one input row, a lane's whole share of a
// 1.4b in_proj row (the input's chunks loaded beside them). The product is bound by how many bytes wait on
// memory together, not by arithmetic.
template <int MT>
constexpr int kGemvUnroll = MT == 1 ? 8 : 4;

// `split` warps (1, 2 or kGemvWarps) share an output column, each taking every split-th sweep of its row,
// so that products with few columns (x_proj's 80, out_proj's) still keep thousands of warps loading; their
// sums are added in warp order through shared memory.
template <typename T, typename TO, int MT>
__global__ void __launch_bounds__(32 * kGemvWarps) gemv_kernel(MatmulParams p, int split) {
  constexpr int V = 16 / sizeof(T);  // elements a 16-byte load
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int part = warp % split;
  const int n = blockIdx.x * (kGemvWarps / split) + warp / split;
  __shared__ float partial[kGemvWarps][MT];
  const bool live = n < p.N;  // the others load nothing but reach the barrier below
  const int m0 = blockIdx.y * MT;
  const int rows = min(MT, static_cast<int>(p.M) - m0);
  const int chunks = live ? p.K / V : 0;
  const char* w = static_cast<const char*>(p.weight.data) + static_cast<int64_t>(live ? n : 0) * p.K * sizeof(T);
  constexpr int U = kGemvUnroll<MT>;
  const int step = 32 * U * split;  // chunks between a lane's sweeps
  uint32_t wv[U][4];
  auto load_weights = [&](int c0) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + 32 * u;
      if (c >= chunks) break;
      ldg_words<4>(wv[u], w + c * 16);
    }
  };
  // The first sweep's weights are loaded before waiting for the kernel before this one (parameters:
  // common.cuh), and the rest of the row starts on its way to L2, so at decode the weights' reads overlap
  // the previous kernel's tail (a 1.4b in_proj row is one sweep at one input row: all of it).
  int c0 = lane + 32 * U * part;
  load_weights(c0);
  for (int at = (lane + 32 * part) * 128; at < chunks * 16; at += 32 * 128 * split) prefetch_l2(w + at);
  pdl_launch_dependents();
  pdl_wait();
  const char* x = static_cast<const char*>(p.inp) + static_cast<int64_t>(m0) * p.ldi * sizeof(T);
  const int64_t x_row = p.ldi * sizeof(T);
  float acc[MT] = {};
  for (; c0 < chunks; c0 += step) {
    uint32_t xv1[MT == 1 ? U : 1][4];
    if constexpr (MT == 1) {
#pragma unroll
      for (int u = 0; u < U; u++) {
        const int c = c0 + 32 * u;
        if (c >= chunks) break;
        ldg_words<4>(xv1[u], x + c * 16);
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + 32 * u;
      if (c >= chunks) break;
      if constexpr (MT == 1) {
#pragma unroll
        for (int i = 0; i < V; i++) acc[0] += unpack<T>(wv[u], i) * unpack<T>(xv1[u], i);
      } else {
#pragma unroll
        for (int m = 0; m < MT; m++) {
          if (m >= rows) break;
          uint32_t xv[4];
          ldg_words<4>(xv, x + m * x_row + c * 16);
#pragma unroll
          for (int i = 0; i < V; i++) acc[m] += unpack<T>(wv[u], i) * unpack<T>(xv, i);
        }
      }
    }
    if (c0 + step < chunks) load_weights(c0 + step);
  }
#pragma unroll
  for (int m = 0; m < MT; m++) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], offset);
  }
  if (split > 1) {
    if (lane == 0) {
#pragma unroll
      for (int m = 0; m < MT; m++) partial[warp][m] = acc[m];
    }
    __syncthreads();
    if (part != 0) return;
#pragma unroll
    for (int m = 0; m < MT; m++) {
      acc[m] = partial[warp][m];
      for (int k = 1; k < split; k++) acc[m] += partial[warp + k][m];
    }
  }
  if (!live || lane >= rows) return;
  float v = 0.0f;
#pragma unroll
  for (int m = 0; m < MT; m++) v = m == lane ? acc[m] : v;  // lane m writes row m: registers, no local memory
  if (p.bias) v += p.bias[n];
  static_cast<TO*>(p.out)[(m0 + lane) * p.ldo + n] = from_float<TO>(v);
}

// Whether the decode kernel takes this product: few rows, and every row of the weight and the input in
// whole, 16-byte aligned loads.
bool gemv_fits(const MatmulParams& p) {
  const int64_t e = static_cast<int64_t>(dtype_size(p.dtype));
  return p.M <= kGemvRows && p.K % (16 / e) == 0 && rows_aligned16(p.weight.data, p.K, e) &&
         rows_aligned16(p.inp, p.ldi, e);
}

template <typename T, typename TO>
void launch_gemv(const MatmulParams& p, cudaStream_t stream) {
  // Enough warps loading at once to cover the memory's latency, some thousands: a 1.4b in_proj's 8192
  // columns take a warp each; fewer columns are shared by 2 or 4 warps.
  const int split = p.N >= 4096 ? 1 : p.N >= 2048 ? 2 : kGemvWarps;
  const int columns = kGemvWarps / split;  // a block's
  auto run = [&](auto rows) {
    constexpr int MT = decltype(rows)::value;
    const dim3 grid(static_cast<unsigned>((p.N + columns - 1) / columns), static_cast<unsigned>((p.M + MT - 1) / MT));
    launch_pdl(gemv_kernel<T, TO, MT>, grid, dim3(32 * kGemvWarps), stream, p, split);
  };
  if (p.M == 1) run(std::integral_constant<int, 1>{});
  else if (p.M == 2) run(std::integral_constant<int, 2>{});
  else if (p.M <= 4) run(std::integral_constant<int, 4>{});
  else run(std::integral_constant<int, kGemvRows>{});
}

}  // namespace

void gemm_ex(cublasHandle_t handle, bool trans_a, bool trans_b, int m, int n, int k, const void* A, DType a_type,
             int64_t lda, const void* B, DType b_type, int64_t ldb, float beta, void* C, DType c_type, int64_t ldc,
             const char* what) {
  gemm(handle, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, A, a_type, lda, B,
       b_type, ldb, beta, C, c_type, ldc, what);
}

void matmul_bwd(cublasHandle_t handle, const MatmulBwdParams& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0 || p.K <= 0) return;
  if (p.M > INT_MAX || !p.dout || !p.inp || !p.weight.data || !p.dweight || p.weight.dtype != p.dtype) {
    throw std::invalid_argument("matmul_bwd: bad arguments (the weight must be in the activations' dtype)");
  }
  const int M = static_cast<int>(p.M);
  if (p.dinp) {
    gemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, p.K, M, p.N, p.weight.data, p.dtype, p.K, p.dout, p.dtype, p.ldo,
         p.accumulate ? 1.0f : 0.0f, p.dinp, p.dtype, p.lddi, "matmul backward, dinp");
  }
  gemm(handle, CUBLAS_OP_N, CUBLAS_OP_T, p.K, p.N, M, p.inp, p.dtype, p.ldi, p.dout, p.dtype, p.ldo, 1.0f, p.dweight,
       DType::F32, p.K, "matmul backward, dweight");
  if (!p.dbias) return;
  with_dtype(p.dtype, [&](auto zero) {
    using T = decltype(zero);
    bias_grad_kernel<<<(p.N + 255) / 256, 256, 0, stream>>>(p.dbias, static_cast<const T*>(p.dout), p.ldo, p.M, p.N);
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

void matmul_fwd(cublasHandle_t handle, const MatmulParams& p, cudaStream_t stream, void* workspace) {
  if (p.M <= 0 || p.N <= 0) return;
  if (p.M > INT_MAX || p.K <= 0 || !p.out || !p.inp || !p.weight.data || p.weight.dtype != p.dtype) {
    throw std::invalid_argument("matmul_fwd: bad arguments (the weight must be in the activations' dtype)");
  }
  if (gemv_fits(p)) {
    with_dtype(p.dtype, [&](auto zero) {
      using T = decltype(zero);
      if (p.out_dtype == DType::F32) launch_gemv<T, float>(p, stream);
      else if (p.out_dtype == p.dtype) launch_gemv<T, T>(p, stream);
      else throw std::invalid_argument("matmul_fwd: the output is fp32 or the activations' dtype");
    });
    return;
  }
  // cuBLAS writes the output, or the fp32 staging rows of a biased product in a 16-bit type (whose bias is
  // then added and the sum rounded once), a block of rows at a time.
  const bool stage = staged(p);
  if (stage && !workspace) throw std::invalid_argument("matmul_fwd: a biased bf16/fp16 product needs its workspace");
  const int64_t block = stage ? staged_rows(p) : p.M;
  for (int64_t m0 = 0; m0 < p.M; m0 += block) {
    const int64_t rows = std::min(block, p.M - m0);
    void* out = stage ? workspace : static_cast<char*>(p.out) + m0 * p.ldo * dtype_size(p.out_dtype);
    const void* inp = static_cast<const char*>(p.inp) + m0 * p.ldi * dtype_size(p.dtype);
    gemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, p.N, static_cast<int>(rows), p.K, p.weight.data, p.weight.dtype, p.K, inp,
         p.dtype, p.ldi, 0.0f, out, stage ? DType::F32 : p.out_dtype, stage ? p.N : p.ldo, "matmul forward");
    if (!p.bias) continue;
    const int64_t n = rows * p.N;
    with_dtype(p.out_dtype, [&](auto zero) {
      using T = decltype(zero);
      T* dst = static_cast<T*>(p.out) + m0 * p.ldo;
      // the staged rows, or an fp32 output itself (the bias added in place: one rounding either way)
      const float* src = stage ? static_cast<const float*>(workspace) : reinterpret_cast<const float*>(dst);
      add_bias_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(dst, p.ldo, src, stage ? p.N : p.ldo,
                                                                                  p.bias, rows, p.N);
    });
    MAMBA_CUDA_CHECK_LAUNCH();
  }
}

size_t matmul_workspace(const MatmulParams& p) {
  if (p.M <= 0 || p.N <= 0 || !staged(p)) return 0;
  return sizeof(float) * static_cast<size_t>(std::min(p.M, staged_rows(p))) * static_cast<size_t>(p.N);
}

}  // namespace mamba::cuda

// The projections (ops/matmul.h) through cuBLAS: row-major out (M, N) = inp (M, K) · W (N, K)ᵀ is, in
// cuBLAS's column-major terms, outᵀ (N, M) = W_cm(K, N)ᵀ · inp_cm(K, M), with W read as a K × N
// column-major matrix (leading dimension K) and inp as K × M (leading dimension ldi). The bias, when
// given, is added by a kernel of its own.
#include <climits>
#include <string>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
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

template <typename T>
__global__ void add_bias_kernel(T* out, int64_t ldo, const float* bias, int64_t M, int N) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * N) return;
  const int64_t m = i / N;
  const int n = static_cast<int>(i % N);
  out[m * ldo + n] = from_float<T>(to_float(out[m * ldo + n]) + bias[n]);
}

}  // namespace

void matmul_fwd(cublasHandle_t handle, const MatmulParams& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return;
  if (p.M > INT_MAX || p.K <= 0 || !p.out || !p.inp || !p.weight.data || p.weight.dtype != p.dtype) {
    throw std::invalid_argument("matmul_fwd: bad arguments (the weight must be in the activations' dtype)");
  }
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t status =
      cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, p.N, static_cast<int>(p.M), p.K, &alpha, p.weight.data,
                   cuda_type(p.weight.dtype), p.K, p.inp, cuda_type(p.dtype), static_cast<int>(p.ldi), &beta, p.out,
                   cuda_type(p.out_dtype), static_cast<int>(p.ldo), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("cublasGemmEx (") + std::to_string(p.M) + " × " + std::to_string(p.K) +
                             " · " + std::to_string(p.N) + "): " + cublasGetStatusString(status));
  }
  if (!p.bias) return;
  const int64_t n = p.M * p.N;
  with_dtype(p.out_dtype, [&](auto zero) {
    using T = decltype(zero);
    add_bias_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(static_cast<T*>(p.out), p.ldo, p.bias,
                                                                                p.M, p.N);
  });
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba::cuda

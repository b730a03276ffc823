// CUDA launchers for the model's other ops (embedding, residual + RMSNorm, matmul through cuBLAS, argmax),
// each through the shared contract of ops/<op>.h. Activations in F32, BF16 or F16; every accumulation in
// fp32. Work is queued on `stream`; every CUDA and cuBLAS call is checked (throws).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/norm.h"

namespace mamba::cuda {

// out (M, C) = table[tokens]; the table is in the activations' dtype (the engine converts it on upload).
void embedding_fwd(const EmbeddingParams& p, cudaStream_t stream);

// residual += inp (fp32), out = RMSNorm(residual) · weight: one block per row, the sum of squares reduced
// in the block.
void rmsnorm_fwd(const RmsNormParams& p, cudaStream_t stream);

// out = inp · weightᵀ (+ bias) by cublasGemmEx with fp32 compute (no TF32: fp32 stays exact to the CPU's
// products), the weight in the activations' dtype; out in p.out_dtype (the LM head writes fp32 logits).
void matmul_fwd(cublasHandle_t handle, const MatmulParams& p, cudaStream_t stream);

// ids (M) = argmax of each row of x (M, N) fp32, the first index on ties.
void argmax_fwd(int32_t* ids, const float* x, int64_t M, int N, cudaStream_t stream);

// A = −exp(A_log) and dA_log += dA ⊙ A over n values (the SSM's parameter and its gradient).
void ssm_A_fwd(float* A, const float* A_log, int64_t n, cudaStream_t stream);
void ssm_dA_log_bwd(float* dA_log, const float* dA, const float* A, int64_t n, cudaStream_t stream);

}  // namespace mamba::cuda

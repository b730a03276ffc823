// CUDA launchers for the model's other ops (embedding, residual + RMSNorm, matmul through cuBLAS, argmax,
// the fused LM head + loss, AdamW) and their backward, each through the shared contract of ops/<op>.h. Activations in F32, BF16 or F16; every accumulation in
// fp32. Work is queued on `stream`; every CUDA and cuBLAS call is checked (throws).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "ops/adamw.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/xent.h"

namespace mamba::cuda {

// out (M, C) = table[tokens]; the table is in the activations' dtype (the engine converts it on upload).
void embedding_fwd(const EmbeddingParams& p, cudaStream_t stream);

// residual += inp (fp32), out = RMSNorm(residual) · weight: one block per row, the sum of squares reduced
// in the block.
void rmsnorm_fwd(const RmsNormParams& p, cudaStream_t stream);

// out = inp · weightᵀ (+ bias) by cublasGemmEx with fp32 compute (no TF32: fp32 stays exact to the CPU's
// products), the weight in the activations' dtype; out in p.out_dtype (the LM head writes fp32 logits).
// A bias with a bf16/fp16 output is added to the fp32 product before its one rounding, through
// matmul_workspace(p) bytes of staging.
void matmul_fwd(cublasHandle_t handle, const MatmulParams& p, cudaStream_t stream, void* workspace);
size_t matmul_workspace(const MatmulParams& p);

// ids (M) = argmax of each row of x (M, N) fp32, the first index on ties.
void argmax_fwd(int32_t* ids, const float* x, int64_t M, int N, cudaStream_t stream);

// dst (n) in dst_dtype = src (n) in src_dtype (F32, BF16, F16), rounded to nearest even: the low-precision
// copies of mixed-precision training's weights, and its gradients between fp32 and the activations' type.
void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n, cudaStream_t stream);

// dst (batch, cols, rows) dense = src (batch, rows, cols) with its columns contiguous, rows src_row_stride
// and batches src_batch_stride elements apart; elements of 2 or 4 bytes (copied as bits).
void transpose(void* dst, const void* src, int64_t batch, int64_t rows, int64_t cols, int elem_bytes,
               int64_t src_batch_stride, int64_t src_row_stride, cudaStream_t stream);

// A = −exp(A_log) and dA_log += dA ⊙ A over n values (the SSM's parameter and its gradient).
void ssm_A_fwd(float* A, const float* A_log, int64_t n, cudaStream_t stream);
void ssm_dA_log_bwd(float* dA_log, const float* dA, const float* A, int64_t n, cudaStream_t stream);

// ---- training: the backward ops, the loss, the optimizer ----

// dtable += dout's rows scattered to their tokens: the rows sorted by token (stable), each run summed in
// row order into its table row (no atomics; fp32 gives the CPU's bits).
size_t embedding_bwd_workspace(const EmbeddingBwdParams& p);
void embedding_bwd(const EmbeddingBwdParams& p, void* workspace, cudaStream_t stream);

// The norm's backward; dweight from per-block partials added in a fixed order. C ≤ 4096.
size_t rmsnorm_bwd_workspace(const RmsNormBwdParams& p);
void rmsnorm_bwd(const RmsNormBwdParams& p, void* workspace, cudaStream_t stream);

// The projection's backward: two cublasGemmEx with fp32 compute (dinp written or accumulated, dweight
// accumulated in fp32), the bias's gradient by a column sum.
void matmul_bwd(cublasHandle_t handle, const MatmulBwdParams& p, cudaStream_t stream);

// The fused LM head + cross-entropy over chunks of rows (ops/xent.h); the loss stays on the device.
size_t xent_workspace(const XentParams& p);
void xent(cublasHandle_t handle, const XentParams& p, void* workspace, cudaStream_t stream);

// Scale, global norm, clipping and AdamW (ops/adamw.h); *p.norm on the device.
size_t adamw_workspace(const AdamWParams& p);
void adamw(const AdamWParams& p, void* workspace, cudaStream_t stream);

// C (m × n, ldc) = op(A) · op(B) + beta · C in cuBLAS's column-major terms, fp32 compute (no TF32); a
// failure throws naming `what` and the sizes.
void gemm_ex(cublasHandle_t handle, bool trans_a, bool trans_b, int m, int n, int k, const void* A, DType a_type,
             int64_t lda, const void* B, DType b_type, int64_t ldb, float beta, void* C, DType c_type, int64_t ldc,
             const char* what);

}  // namespace mamba::cuda

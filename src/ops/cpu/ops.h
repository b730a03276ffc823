// CPU forward ops in fp32, the oracle of every other backend. Each takes outputs, then inputs, then
// parameters, then dimensions; arrays are row-major and token-major ((B, L, C) flattened to (M = B·L, C)).
// Ops know nothing of the model. The CPU backend (cpu/backend.cpp) runs the ops' shared contracts
// (ops/<op>.h) through these.
#pragma once

#include <cstdint>

#include "ops/scan.h"

namespace mamba::cpu {

// out (M, C) = table[tokens] with table (V, C). Token ids must already be checked against V.
void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t M, int C);

// residual (M, C) += inp (or = inp when `first`); out (M, C) = RMSNorm(residual) · weight.
// The residual stream stays fp32 (the official residual_in_fp32 = True).
void residual_rmsnorm_forward(float* out, float* residual, const float* inp, const float* weight, bool first,
                              int64_t M, int C, float eps);

// out (M, N) with row stride ldo = inp (M, K) with row stride ldi · weight (N, K)ᵀ + bias (N) or null.
void matmul_forward(float* out, int64_t ldo, const float* inp, int64_t ldi, const float* weight,
                    const float* bias, int64_t M, int K, int N);
// out (M, N; row stride ldo) += bias (N) in every row; nothing when bias is null.
void add_bias(float* out, int64_t ldo, const float* bias, int64_t M, int N);

// Causal depthwise conv1d over time, then SiLU: out[b,t,d] = SiLU(bias[d] + Σ_k w[d,k]·x[b,t−K+1+k,d]).
// inp (B, L, D) with token stride inp_stride (the x half of in_proj's output); out (B, L, D) with token
// stride out_stride. tail (B, K−1, D): in, the K−1 inputs before t = 0 (oldest first); out, the last K−1.
void conv1d_silu_forward(float* out, int64_t out_stride, float* tail, const float* inp, int64_t inp_stride,
                         const float* weight, const float* bias, int B, int L, int D, int K);

// The selective scan (paper §3, Algorithm 2) over L steps, from params.state_in to params.state_out:
// h_t = exp(Δ_t·A) ⊙ h_{t−1} + Δ_t·B_t·u_t,  y_t = C_t·h_t + D ⊙ u_t,  y_t ← y_t ⊙ SiLU(z_t). fp32 only.
// With params.chunk_states it also stores the state ENTERING each chunk of params.state_chunk steps (the
// first is h_0), what selective_scan_backward recomputes from (paper §3.3.2): it then runs chunk by
// chunk, chaining the state through those, so y and state_out equal the plain run's bitwise.
void selective_scan_forward(const ScanParams& params);

}  // namespace mamba::cpu

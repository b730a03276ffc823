// CUDA causal depthwise conv1d with SiLU (the Mamba block's conv, paper §3.4 / Figure 3), and the
// one-token decode steps of the block: conv step and selective-scan step. Raw device pointers, token-major
// (B, L, D) layouts with a token stride, as the CPU oracle mamba::cpu::conv1d_silu_forward; x and out in
// fp32, bf16 or fp16 (DType), weights, bias, tails and states fp32. Every CUDA call is checked (throws).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ops/conv1d.h"
#include "ops/cuda/scan.h"

namespace mamba::cuda {

constexpr int kMaxConvWidth = 8;  // K, d_conv (the published models use 4)

// The shared contract (ops/conv1d.h), x and out in F32, BF16 or F16; here tail_out must not overlap
// tail_in (the CUDA backend passes a copy when the model updates a tail in place).
using mamba::Conv1dParams;

void conv1d_silu_fwd(const Conv1dParams& p, cudaStream_t stream);

// The backward (ops/conv1d.h's Conv1dBwdParams), summed in a fixed order (deterministic). `workspace` holds
// conv1d_silu_bwd_workspace(p) bytes.
using mamba::Conv1dBwdParams;

size_t conv1d_silu_bwd_workspace(const Conv1dBwdParams& p);
void conv1d_silu_bwd(const Conv1dBwdParams& p, void* workspace, cudaStream_t stream);

// Decode, one token of B sequences. Conv: tail (B, K−1, D) shifts in x (B, D) (row stride x_stride) and
// out (B, D) = SiLU(bias + Σ_k w·window).
void conv1d_silu_step(void* out, float* tail, const void* x, int64_t x_stride, const float* weight, const float* bias,
                      int batch, int dim, int width, DType dtype, cudaStream_t stream);

// Scan: state (B, D, N) ← exp(Δ A) ⊙ state + Δ B u, y = (C·state + D u)·SiLU(z), Δ = softplus(delta +
// bias). p holds one step: seqlen is ignored (1), the (B, X) rows are p's pointers with their strides,
// p.state_in = p.state_out = the state (updated in place); chunk_states unused.
void selective_scan_step(const ScanParams& p, float* state, cudaStream_t stream);

}  // namespace mamba::cuda

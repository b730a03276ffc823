// The CPU's ops on activations in bf16 or fp16 (the `dtype` of ops/<op>.h): the reference that the GPU's
// mixed precision is checked against, and what lets the CPU run a mixed-precision training step with the
// same code as the GPU. Not a fast path: a CPU trains faster in fp32.
//
// Every op here does the same three things: it widens its low-precision inputs to fp32 (exact), runs the
// fp32 kernel of ops.h or backward.h on them, and rounds its low-precision outputs to nearest even (as the
// GPU's conversions and torch's .to() do). Parameters, states, the residual stream and parameter gradients
// are fp32 in every dtype and are used in place. The fp32 copies live in the op's workspace, which the
// matching *_workspace function sizes (the copies are never allocated; the fp32 kernels keep their own
// per-call partials, backward.h): whole arrays for the conv and the scan (they run along the sequence),
// blocks of kHalfRows rows for the row-wise ops.
#pragma once

#include <cstddef>

#include "ops/conv1d.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/scan.h"
#include "ops/xent.h"

namespace mamba::cpu::half {

// Rows widened at a time by the row-wise ops (norms, products, the embedding's backward).
constexpr int64_t kHalfRows = 256;

// out (M, C) in p.dtype = table[tokens]: a copy, rounded only where the table is wider than out.
// F32, BF16 and F16 tables (int8 ones are read with fp32 activations, cpu::embedding).
void embedding(const EmbeddingParams& p);

size_t rmsnorm_workspace(const RmsNormParams& p);
void rmsnorm(const RmsNormParams& p, void* workspace);

// inp in p.dtype and out in p.out_dtype, either of them not F32; the weight in any type cpu::matmul reads.
size_t matmul_workspace(const MatmulParams& p);
void matmul(const MatmulParams& p, void* workspace);

// `tail` (B, K−1, D) fp32 is the tail the conv reads and updates in place (the CPU backend's choice).
size_t conv1d_workspace(const Conv1dParams& p);
void conv1d(const Conv1dParams& p, float* tail, void* workspace);

size_t scan_workspace(const ScanParams& p);
void scan(const ScanParams& p, void* workspace);

size_t embedding_bwd_workspace(const EmbeddingBwdParams& p);
void embedding_bwd(const EmbeddingBwdParams& p, void* workspace);

size_t rmsnorm_bwd_workspace(const RmsNormBwdParams& p);
void rmsnorm_bwd(const RmsNormBwdParams& p, void* workspace);

// The weight in F32, BF16 or F16 (the activations' type, in training).
size_t matmul_bwd_workspace(const MatmulBwdParams& p);
void matmul_bwd(const MatmulBwdParams& p, void* workspace);

// dtail_in, when given, must be zero on entry (the CPU backend zeroes it).
size_t conv1d_bwd_workspace(const Conv1dBwdParams& p);
void conv1d_bwd(const Conv1dBwdParams& p, void* workspace);

// dstate_in, when given, must be zero on entry; in the LTI form dB and dC are fp32 parameters (+=).
size_t scan_bwd_workspace(const ScanBwdParams& p);
void scan_bwd(const ScanBwdParams& p, void* workspace);

// The head's weight in F32, BF16 or F16.
size_t xent_workspace(const XentParams& p);
void xent(const XentParams& p, void* workspace);

}  // namespace mamba::cpu::half

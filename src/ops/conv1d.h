// The causal depthwise conv1d + SiLU's contract (the Mamba block's conv, paper §3.4 / Figure 3), one for
// every backend. Token-major (B, L, D) layouts with a token stride, so x is read in place as the x half
// of in_proj's output; x and out in `dtype` (F32, BF16 or F16); weights, bias and tails fp32. L = 1 is the decode step.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace mamba {

// out[b,t,d] = SiLU(bias[d] + Σ_k w[d,k]·x[b, t−K+1+k, d]), times before 0 read from tail_in.
struct Conv1dParams {
  int batch = 0, seqlen = 0, dim = 0, width = 0;  // B, L, D, K
  DType dtype = DType::F32;                       // of x and out
  void* out = nullptr;                            // (B, L, D)
  int64_t out_stride = 0;
  const void* x = nullptr;  // (B, L, D)
  int64_t x_stride = 0;
  const float* weight = nullptr;   // (D, K)
  const float* bias = nullptr;     // (D) or null
  const float* tail_in = nullptr;  // (B, K−1, D): the K−1 inputs before t = 0, oldest first; or null (zeros)
  float* tail_out = nullptr;       // (B, K−1, D): the last K−1 inputs, or null; may equal tail_in
};

// Backward, with p = bias + Σ_k w[d,k]·x[t−K+1+k] recomputed and SiLU'(p) = σ(p)(1 + p(1 − σ(p))):
//   dx written; dweight (D, K) and dbias (D) accumulated (parameters); dtail_in (B, K−1, D), the
//   gradient of the tail the forward started from, written when not null.
struct Conv1dBwdParams {
  Conv1dParams fwd;            // the forward's arguments (out, tail_out unused; tail_in the tail it started from)
  const void* dout = nullptr;  // (B, L, D)
  int64_t dout_stride = 0;
  void* dx = nullptr;          // (B, L, D)
  int64_t dx_stride = 0;
  float* dweight = nullptr;    // (D, K) +=
  float* dbias = nullptr;      // (D) +=, or null
  float* dtail_in = nullptr;   // (B, K−1, D) or null
};

}  // namespace mamba

// The Mamba block's mixer (paper §3.4, Figure 3), forward, over M = B·L rows, on a backend, shared by
// inference (Engine) and training (Backprop):
//   xz = in_proj(normed);  x, z = xz
//   xc = SiLU(conv1d(x))                       (causal, carrying its d_conv − 1 tail)
//   δ, B, C = x_proj(xc);  Δ = softplus(dt_proj(δ) + bias)
//   y = selective_scan(xc, Δ, A, B, C, D) ⊙ SiLU(z)   (carrying its state)
//   out = out_proj(y)
#pragma once

#include <cstddef>

#include "model/config.h"
#include "model/weights.h"
#include "ops/backend.h"

namespace mamba {

// Where the mixer's activations go (all (M, ·), token-major, on the backend's device, in `dtype`).
struct MixerBuffers {
  void* xz;     // (M, 2·Di) in_proj output: x | z
  void* xc;     // (M, Di) SiLU(conv1d(x)): the scan's u
  void* xdbl;   // (M, R + 2N) x_proj output: δ | B | C
  void* delta;  // (M, Di) dt_proj(δ), before bias and softplus
  void* y;      // (M, Di) gated scan output
  DType dtype = DType::F32;
};

// What the recurrence carries across calls (fp32, on the backend's device).
struct MixerCarry {
  float* conv_tail = nullptr;     // (B, d_conv − 1, Di) in: the inputs before t = 0; out: the last ones
  const float* ssm_in = nullptr;  // (B, Di, N) h_0, or null for zeros
  float* ssm_out = nullptr;       // (B, Di, N) h_L, or null
  float* checkpoints = nullptr;   // (B, ⌈L/chunk⌉, Di, N) for the backward, or null
  int chunk = 0;
};

// The scan's arguments for this layer's buffers; the state pointers are left null.
ScanParams mixer_scan_params(const MixerBuffers& buf, const LayerWeights& lw, const float* A, const Config& c,
                             int B, int L);

// Bytes of workspace mixer_forward needs for B sequences of L tokens (the largest of its ops').
size_t mixer_workspace(Backend& backend, const Config& c, DType dtype, int B, int L);

// Why `backend` cannot run this model's mixer with activations of `dtype` (weights of `weight`), or empty.
std::string mixer_unsupported(const Backend& backend, const Config& c, DType dtype, DType weight);

// buf.xz = in_proj(normed): mixer_forward's first product, and the backward's recomputation of it at the
// deepest recomputation level (one function: the same values).
void mixer_in_proj(Backend& backend, const MixerBuffers& buf, const void* normed, const LayerWeights& lw,
                   const Config& c, int B, int L, void* workspace);

// buf.xc = SiLU(conv(x half of buf.xz)) from the tail (B, d_conv − 1, Di) fp32, which it updates; then buf.delta =
// dt_proj(buf.xdbl) before its bias (LTI: the one zero row the scan reads). mixer_forward's middle (x_proj runs
// between the two there), and the backward's recomputation of both from the saved xz and xdbl (model/backprop.h):
// one function, so the recomputed values are the forward's.
void mixer_conv(Backend& backend, const MixerBuffers& buf, const LayerWeights& lw, const Config& c, int B, int L,
                float* tail, void* workspace);
void mixer_delta(Backend& backend, const MixerBuffers& buf, const LayerWeights& lw, const Config& c, int B, int L,
                 void* workspace);

// buf.y = selective_scan(buf.xc, Δ, A, B, C, D) ⊙ SiLU(z), carrying carry's states (its conv tail unused);
// for one token of inference Δ is handed to the scan low-rank (buf.xdbl and dt_proj: no mixer_delta first):
// mixer_forward's scan, and the backward's recomputation of y and of the chunk states at the deepest
// recomputation level.
void mixer_scan(Backend& backend, const MixerBuffers& buf, const LayerWeights& lw, const float* A, const Config& c,
                int B, int L, const MixerCarry& carry, void* workspace);

// out (M, d) = mixer(normed (M, d)), both in buf.dtype. A = −exp(A_log) of this layer, (Di, N).
void mixer_forward(Backend& backend, void* out, const MixerBuffers& buf, const void* normed, const LayerWeights& lw,
                   const float* A, const Config& c, int B, int L, const MixerCarry& carry, void* workspace);

}  // namespace mamba

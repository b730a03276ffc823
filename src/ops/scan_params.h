// The selective scan's arguments, shared by every backend (cpu/, cuda/): pointers, shapes and strides,
// no model types. Memory order is token-major: element (b, t, i) of a (B, L, X) array sits at
// ptr[(b * L + t) * stride + i], so x, z and B, C can be column slices of wider projection outputs.
#pragma once

#include <cstdint>

namespace mamba {

// Largest d_state the CPU scan keeps on its stack (the published models use 16).
constexpr int kMaxState = 256;

struct ScanParams {
  int batch = 0;   // B
  int seqlen = 0;  // L
  int dim = 0;     // D: channels (d_inner)
  int dstate = 0;  // N

  float* y = nullptr;  // (B, L, D) out: y_t = C_t·h_t + D ⊙ u_t, times SiLU(z_t) when z is given
  int64_t y_stride = 0;
  const float* u = nullptr;  // (B, L, D) the input x
  int64_t u_stride = 0;
  const float* delta = nullptr;  // (B, L, D) Δ before its bias and softplus
  int64_t delta_stride = 0;
  const float* A = nullptr;      // (D, N) A = −exp(A_log), negative
  const float* Bm = nullptr;     // (B, L, N) input-dependent B; (D, N) when bc_per_channel
  const float* Cm = nullptr;     // (B, L, N) input-dependent C; (D, N) when bc_per_channel
  int64_t bc_stride = 0;         // unused when bc_per_channel
  // The linear time-invariant ablation (paper Table 1, an S4D-style diagonal SSM): B and C are
  // parameters, one row of N per channel, the same at every step, instead of input-dependent rows of
  // N shared by all channels. (Δ is made time-invariant by the caller: delta_stride = 0.)
  bool bc_per_channel = false;
  const float* D = nullptr;           // (D) skip connection, or null
  const float* z = nullptr;           // (B, L, D) gate, or null
  int64_t z_stride = 0;
  const float* delta_bias = nullptr;  // (D) or null
  bool delta_softplus = true;         // Δ = softplus(delta + delta_bias)

  const float* state_in = nullptr;  // (B, D, N) h_0, or null for zeros
  float* state_out = nullptr;       // (B, D, N) h_L, or null; may equal state_in
};

}  // namespace mamba

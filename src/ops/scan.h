// The selective scan's contract (paper §3, Algorithm 2), one for every backend (cpu/, cuda/): pointers,
// shapes and strides, no model types. Memory order is token-major: element (b, t, i) of a (B, L, X) array
// sits at ptr[(b * L + t) * stride + i], so u, z and B, C can be column slices of wider projection outputs.
//
// u, Δ, z, B, C and y share one dtype (`dtype`: F32, BF16 or F16); A, D, the Δ bias, the states and every
// accumulation are fp32. Backends refuse what they cannot run before touching
// any memory (Backend::unsupported names the reason).
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "ops/weight.h"

namespace mamba {

// Largest d_state the CPU scan keeps on its stack (the published models use 16).
constexpr int kMaxState = 256;

struct ScanParams {
  int batch = 0;   // B
  int seqlen = 0;  // L
  int dim = 0;     // D: channels (d_inner)
  int dstate = 0;  // N
  DType dtype = DType::F32;  // of u, delta, z, B, C and y

  void* y = nullptr;  // (B, L, D) out: y_t = C_t·h_t + D ⊙ u_t, times SiLU(z_t) when z is given
  int64_t y_stride = 0;
  const void* u = nullptr;  // (B, L, D) the input x
  int64_t u_stride = 0;
  const void* delta = nullptr;  // (B, L, D) Δ before its bias and softplus
  int64_t delta_stride = 0;
  const float* A = nullptr;  // (D, N) A = −exp(A_log), negative
  const void* Bm = nullptr;  // (B, L, N) input-dependent B; (D, N) fp32 when bc_per_channel
  int64_t B_stride = 0;      // unused when bc_per_channel
  const void* Cm = nullptr;  // (B, L, N) input-dependent C; (D, N) fp32 when bc_per_channel
  int64_t C_stride = 0;      // unused when bc_per_channel
  // The linear time-invariant ablation (paper Table 1, an S4D-style diagonal SSM): B and C are fp32
  // parameters, one row of N per channel, the same at every step, instead of input-dependent rows of N
  // shared by all channels. (Δ is made time-invariant by the caller: delta_stride = 0.) CPU only.
  bool bc_per_channel = false;
  const float* D = nullptr;  // (D) skip connection, or null
  const void* z = nullptr;   // (B, L, D) gate, or null
  int64_t z_stride = 0;
  const float* delta_bias = nullptr;  // (D) or null
  bool delta_softplus = true;         // Δ = softplus(delta + delta_bias)
  // Δ given low-rank, as the model makes it (dt_proj): with delta_proj, `delta` is (B, L, R) (R =
  // delta_rank, rows delta_stride apart) and Δ before its bias is delta · delta_projᵀ (D, R), rounded to
  // dtype as a matmul into dtype rounds it. A decode step then needs no product of its own (the CUDA step
  // kernel computes it); elsewhere backends run their matmul first (delta_product_bytes of workspace).
  // Not for the backward.
  WeightView delta_proj;
  int delta_rank = 0;

  const float* state_in = nullptr;  // (B, D, N) h_0, or null for zeros
  float* state_out = nullptr;       // (B, D, N) h_L, or null; may equal state_in
  // For the backward (paper §3.3.2, recomputation): h entering every `state_chunk`-th step (h_0 first),
  // (B, ⌈L / state_chunk⌉, D, N), or null. The CPU takes any chunk; CUDA takes kCudaStateChunk.
  float* chunk_states = nullptr;
  int state_chunk = 0;
};

// The backward (paper §3.3.2: recomputation instead of storing the expanded states). From the forward's
// inputs and its chunk_states it recomputes h inside each chunk and runs the adjoint recurrence
// dh_{t−1} = exp(Δ_t A) ⊙ dh_t (+ C_{t−1} ∂y_{t−1}) backwards. Activation gradients (du, ddelta, dz, dB,
// dC, dstate_in) are written; parameter gradients (dA, dD, ddelta_bias) accumulate. In the LTI form
// (fwd.bc_per_channel) B and C are parameters: dB and dC are then (D, N) fp32 and accumulate too.
// Deterministic on every backend.
struct ScanBwdParams {
  ScanParams fwd;                    // the forward's arguments; fwd.chunk_states is required, y unused
  const void* dy = nullptr;          // (B, L, D) ∂loss/∂y, in fwd.dtype like every (B, L, ·) array here
  int64_t dy_stride = 0;
  const float* dstate_out = nullptr; // (B, D, N) ∂loss/∂h_L, or null
  void* du = nullptr;                // (B, L, D) out
  int64_t du_stride = 0;
  void* ddelta = nullptr;            // (B, L, D) out: gradient of delta before its bias and softplus
  int64_t ddelta_stride = 0;
  void* dz = nullptr;                // (B, L, D) out; required when fwd.z is given
  int64_t dz_stride = 0;
  void* dB = nullptr;                // (B, L, N) out
  int64_t dB_stride = 0;
  void* dC = nullptr;                // (B, L, N) out
  int64_t dC_stride = 0;
  float* dA = nullptr;               // (D, N) += ∂loss/∂A (the model's parameter is A_log: dA_log = dA ⊙ A)
  float* dD = nullptr;               // (D) +=; required when fwd.D is given
  float* ddelta_bias = nullptr;      // (D) +=; required when fwd.delta_bias is given
  float* dstate_in = nullptr;        // (B, D, N) out: ∂loss/∂h_0, or null
};

// The chunk the CUDA backward recomputes from: it starts each 16-step sub-tile from a stored state.
constexpr int kCudaStateChunk = 16;

// Bytes of workspace a backend without a fused Δ product (ScanParams::delta_proj) takes for it, 256-byte
// padded: the product (B, L, D) in dtype; 0 without delta_proj.
inline size_t delta_product_bytes(const ScanParams& p) {
  if (!p.delta_proj) return 0;
  const size_t bytes = static_cast<size_t>(p.batch) * p.seqlen * p.dim * dtype_size(p.dtype);
  return (bytes + 255) / 256 * 256;
}

// Number of chunks of a scan of length L in chunks of `chunk` steps: ⌈L / chunk⌉.
inline int64_t scan_chunks(int64_t L, int chunk) { return (L + chunk - 1) / chunk; }

}  // namespace mamba

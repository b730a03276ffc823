// CPU backward ops in fp32, one per forward op of ops.h. Each takes gradient outputs, then the
// gradients flowing in, then the forward's inputs, then parameters, then dimensions; gradients carry a
// `d` prefix.
//
// One rule for every gradient output here: it ACCUMULATES (+=), activations and parameters alike, as in
// llm.c. The model zeros its activation-gradient buffers before the first op that adds into them; in
// exchange a tensor read by two ops (the conv output u, read by x_proj and by the scan) needs no extra
// buffer and no addition of its own. The one exception is lm_head_cross_entropy's dhidden, which is the
// start of the backward pass and is written.
//
// Determinism: no atomics. Work is split so that each thread owns the outputs it writes; where several
// threads add into the same gradient (dweight of RMSNorm, B and C of the scan, which every channel
// reads) each thread keeps a partial that is summed in thread order afterwards. Results are therefore
// bitwise reproducible for a given OpenMP thread count (and OpenBLAS's, for the products).
#pragma once

#include <cstdint>

#include "ops/scan.h"

namespace mamba::cpu {

// dtable (V, C) += the rows of dout (M, C) scattered to tokens (M). Columns are split over threads, so
// repeated tokens never race and the sum over rows runs in row order.
void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t M, int C);

// Backward of residual_rmsnorm_forward (r = inp (+ r_prev), out = r · rstd · weight with
// rstd = 1/√(mean(r²) + eps)):
//   dr = dresidual + rstd · (g − r̂ · mean(g ⊙ r̂)),  g = dout ⊙ weight,  r̂ = r · rstd,
//   dweight += Σ_rows dout ⊙ r̂.
// dresidual (M, C) is updated in place: on entry, the gradient reaching the residual stream r from later
// layers (zero before the final norm); on exit dr, which is both the gradient of `inp` and of the
// previous residual r_prev (the add passes it through unchanged). So the model keeps ONE residual
// gradient buffer: it zeros it, runs the final norm's backward, then per layer in reverse uses it as
// the dout of out_proj (whose output was the next norm's inp) and runs this layer's norm backward on
// it in place; after layer 0 it is the embedding's dout.
// residual (M, C) is the residual this norm saw (the forward's residual output, saved per layer); rstd
// is recomputed from it exactly as the forward computes it (one pass over C; nothing saved per row).
void residual_rmsnorm_backward(float* dresidual, float* dweight, const float* dout, const float* residual,
                               const float* weight, int64_t M, int C, float eps);

// Backward of matmul_forward (out = inp · weightᵀ + bias), with the same strides:
//   dinp (M, K) row stride lddi += dout · weight      (null: skipped)
//   dweight (N, K)              += doutᵀ · inp
//   dbias (N)                   += Σ_rows dout       (null: skipped)
// dout (M, N) row stride ldo; inp (M, K) row stride ldi; weight (N, K).
void matmul_backward(float* dinp, int64_t lddi, float* dweight, float* dbias, const float* dout, int64_t ldo,
                     const float* inp, int64_t ldi, const float* weight, int64_t M, int K, int N);

// Backward of conv1d_silu_forward. With p = bias + Σ_k w[d,k]·x[t−K+1+k] (recomputed) and
// out = SiLU(p), SiLU'(p) = σ(p)(1 + p(1 − σ(p))):
//   dp = dout ⊙ SiLU'(p);  dx[s] += Σ_k w[d,k]·dp[s+K−1−k];  dweight[d,k] += Σ_t dp[t]·x[t−K+1+k];
//   dbias += Σ_t dp[t].
// dinp (B, L, D) token stride dinp_stride (the x half of dxz); dtail (B, K−1, D) gradient of the tail
// the forward started from, or null; dweight (D, K); dbias (D) or null; dout (B, L, D) dense;
// inp as in the forward; tail (B, K−1, D) the tail the forward STARTED from (the forward overwrites its
// tail, so the model must keep a copy), or null for zeros (training from the start of a sequence).
void conv1d_silu_backward(float* dinp, int64_t dinp_stride, float* dtail, float* dweight, float* dbias,
                          const float* dout, const float* inp, int64_t inp_stride, const float* tail,
                          const float* weight, const float* bias, int B, int L, int D, int K);

// Gradients of the selective scan, mirroring ScanParams (same strides convention: element (b, t, i) of
// a (B, L, X) array at ptr[(b·L + t)·stride + i]). All outputs accumulate.
struct ScanGrads {
  const float* dy = nullptr;  // (B, L, D) in: ∂loss/∂y
  int64_t dy_stride = 0;
  const float* dstate_out = nullptr;  // (B, D, N) in: ∂loss/∂h_L, or null for zero

  float* du = nullptr;  // (B, L, D)
  int64_t du_stride = 0;
  float* ddelta = nullptr;  // (B, L, D) w.r.t. delta BEFORE its bias and softplus
  int64_t ddelta_stride = 0;
  float* dA = nullptr;  // (D, N) w.r.t. A; the model's parameter is A_log, A = −exp(A_log), so
                        // dA_log = dA ⊙ A (the model applies it)
  float* dB = nullptr;  // (B, L, N) slices of d_xdbl, like Bm and Cm; (D, N) when params.bc_per_channel
  float* dC = nullptr;  // (B, L, N); (D, N) when params.bc_per_channel
  int64_t dbc_stride = 0;
  float* dD = nullptr;  // (D), or null (ignored when params.D is null)
  float* dz = nullptr;  // (B, L, D) slice of dxz, or null (ignored when params.z is null)
  int64_t dz_stride = 0;
  float* ddelta_bias = nullptr;  // (D), or null (ignored when params.delta_bias is null)
  float* dstate_in = nullptr;    // (B, D, N) w.r.t. h_0, or null
};

// Backward of the selective scan (paper §3.3.2, "recomputation"): the forward (selective_scan_forward
// with params.chunk_states) kept only the state entering each chunk of params.state_chunk steps,
// (B, scan_chunks(L, chunk), D, N). Walking the chunks from last to first, each (batch, channel block)
// recomputes the chunk's states h_t (and decays a_t) forward from its checkpoint into a per-thread
// buffer (chunk + 1, N, 16 channels), then runs the reverse recurrence through them. Nothing of size
// B·L·D·N is allocated; the scratch is 2·(chunk + 1)·N·16 floats per thread plus a per-thread partial of
// dB, dC (B, L, 2N) (B and C are shared by all channels), allocated per call.
// With a_t = exp(Δ_t A), h_t = a_t ⊙ h_{t−1} + Δ_t B_t u_t, y_t = (C_t·h_t + D u_t) ⊙ SiLU(z_t)
// (paper eq. 2a–2b with the ZOH/Euler discretization of §3.2 / Algorithm 2), and ḡ_t = ∂loss/∂y_t
// before the gate, the reverse recurrence is
//   dh_t = C_t ḡ_t + a_{t+1} ⊙ dh_{t+1}  (dh_L starting from dstate_out),
//   dC_t += Σ_d ḡ_t h_t,  dB_t += Σ_d dh_t Δ_t u_t,  du_t += D ḡ_t + Δ_t Σ_n dh_t B_t,
//   dΔ_t = Σ_n dh_t (A a_t h_{t−1} + B_t u_t),  dA += Σ_t dh_t Δ_t a_t h_{t−1},
// and dΔ passes through softplus (σ(delta + bias)) to ddelta and ddelta_bias.
void selective_scan_backward(const ScanGrads& grads, const ScanParams& params);

// Fused tied LM head + cross-entropy, mean over the targets that are not ignore_index:
//   logits = hidden · weightᵀ,  loss = mean_m (logsumexp(logits_m) − logits_m[target_m]),
//   dlogits = (softmax(logits) − onehot(target)) / count,
//   dhidden (M, C) = dlogits · weight (WRITTEN, not accumulated), dweight (V, C) += dlogitsᵀ · hidden.
// Rows go through logits_scratch (scratch_rows, V) scratch_rows at a time, so the (M, V) logits never
// exist. Returns the mean loss; with every target ignored it returns 0, writes zeros to dhidden and
// leaves dweight unchanged. Targets that are not ignore_index must lie in [0, V). divisor > 0 replaces
// count (ops/xent.h: a data-parallel shard divides by its global batch's count). grad_scale multiplies
// dlogits (hence dhidden and dweight), not the loss: fp16 training's loss scale. dlogits_dtype BF16 or F16
// rounds dlogits to that type before the two products, as mixed precision does on the GPU (and PyTorch AMP:
// the head's backward GEMMs take low-precision inputs); F32 keeps them exact.
float lm_head_cross_entropy(float* dhidden, float* dweight, const float* hidden, const float* weight,
                            const int32_t* targets, int64_t M, int C, int V, int ignore_index,
                            float* logits_scratch, int64_t scratch_rows, int64_t divisor = 0, float grad_scale = 1.0f,
                            DType dlogits_dtype = DType::F32);

}  // namespace mamba::cpu

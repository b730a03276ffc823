#include "model/backprop.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <omp.h>

#include "core/error.h"
#include "core/limits.h"
#include "model/mixer.h"
#include "ops/cpu/backward.h"
#include "ops/cpu/ops.h"

namespace mamba {

namespace {

int64_t padded(int64_t n) { return (n + 15) / 16 * 16; }

void zero(float* p, int64_t n) { std::memset(p, 0, sizeof(float) * static_cast<size_t>(n)); }

}  // namespace

int64_t Backprop::bytes_needed(const Config& c, int64_t B, int64_t L, int64_t scan_chunk) {
  // The constructor's two allocations, and the scan backward's per-call buffers (backward.cpp): partial
  // dB, dC (threads, B, L, 2N) and per thread the chunk's recomputed states (chunk + 1, N, 16 lanes),
  // decays (chunk, N, 16) and Δ, softplus' (chunk, 16). Saturating: B and L come from flags and files.
  const int64_t M = sat_mul(B, L), d = c.d_model, Di = c.d_inner(), N = c.d_state, V = c.vocab_size;
  const int64_t xw = c.dt_rank + 2 * N, chunk = std::clamp<int64_t>(scan_chunk, 1, std::max<int64_t>(1, L));
  const int64_t chunks = L / chunk + (L % chunk != 0);
  const int64_t per_token_saved = 2 * d + 5 * Di + xw, per_token_scratch = 3 * d + 5 * Di + xw;
  int64_t floats = sat_mul(c.n_layer, sat_add(sat_mul(M, per_token_saved), sat_mul(sat_mul(B, chunks), Di * N)));
  floats = sat_add(floats, sat_mul(M, 2 * d + per_token_scratch));
  floats = sat_add(floats, 2 * Di * N + std::min<int64_t>(M, 256) * V + V * d);
  floats = sat_add(floats, sat_mul(B, (c.d_conv - 1) * Di));
  floats = sat_add(floats, 64 * 16);  // padding of the views
  const int64_t threads = omp_get_max_threads();
  floats = sat_add(floats, sat_mul(threads, sat_mul(M, 2 * N)));
  floats = sat_add(floats, sat_mul(threads, sat_mul(chunk + 1, N * 16) + chunk * N * 16 + chunk * 32));
  return sat_mul(floats, 4);
}

Backprop::Backprop(const Config& config, int B, int L, int scan_chunk)
    // A chunk longer than the sequence is one chunk; clamped, its recomputation buffers fit the sequence.
    : config_(config), specs_(param_specs(config)), B_(B), L_(L), chunk_(std::clamp(scan_chunk, 1, std::max(1, L))) {
  const int64_t M = int64_t{B} * L, d = config.d_model, Di = config.d_inner(), N = config.d_state;
  const int64_t xw = config.dt_rank + 2 * N, chunks = cpu::scan_chunks(L, chunk_);
  const int64_t per_layer = padded(M * d) * 2 + padded(M * 2 * Di) + padded(M * Di) * 3 + padded(M * xw) +
                            padded(int64_t{B} * chunks * Di * N);
  saved_.assign(static_cast<size_t>(per_layer * config.n_layer + padded(M * d) * 2), 0.0f);
  float* p = saved_.data();
  auto take = [&](float*& view, int64_t n) {
    view = p;
    p += padded(n);
  };
  layers_.resize(static_cast<size_t>(config.n_layer));
  for (LayerSaved& s : layers_) {
    take(s.residual, M * d);
    take(s.normed, M * d);
    take(s.xz, M * 2 * Di);
    take(s.xc, M * Di);
    take(s.xdbl, M * xw);
    take(s.delta, M * Di);
    take(s.y, M * Di);
    take(s.checkpoints, int64_t{B} * chunks * Di * N);
  }
  take(residual_f_, M * d);
  take(normed_f_, M * d);

  logit_rows_ = std::min<int64_t>(M, 256);
  const int64_t scratch = padded(M * d) * 3 + padded(M * 2 * Di) + padded(M * Di) * 3 + padded(M * xw) +
                          padded(Di * N) * 2 + padded(logit_rows_ * config.vocab_size) +
                          padded(int64_t{B} * (config.d_conv - 1) * Di) + padded(int64_t{config.vocab_size} * d);
  scratch_.assign(static_cast<size_t>(scratch), 0.0f);
  p = scratch_.data();
  take(hidden_, M * d);
  take(dresid_, M * d);
  take(dnormed_, M * d);
  take(dxz_, M * 2 * Di);
  take(dxc_, M * Di);
  take(ddelta_, M * Di);
  take(dy_, M * Di);
  take(dxdbl_, M * xw);
  take(dA_, Di * N);
  take(A_, Di * N);
  take(logits_, logit_rows_ * config.vocab_size);
  take(tail_, int64_t{B} * (config.d_conv - 1) * Di);
  take(dhead_, int64_t{config.vocab_size} * d);
}

double Backprop::step(const float* params, float* grads, const int32_t* inputs, const int32_t* targets,
                      int ignore_index) {
  const Config& c = config_;
  const int d = c.d_model, Di = c.d_inner(), N = c.d_state, R = c.dt_rank, K = c.d_conv, V = c.vocab_size;
  const int xw = R + 2 * N;
  const int64_t M = int64_t{B_} * L_;
  for (int64_t i = 0; i < M; i++) {
    if (inputs[i] < 0 || inputs[i] >= V) fail("training input token ", inputs[i], " is out of range [0, ", V, ")");
    if (targets[i] != ignore_index && (targets[i] < 0 || targets[i] >= V)) {
      fail("training target token ", targets[i], " is out of range [0, ", V, ")");
    }
  }
  if (params != bound_params_) {
    w_ = bind_weights(c, specs_, [&](const ParamSpec& s) { return params + s.offset; });
    bound_params_ = params;
  }
  if (grads && grads != bound_grads_) {
    g_ = bind_weights(c, specs_, [&](const ParamSpec& s) { return grads + s.offset; });
    bound_grads_ = grads;
  }
  const Weights& w = w_;
  // Gradient views share the parameters' layout; they are written, hence the cast.
  auto mut = [](const float* p) { return const_cast<float*>(p); };

  auto buffers = [](const LayerSaved& s) { return MixerBuffers{s.xz, s.xc, s.xdbl, s.delta, s.y}; };
  auto compute_A = [&](const LayerWeights& lw) {
    for (int64_t i = 0; i < int64_t{Di} * N; i++) A_[i] = -std::exp(lw.A_log[i]);
  };

  // ---- forward, keeping each layer's activations ----
  cpu::embedding_forward(hidden_, inputs, w.embedding, M, d);
  for (int l = 0; l < c.n_layer; l++) {
    const LayerWeights& lw = w.layers[l];
    LayerSaved& s = layers_[l];
    if (l > 0) std::memcpy(s.residual, layers_[l - 1].residual, sizeof(float) * M * d);
    cpu::residual_rmsnorm_forward(s.normed, s.residual, hidden_, lw.norm, l == 0, M, d, c.norm_eps);
    compute_A(lw);
    zero(tail_, int64_t{B_} * (K - 1) * Di);  // training sequences start from the zero state
    mixer_forward(hidden_, buffers(s), s.normed, lw, A_, c, B_, L_, MixerCarry{tail_, nullptr, nullptr, s.checkpoints, chunk_});
  }
  std::memcpy(residual_f_, layers_.back().residual, sizeof(float) * M * d);
  cpu::residual_rmsnorm_forward(normed_f_, residual_f_, hidden_, w.norm_f, false, M, d, c.norm_eps);

  // ---- loss, and the backward in exact reverse order ----
  float* dhead = grads ? mut(g_.lm_head) : dhead_;
  const double loss = cpu::lm_head_cross_entropy(dnormed_, dhead, normed_f_, w.lm_head, targets, M, d, V,
                                                 ignore_index, logits_, logit_rows_);
  if (!grads) return loss;

  zero(dresid_, M * d);
  cpu::residual_rmsnorm_backward(dresid_, mut(g_.norm_f), dnormed_, residual_f_, w.norm_f, M,
                                 d, c.norm_eps);
  for (int l = c.n_layer - 1; l >= 0; l--) {
    const LayerWeights& lw = w.layers[l];
    const LayerWeights& gw = g_.layers[l];
    const LayerSaved& s = layers_[l];
    // out_proj: its output was this layer's hidden, whose gradient is the residual gradient.
    zero(dy_, M * Di);
    cpu::matmul_backward(dy_, Di, mut(gw.out_proj_w), mut(gw.out_proj_b), dresid_, d,
                         s.y, Di, lw.out_proj_w, M, Di, d);
    // selective scan (recomputing inside each chunk from the saved states)
    zero(dxz_, M * 2 * Di);
    zero(dxc_, M * Di);
    zero(dxdbl_, M * xw);
    zero(ddelta_, M * Di);
    zero(dA_, int64_t{Di} * N);
    compute_A(lw);
    cpu::ScanGrads g;
    g.dy = dy_;
    g.dy_stride = Di;
    g.du = dxc_;
    g.du_stride = Di;
    g.ddelta = ddelta_;
    g.ddelta_stride = Di;
    g.dA = dA_;
    const bool lti = c.ssm_mode == SsmMode::Lti;  // B, C are parameters (D, N): their gradients accumulate there
    g.dB = lti ? mut(gw.lti_B) : dxdbl_ + R;
    g.dC = lti ? mut(gw.lti_C) : dxdbl_ + R + N;
    g.dbc_stride = xw;
    g.dD = mut(gw.D);
    g.dz = dxz_ + Di;
    g.dz_stride = 2 * Di;
    g.ddelta_bias = mut(gw.dt_proj_b);
    cpu::selective_scan_backward(g, mixer_scan_params(buffers(s), lw, A_, c, B_, L_), s.checkpoints, chunk_);
    float* dA_log = mut(gw.A_log);
    for (int64_t i = 0; i < int64_t{Di} * N; i++) dA_log[i] += dA_[i] * A_[i];  // A = −exp(A_log)
    // dt_proj, x_proj (absent in LTI mode, where Δ's gradient went to dt_proj.bias alone)
    if (!lti) {
      cpu::matmul_backward(dxdbl_, xw, mut(gw.dt_proj_w), nullptr, ddelta_, Di, s.xdbl, xw,
                           lw.dt_proj_w, M, R, Di);
      cpu::matmul_backward(dxc_, Di, mut(gw.x_proj_w), nullptr, dxdbl_, xw, s.xc, Di, lw.x_proj_w,
                           M, Di, xw);
    }
    // conv1d + SiLU, into the x half of dxz
    cpu::conv1d_silu_backward(dxz_, 2 * Di, nullptr, mut(gw.conv_w), mut(gw.conv_b),
                              dxc_, s.xz, 2 * Di, nullptr, lw.conv_w, lw.conv_b, B_, L_, Di, K);
    // in_proj, then the norm (which updates the residual gradient in place)
    zero(dnormed_, M * d);
    cpu::matmul_backward(dnormed_, d, mut(gw.in_proj_w), mut(gw.in_proj_b), dxz_,
                         2 * Di, s.normed, d, lw.in_proj_w, M, d, 2 * Di);
    cpu::residual_rmsnorm_backward(dresid_, mut(gw.norm), dnormed_, s.residual, lw.norm, M, d, c.norm_eps);
  }
  cpu::embedding_backward(mut(g_.embedding), dresid_, inputs, M, d);
  return loss;
}

}  // namespace mamba

#include "model/backprop.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <omp.h>

#include "core/error.h"
#include "core/limits.h"
#include "model/mixer.h"

namespace mamba {

namespace {

int64_t padded(int64_t n) { return (n + 15) / 16 * 16; }

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

Backprop::Backprop(const Config& config, int B, int L, int scan_chunk, Backend& backend)
    // A chunk longer than the sequence is one chunk; clamped, its recomputation buffers fit the sequence.
    : config_(config), specs_(param_specs(config)), backend_(backend), B_(B), L_(L),
      chunk_(backend.scan_state_chunk(std::clamp(scan_chunk, 1, std::max(1, L)))) {
  const Config& c = config;
  const bool lti = c.ssm_mode == SsmMode::Lti;
  const OpQuery ops[] = {{Op::Embedding}, {Op::RmsNorm}, {Op::Matmul}, {Op::Conv1d, DType::F32, DType::F32, false, 0, c.d_conv},
                         {Op::Scan, DType::F32, DType::F32, lti, c.d_state, 0}, {Op::EmbeddingBwd}, {Op::RmsNormBwd},
                         {Op::MatmulBwd}, {Op::Conv1dBwd, DType::F32, DType::F32, false, 0, c.d_conv},
                         {Op::ScanBwd, DType::F32, DType::F32, lti, c.d_state, 0}, {Op::Xent}, {Op::SsmA}};
  for (const OpQuery& q : ops) {
    if (std::string why = backend.unsupported(q); !why.empty()) fail("training on ", backend.describe(), ": ", why);
  }
  const int64_t M = int64_t{B} * L, d = config.d_model, Di = config.d_inner(), N = config.d_state;
  const int64_t xw = config.dt_rank + 2 * N, chunks = scan_chunks(L, chunk_);
  const int64_t per_layer = padded(M * d) * 2 + padded(M * 2 * Di) + padded(M * Di) * 3 + padded(M * xw) +
                            padded(int64_t{B} * chunks * Di * N);
  saved_ = Buffer(backend, sizeof(float) * static_cast<size_t>(per_layer * config.n_layer + padded(M * d) * 2));
  float* p = saved_.as<float>();
  auto take = [&](auto*& view, int64_t n) {
    view = reinterpret_cast<std::remove_reference_t<decltype(view)>>(p);
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

  // The largest workspace any op asks for, at this batch's shapes (addresses do not change the sizes).
  const LayerSaved& s0 = layers_[0];
  LayerWeights lw0{};
  lw0.D = lw0.dt_proj_b = lw0.conv_w = lw0.conv_b = lw0.lti_B = lw0.lti_C = s0.y;
  ScanBwdParams scan_bwd;
  scan_bwd.fwd = mixer_scan_params(MixerBuffers{s0.xz, s0.xc, s0.xdbl, s0.delta, s0.y, DType::F32}, lw0, s0.y, c, B, L);
  scan_bwd.fwd.chunk_states = s0.checkpoints;
  scan_bwd.fwd.state_chunk = chunk_;
  Conv1dBwdParams conv_bwd;
  conv_bwd.fwd = Conv1dParams{B, L, static_cast<int>(Di), c.d_conv, DType::F32, s0.xc, Di, s0.xz, 2 * Di,
                              s0.y, s0.y, s0.y, nullptr};
  conv_bwd.dout_stride = Di;
  XentParams xent;
  xent.M = M, xent.C = static_cast<int>(d), xent.V = c.vocab_size;
  const EmbeddingBwdParams embedding_bwd{DType::F32, nullptr, nullptr, nullptr, M, static_cast<int>(d)};
  const RmsNormBwdParams rmsnorm_bwd{DType::F32, nullptr, nullptr, nullptr, nullptr, nullptr, M, static_cast<int>(d)};
  const size_t workspace = std::max({mixer_workspace(backend, c, DType::F32, B, L), backend.scan_bwd_workspace(scan_bwd),
                                     backend.conv1d_bwd_workspace(conv_bwd), backend.xent_workspace(xent),
                                     backend.embedding_bwd_workspace(embedding_bwd),
                                     backend.rmsnorm_bwd_workspace(rmsnorm_bwd)});

  const int64_t scratch = padded(M * d) * 3 + padded(M * 2 * Di) + padded(M * Di) * 3 + padded(M * xw) +
                          padded(Di * N) * 2 + padded(int64_t{B} * (config.d_conv - 1) * Di) + padded(1) +
                          padded(M) * 2 + padded(static_cast<int64_t>((workspace + 3) / 4));
  scratch_ = Buffer(backend, sizeof(float) * static_cast<size_t>(scratch));
  backend.fill_zero(scratch_.data(), scratch_.bytes());
  p = scratch_.as<float>();
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
  take(tail_, int64_t{B} * (config.d_conv - 1) * Di);
  take(loss_, 1);
  take(inputs_, M);
  take(targets_, M);
  workspace_ = p;
}

double Backprop::step(const float* params, float* grads, const int32_t* inputs, const int32_t* targets,
                      int ignore_index, int64_t divisor) {
  forward_backward(params, grads, inputs, targets, ignore_index, loss_, divisor);
  float loss = 0;
  backend_.download(&loss, loss_, sizeof(float));
  return loss;
}

void Backprop::forward_backward(const float* params, float* grads, const int32_t* inputs, const int32_t* targets,
                                int ignore_index, float* loss, int64_t divisor) {
  const Config& c = config_;
  const int d = c.d_model, Di = c.d_inner(), N = c.d_state, R = c.dt_rank, K = c.d_conv, V = c.vocab_size;
  const int xw = R + 2 * N;
  const int64_t M = int64_t{B_} * L_;
  const int64_t nA = int64_t{Di} * N;
  for (int64_t i = 0; i < M; i++) {
    if (inputs[i] < 0 || inputs[i] >= V) fail("training input token ", inputs[i], " is out of range [0, ", V, ")");
    if (targets[i] != ignore_index && (targets[i] < 0 || targets[i] >= V)) {
      fail("training target token ", targets[i], " is out of range [0, ", V, ")");
    }
  }
  if (!backend_.host_memory()) {
    backend_.upload(inputs_, inputs, sizeof(int32_t) * static_cast<size_t>(M));
    backend_.upload(targets_, targets, sizeof(int32_t) * static_cast<size_t>(M));
    inputs = inputs_;
    targets = targets_;
  }
  if (params != bound_params_) {
    w_ = bind_weights(c, specs_, params);
    bound_params_ = params;
  }
  if (grads && grads != bound_grads_) {
    g_ = bind_weights(c, specs_, grads);
    bound_grads_ = grads;
  }
  const Weights& w = w_;
  Backend& b = backend_;
  // Gradient views share the parameters' layout; they are written, hence the cast.
  auto mut = [](const float* p) { return const_cast<float*>(p); };
  auto buffers = [](const LayerSaved& s) { return MixerBuffers{s.xz, s.xc, s.xdbl, s.delta, s.y, DType::F32}; };
  auto zero = [&](void* p, int64_t n) { b.fill_zero(p, sizeof(float) * static_cast<size_t>(n)); };
  const size_t row_bytes = sizeof(float) * static_cast<size_t>(M * d);

  // ---- forward, keeping each layer's activations ----
  b.embedding({DType::F32, hidden_, inputs, w.embedding, M, d});
  for (int l = 0; l < c.n_layer; l++) {
    const LayerWeights& lw = w.layers[l];
    LayerSaved& s = layers_[l];
    if (l > 0) b.copy(s.residual, layers_[l - 1].residual, row_bytes);
    b.rmsnorm({DType::F32, s.normed, s.residual, hidden_, lw.norm, l == 0, M, d, c.norm_eps});
    b.ssm_A(A_, lw.A_log, nA);
    zero(tail_, int64_t{B_} * (K - 1) * Di);  // training sequences start from the zero state
    mixer_forward(b, hidden_, buffers(s), s.normed, lw, A_, c, B_, L_,
                  MixerCarry{tail_, nullptr, nullptr, s.checkpoints, chunk_}, workspace_);
  }
  b.copy(residual_f_, layers_.back().residual, row_bytes);
  b.rmsnorm({DType::F32, normed_f_, residual_f_, hidden_, w.norm_f, false, M, d, c.norm_eps});

  // ---- loss, and the backward in exact reverse order ----
  XentParams xent;
  xent.loss = loss, xent.dhidden = dnormed_, xent.dweight = grads ? mut(g_.lm_head.f32()) : nullptr;
  xent.hidden = normed_f_, xent.weight = w.lm_head, xent.targets = targets;
  xent.M = M, xent.C = d, xent.V = V, xent.ignore_index = ignore_index, xent.divisor = divisor;
  b.xent(xent, workspace_);
  if (!grads) return;

  zero(dresid_, M * d);
  b.rmsnorm_bwd({DType::F32, dresid_, mut(g_.norm_f), dnormed_, residual_f_, w.norm_f, M, d, c.norm_eps}, workspace_);
  for (int l = c.n_layer - 1; l >= 0; l--) {
    const LayerWeights& lw = w.layers[l];
    const LayerWeights& gw = g_.layers[l];
    const LayerSaved& s = layers_[l];
    // out_proj: its output was this layer's hidden, whose gradient is the residual gradient.
    b.matmul_bwd({DType::F32, dy_, Di, false, mut(gw.out_proj_w.f32()), mut(gw.out_proj_b), dresid_, d, s.y, Di,
                  lw.out_proj_w, M, Di, d});
    // selective scan (recomputing inside each chunk from the saved states)
    zero(dA_, nA);
    b.ssm_A(A_, lw.A_log, nA);
    const bool lti = c.ssm_mode == SsmMode::Lti;  // B, C are parameters (D, N): their gradients accumulate there
    ScanBwdParams g;
    g.fwd = mixer_scan_params(buffers(s), lw, A_, c, B_, L_);
    g.fwd.chunk_states = s.checkpoints;
    g.fwd.state_chunk = chunk_;
    g.dy = dy_, g.dy_stride = Di;
    g.du = dxc_, g.du_stride = Di;
    g.ddelta = ddelta_, g.ddelta_stride = Di;
    g.dz = dxz_ + Di, g.dz_stride = 2 * Di;
    g.dB = lti ? mut(gw.lti_B) : dxdbl_ + R, g.dB_stride = xw;
    g.dC = lti ? mut(gw.lti_C) : dxdbl_ + R + N, g.dC_stride = xw;
    g.dA = dA_;
    g.dD = mut(gw.D);
    g.ddelta_bias = mut(gw.dt_proj_b);
    b.scan_bwd(g, workspace_);
    b.ssm_dA_log(mut(gw.A_log), dA_, A_, nA);  // A = −exp(A_log)
    // dt_proj (into δ's columns of dxdbl, beside the scan's dB and dC), then x_proj (adding to the scan's
    // du: the conv's output feeds both); absent in LTI mode, where Δ's gradient went to dt_proj.bias alone.
    if (!lti) {
      b.matmul_bwd({DType::F32, dxdbl_, xw, false, mut(gw.dt_proj_w.f32()), nullptr, ddelta_, Di, s.xdbl, xw,
                    lw.dt_proj_w, M, R, Di});
      b.matmul_bwd({DType::F32, dxc_, Di, true, mut(gw.x_proj_w.f32()), nullptr, dxdbl_, xw, s.xc, Di, lw.x_proj_w,
                    M, Di, xw});
    }
    // conv1d + SiLU, into the x half of dxz (the scan wrote dz into the other half)
    Conv1dBwdParams conv;
    conv.fwd = Conv1dParams{B_, L_, Di, K, DType::F32, nullptr, 0, s.xz, 2 * Di, lw.conv_w, lw.conv_b, nullptr, nullptr};
    conv.dout = dxc_, conv.dout_stride = Di;
    conv.dx = dxz_, conv.dx_stride = 2 * Di;
    conv.dweight = mut(gw.conv_w), conv.dbias = mut(gw.conv_b);
    b.conv1d_bwd(conv, workspace_);
    // in_proj, then the norm (which updates the residual gradient in place)
    b.matmul_bwd({DType::F32, dnormed_, d, false, mut(gw.in_proj_w.f32()), mut(gw.in_proj_b), dxz_, 2 * Di, s.normed,
                  d, lw.in_proj_w, M, d, 2 * Di});
    b.rmsnorm_bwd({DType::F32, dresid_, mut(gw.norm), dnormed_, s.residual, lw.norm, M, d, c.norm_eps}, workspace_);
    if (on_grads_ready_) on_grads_ready_(l);
  }
  b.embedding_bwd({DType::F32, mut(g_.embedding.f32()), dresid_, inputs, M, d}, workspace_);
  if (on_grads_ready_) on_grads_ready_(-1);
}

}  // namespace mamba

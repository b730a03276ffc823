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

constexpr int64_t kAlign = 64;  // bytes: every view on a cache line (and the widest vector)

int64_t aligned(int64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// Consecutive views of one allocation, each on a 64-byte boundary; without a base it only counts bytes,
// so that one walk over the views sizes the allocation and another carves it.
class Views {
 public:
  explicit Views(void* base = nullptr) : base_(static_cast<char*>(base)) {}
  template <typename T>
  void take(T*& view, int64_t n, size_t elem) {
    view = static_cast<T*>(static_cast<void*>(base_ ? base_ + used_ : nullptr));
    used_ += aligned(n * static_cast<int64_t>(elem));
  }
  int64_t used() const { return used_; }

 private:
  char* base_;
  int64_t used_ = 0;
};

// p + n elements of `dtype`.
inline void* offset(void* p, int64_t n, DType dtype) {
  return static_cast<char*>(p) + n * static_cast<int64_t>(dtype_size(dtype));
}

}  // namespace

int64_t Backprop::bytes_needed(const Config& c, int64_t B, int64_t L, int64_t scan_chunk, DType dtype, int recompute) {
  // The constructor's allocations (views rounded up to 64 bytes), the ops' workspace, and the scan backward's
  // per-call buffers (backward.cpp): partial dB, dC (threads, B, L, 2N) and per thread the chunk's
  // recomputed states (chunk + 1, N, 16 lanes), decays (chunk, N, 16) and Δ, softplus' (chunk, 16).
  // Saturating: B and L come from flags and files.
  const int64_t M = sat_mul(B, L), d = c.d_model, Di = c.d_inner(), N = c.d_state, V = c.vocab_size;
  const int64_t xw = c.dt_rank + 2 * N, chunk = std::clamp<int64_t>(scan_chunk, 1, std::max<int64_t>(1, L));
  const int64_t chunks = L / chunk + (L % chunk != 0);
  const bool low = dtype != DType::F32;
  const int64_t e = static_cast<int64_t>(dtype_size(dtype));
  // Per token: saved per layer, the fp32 residual and in `dtype` x_proj's output, and what the recomputation
  // level keeps (below 1 the conv's output and Δ, below 2 y, below 3 the norm's output, below 4 xz); once, what it
  // recomputes into one shared buffer; scratch, the fp32 residual gradient and in `dtype` the hidden state,
  // its gradient (bf16, fp16), the norm's gradient and the mixer's activation gradients. The scan's chunk
  // states: per layer below level 2, once from 2 up.
  const int64_t kept =
      (recompute < 1 ? 2 * Di : 0) + (recompute < 2 ? Di : 0) + (recompute < 3 ? d : 0) + (recompute < 4 ? 2 * Di : 0);
  const int64_t shared =
      (recompute >= 1 ? 2 * Di : 0) + (recompute >= 2 ? Di : 0) + (recompute >= 3 ? d : 0) + (recompute >= 4 ? 2 * Di : 0);
  const int64_t saved_per_token = 4 * d + e * (xw + kept);
  const int64_t scratch_per_token = 4 * d + e * ((low ? 3 : 2) * d + 5 * Di + xw + shared);
  const int64_t states = sat_mul(sat_mul(B, chunks), 4 * Di * N);
  int64_t bytes = sat_mul(c.n_layer, sat_add(sat_mul(M, saved_per_token), recompute < 2 ? states : 0));
  if (recompute >= 2) bytes = sat_add(bytes, states);
  bytes = sat_add(bytes, sat_mul(M, 4 * d + e * d + scratch_per_token));
  bytes = sat_add(bytes, sat_add(4 * (2 * Di * N), sat_add(sat_mul(B, 4 * (c.d_conv - 1) * Di), sat_mul(M, 8))));
  // The workspace: in fp32 the loss's rows of logits (and the head's gradient of a loss-only call); in
  // bf16 and fp16 on the CPU the fp32 copies its ops make (ops/cpu/half.h), the largest of the loss's, the
  // scan backward's and the projections' backward.
  const int64_t rows = std::min<int64_t>(std::max<int64_t>(M, 1), 256);
  int64_t workspace = sat_mul(4, sat_add(sat_mul(rows, V), V * d));
  if (low) {
    const int64_t xent = sat_add(workspace, sat_mul(4, sat_add(sat_mul(M, 2 * d), V * d)));
    const int64_t scan = sat_mul(sat_mul(M, 4), 7 * Di + 4 * N);
    const int64_t proj = 4 * (2 * Di * d + rows * (2 * Di + 2 * d + Di + xw));
    workspace = std::max({xent, scan, proj});
  }
  bytes = sat_add(bytes, workspace);
  if (low) {  // the matrices' copies
    for (const ParamSpec& s : param_specs(c)) {
      if (s.matrix) bytes = sat_add(bytes, aligned(s.numel * e));
    }
  }
  bytes = sat_add(bytes, kAlign * (16 * int64_t{c.n_layer} + 64));  // the views' alignment
  const int64_t threads = omp_get_max_threads();
  bytes = sat_add(bytes, sat_mul(threads, sat_mul(M, 8 * N)));
  const int64_t per_thread = sat_add(sat_mul(chunk + 1, N * 16), chunk * N * 16 + chunk * 32);  // floats
  bytes = sat_add(bytes, sat_mul(threads, sat_mul(4, per_thread)));
  return bytes;
}

Backprop::Backprop(const Config& config, int B, int L, int scan_chunk, Backend& backend, DType dtype, int recompute)
    // A chunk longer than the sequence is one chunk; clamped, its recomputation buffers fit the sequence.
    : config_(config), specs_(param_specs(config)), backend_(backend), B_(B), L_(L),
      chunk_(backend.scan_state_chunk(std::clamp(scan_chunk, 1, std::max(1, L)))), dtype_(dtype),
      recompute_(recompute) {
  const Config& c = config;
  const DType t = dtype;
  if (t != DType::F32 && t != DType::BF16 && t != DType::F16) {
    fail("training computes in F32, BF16 or F16, not ", dtype_name(t));
  }
  if (recompute < 0 || recompute > kMaxRecompute) {
    fail("recompute level ", recompute, " is not one of 0 (keep all), 1 (the conv and Δ), 2 (also the scan), ",
         "3 (also the norm), 4 (also in_proj)");
  }
  const bool lti = c.ssm_mode == SsmMode::Lti, low = t != DType::F32;
  // The embedding's backward reads the fp32 residual stream's gradient; Convert makes the matrices' copies.
  const OpQuery ops[] = {
      {Op::Embedding, t, t}, {Op::RmsNorm, t}, {Op::Matmul, t, t}, {Op::Conv1d, t, t, false, 0, c.d_conv},
      {Op::Scan, t, t, lti, c.d_state, 0}, {Op::EmbeddingBwd, DType::F32}, {Op::RmsNormBwd, t},
      {Op::MatmulBwd, t, t}, {Op::Conv1dBwd, t, t, false, 0, c.d_conv}, {Op::ScanBwd, t, t, lti, c.d_state, 0},
      {Op::Xent, t, t}, {Op::SsmA}, {Op::Convert, t}};
  for (const OpQuery& q : ops) {
    if (std::string why = backend.unsupported(q); !why.empty()) {
      fail("training on ", backend.describe(), low ? " in " + std::string(dtype_name(t)) : std::string(), ": ", why);
    }
  }
  const int64_t M = int64_t{B} * L, d = config.d_model, Di = config.d_inner(), N = config.d_state;
  const int64_t xw = config.dt_rank + 2 * N, chunks = scan_chunks(L, chunk_);
  const size_t e = dtype_size(t);

  // Saved activations: per layer, then the final residual and norm. Walked twice: to size, then to carve.
  layers_.resize(static_cast<size_t>(config.n_layer));
  // What the recomputation level does not keep per layer goes to one buffer for every layer, which the
  // forward writes and the backward recomputes just before the layer's backward: at 1 the conv's output and
  // Δ (from xz and x_proj's output, as the official model's checkpoint_lvl 1), 2·Di values a token and layer
  // for a conv and a (M, R)·(R, Di) product per layer; at 2 also the scan's chunk states and y (its forward
  // run again), Di values a token and layer and 4·Di·N / chunk bytes, for a scan forward per layer; at 3 also
  // the norm's output (d values a token and layer), from the fp32 residual the layer keeps anyway; at 4 also
  // in_proj's output xz (2·Di values a token and layer), for an (M, d)·(d, 2·Di) product a layer.
  auto carve_saved = [&](Views& v) {
    void *xc = nullptr, *delta = nullptr, *y = nullptr, *normed = nullptr, *xz = nullptr;
    float* checkpoints = nullptr;
    const int64_t states = int64_t{B} * chunks * Di * N;
    if (recompute_ >= 1) {
      v.take(xc, M * Di, e);
      v.take(delta, M * Di, e);
    }
    if (recompute_ >= 2) {
      v.take(y, M * Di, e);
      v.take(checkpoints, states, 4);
    }
    if (recompute_ >= 3) v.take(normed, M * d, e);
    if (recompute_ >= 4) v.take(xz, M * 2 * Di, e);
    for (LayerSaved& s : layers_) {
      v.take(s.residual, M * d, 4);
      s.normed = normed;
      if (recompute_ < 3) v.take(s.normed, M * d, e);
      s.xz = xz;
      if (recompute_ < 4) v.take(s.xz, M * 2 * Di, e);
      v.take(s.xdbl, M * xw, e);
      s.xc = xc, s.delta = delta, s.y = y, s.checkpoints = checkpoints;
      if (recompute_ < 1) {
        v.take(s.xc, M * Di, e);
        v.take(s.delta, M * Di, e);
      }
      if (recompute_ < 2) {
        v.take(s.y, M * Di, e);
        v.take(s.checkpoints, states, 4);
      }
    }
    v.take(residual_f_, M * d, 4);
    v.take(normed_f_, M * d, e);
  };
  Views count_saved;
  carve_saved(count_saved);
  saved_ = Buffer(backend, static_cast<size_t>(count_saved.used()));
  Views saved_views(saved_.data());
  carve_saved(saved_views);

  // The matrices' low-precision copies.
  copy_at_.assign(specs_.size(), -1);
  if (low) {
    int64_t at = 0;
    for (size_t i = 0; i < specs_.size(); i++) {
      if (!specs_[i].matrix) continue;
      copy_at_[i] = at;
      at += aligned(specs_[i].numel * static_cast<int64_t>(e));
    }
    copies_ = Buffer(backend, static_cast<size_t>(at));
  }

  // The largest workspace any op asks for, at this batch's shapes (addresses do not change the sizes).
  const LayerSaved& s0 = layers_[0];
  LayerWeights lw0{};
  lw0.D = lw0.dt_proj_b = lw0.conv_w = lw0.conv_b = lw0.lti_B = lw0.lti_C = s0.checkpoints;
  const MixerBuffers buf0{s0.xz, s0.xc, s0.xdbl, s0.delta, s0.y, t};
  ScanBwdParams scan_bwd;
  scan_bwd.fwd = mixer_scan_params(buf0, lw0, s0.checkpoints, c, B, L);
  scan_bwd.fwd.chunk_states = s0.checkpoints;
  scan_bwd.fwd.state_chunk = chunk_;
  scan_bwd.dz = s0.y;
  Conv1dBwdParams conv_bwd;
  conv_bwd.fwd = Conv1dParams{B, L, static_cast<int>(Di), c.d_conv, t, s0.xc, Di, s0.xz, 2 * Di,
                              s0.checkpoints, s0.checkpoints, s0.checkpoints, nullptr};
  conv_bwd.dout_stride = Di;
  XentParams xent;  // without the head's gradient: a loss-only call (validation) stages it in the workspace
  xent.dtype = t, xent.weight = WeightView{s0.y, t};
  xent.M = M, xent.C = static_cast<int>(d), xent.V = c.vocab_size;
  const EmbeddingBwdParams embedding_bwd{DType::F32, nullptr, nullptr, nullptr, M, static_cast<int>(d)};
  RmsNormParams rmsnorm{t};
  rmsnorm.M = M, rmsnorm.C = static_cast<int>(d);
  const RmsNormBwdParams rmsnorm_bwd{t, nullptr, nullptr, nullptr, nullptr, nullptr, M, static_cast<int>(d)};
  size_t workspace = std::max({mixer_workspace(backend, c, t, B, L), backend.scan_bwd_workspace(scan_bwd),
                               backend.conv1d_bwd_workspace(conv_bwd), backend.xent_workspace(xent),
                               backend.embedding_bwd_workspace(embedding_bwd), backend.rmsnorm_workspace(rmsnorm),
                               backend.rmsnorm_bwd_workspace(rmsnorm_bwd)});
  // The projections' backward, with dinp (x_proj's adds to the scan's du).
  const WeightView w{s0.y, t};
  const int R = c.dt_rank;
  const int64_t projections[][2] = {{2 * Di, d}, {xw, Di}, {Di, R}, {d, Di}};  // (N, K) of in, x, dt, out
  for (const auto& [n, k] : projections) {
    MatmulBwdParams p;
    p.dtype = t, p.dinp = s0.y, p.accumulate = true, p.dweight = s0.checkpoints, p.dout = s0.y, p.inp = s0.y;
    p.weight = w, p.M = M, p.K = static_cast<int>(k), p.N = static_cast<int>(n);
    workspace = std::max(workspace, backend.matmul_bwd_workspace(p));
  }

  auto carve_scratch = [&](Views& v) {
    v.take(hidden_, M * d, e);
    v.take(dresid_, M * d, 4);
    v.take(dhidden_, low ? M * d : 0, e);
    v.take(dnormed_, M * d, e);
    v.take(dxz_, M * 2 * Di, e);
    v.take(dxc_, M * Di, e);
    v.take(ddelta_, M * Di, e);
    v.take(dy_, M * Di, e);
    v.take(dxdbl_, M * xw, e);
    v.take(dA_, Di * N, 4);
    v.take(A_, Di * N, 4);
    v.take(tail_, int64_t{B} * (config.d_conv - 1) * Di, 4);
    v.take(loss_, 1, 4);
    v.take(inputs_, M, 4);
    v.take(targets_, M, 4);
    v.take(workspace_, static_cast<int64_t>(workspace), 1);
  };
  Views count_scratch;
  carve_scratch(count_scratch);
  scratch_ = Buffer(backend, static_cast<size_t>(count_scratch.used()));
  backend.fill_zero(scratch_.data(), scratch_.bytes());
  Views scratch_views(scratch_.data());
  carve_scratch(scratch_views);
  if (!low) dhidden_ = nullptr;
}

void Backprop::update_weights(const float* params) {
  if (dtype_ == DType::F32) return;
  for (size_t i = 0; i < specs_.size(); i++) {
    if (copy_at_[i] < 0) continue;
    backend_.convert(copies_.as<char>() + copy_at_[i], dtype_, params + specs_[i].offset, DType::F32, specs_[i].numel);
  }
}

double Backprop::step(const float* params, float* grads, const int32_t* inputs, const int32_t* targets,
                      int ignore_index, int64_t divisor, float loss_scale) {
  forward_backward(params, grads, inputs, targets, ignore_index, loss_, divisor, loss_scale);
  float loss = 0;
  backend_.download(&loss, loss_, sizeof(float));
  return loss;
}

void Backprop::forward_backward(const float* params, float* grads, const int32_t* inputs, const int32_t* targets,
                                int ignore_index, float* loss, int64_t divisor, float loss_scale) {
  const Config& c = config_;
  const int d = c.d_model, Di = c.d_inner(), N = c.d_state, R = c.dt_rank, K = c.d_conv, V = c.vocab_size;
  const int xw = R + 2 * N;
  const int64_t M = int64_t{B_} * L_;
  const int64_t nA = int64_t{Di} * N;
  const DType t = dtype_;
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
    // The matrices from their low-precision copies in bf16 and fp16, every other parameter from the masters.
    w_ = bind_weights(c, specs_, [&](const ParamSpec& s) {
      const int64_t at = copy_at_[static_cast<size_t>(&s - specs_.data())];
      return at < 0 ? WeightView{params + s.offset, DType::F32} : WeightView{copies_.as<char>() + at, t};
    });
    update_weights(params);
    bound_params_ = params;
  }
  if (grads && grads != bound_grads_) {
    g_ = bind_weights(c, specs_, grads);
    bound_grads_ = grads;
  }
  const Weights& w = w_;
  Backend& b = backend_;
  void* ws = workspace_;
  // Gradient views share the parameters' layout; they are written, hence the cast.
  auto mut = [](const float* p) { return const_cast<float*>(p); };
  auto buffers = [t](const LayerSaved& s) { return MixerBuffers{s.xz, s.xc, s.xdbl, s.delta, s.y, t}; };
  auto zero = [&](void* p, int64_t n) { b.fill_zero(p, sizeof(float) * static_cast<size_t>(n)); };
  const size_t row_bytes = sizeof(float) * static_cast<size_t>(M * d);

  // ---- forward, keeping each layer's activations ----
  b.embedding({t, hidden_, inputs, w.embedding, M, d});
  for (int l = 0; l < c.n_layer; l++) {
    const LayerWeights& lw = w.layers[l];
    LayerSaved& s = layers_[l];
    if (l > 0) b.copy(s.residual, layers_[l - 1].residual, row_bytes);
    b.rmsnorm({t, s.normed, s.residual, hidden_, lw.norm, l == 0, M, d, c.norm_eps}, ws);
    b.ssm_A(A_, lw.A_log, nA);
    zero(tail_, int64_t{B_} * (K - 1) * Di);  // training sequences start from the zero state
    mixer_forward(b, hidden_, buffers(s), s.normed, lw, A_, c, B_, L_,
                  MixerCarry{tail_, nullptr, nullptr, s.checkpoints, chunk_}, ws);
  }
  b.copy(residual_f_, layers_.back().residual, row_bytes);
  b.rmsnorm({t, normed_f_, residual_f_, hidden_, w.norm_f, false, M, d, c.norm_eps}, ws);

  // ---- loss, and the backward in exact reverse order ----
  XentParams xent;
  xent.dtype = t, xent.loss = loss, xent.dhidden = dnormed_, xent.dweight = grads ? mut(g_.lm_head.f32()) : nullptr;
  xent.hidden = normed_f_, xent.weight = w.lm_head, xent.targets = targets;
  xent.M = M, xent.C = d, xent.V = V, xent.ignore_index = ignore_index, xent.divisor = divisor;
  xent.scale = loss_scale;
  b.xent(xent, ws);
  if (!grads) return;

  zero(dresid_, M * d);
  b.rmsnorm_bwd({t, dresid_, mut(g_.norm_f), dnormed_, residual_f_, w.norm_f, M, d, c.norm_eps}, ws);
  for (int l = c.n_layer - 1; l >= 0; l--) {
    const LayerWeights& lw = w.layers[l];
    const LayerWeights& gw = g_.layers[l];
    const LayerSaved& s = layers_[l];
    // What this level did not keep, recomputed by the forward's own calls from a zero tail and state, as the
    // forward began (the same kernels on the same inputs: the same values): the norm of the residual as the
    // forward saw it, in_proj's output from it, the conv and Δ, the scan.
    if (recompute_ >= 3) b.rmsnorm({t, s.normed, s.residual, nullptr, lw.norm, false, M, d, c.norm_eps}, ws);
    if (recompute_ >= 4) mixer_in_proj(b, buffers(s), s.normed, lw, c, B_, L_, ws);
    if (recompute_ >= 1) {
      zero(tail_, int64_t{B_} * (K - 1) * Di);
      mixer_conv(b, buffers(s), lw, c, B_, L_, tail_, ws);
      mixer_delta(b, buffers(s), lw, c, B_, L_, ws);
    }
    b.ssm_A(A_, lw.A_log, nA);  // A = −exp(A_log): the recomputed scan's and the scan backward's
    if (recompute_ >= 2) {
      mixer_scan(b, buffers(s), lw, A_, c, B_, L_, MixerCarry{nullptr, nullptr, nullptr, s.checkpoints, chunk_}, ws);
    }
    // out_proj: its output was this layer's hidden, whose gradient is the residual gradient (fp32; rounded
    // to the activations' type for the product, as autograd hands a bf16 output its gradient in bf16).
    const void* dhidden = dresid_;
    if (t != DType::F32) {
      b.convert(dhidden_, t, dresid_, DType::F32, M * d);
      dhidden = dhidden_;
    }
    b.matmul_bwd({t, dy_, Di, false, mut(gw.out_proj_w.f32()), mut(gw.out_proj_b), dhidden, d, s.y, Di, lw.out_proj_w,
                  M, Di, d},
                 ws);
    const bool lti = c.ssm_mode == SsmMode::Lti;  // B, C are parameters (D, N): their gradients accumulate there
    // selective scan (recomputing inside each chunk from the saved states)
    zero(dA_, nA);
    ScanBwdParams g;
    g.fwd = mixer_scan_params(buffers(s), lw, A_, c, B_, L_);
    g.fwd.chunk_states = s.checkpoints;
    g.fwd.state_chunk = chunk_;
    g.dy = dy_, g.dy_stride = Di;
    g.du = dxc_, g.du_stride = Di;
    g.ddelta = ddelta_, g.ddelta_stride = Di;
    g.dz = offset(dxz_, Di, t), g.dz_stride = 2 * Di;
    g.dB = lti ? static_cast<void*>(mut(gw.lti_B)) : offset(dxdbl_, R, t), g.dB_stride = xw;
    g.dC = lti ? static_cast<void*>(mut(gw.lti_C)) : offset(dxdbl_, R + N, t), g.dC_stride = xw;
    g.dA = dA_;
    g.dD = mut(gw.D);
    g.ddelta_bias = mut(gw.dt_proj_b);
    b.scan_bwd(g, ws);
    b.ssm_dA_log(mut(gw.A_log), dA_, A_, nA);  // A = −exp(A_log)
    // dt_proj (into δ's columns of dxdbl, beside the scan's dB and dC), then x_proj (adding to the scan's
    // du: the conv's output feeds both); absent in LTI mode, where Δ's gradient went to dt_proj.bias alone.
    if (!lti) {
      b.matmul_bwd({t, dxdbl_, xw, false, mut(gw.dt_proj_w.f32()), nullptr, ddelta_, Di, s.xdbl, xw, lw.dt_proj_w, M,
                    R, Di},
                   ws);
      b.matmul_bwd({t, dxc_, Di, true, mut(gw.x_proj_w.f32()), nullptr, dxdbl_, xw, s.xc, Di, lw.x_proj_w, M, Di, xw},
                   ws);
    }
    // conv1d + SiLU, into the x half of dxz (the scan wrote dz into the other half)
    Conv1dBwdParams conv;
    conv.fwd = Conv1dParams{B_, L_, Di, K, t, nullptr, 0, s.xz, 2 * Di, lw.conv_w, lw.conv_b, nullptr, nullptr};
    conv.dout = dxc_, conv.dout_stride = Di;
    conv.dx = dxz_, conv.dx_stride = 2 * Di;
    conv.dweight = mut(gw.conv_w), conv.dbias = mut(gw.conv_b);
    b.conv1d_bwd(conv, ws);
    // in_proj, then the norm (which updates the residual gradient in place)
    b.matmul_bwd({t, dnormed_, d, false, mut(gw.in_proj_w.f32()), mut(gw.in_proj_b), dxz_, 2 * Di, s.normed, d,
                  lw.in_proj_w, M, d, 2 * Di},
                 ws);
    b.rmsnorm_bwd({t, dresid_, mut(gw.norm), dnormed_, s.residual, lw.norm, M, d, c.norm_eps}, ws);
    if (on_grads_ready_) on_grads_ready_(l);
  }
  b.embedding_bwd({DType::F32, mut(g_.embedding.f32()), dresid_, inputs, M, d}, ws);
  if (on_grads_ready_) on_grads_ready_(-1);
}

}  // namespace mamba

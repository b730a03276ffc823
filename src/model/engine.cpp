#include "model/engine.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "model/mixer.h"

namespace mamba {

namespace {

int64_t padded(int64_t bytes) { return (bytes + 255) / 256 * 256; }  // every view 256-byte aligned

inline void* offset(void* p, int64_t n, DType dtype) { return static_cast<char*>(p) + n * static_cast<int64_t>(dtype_size(dtype)); }

}  // namespace

Engine::Engine(const Model& model, const EngineOptions& options)
    : model_(model),
      backend_(Backend::get(options.device)),
      // On a GPU the activations take the weights' type, fp32 for int8 weights (dequantized there).
      dtype_(options.dtype.value_or(backend_.host_memory() || model.weight_dtype() == DType::I8 ? DType::F32
                                                                                                : model.weight_dtype())),
      max_tokens_(std::max<int64_t>(1, options.max_tokens)),
      graphs_enabled_(options.graphs) {
  const Config& c = model_.config();
  // Every op this model runs, with its types, before anything is allocated.
  const DType weight = backend_.host_memory() ? model.weight_dtype() : dtype_;
  std::string why = backend_.unsupported({Op::Embedding, dtype_, weight});
  if (why.empty()) why = backend_.unsupported({Op::RmsNorm, dtype_, weight});
  if (why.empty()) why = mixer_unsupported(backend_, c, dtype_, weight);
  if (!why.empty()) fail("this model cannot run on ", options.device.name(), " in ", dtype_name(dtype_), ": ", why);

  if (backend_.host_memory()) {
    weights_ = model.weights();
    A_ = model.A(0);
    return;
  }
  // One device allocation for every parameter (the matrices converted to the activations' type) and A.
  const std::vector<ParamSpec>& specs = model.specs();
  std::vector<int64_t> at(specs.size());
  int64_t total = 0;
  for (size_t i = 0; i < specs.size(); i++) {
    at[i] = total;
    total += padded(specs[i].numel * static_cast<int64_t>(dtype_size(specs[i].matrix ? dtype_ : DType::F32)));
  }
  const int64_t a_at = total, a_floats = int64_t{c.n_layer} * c.d_inner() * c.d_state;
  total += padded(a_floats * 4);
  device_weights_ = Buffer(backend_, static_cast<size_t>(total));
  char* base = device_weights_.as<char>();
  std::vector<uint8_t> staging;
  for (size_t i = 0; i < specs.size(); i++) {
    const ParamSpec& s = specs[i];
    const WeightView v = model.param(s);
    const DType want = s.matrix ? dtype_ : DType::F32;
    const size_t bytes = static_cast<size_t>(s.numel) * dtype_size(want);
    if (v.dtype == want) {
      backend_.upload(base + at[i], v.data, bytes);
    } else {
      staging.resize(bytes);
      const int64_t rows = s.matrix ? s.shape[0] : 1;
      convert_weight(WeightView{staging.data(), want}, v, rows, s.numel / rows);
      backend_.upload(base + at[i], staging.data(), bytes);
    }
  }
  backend_.upload(base + a_at, model.A(0), static_cast<size_t>(a_floats) * 4);
  A_ = reinterpret_cast<const float*>(base + a_at);
  weights_ = bind_weights(c, specs, [&](const ParamSpec& s) {
    return WeightView{base + at[&s - specs.data()], s.matrix ? dtype_ : DType::F32};
  });
}

int64_t Engine::weight_bytes() const {
  if (device_weights_.bytes()) return static_cast<int64_t>(device_weights_.bytes());
  return model_.mapped_bytes() + model_.converted_bytes();
}

void Engine::reserve(int B, int L) {
  const Config& c = model_.config();
  // The mixer's, the norms' and the head's (its rows: all of them, or one per sequence).
  RmsNormParams norm{dtype_};
  norm.M = int64_t{B} * L, norm.C = c.d_model;
  MatmulParams head;
  head.out_dtype = DType::F32, head.dtype = dtype_, head.weight = weights_.lm_head;
  head.M = int64_t{B} * L, head.K = c.d_model, head.N = c.vocab_size;
  const size_t workspace = std::max({mixer_workspace(backend_, c, dtype_, B, L), backend_.rmsnorm_workspace(norm),
                                     backend_.matmul_workspace(head)});
  if (int64_t{B} * L <= rows_ && workspace <= workspace_bytes_) return;
  const int64_t rows = std::max(int64_t{B} * L, rows_);
  workspace_bytes_ = std::max(workspace, workspace_bytes_);
  const int64_t d = c.d_model, di = c.d_inner(), xw = c.dt_rank + 2 * c.d_state, V = c.vocab_size;
  const int64_t e = static_cast<int64_t>(dtype_size(dtype_));
  // Logits on the device only where they cannot be written straight into the caller's memory.
  const int64_t logit_rows = backend_.host_memory() ? 0 : rows;
  const int64_t sizes[] = {rows * d * e, rows * d * 4, rows * d * e,  rows * 2 * di * e, rows * di * e,
                           rows * xw * e, rows * di * e, rows * di * e, rows * d * e,     rows * 4,
                           rows * 4,     logit_rows * V * 4, static_cast<int64_t>(workspace_bytes_)};
  int64_t total = 0;
  for (int64_t s : sizes) total += padded(s);
  graphs_.clear();    // they point into the old arena
  arena_ = Buffer();  // the old one goes first: peak memory is the new size, not both
  arena_ = Buffer(backend_, static_cast<size_t>(total));
  char* p = arena_.as<char>();
  void* views[std::size(sizes)];
  for (size_t i = 0; i < std::size(sizes); i++) {
    views[i] = p;
    p += padded(sizes[i]);
  }
  hidden_ = views[0], residual_ = static_cast<float*>(views[1]), normed_ = views[2], xz_ = views[3], xc_ = views[4];
  xdbl_ = views[5], delta_ = views[6], y_ = views[7], last_ = views[8];
  tokens_ = static_cast<int32_t*>(views[9]), ids_ = static_cast<int32_t*>(views[10]);
  logits_ = logit_rows ? static_cast<float*>(views[11]) : nullptr;
  workspace_ = views[12];
  chunk_tokens_.resize(static_cast<size_t>(rows));
  rows_ = rows;
}

void Engine::check_ids(const int32_t* tokens, int64_t n) const {
  const int V = model_.config().vocab_size;
  for (int64_t i = 0; i < n; i++) {
    if (tokens[i] < 0 || tokens[i] >= V) fail("token id ", tokens[i], " at index ", i, " is out of range [0, ", V, ")");
  }
}

void Engine::check_state(const State& state, int B) const {
  const Config& c = model_.config();
  if (state.batch != B || state.n_layer != c.n_layer || state.d_inner != c.d_inner() || state.d_state != c.d_state ||
      state.d_conv != c.d_conv) {
    fail("forward: the state holds ", state.batch, " sequences of a different shape than this batch of ", B);
  }
  if (&state.backend() != &backend_) {
    fail("forward: the state is on ", state.backend().device().name(), ", this engine runs on ", backend_.device().name());
  }
}

void Engine::forward(const int32_t* tokens, int B, int L, State& state, float* logits, Logits which) {
  const Config& c = model_.config();
  if (B <= 0 || L <= 0) fail("forward: batch and length must be positive (got B = ", B, ", L = ", L, ")");
  check_state(state, B);
  for (int64_t i = 0; i < int64_t{B} * L; i++) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      fail("token id ", tokens[i], " at position ", i % L, " of sequence ", i / L, " is out of range [0, ",
           c.vocab_size, ")");
    }
  }
  const int chunk = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(L, max_tokens_ / B)));
  reserve(B, chunk);
  const int64_t V = c.vocab_size;
  const bool host = backend_.host_memory();
  if (L == 1 && which != Logits::None && !host) {  // a decode step: one sequence of kernels, maybe replayed
    std::memcpy(chunk_tokens_.data(), tokens, sizeof(int32_t) * B);
    decode_on_device(B, state);
    backend_.download(logits, logits_, sizeof(float) * static_cast<size_t>(B * V));
    return;
  }
  for (int t0 = 0; t0 < L; t0 += chunk) {
    if (t0 > 0 && interrupt_) interrupt_();
    const int Lc = std::min(chunk, L - t0);
    for (int b = 0; b < B; b++) {
      std::memcpy(chunk_tokens_.data() + int64_t{b} * Lc, tokens + int64_t{b} * L + t0, sizeof(int32_t) * Lc);
    }
    const bool final_chunk = t0 + Lc == L;
    if (which == Logits::All) {
      if (host) {
        run_chunk(B, Lc, state, logits + t0 * V, int64_t{L} * V, false);
      } else {
        run_chunk(B, Lc, state, logits_, int64_t{Lc} * V, false);
        for (int b = 0; b < B; b++) {
          backend_.download(logits + (int64_t{b} * L + t0) * V, logits_ + int64_t{b} * Lc * V,
                            sizeof(float) * static_cast<size_t>(Lc * V));
        }
      }
    } else if (which == Logits::Last && final_chunk) {
      run_chunk(B, Lc, state, host ? logits : logits_, V, true);
      if (!host) backend_.download(logits, logits_, sizeof(float) * static_cast<size_t>(B * V));
    } else {
      run_chunk(B, Lc, state, nullptr, V, true);
    }
  }
}

void Engine::step_greedy(const int32_t* tokens, int B, State& state, int32_t* next) {
  const Config& c = model_.config();
  if (B <= 0) fail("step: batch must be positive (got ", B, ")");
  check_state(state, B);
  check_ids(tokens, B);
  const int64_t V = c.vocab_size;
  reserve(B, 1);
  std::memcpy(chunk_tokens_.data(), tokens, sizeof(int32_t) * B);
  if (backend_.host_memory()) {
    // The CPU writes logits into the caller's memory elsewhere; here they need a place of their own.
    thread_local std::vector<float> logits;
    logits.resize(static_cast<size_t>(B * V));
    run_chunk(B, 1, state, logits.data(), V, true);
    backend_.argmax(next, logits.data(), B, static_cast<int>(V));
  } else {
    decode_on_device(B, state);
    backend_.argmax(ids_, logits_, B, static_cast<int>(V));
    backend_.download(next, ids_, sizeof(int32_t) * B);
  }
}

void Engine::decode_on_device(int B, State& state) {
  const int64_t V = model_.config().vocab_size;
  backend_.upload(tokens_, chunk_tokens_.data(), sizeof(int32_t) * B);
  // Eager or recorded, the step is the same kernels on the same buffers: replay equals eager bitwise.
  if (!use_graphs()) return run_layers(tokens_, B, 1, state, logits_, V, true);
  for (DecodeGraph& g : graphs_) {
    if (g.batch == B && g.conv == state.conv_layer(0) && g.ssm == state.ssm_layer(0)) {
      backend_.replay(*g.graph);
      return;
    }
  }
  backend_.begin_capture();
  try {
    run_layers(tokens_, B, 1, state, logits_, V, true);
  } catch (...) {
    backend_.end_capture();  // leave the backend able to run again
    throw;
  }
  graphs_.push_back(DecodeGraph{B, state.conv_layer(0), state.ssm_layer(0), backend_.end_capture()});
  backend_.replay(*graphs_.back().graph);
}

void Engine::run_chunk(int B, int Lc, State& state, float* logits, int64_t ld_seq, bool last_only) {
  const int64_t M = int64_t{B} * Lc;
  const int32_t* ids = chunk_tokens_.data();
  if (!backend_.host_memory()) {
    backend_.upload(tokens_, ids, sizeof(int32_t) * static_cast<size_t>(M));
    ids = tokens_;
  }
  run_layers(ids, B, Lc, state, logits, ld_seq, last_only);
}

void Engine::run_layers(const int32_t* ids, int B, int Lc, State& state, float* logits, int64_t ld_seq,
                        bool last_only) {
  const Config& c = model_.config();
  const Weights& w = weights_;
  const int d = c.d_model, V = c.vocab_size;
  const int64_t M = int64_t{B} * Lc;
  const int64_t per_layer_A = int64_t{c.d_inner()} * c.d_state;
  backend_.embedding({dtype_, hidden_, ids, w.embedding, M, d});
  const MixerBuffers buffers{xz_, xc_, xdbl_, delta_, y_, dtype_};
  for (int l = 0; l < c.n_layer; l++) {
    const LayerWeights& lw = w.layers[l];
    backend_.rmsnorm({dtype_, normed_, residual_, hidden_, lw.norm, l == 0, M, d, c.norm_eps}, workspace_);
    mixer_forward(backend_, hidden_, buffers, normed_, lw, A_ + l * per_layer_A, c, B, Lc,
                  MixerCarry{state.conv_layer(l), state.ssm_layer(l), state.ssm_layer(l)}, workspace_);
  }
  if (!logits) return;
  backend_.rmsnorm({dtype_, normed_, residual_, hidden_, w.norm_f, false, M, d, c.norm_eps}, workspace_);
  MatmulParams head;
  head.out_dtype = DType::F32;
  head.dtype = dtype_;
  head.weight = w.lm_head;
  head.K = d;
  head.N = V;
  head.ldo = V;
  head.ldi = d;
  const int64_t row_bytes = int64_t{d} * static_cast<int64_t>(dtype_size(dtype_));
  if (last_only) {
    for (int b = 0; b < B; b++) {
      backend_.copy(offset(last_, int64_t{b} * d, dtype_), offset(normed_, (int64_t{b} * Lc + Lc - 1) * d, dtype_),
                    static_cast<size_t>(row_bytes));
    }
    head.out = logits, head.inp = last_, head.M = B;
    backend_.matmul(head, workspace_);
  } else {
    for (int b = 0; b < B; b++) {
      head.out = logits + b * ld_seq, head.inp = offset(normed_, int64_t{b} * Lc * d, dtype_), head.M = Lc;
      backend_.matmul(head, workspace_);
    }
  }
}

}  // namespace mamba

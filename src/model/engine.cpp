#include "model/engine.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "model/mixer.h"
#include "ops/cpu/ops.h"

namespace mamba {

Engine::Engine(const Model& model, int64_t max_tokens) : model_(model), max_tokens_(std::max<int64_t>(1, max_tokens)) {}

void Engine::reserve(int64_t rows) {
  if (rows <= rows_) return;
  const Config& c = model_.config();
  const int64_t d = c.d_model, di = c.d_inner(), xw = c.dt_rank + 2 * c.d_state;
  auto padded = [](int64_t n) { return (n + 15) / 16 * 16; };
  const int64_t sizes[] = {rows * d, rows * d, rows * d, rows * 2 * di, rows * di, rows * xw, rows * di, rows * di, rows * d};
  int64_t total = 0;
  for (int64_t s : sizes) total += padded(s);
  arena_.assign(static_cast<size_t>(total), 0.0f);
  float* p = arena_.data();
  float** views[] = {&hidden_, &residual_, &normed_, &xz_, &xc_, &xdbl_, &delta_, &y_, &last_};
  for (size_t i = 0; i < std::size(sizes); i++) {
    *views[i] = p;
    p += padded(sizes[i]);
  }
  chunk_tokens_.resize(static_cast<size_t>(rows));
  rows_ = rows;
}

void Engine::forward(const int32_t* tokens, int B, int L, State& state, float* logits, Logits which) {
  const Config& c = model_.config();
  if (B <= 0 || L <= 0) fail("forward: batch and length must be positive (got B = ", B, ", L = ", L, ")");
  if (state.batch != B || state.n_layer != c.n_layer || state.d_inner != c.d_inner()) {
    fail("forward: the state holds ", state.batch, " sequences of a different shape than this batch of ", B);
  }
  for (int64_t i = 0; i < int64_t{B} * L; i++) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      fail("token id ", tokens[i], " at position ", i % L, " of sequence ", i / L, " is out of range [0, ",
           c.vocab_size, ")");
    }
  }
  const int chunk = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(L, max_tokens_ / B)));
  reserve(int64_t{B} * chunk);
  const int64_t V = c.vocab_size;
  for (int t0 = 0; t0 < L; t0 += chunk) {
    const int Lc = std::min(chunk, L - t0);
    for (int b = 0; b < B; b++) {
      std::memcpy(chunk_tokens_.data() + int64_t{b} * Lc, tokens + int64_t{b} * L + t0, sizeof(int32_t) * Lc);
    }
    const bool final_chunk = t0 + Lc == L;
    if (which == Logits::All) {
      run_chunk(B, Lc, state, logits + t0 * V, int64_t{L} * V, false);
    } else {
      run_chunk(B, Lc, state, which == Logits::Last && final_chunk ? logits : nullptr, V, true);
    }
  }
}

void Engine::run_chunk(int B, int Lc, State& state, float* logits, int64_t ld_seq, bool last_only) {
  const Config& c = model_.config();
  const Weights& w = model_.weights();
  const int d = c.d_model, V = c.vocab_size;
  const int64_t M = int64_t{B} * Lc;

  cpu::embedding_forward(hidden_, chunk_tokens_.data(), w.embedding, M, d);
  for (int l = 0; l < c.n_layer; l++) {
    const LayerWeights& lw = w.layers[l];
    cpu::residual_rmsnorm_forward(normed_, residual_, hidden_, lw.norm, l == 0, M, d, c.norm_eps);
    mixer_forward(hidden_, MixerBuffers{xz_, xc_, xdbl_, delta_, y_}, normed_, lw, model_.A(l), c, B, Lc,
                  MixerCarry{state.conv_layer(l), state.ssm_layer(l), state.ssm_layer(l)});
  }
  if (!logits) return;
  cpu::residual_rmsnorm_forward(normed_, residual_, hidden_, w.norm_f, false, M, d, c.norm_eps);
  if (last_only) {
    for (int b = 0; b < B; b++) {
      std::memcpy(last_ + int64_t{b} * d, normed_ + (int64_t{b} * Lc + Lc - 1) * d, sizeof(float) * d);
    }
    cpu::matmul_forward(logits, V, last_, d, w.lm_head, nullptr, B, d, V);
  } else {
    for (int b = 0; b < B; b++) {
      cpu::matmul_forward(logits + b * ld_seq, V, normed_ + int64_t{b} * Lc * d, d, w.lm_head, nullptr, Lc, d, V);
    }
  }
}

}  // namespace mamba

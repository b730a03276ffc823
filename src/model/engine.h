// Runs a Model over tokens: the parallel path for prefill and scoring (the whole chunk through each
// layer at once) and the recurrent step for generation (one token per sequence, constant time and
// memory). Both carry the recurrent State, so a sequence can be fed in pieces of any size.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"
#include "model/state.h"

namespace mamba {

enum class Logits { All, Last, None };

class Engine {
 public:
  // `max_tokens` bounds B × chunk length per pass, and with it the activation memory.
  explicit Engine(const Model& model, int64_t max_tokens = 2048);

  // Runs tokens (B, L) from `state` (batch B), leaving the final state there. Writes logits
  // (B, L, V) for Logits::All, (B, V) of the last position for Logits::Last. Ids are checked first.
  void forward(const int32_t* tokens, int B, int L, State& state, float* logits, Logits which = Logits::All);
  // One token for each of B sequences: logits (B, V). Allocates nothing once buffers exist.
  void step(const int32_t* tokens, int B, State& state, float* logits) {
    forward(tokens, B, 1, state, logits, Logits::All);
  }

  const Model& model() const { return model_; }
  int64_t activation_bytes() const { return static_cast<int64_t>(arena_.size()) * 4; }

 private:
  void reserve(int64_t rows);
  // One chunk: tokens (B, Lc) contiguous; logits rows for each sequence at logits + b·ld_seq.
  void run_chunk(int B, int Lc, State& state, float* logits, int64_t ld_seq, bool last_only);

  const Model& model_;
  int64_t max_tokens_;
  int64_t rows_ = 0;          // capacity of the buffers below, in tokens
  std::vector<float> arena_;  // one allocation for every activation
  std::vector<int32_t> chunk_tokens_;
  // Views into arena_ (M = rows); d = d_model, Di = d_inner, R = dt_rank.
  float* hidden_ = nullptr;    // (M, d) a layer's output, the embedding at first
  float* residual_ = nullptr;  // (M, d) the fp32 residual stream
  float* normed_ = nullptr;    // (M, d)
  float* xz_ = nullptr;        // (M, 2·Di) in_proj output: x | z
  float* xc_ = nullptr;        // (M, Di) SiLU(conv1d(x))
  float* xdbl_ = nullptr;      // (M, R + 2N) x_proj output: δ | B | C
  float* delta_ = nullptr;     // (M, Di) dt_proj(δ), before bias and softplus
  float* y_ = nullptr;         // (M, Di) scan output, gated
  float* last_ = nullptr;      // (B, d) normed last positions for Logits::Last
};

}  // namespace mamba

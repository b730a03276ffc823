// Choosing the next token from logits (one sequence). The steps, in Hugging Face's order:
//
//   logits ─ repetition penalty on every token seen (CTRL, Keskar et al. 2019: a positive logit is
//            divided by the penalty, a negative one multiplied)
//          ─ temperature 0: argmax (greedy), otherwise softmax(logits / temperature) restricted to
//            the top k ─ then to the smallest set of most likely tokens whose mass reaches top_p
//            (nucleus, Holtzman et al. 2019) ─ then to tokens with p ≥ min_p · p_max ─ one draw.
//
// Deterministic: the same seed, logits and history give the same tokens on every platform (one
// uniform draw per sampled token from the SplitMix64 Rng; ties broken by the lower id).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/rng.h"

namespace mamba {

struct SamplerOptions {
  double temperature = 0.8;         // 0 (or below 1e-6): greedy (argmax)
  int top_k = 0;                    // 0: the whole vocabulary
  double top_p = 1.0;               // 1: no nucleus cut
  double min_p = 0.0;               // 0: no cut
  double repetition_penalty = 1.0;  // 1: none; > 1 discourages tokens already seen
  uint64_t seed = 0;

  void validate() const;  // throws Error naming the option and the range it must lie in
};

class Sampler {
 public:
  Sampler(SamplerOptions options, int vocab);

  int32_t sample(const float* logits);  // logits (vocab); the history is what observe() was given
  // Tokens of the sequence (prompt and output) that the repetition penalty applies to.
  void observe(int32_t id);
  void observe(std::span<const int32_t> ids) {
    for (int32_t id : ids) observe(id);
  }

  const SamplerOptions& options() const { return options_; }
  const std::vector<int32_t>& seen() const { return seen_list_; }  // distinct ids, in order first seen
  uint64_t rng_state() const { return rng_.state; }
  void set_rng_state(uint64_t state) { rng_.state = state; }

 private:
  SamplerOptions options_;
  Rng rng_;
  std::vector<uint8_t> seen_;       // (vocab) 1 where the id was observed
  std::vector<int32_t> seen_list_;  // the observed ids, each once
  std::vector<float> penalized_;    // (vocab) logits after the repetition penalty
  std::vector<float> probs_;        // (vocab) unnormalized probabilities of the candidates
  std::vector<int32_t> order_;      // (vocab) candidate ids
};

}  // namespace mamba

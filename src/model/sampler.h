// Choosing the next token from logits: greedy, or a draw from softmax(logits / temperature),
// optionally restricted to the top k.
#pragma once

#include <cstdint>
#include <vector>

#include "core/rng.h"

namespace mamba {

struct SamplerOptions {
  double temperature = 0.8;  // 0: greedy (argmax)
  int top_k = 0;             // 0: the whole vocabulary
  uint64_t seed = 0;
};

class Sampler {
 public:
  Sampler(SamplerOptions options, int vocab);
  int32_t sample(const float* logits);  // logits (vocab)

 private:
  SamplerOptions options_;
  Rng rng_;
  std::vector<float> probs_;
  std::vector<int32_t> order_;
};

}  // namespace mamba

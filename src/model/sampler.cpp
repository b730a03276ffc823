#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace mamba {

Sampler::Sampler(SamplerOptions options, int vocab)
    : options_(options), rng_(options.seed), probs_(static_cast<size_t>(vocab)), order_(static_cast<size_t>(vocab)) {}

int32_t Sampler::sample(const float* logits) {
  const int V = static_cast<int>(probs_.size());
  if (options_.temperature <= 0) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  std::iota(order_.begin(), order_.end(), 0);
  int keep = V;
  if (options_.top_k > 0 && options_.top_k < V) {
    keep = options_.top_k;
    std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  }
  float max_logit = -INFINITY;
  for (int i = 0; i < keep; i++) max_logit = std::max(max_logit, logits[order_[i]]);
  double total = 0;
  for (int i = 0; i < keep; i++) {
    probs_[i] = static_cast<float>(std::exp((logits[order_[i]] - max_logit) / options_.temperature));
    total += probs_[i];
  }
  double r = rng_.uniform() * total;
  for (int i = 0; i < keep; i++) {
    r -= probs_[i];
    if (r < 0) return order_[i];
  }
  return order_[keep - 1];
}

}  // namespace mamba

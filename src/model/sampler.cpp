#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "model/validate.h"
#include "ops/cpu/math.h"

namespace mamba {

namespace {

// exp((x − max) / T) by the branch-free polynomial of ops/cpu/math.h: the loop over a 50k vocabulary
// vectorizes (a draw over 50k tokens: 0.23 ms, against 0.84 ms with std::exp), and it gives the same
// bits on every platform, as libm does not promise.
inline float weight(float x, float max, float temperature) { return cpu::exp_approx((x - max) / temperature); }

}  // namespace

void SamplerOptions::validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature)) fail("temperature ", temperature, ": must be ≥ 0 (0: greedy)");
  if (top_k < 0) fail("top-k ", top_k, ": must be ≥ 0 (0: all tokens)");
  if (!(top_p > 0 && top_p <= 1)) fail("top-p ", top_p, ": must lie in (0, 1]");
  if (!(min_p >= 0 && min_p <= 1)) fail("min-p ", min_p, ": must lie in [0, 1]");
  if (!(repetition_penalty > 0) || !std::isfinite(repetition_penalty)) {
    fail("repetition penalty ", repetition_penalty, ": must be > 0 (1: none)");
  }
}

Sampler::Sampler(SamplerOptions options, int vocab)
    : options_(options),
      rng_(options.seed),
      seen_(static_cast<size_t>(vocab), 0),
      probs_(static_cast<size_t>(vocab)),
      order_(static_cast<size_t>(vocab)) {
  options_.validate();
  if (options_.repetition_penalty != 1.0) penalized_.resize(static_cast<size_t>(vocab));
}

void Sampler::observe(int32_t id) {
  if (id < 0 || static_cast<size_t>(id) >= seen_.size() || seen_[id]) return;
  seen_[id] = 1;
  seen_list_.push_back(id);
}

int32_t Sampler::sample(const float* logits) {
  const int V = static_cast<int>(probs_.size());
  // A NaN logit would make every comparison false and the draw meaningless (the argmax of all-NaN
  // logits is token 0): an error, never a silent token.
  if (const int64_t bad = first_nonfinite(logits, V); bad >= 0) {
    fail("the model's logits are not finite (token id ", bad, ": ", logits[bad],
         "): its weights or its state overflow; nothing can be sampled");
  }
  const float* x = logits;
  if (!penalized_.empty() && !seen_list_.empty()) {
    std::copy(logits, logits + V, penalized_.begin());
    const float p = static_cast<float>(options_.repetition_penalty);
    for (int32_t id : seen_list_) penalized_[id] = penalized_[id] > 0 ? penalized_[id] / p : penalized_[id] * p;
    x = penalized_.data();
  }
  // Below 1e-6 the draw is the argmax anyway, and 0 would divide by zero.
  if (options_.temperature < 1e-6) return static_cast<int32_t>(std::max_element(x, x + V) - x);

  // Candidates order_[0, n), with unnormalized probabilities probs_[0, n) = exp((x − max) / T).
  auto more_likely = [x](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  std::iota(order_.begin(), order_.end(), 0);
  int n = V;
  if (options_.top_k > 0 && options_.top_k < V) {
    n = options_.top_k;
    std::partial_sort(order_.begin(), order_.begin() + n, order_.end(), more_likely);
  }
  float max_logit = -INFINITY;
  for (int i = 0; i < n; i++) max_logit = std::max(max_logit, x[order_[i]]);
  const float t = static_cast<float>(options_.temperature);
  if (n == V) {
    for (int v = 0; v < V; v++) probs_[v] = weight(x[v], max_logit, t);  // order_ is the identity
  } else {
    for (int i = 0; i < n; i++) probs_[i] = weight(x[order_[i]], max_logit, t);
  }
  double total = 0;
  for (int i = 0; i < n; i++) total += probs_[i];
  if (options_.top_p < 1 || options_.min_p > 0) {
    // Only tokens at or above `floor` can survive, so only they are sorted (a full sort of a 50k
    // vocabulary would cost more than a decode step of a small model). min-p keeps p ≥ min_p·p_max,
    // and p_max is 1 here. For top-p: the tokens below (1 − top_p)·total / n hold less than
    // (1 − top_p)·total together, so the nucleus (the sorted prefix reaching top_p·total) lies
    // within the rest. Cutting by min-p first leaves the same final set as HF's top-p then min-p.
    const double floor = std::max(options_.min_p, options_.top_p < 1 ? (1 - options_.top_p) * total / n : 0.0);
    int kept = 0;
    for (int i = 0; i < n; i++) {
      if (probs_[i] >= floor) order_[kept++] = order_[i];
    }
    n = kept;
    std::sort(order_.begin(), order_.begin() + n, more_likely);
    double mass = 0;
    int keep = 0;
    const double target = options_.top_p < 1 ? options_.top_p * total : INFINITY;
    while (keep < n && mass < target) {
      probs_[keep] = weight(x[order_[keep]], max_logit, t);
      mass += probs_[keep++];
    }
    n = std::max(keep, 1);
    total = mass;
  }
  double r = rng_.uniform() * total;
  for (int i = 0; i < n; i++) {
    r -= probs_[i];
    if (r < 0) return order_[i];
  }
  return order_[n - 1];
}

}  // namespace mamba

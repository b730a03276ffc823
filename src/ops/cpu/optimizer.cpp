#include "ops/cpu/optimizer.h"

#include <algorithm>
#include <cmath>

namespace mamba::cpu {

double grad_norm(const float* grads, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += static_cast<double>(grads[i]) * grads[i];
  return std::sqrt(sum);
}

void scale(float* grads, int64_t n, float factor) {
  for (int64_t i = 0; i < n; i++) grads[i] *= factor;
}

void adamw_update(const AdamWParams& p) {
  const double b1 = p.beta1, b2 = p.beta2;
  const double bias1 = 1.0 - std::pow(b1, static_cast<double>(p.step));
  const double bias2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(p.step)));
  const float step_size = static_cast<float>(p.lr / bias1);
  const int64_t shard_begin = p.shard_begin, shard_end = p.shard_end < 0 ? p.n : p.shard_end;
  for (int r = 0; r < p.n_ranges; r++) {
    const AdamWRange& range = p.ranges[r];
    // The range's elements in the shard: [lo, hi).
    const int64_t lo = std::max(range.offset, shard_begin), hi = std::min(range.offset + range.numel, shard_end);
    if (lo >= hi) continue;
    const int64_t numel = hi - lo;
    const float decay = range.decay ? static_cast<float>(1.0 - p.lr * p.weight_decay) : 1.0f;
    float* w = p.params + lo;
    const float* g = p.grads + lo;
    float* m = p.m + (lo - shard_begin);
    float* v = p.v + (lo - shard_begin);
#pragma omp parallel for simd schedule(static) if (numel > 65536)
    for (int64_t i = 0; i < numel; i++) {
      w[i] *= decay;
      m[i] = static_cast<float>(b1) * m[i] + static_cast<float>(1 - b1) * g[i];
      v[i] = static_cast<float>(b2) * v[i] + static_cast<float>(1 - b2) * g[i] * g[i];
      const float denom = std::sqrt(v[i]) / static_cast<float>(bias2_sqrt) + static_cast<float>(p.eps);
      w[i] -= step_size * m[i] / denom;
    }
  }
}

void adamw(const AdamWParams& p) {
  if (p.grad_scale != 1.0f) scale(p.grads, p.n, p.grad_scale);
  const double norm = grad_norm(p.grads, p.n);
  *p.norm = norm;
  const double factor = p.max_norm / (norm + 1e-6);
  if (p.max_norm > 0 && factor < 1.0) scale(p.grads, p.n, static_cast<float>(factor));
  if (std::isfinite(norm)) adamw_update(p);
}

}  // namespace mamba::cpu

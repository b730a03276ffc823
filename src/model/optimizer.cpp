#include "model/optimizer.h"

#include <cmath>
#include <numbers>

namespace mamba {

AdamW::AdamW(const std::vector<ParamSpec>& specs, int64_t size, AdamWOptions options)
    : options_(options), m_(static_cast<size_t>(size), 0.0f), v_(static_cast<size_t>(size), 0.0f) {
  for (const ParamSpec& s : specs) ranges_.push_back({s.offset, s.numel, s.weight_decay});
}

void AdamW::update(float* params, const float* grads, double lr) {
  t_++;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bias1 = 1.0 - std::pow(b1, static_cast<double>(t_));
  const double bias2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(t_)));
  const float step_size = static_cast<float>(lr / bias1);
  for (const Range& r : ranges_) {
    const float decay = r.decay ? static_cast<float>(1.0 - lr * options_.weight_decay) : 1.0f;
    float* p = params + r.offset;
    const float* g = grads + r.offset;
    float* m = m_.data() + r.offset;
    float* v = v_.data() + r.offset;
#pragma omp parallel for simd schedule(static) if (r.numel > 65536)
    for (int64_t i = 0; i < r.numel; i++) {
      p[i] *= decay;
      m[i] = static_cast<float>(b1) * m[i] + static_cast<float>(1 - b1) * g[i];
      v[i] = static_cast<float>(b2) * v[i] + static_cast<float>(1 - b2) * g[i] * g[i];
      const float denom = std::sqrt(v[i]) / static_cast<float>(bias2_sqrt) + static_cast<float>(options_.eps);
      p[i] -= step_size * m[i] / denom;
    }
  }
}

double global_grad_norm(const float* grads, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += static_cast<double>(grads[i]) * grads[i];
  return std::sqrt(sum);
}

double clip_grad_norm(float* grads, int64_t n, double max_norm) {
  const double norm = global_grad_norm(grads, n);
  const double factor = max_norm / (norm + 1e-6);
  if (max_norm > 0 && factor < 1.0) {
    const float f = static_cast<float>(factor);
    for (int64_t i = 0; i < n; i++) grads[i] *= f;
  }
  return norm;
}

double Schedule::at(int64_t s) const {
  if (s < warmup) return lr * static_cast<double>(s + 1) / static_cast<double>(warmup);
  if (kind == "constant") return lr;
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup - 1));
  const double progress = std::min(1.0, static_cast<double>(s - warmup) / span);
  return lr_min + 0.5 * (lr - lr_min) * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace mamba

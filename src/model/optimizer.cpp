#include "model/optimizer.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"
#include "ops/cpu/optimizer.h"

namespace mamba {

AdamW::AdamW(const std::vector<ParamSpec>& specs, int64_t size, AdamWOptions options, Backend& backend,
             int64_t shard_begin, int64_t shard_end)
    : options_(options),
      backend_(backend),
      size_(size),
      shard_begin_(std::clamp<int64_t>(shard_begin, 0, size)),
      shard_end_(shard_end < 0 ? size : std::clamp<int64_t>(shard_end, shard_begin_, size)) {
  for (const ParamSpec& s : specs) ranges_.push_back({s.offset, s.numel, s.weight_decay});
  const size_t bytes = sizeof(float) * static_cast<size_t>(shard_end_ - shard_begin_);
  m_ = Buffer(backend, bytes);
  v_ = Buffer(backend, bytes);
  if (bytes) {
    backend.fill_zero(m_.data(), bytes);
    backend.fill_zero(v_.data(), bytes);
  }
  AdamWParams p = params(nullptr, nullptr, options.lr);
  if (const size_t ws = backend.adamw_workspace(p)) workspace_ = Buffer(backend, ws);
}

AdamWParams AdamW::params(float* p, float* g, double lr) const {
  AdamWParams a;
  a.params = p, a.grads = g, a.m = m(), a.v = v(), a.n = size_;
  a.shard_begin = shard_begin_, a.shard_end = shard_end_;
  a.ranges = ranges_.data(), a.n_ranges = static_cast<int>(ranges_.size());
  a.step = t_;
  a.lr = lr, a.beta1 = options_.beta1, a.beta2 = options_.beta2, a.eps = options_.eps;
  a.weight_decay = options_.weight_decay;
  return a;
}

void AdamW::step(float* params_in, float* grads, double lr, double max_norm, float grad_scale, double* norm) {
  t_++;
  AdamWParams a = params(params_in, grads, lr);
  a.norm = norm, a.max_norm = max_norm, a.grad_scale = grad_scale;
  backend_.adamw(a, workspace_.data());
}

void AdamW::update(float* params_in, const float* grads, double lr) {
  if (!backend_.host_memory()) fail("AdamW::update takes host memory: use step() on ", backend_.describe());
  t_++;
  cpu::adamw_update(params(params_in, const_cast<float*>(grads), lr));  // reads grads only
}

double global_grad_norm(const float* grads, int64_t n) { return cpu::grad_norm(grads, n); }

double clip_grad_norm(float* grads, int64_t n, double max_norm) {
  const double norm = cpu::grad_norm(grads, n);
  const double factor = max_norm / (norm + 1e-6);
  if (max_norm > 0 && factor < 1.0) cpu::scale(grads, n, static_cast<float>(factor));
  return norm;
}

bool LossScaler::update(bool finite) {
  if (!finite) {
    scale *= 0.5;
    good_steps = 0;
    return false;
  }
  if (++good_steps == growth_interval) {
    scale *= 2.0;
    good_steps = 0;
  }
  return true;
}

double Schedule::at(int64_t s) const {
  if (s < warmup) return lr * static_cast<double>(s + 1) / static_cast<double>(warmup);
  if (kind == "constant") return lr;
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup - 1));
  const double progress = std::min(1.0, static_cast<double>(s - warmup) / span);
  return lr_min + 0.5 * (lr - lr_min) * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace mamba

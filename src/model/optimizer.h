// AdamW with torch.optim.AdamW's semantics, global-norm gradient clipping, and the learning-rate
// schedule (linear warmup, then cosine decay to a floor, or constant). The update itself is the backend's
// op (ops/adamw.h): the moments live on the backend's device beside the parameters.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/weights.h"
#include "ops/backend.h"

namespace mamba {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.95;  // the paper's recipe (Appendix E.2)
  double eps = 1e-8;
  double weight_decay = 0.1;  // on weights only: not on biases, norms, A_log, D
};

class AdamW {
 public:
  // Moments for `size` parameters laid out by `specs`, zero, on `backend`; or for the shard [shard_begin,
  // shard_end) of them alone (ZeRO-1: a data-parallel rank updates its slice; ops/adamw.h).
  AdamW(const std::vector<ParamSpec>& specs, int64_t size, AdamWOptions options, Backend& backend = Backend::cpu(),
        int64_t shard_begin = 0, int64_t shard_end = -1);

  // One optimizer step on the backend (ops/adamw.h): grads (device memory) scaled by grad_scale, the global
  // norm written to *norm (device memory), clipped to max_norm (> 0), then params updated at learning rate
  // lr unless the norm is not finite. Queued: nothing waits for the device.
  void step(float* params, float* grads, double lr, double max_norm, float grad_scale, double* norm);

  // One update of params from grads (host memory, the CPU backend only) at learning rate lr:
  //   p ← p − lr·λ·p (decay group only);  m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²;
  //   p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε).
  void update(float* params, const float* grads, double lr);

  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  int64_t size() const { return size_; }
  // The shard this optimizer updates, [shard_begin, shard_begin + shard_size); the moments hold it alone.
  int64_t shard_begin() const { return shard_begin_; }
  int64_t shard_size() const { return shard_end_ - shard_begin_; }
  // The moments (shard_size floats each) on the backend's device.
  float* m() const { return m_.as<float>(); }
  float* v() const { return v_.as<float>(); }
  Backend& backend() const { return backend_; }

 private:
  AdamWParams params(float* p, float* g, double lr) const;

  std::vector<AdamWRange> ranges_;
  AdamWOptions options_;
  Backend& backend_;
  int64_t size_, shard_begin_, shard_end_;
  Buffer m_, v_, workspace_;
  int64_t t_ = 0;
};

// √(Σ g²) over the whole buffer (host memory), in double, in a fixed order.
double global_grad_norm(const float* grads, int64_t n);
// Scales grads (host memory) so that their global norm is at most max_norm (torch.nn.utils.clip_grad_norm_:
// factor max_norm / (norm + 1e-6) when below 1). Returns the norm before clipping.
double clip_grad_norm(float* grads, int64_t n, double max_norm);

// Dynamic loss scaling for fp16 training, as torch.cuda.amp.GradScaler does it with its defaults: the loss's
// gradients are multiplied by `scale` in the backward, so that the small ones stay above fp16's smallest
// numbers, and divided by it again in the optimizer step (AdamW's grad_scale). A step whose gradients are
// not finite (an fp16 overflow) is skipped and the scale halved; after `growth_interval` finite steps in a
// row the scale doubles. bf16 has fp32's range and needs none.
struct LossScaler {
  double scale = 65536.0;  // 2^16
  int64_t good_steps = 0;  // finite steps since the scale last changed
  int64_t growth_interval = 2000;

  // After a step whose gradients were (not) finite; true when the step is to be kept.
  bool update(bool finite);
};

struct Schedule {
  std::string kind = "cosine";  // "cosine" or "constant"
  double lr = 1e-3, lr_min = 1e-4;
  int64_t warmup = 0, total = 1;

  // Learning rate for step s (0-based): (s + 1)/warmup · lr during warmup, then cosine from lr to
  // lr_min at the last step, or lr throughout.
  double at(int64_t s) const;
};

}  // namespace mamba

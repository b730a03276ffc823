// The optimizer step's contract, one for every backend: AdamW (torch.optim.AdamW, amsgrad off) fused with
// the mean over micro-batches and global-norm clipping (torch.nn.utils.clip_grad_norm_), over the flat
// fp32 buffers of parameters, gradients and moments, in this order:
//   g ← g · grad_scale                              (when grad_scale ≠ 1: the mean over micro-batches)
//   norm = √(Σ g²), summed in double                (written to *norm)
//   g ← g · (max_norm / (norm + 1e-6))              (when max_norm > 0 and that factor is below 1)
//   and, when norm is finite, for each range (weight decay λ on the ranges marked `decay`):
//   p ← p · (1 − lr·λ);  m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²;
//   p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε).
// The gradients are left scaled and clipped. The norm is reduced in a fixed order on every backend (no
// atomics), so a step is bitwise reproducible on one device; the order differs between backends.
// A shard (ZeRO-1, data-parallel training): the norm and the clipping cover all n gradients, but only the
// elements [shard_begin, shard_end) are updated, with moments that hold just those elements (m[0] is
// element shard_begin's); the caller then gathers the other ranks' slices of the parameters.
#pragma once

#include <cstdint>

namespace mamba {

// One group of parameters updated alike: elements [offset, offset + numel) of the flat buffers.
struct AdamWRange {
  int64_t offset = 0, numel = 0;
  bool decay = false;
};

struct AdamWParams {
  float* params = nullptr;  // (n) fp32, updated in place
  float* grads = nullptr;   // (n) fp32, scaled and clipped in place
  float* m = nullptr;       // (shard_end − shard_begin) fp32 first moments
  float* v = nullptr;       // (shard_end − shard_begin) fp32 second moments
  int64_t n = 0;
  int64_t shard_begin = 0, shard_end = -1;  // the elements updated; shard_end < 0: n (all of them)
  const AdamWRange* ranges = nullptr;  // HOST memory: disjoint ranges covering [0, n)
  int n_ranges = 0;
  double* norm = nullptr;  // (1) on the device: the global norm after the scale, before clipping
  float grad_scale = 1.0f;
  double max_norm = 0;  // 0: no clipping
  int64_t step = 1;     // t of this update (1 for the first)
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0;
};

}  // namespace mamba

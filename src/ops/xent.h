// The LM head fused with the cross-entropy loss, one contract for every backend (training):
//   logits = hidden · weightᵀ,  loss = Σ over the targets ≠ ignore_index of (logsumexp(logits) − logit[target]) / count,
//   dlogits = (softmax(logits) − onehot(target)) / count,
// where count is the number of targets ≠ ignore_index in this call, or `divisor` when given (data-parallel
// training: each rank holds a shard of a global batch and divides by the global batch's count, so that the
// ranks' losses and gradients sum to the global mean's).
//   dhidden (M, C) = dlogits · weight   (WRITTEN: it starts the backward pass),
//   dweight (V, C) += dlogitsᵀ · hidden (fp32, a parameter: accumulates).
// The (M, V) logits never exist at once: the rows go through a workspace of a few rows of V. The softmax
// and the loss are fp32 (the loss summed in double), whatever the activations' dtype. With `scale` ≠ 1 the
// gradients (dlogits, hence dhidden and dweight) are multiplied by it and the loss is not: fp16 training's
// loss scaling, which keeps the small gradients of a large vocabulary above fp16's smallest numbers.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "ops/weight.h"

namespace mamba {

struct XentParams {
  DType dtype = DType::F32;  // of hidden and dhidden
  float* loss = nullptr;      // one float on the device: the mean loss (0 when every target is ignored)
  void* dhidden = nullptr;    // (M, C) written (zeros when every target is ignored)
  float* dweight = nullptr;   // (V, C) +=, or null: the loss alone
  const void* hidden = nullptr;   // (M, C) the final norm's output
  WeightView weight;              // (V, C) the LM head
  const int32_t* targets = nullptr;  // (M) on the device, in [0, V) or ignore_index
  int64_t M = 0;
  int C = 0, V = 0;
  int ignore_index = -100;
  int64_t divisor = 0;  // > 0: divide by this instead of this call's count (at most 2^31 − 1)
  float scale = 1.0f;   // the gradients' factor (the loss scale)
};

}  // namespace mamba

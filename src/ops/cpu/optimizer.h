// The optimizer step on the CPU (ops/adamw.h): the gradients' global norm, their scaling, and AdamW's
// update, each in a fixed order (bitwise reproducible for a given thread count).
#pragma once

#include <cstdint>

#include "ops/adamw.h"

namespace mamba::cpu {

// √(Σ g²) over n values, in double, in index order.
double grad_norm(const float* grads, int64_t n);
// grads ← grads · factor.
void scale(float* grads, int64_t n, float factor);
// The AdamW update of ops/adamw.h over p's ranges (grads as given: already scaled and clipped).
void adamw_update(const AdamWParams& p);
// The whole contract of ops/adamw.h, with *p.norm in host memory.
void adamw(const AdamWParams& p);

}  // namespace mamba::cpu

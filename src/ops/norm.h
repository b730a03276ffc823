// The fused residual add + RMSNorm's contract, one for every backend. The residual stream stays fp32
// whatever the activations' dtype (the official residual_in_fp32 = True).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace mamba {

// residual (M, C) += inp (or = inp when `first`); out (M, C) = RMSNorm(residual) · weight, with
// RMSNorm(r) = r / √(mean(r²) + eps).
struct RmsNormParams {
  DType dtype = DType::F32;  // of out and inp
  void* out = nullptr;       // (M, C)
  float* residual = nullptr;  // (M, C) fp32, updated in place
  const void* inp = nullptr;  // (M, C)
  const float* weight = nullptr;  // (C)
  bool first = false;
  int64_t M = 0;
  int C = 0;
  float eps = 1e-5f;
};

}  // namespace mamba

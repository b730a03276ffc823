// The fused residual add + RMSNorm's contract, one for every backend, forward and backward. The residual stream stays fp32
// whatever the activations' dtype (the official residual_in_fp32 = True).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace mamba {

// residual (M, C) += inp (or = inp when `first`); out (M, C) = RMSNorm(residual) · weight, with
// RMSNorm(r) = r / √(mean(r²) + eps). Without inp the residual is left as it is: the norm of a saved
// residual again (training's recomputation), the same bits as when it was first computed.
struct RmsNormParams {
  DType dtype = DType::F32;  // of out and inp
  void* out = nullptr;       // (M, C)
  float* residual = nullptr;  // (M, C) fp32, updated in place
  const void* inp = nullptr;  // (M, C), or null
  const float* weight = nullptr;  // (C)
  bool first = false;
  int64_t M = 0;
  int C = 0;
  float eps = 1e-5f;
};

// Backward, with r the residual the norm saw, rstd = 1/√(mean(r²) + eps) recomputed from it, r̂ = r·rstd
// and g = dout ⊙ weight:
//   dresidual = dresidual + rstd · (g − r̂ · mean(g ⊙ r̂))   (in place: the residual stream's gradient)
//   dweight  += Σ_rows dout ⊙ r̂                              (a parameter: accumulates)
// On entry dresidual holds the gradient reaching r from later layers (zeros before the final norm); on
// exit the gradient of both the norm's input and the previous residual, so the model keeps one buffer.
struct RmsNormBwdParams {
  DType dtype = DType::F32;  // of dout
  float* dresidual = nullptr;  // (M, C) fp32, updated in place
  float* dweight = nullptr;    // (C) +=
  const void* dout = nullptr;  // (M, C)
  const float* residual = nullptr;  // (M, C) fp32
  const float* weight = nullptr;    // (C)
  int64_t M = 0;
  int C = 0;
  float eps = 1e-5f;
};

}  // namespace mamba

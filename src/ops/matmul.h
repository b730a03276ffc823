// The projection's contract, one for every backend: out = inp · weightᵀ (+ bias), the weight in its
// stored type, as Hugging Face stores it (out_features, in_features). Accumulation is fp32 everywhere.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "ops/weight.h"

namespace mamba {

// out (M, N) with row stride ldo = inp (M, K) with row stride ldi · weight (N, K)ᵀ + bias (N) or null.
struct MatmulParams {
  void* out = nullptr;
  int64_t ldo = 0;
  DType out_dtype = DType::F32;  // the LM head writes fp32 logits from activations of any dtype
  const void* inp = nullptr;
  int64_t ldi = 0;
  DType dtype = DType::F32;  // of inp
  WeightView weight;         // (N, K)
  const float* bias = nullptr;
  int64_t M = 0;
  int K = 0, N = 0;
};

}  // namespace mamba

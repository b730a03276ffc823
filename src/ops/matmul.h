// The projection's contract, one for every backend, forward and backward: out = inp · weightᵀ (+ bias),
// the weight in its stored type, as Hugging Face stores it (out_features, in_features). Accumulation is
// fp32 everywhere.
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

// Backward, with the forward's strides:
//   dinp (M, K)    = dout · weight      written, or added to (accumulate) when another op also reads inp;
//                                       null: skipped
//   dweight (N, K) += doutᵀ · inp        fp32, a parameter: accumulates
//   dbias (N)      += Σ_rows dout        null: skipped
struct MatmulBwdParams {
  DType dtype = DType::F32;  // of dinp, dout and inp (the weight is in this type too)
  void* dinp = nullptr;
  int64_t lddi = 0;
  bool accumulate = false;
  float* dweight = nullptr;
  float* dbias = nullptr;
  const void* dout = nullptr;
  int64_t ldo = 0;
  const void* inp = nullptr;
  int64_t ldi = 0;
  WeightView weight;  // (N, K)
  int64_t M = 0;
  int K = 0, N = 0;
};

}  // namespace mamba

// The embedding lookup's contract, one for every backend, forward and backward.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "ops/weight.h"

namespace mamba {

// out (M, C) = table[tokens] in out's dtype, table (V, C) in its stored type. The ids (M) are on the
// device and already checked against V.
struct EmbeddingParams {
  DType dtype = DType::F32;  // of out
  void* out = nullptr;
  const int32_t* tokens = nullptr;
  WeightView table;
  int64_t M = 0;
  int C = 0;
};

// Backward: dtable (V, C) fp32 += the rows of dout (M, C) scattered to their tokens. Parameter gradients
// accumulate; the sum over repeated tokens runs in row order (deterministic, no atomics).
struct EmbeddingBwdParams {
  DType dtype = DType::F32;  // of dout
  float* dtable = nullptr;
  const void* dout = nullptr;
  const int32_t* tokens = nullptr;
  int64_t M = 0;
  int C = 0;
};

}  // namespace mamba

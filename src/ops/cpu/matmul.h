// Matrix products with the weight in its stored type (F32, BF16, F16, I8), fp32 activations and fp32
// accumulation: the CPU's implementation of ops/matmul.h.
#pragma once

#include "ops/matmul.h"

namespace mamba::cpu {

// True for the weight types `matmul` reads.
bool matmul_supports(DType weight);

// out = inp · weightᵀ (+ bias) as MatmulParams describes; inp and out fp32.
void matmul(const MatmulParams& p);

// out (M, C) fp32 = table[tokens], the table in its stored type.
void embedding(float* out, const int32_t* tokens, const WeightView& table, int64_t M, int C);

}  // namespace mamba::cpu

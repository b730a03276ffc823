// The CPU's SIMD kernels for weights in their stored type, compiled once for every instruction set
// Highway targets (EMU128 as the portable fallback, SSSE3, SSE4, AVX2 with FMA and F16C, AVX-512 and
// AVX-512 with VNNI) and chosen at run time from what the CPU has (simd_kernels.cpp). The file is built
// without -march flags, so the choice does not depend on how the rest of the library was compiled.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ops/matmul.h"

namespace mamba::cpu {

// Rows of activations that matmul_rows handles: decode and small batches.
constexpr int64_t kGemvMaxRows = 16;

// out = inp · weightᵀ (+ bias) for p.M ≤ kGemvMaxRows: each weight row is read from memory once (threads
// split the rows) and dotted with every activation row. Weights F32, BF16, F16 or I8 (with scales).
void matmul_rows(const MatmulParams& p);

// out (rows, K) fp32 = rows [row0, row0 + rows) of the (·, K) weight w, widened (I8: dequantized).
void widen_rows(float* out, const WeightView& w, int64_t row0, int64_t rows, int K);

struct SimdTarget {
  std::string name;   // Highway's: "AVX3_DL", "AVX3" (AVX-512), "AVX2", "SSE4", "SSSE3", "EMU128"
  int64_t bit = 0;
  bool supported = false;  // by this CPU
};
// Every target compiled into this build, best first.
std::vector<SimdTarget> simd_targets();
// The target the kernels run now.
std::string simd_target();
// Runs the kernels with the target named (one of simd_targets()), or the best this CPU has when empty.
// False, changing nothing, when that target is not compiled or this CPU lacks it. Not thread-safe
// against kernels running at the same time. The CPU backend applies MAMBA_CPU_TARGET this way.
bool restrict_simd(std::string_view name);

}  // namespace mamba::cpu

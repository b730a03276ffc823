#include "ops/cpu/matmul.h"

#include <algorithm>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/runtime.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/ops.h"
#include "ops/cpu/simd.h"

namespace mamba::cpu {

namespace {

// Many rows (prefill): panels of weight rows widened to fp32 (in parallel), each multiplied by sgemm.
// Widening costs K operations per weight row against 2·M·K for the product.
void matmul_panels(const MatmulParams& p) {
  // Weight rows per panel: 4 MiB of fp32, enough rows that sgemm runs near its rate, few enough to stay
  // in the last-level cache between the widening and the product.
  const int kPanel = std::max(64, (1 << 20) / std::max(p.K, 1));
  thread_local std::vector<float> panel;  // grows to kPanel·K once per thread, then reused
  panel.resize(static_cast<size_t>(kPanel) * p.K);
  auto* out = static_cast<float*>(p.out);
  for (int n0 = 0; n0 < p.N; n0 += kPanel) {
    const int rows = std::min(kPanel, p.N - n0);
    widen_rows(panel.data(), p.weight, n0, rows, p.K);
    matmul_forward(out + n0, p.ldo, static_cast<const float*>(p.inp), p.ldi, panel.data(), p.bias ? p.bias + n0 : nullptr,
                   p.M, p.K, rows);
  }
}

// Many rows, BF16 weights, bf16 products asked for (core/runtime.h) on a CPU that has them: the activations rounded to
// bf16 (to nearest even, as the GPU's bf16 products take them) and multiplied with the weights as they are
// stored, fp32 sums: no widened copy of the weights, and vdpbf16ps does twice the fp32 FMA's work per
// instruction (docs/performance.md has the rates).
void matmul_bf16(const MatmulParams& p) {
  thread_local std::vector<uint16_t> rounded;  // the activations in bf16, (M, K)
  rounded.resize(static_cast<size_t>(p.M) * p.K);
  const auto* inp = static_cast<const float*>(p.inp);
  uint16_t* a = rounded.data();  // this thread's buffer: the workers below would see their own
#pragma omp parallel for schedule(static) if (p.M * p.K > 65536)
  for (int64_t m = 0; m < p.M; m++) {
    for (int k = 0; k < p.K; k++) a[m * p.K + k] = f32_to_bf16(inp[m * p.ldi + k]);
  }
  auto* out = static_cast<float*>(p.out);
  gemm_bf16(out, p.ldo, a, p.K, static_cast<const uint16_t*>(p.weight.data), p.M, p.K, p.N);
  add_bias(out, p.ldo, p.bias, p.M, p.N);
}

}  // namespace

bool matmul_supports(DType weight) {
  return weight == DType::F32 || weight == DType::BF16 || weight == DType::F16 || weight == DType::I8;
}

void matmul(const MatmulParams& p) {
  if (p.M <= 0 || p.N <= 0) return;
  if (!matmul_supports(p.weight.dtype)) fail("matmul: no CPU kernel for ", dtype_name(p.weight.dtype), " weights");
  if (p.weight.dtype == DType::I8 && !p.weight.scales) fail("matmul: I8 weights without scales");
  if (p.M <= kGemvMaxRows) {
    matmul_rows(p);
  } else if (p.weight.dtype == DType::BF16 && bf16_products() && bf16_gemm_available()) {
    matmul_bf16(p);
  } else if (p.weight.dtype == DType::F32) {
    matmul_forward(static_cast<float*>(p.out), p.ldo, static_cast<const float*>(p.inp), p.ldi, p.weight.f32(), p.bias,
                   p.M, p.K, p.N);
  } else {
    matmul_panels(p);
  }
}

void embedding(float* out, const int32_t* tokens, const WeightView& table, int64_t M, int C) {
  if (table.dtype == DType::F32) {
    embedding_forward(out, tokens, table.f32(), M, C);
    return;
  }
  for (int64_t m = 0; m < M; m++) widen_rows(out + m * C, table, tokens[m], 1, C);
}

}  // namespace mamba::cpu

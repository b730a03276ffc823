#include "ops/cpu/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "ops/cpu/ops.h"

namespace mamba::cpu {

namespace {

// n values of a BF16 or F16 row as fp32. Written as plain loops over the bits so that the compiler
// vectorizes them (a shift for BF16, F16C's vcvtph2ps for F16).
void widen(float* out, const uint16_t* in, DType dtype, int n) {
  if (dtype == DType::BF16) {
    for (int i = 0; i < n; i++) out[i] = bf16_to_f32(in[i]);
  } else {
    for (int i = 0; i < n; i++) out[i] = f16_to_f32(in[i]);
  }
}

// Few rows of activations (decode): every weight row is read once, widened in pieces that stay in L1,
// and dotted with each activation row. Threads split the weight's rows.
void matmul_rows_16(const MatmulParams& p) {
  constexpr int kPiece = 512;  // weight elements widened at a time
  constexpr int kMaxRows = 8;  // activation rows per pass over the weight
  const auto* w = static_cast<const uint16_t*>(p.weight.data);
  const auto* inp = static_cast<const float*>(p.inp);
  auto* out = static_cast<float*>(p.out);
  const int K = p.K;
#pragma omp parallel for schedule(static) if (int64_t{p.N} * K > 65536)
  for (int n = 0; n < p.N; n++) {
    alignas(64) float piece[kPiece];
    for (int64_t m0 = 0; m0 < p.M; m0 += kMaxRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kMaxRows, p.M - m0));
      float acc[kMaxRows] = {};
      for (int k0 = 0; k0 < K; k0 += kPiece) {
        const int len = std::min(kPiece, K - k0);
        widen(piece, w + int64_t{n} * K + k0, p.weight.dtype, len);
        for (int r = 0; r < rows; r++) {
          const float* x = inp + (m0 + r) * p.ldi + k0;
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int k = 0; k < len; k++) sum += piece[k] * x[k];
          acc[r] += sum;
        }
      }
      for (int r = 0; r < rows; r++) out[(m0 + r) * p.ldo + n] = acc[r] + (p.bias ? p.bias[n] : 0.0f);
    }
  }
}

// Many rows (prefill): panels of weight rows widened to fp32, each multiplied by sgemm. Widening costs
// K operations per weight row against 2·M·K for the product.
void matmul_panels_16(const MatmulParams& p) {
  constexpr int kPanel = 128;  // weight rows per panel
  thread_local std::vector<float> panel;  // grows to kPanel·K once per thread, then reused
  panel.resize(static_cast<size_t>(kPanel) * p.K);
  const auto* w = static_cast<const uint16_t*>(p.weight.data);
  auto* out = static_cast<float*>(p.out);
  for (int n0 = 0; n0 < p.N; n0 += kPanel) {
    const int rows = std::min(kPanel, p.N - n0);
    for (int r = 0; r < rows; r++) widen(panel.data() + int64_t{r} * p.K, w + int64_t{n0 + r} * p.K, p.weight.dtype, p.K);
    matmul_forward(out + n0, p.ldo, static_cast<const float*>(p.inp), p.ldi, panel.data(), p.bias ? p.bias + n0 : nullptr,
                   p.M, p.K, rows);
  }
}

}  // namespace

bool matmul_supports(DType weight) { return weight == DType::F32 || weight == DType::BF16 || weight == DType::F16; }

void matmul(const MatmulParams& p) {
  if (p.M <= 0 || p.N <= 0) return;
  switch (p.weight.dtype) {
    case DType::F32:
      matmul_forward(static_cast<float*>(p.out), p.ldo, static_cast<const float*>(p.inp), p.ldi, p.weight.f32(), p.bias,
                     p.M, p.K, p.N);
      return;
    case DType::BF16:
    case DType::F16:
      if (p.M <= 8) {
        matmul_rows_16(p);
      } else {
        matmul_panels_16(p);
      }
      return;
  }
  fail("matmul: no CPU kernel for ", dtype_name(p.weight.dtype), " weights");
}

void embedding(float* out, const int32_t* tokens, const WeightView& table, int64_t M, int C) {
  if (table.dtype == DType::F32) {
    embedding_forward(out, tokens, table.f32(), M, C);
    return;
  }
  const auto* t = static_cast<const uint16_t*>(table.data);
  for (int64_t m = 0; m < M; m++) widen(out + m * C, t + static_cast<int64_t>(tokens[m]) * C, table.dtype, C);
}

}  // namespace mamba::cpu

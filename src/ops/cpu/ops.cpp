#include "ops/cpu/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops/cpu/math.h"

namespace mamba::cpu {

void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t M, int C) {
  for (int64_t m = 0; m < M; m++) {
    std::memcpy(out + m * C, table + static_cast<int64_t>(tokens[m]) * C, sizeof(float) * C);
  }
}

void residual_rmsnorm_forward(float* out, float* residual, const float* inp, const float* weight, bool first,
                              int64_t M, int C, float eps) {
#pragma omp parallel for schedule(static) if (M > 16)
  for (int64_t m = 0; m < M; m++) {
    float* r = residual + m * C;
    const float* x = inp + m * C;
    float* o = out + m * C;
    float sum_sq = 0.0f;
    for (int c = 0; c < C; c++) {
      float v = first ? x[c] : x[c] + r[c];
      r[c] = v;
      sum_sq += v * v;
    }
    float rstd = 1.0f / std::sqrt(sum_sq / static_cast<float>(C) + eps);
    for (int c = 0; c < C; c++) o[c] = r[c] * rstd * weight[c];
  }
}

void matmul_forward(float* out, int64_t ldo, const float* inp, int64_t ldi, const float* weight,
                    const float* bias, int64_t M, int K, int N) {
  if (M == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, weight, K, inp, 1, 0.0f, out, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(M), N, K, 1.0f, inp,
                static_cast<int>(ldi), weight, K, 0.0f, out, static_cast<int>(ldo));
  }
  if (bias) {
    for (int64_t m = 0; m < M; m++) {
      for (int n = 0; n < N; n++) out[m * ldo + n] += bias[n];
    }
  }
}

void conv1d_silu_forward(float* out, float* tail, const float* inp, int64_t inp_stride, const float* weight,
                         const float* bias, int B, int L, int D, int K) {
  constexpr int kBlock = 64;  // channels per task: a few cache lines of every time step
  const int blocks = (D + kBlock - 1) / kBlock;
  const int T = K - 1;  // tail length
#pragma omp parallel for collapse(2) schedule(static) if (static_cast<int64_t>(B) * L * D > 32768)
  for (int b = 0; b < B; b++) {
    for (int blk = 0; blk < blocks; blk++) {
      const int d0 = blk * kBlock, nd = std::min(kBlock, D - d0);
      const float* x = inp + static_cast<int64_t>(b) * L * inp_stride + d0;
      float* tl = tail + static_cast<int64_t>(b) * T * D + d0;
      float* o = out + static_cast<int64_t>(b) * L * D + d0;
      // Input at time s (s ≥ −T): from the sequence when s ≥ 0, else from the tail row s + T.
      auto input = [&](int s) { return s >= 0 ? x + static_cast<int64_t>(s) * inp_stride : tl + (s + T) * D; };
      for (int t = 0; t < L; t++) {
        float acc[kBlock];
        for (int i = 0; i < nd; i++) acc[i] = bias ? bias[d0 + i] : 0.0f;
        for (int k = 0; k < K; k++) {
          const float* xs = input(t - T + k);
          for (int i = 0; i < nd; i++) acc[i] += weight[(d0 + i) * K + k] * xs[i];
        }
        float* ot = o + static_cast<int64_t>(t) * D;
        for (int i = 0; i < nd; i++) ot[i] = silu(acc[i]);
      }
      // New tail: the inputs at times L−T .. L−1. When L < T these reach back into the old tail, to
      // row j + L > j, which this loop has not yet overwritten.
      for (int j = 0; j < T; j++) std::memmove(tl + j * D, input(L - T + j), sizeof(float) * nd);
    }
  }
}

void selective_scan_forward(const ScanParams& p) {
  constexpr int kBlock = 8;  // channels scanned together: their states stay in registers
  const int N = p.dstate, D = p.dim, L = p.seqlen;
  const int blocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for collapse(2) schedule(static) if (static_cast<int64_t>(p.batch) * L * D * N > 65536)
  for (int b = 0; b < p.batch; b++) {
    for (int blk = 0; blk < blocks; blk++) {
      const int d0 = blk * kBlock, nd = std::min(kBlock, D - d0);
      const int64_t row0 = static_cast<int64_t>(b) * L;
      float h[kBlock][kMaxState];
      for (int i = 0; i < nd; i++) {
        const float* h0 = p.state_in ? p.state_in + (static_cast<int64_t>(b) * D + d0 + i) * N : nullptr;
        for (int n = 0; n < N; n++) h[i][n] = h0 ? h0[n] : 0.0f;
      }
      for (int t = 0; t < L; t++) {
        const int64_t row = row0 + t;
        const float* u = p.u + row * p.u_stride + d0;
        const float* dl = p.delta + row * p.delta_stride + d0;
        const float* Bt = p.Bm + row * p.bc_stride;
        const float* Ct = p.Cm + row * p.bc_stride;
        float* y = p.y + row * p.y_stride + d0;
        for (int i = 0; i < nd; i++) {
          const int d = d0 + i;
          float dt = dl[i] + (p.delta_bias ? p.delta_bias[d] : 0.0f);
          if (p.delta_softplus) dt = softplus(dt);
          const float* A = p.A + static_cast<int64_t>(d) * N;
          const float dtu = dt * u[i];
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (int n = 0; n < N; n++) {
            h[i][n] = exp_approx(dt * A[n]) * h[i][n] + dtu * Bt[n];
            acc += Ct[n] * h[i][n];
          }
          float out = acc + (p.D ? p.D[d] * u[i] : 0.0f);
          if (p.z) out *= silu(p.z[row * p.z_stride + d]);
          y[i] = out;
        }
      }
      if (p.state_out) {
        for (int i = 0; i < nd; i++) {
          std::memcpy(p.state_out + (static_cast<int64_t>(b) * D + d0 + i) * N, h[i], sizeof(float) * N);
        }
      }
    }
  }
}

}  // namespace mamba::cpu

#include "ops/cpu/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops/cpu/blas.h"
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
    const float* x = inp ? inp + m * C : nullptr;
    float* o = out + m * C;
    float sum_sq = 0.0f;
    for (int c = 0; c < C; c++) {
      float v = !x ? r[c] : first ? x[c] : x[c] + r[c];
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
    sgemm(false, true, M, N, K, 1.0f, inp, ldi, weight, K, 0.0f, out, ldo);
  }
  add_bias(out, ldo, bias, M, N);
}

void add_bias(float* out, int64_t ldo, const float* bias, int64_t M, int N) {
  if (!bias) return;
  for (int64_t m = 0; m < M; m++) {
    for (int n = 0; n < N; n++) out[m * ldo + n] += bias[n];
  }
}

void conv1d_silu_forward(float* out, int64_t out_stride, float* tail, const float* inp, int64_t inp_stride,
                         const float* weight, const float* bias, int B, int L, int D, int K) {
  constexpr int kBlock = 64;  // channels per task: a few cache lines of every time step
  const int blocks = (D + kBlock - 1) / kBlock;
  const int T = K - 1;  // tail length
#pragma omp parallel for collapse(2) schedule(static) if (static_cast<int64_t>(B) * L * D > 32768)
  for (int b = 0; b < B; b++) {
    for (int blk = 0; blk < blocks; blk++) {
      const int d0 = blk * kBlock, nd = std::min(kBlock, D - d0);
      const float* x = inp + static_cast<int64_t>(b) * L * inp_stride + d0;
      float* tl = tail + static_cast<int64_t>(b) * T * D + d0;
      float* o = out + static_cast<int64_t>(b) * L * out_stride + d0;
      // Input at time s (s ≥ −T): from the sequence when s ≥ 0, else from the tail row s + T.
      auto input = [&](int s) { return s >= 0 ? x + static_cast<int64_t>(s) * inp_stride : tl + (s + T) * D; };
      for (int t = 0; t < L; t++) {
        float acc[kBlock];
        for (int i = 0; i < nd; i++) acc[i] = bias ? bias[d0 + i] : 0.0f;
        for (int k = 0; k < K; k++) {
          const float* xs = input(t - T + k);
          for (int i = 0; i < nd; i++) acc[i] += weight[(d0 + i) * K + k] * xs[i];
        }
        float* ot = o + static_cast<int64_t>(t) * out_stride;
        for (int i = 0; i < nd; i++) ot[i] = silu(acc[i]);
      }
      // New tail: the inputs at times L−T .. L−1. When L < T these reach back into the old tail, to
      // row j + L > j, which this loop has not yet overwritten.
      for (int j = 0; j < T; j++) std::memmove(tl + j * D, input(L - T + j), sizeof(float) * nd);
    }
  }
}

namespace {

constexpr int kLanes = 16;  // channels the scan advances together

// One time step's values of a block's channels, zero-padded when the block is partial. A full block is
// a fixed-size copy kept in vector registers; a loop over `nd` would become a memcpy call per step.
inline void load_lanes(float* dst, const float* src, int nd) {
  if (nd == kLanes) {
    for (int i = 0; i < kLanes; i++) dst[i] = src[i];
  } else {
    for (int i = 0; i < kLanes; i++) dst[i] = i < nd ? src[i] : 0.0f;
  }
}

inline void store_lanes(float* dst, const float* src, int nd) {
  if (nd == kLanes) {
    for (int i = 0; i < kLanes; i++) dst[i] = src[i];
  } else {
    for (int i = 0; i < nd; i++) dst[i] = src[i];
  }
}

// kPerChannel: B and C are (D, N) parameters (ScanParams::bc_per_channel), loaded once per block
// like A; otherwise rows of N per token shared by the block's channels. One body for both, so the
// selective path's arithmetic is the same as it was.
template <bool kPerChannel>
void scan_forward(const ScanParams& p) {
  // Vectorized across channels: a block of kLanes channels advances one time step at a time, each
  // state index n one vector operation, so no horizontal sums are needed. A partial last block runs
  // on zero-padded lanes whose results are not stored.
  constexpr int kBC = kPerChannel ? kMaxState : 1;  // rows of the per-channel B, C kept on the stack
  const int N = p.dstate, D = p.dim, L = p.seqlen;
  // Every array is fp32 on the CPU (Backend::unsupported refuses other dtypes before this runs).
  const auto* u_in = static_cast<const float*>(p.u);
  const auto* delta_in = static_cast<const float*>(p.delta);
  const auto* B_in = static_cast<const float*>(p.Bm);
  const auto* C_in = static_cast<const float*>(p.Cm);
  const auto* z_in = static_cast<const float*>(p.z);
  auto* y_out = static_cast<float*>(p.y);
  const int blocks = (D + kLanes - 1) / kLanes;
  // A decode step of the 130m shape (24,576 state elements, ~20 µs on one core) stays on the calling thread:
  // waking a sleeping worker costs as much. From batch 3 up it splits.
#pragma omp parallel if (static_cast<int64_t>(p.batch) * L * D * N > 65536)
  {
    const FlushSubnormals ftz;
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < p.batch; b++) {
      for (int blk = 0; blk < blocks; blk++) {
        const int d0 = blk * kLanes, nd = std::min(kLanes, D - d0);
        // Rows [0, N) are used and zeroed here: zeroing all kMaxState rows cost more than a decode step's
        // arithmetic (32 KiB per block of channels per layer).
        alignas(64) float h[kMaxState][kLanes];  // h[n][lane]
        alignas(64) float A[kMaxState][kLanes];  // A transposed for this block
        alignas(64) float bias[kLanes] = {}, skip[kLanes] = {};
        alignas(64) float Bc[kBC][kLanes], Cc[kBC][kLanes];  // per-channel B, C transposed
        for (int n = 0; n < N; n++) {
          for (int i = 0; i < kLanes; i++) h[n][i] = A[n][i] = 0.0f;
          if constexpr (kPerChannel) {
            for (int i = 0; i < kLanes; i++) Bc[n][i] = Cc[n][i] = 0.0f;
          }
        }
        for (int i = 0; i < nd; i++) {
          const int64_t d = d0 + i;
          for (int n = 0; n < N; n++) {
            A[n][i] = p.A[d * N + n];
            if (p.state_in) h[n][i] = p.state_in[(b * int64_t{D} + d) * N + n];
            if constexpr (kPerChannel) {
              Bc[n][i] = B_in[d * N + n];
              Cc[n][i] = C_in[d * N + n];
            }
          }
          bias[i] = p.delta_bias ? p.delta_bias[d] : 0.0f;
          skip[i] = p.D ? p.D[d] : 0.0f;
        }
        for (int t = 0; t < L; t++) {
          const int64_t row = int64_t{b} * L + t;
          const float* Bt = kPerChannel ? nullptr : B_in + row * p.B_stride;
          const float* Ct = kPerChannel ? nullptr : C_in + row * p.C_stride;
          alignas(64) float u[kLanes], dt[kLanes], gate[kLanes], y[kLanes] = {};
          load_lanes(u, u_in + row * p.u_stride + d0, nd);
          load_lanes(dt, delta_in + row * p.delta_stride + d0, nd);
          if (p.delta_softplus) {
#pragma omp simd
            for (int i = 0; i < kLanes; i++) dt[i] = softplus(dt[i] + bias[i]);
          } else {
            for (int i = 0; i < kLanes; i++) dt[i] += bias[i];
          }
          if constexpr (kPerChannel) {
            for (int n = 0; n < N; n++) {
#pragma omp simd
              for (int i = 0; i < kLanes; i++) {
                h[n][i] = exp_approx(dt[i] * A[n][i]) * h[n][i] + dt[i] * Bc[n][i] * u[i];
                y[i] += Cc[n][i] * h[n][i];
              }
            }
          } else {
            for (int n = 0; n < N; n++) {
              const float bn = Bt[n], cn = Ct[n];
#pragma omp simd
              for (int i = 0; i < kLanes; i++) {
                h[n][i] = exp_approx(dt[i] * A[n][i]) * h[n][i] + dt[i] * bn * u[i];
                y[i] += cn * h[n][i];
              }
            }
          }
          for (int i = 0; i < kLanes; i++) y[i] += skip[i] * u[i];
          if (z_in) {
            load_lanes(gate, z_in + row * p.z_stride + d0, nd);
#pragma omp simd
            for (int i = 0; i < kLanes; i++) y[i] *= silu(gate[i]);
          }
          store_lanes(y_out + row * p.y_stride + d0, y, nd);
        }
        if (p.state_out) {
          for (int i = 0; i < nd; i++) {
            for (int n = 0; n < N; n++) p.state_out[(b * int64_t{D} + d0 + i) * N + n] = h[n][i];
          }
        }
      }
    }
  }
}

// The scan that also stores the state ENTERING each chunk of p.state_chunk steps (the first is h_0), for
// the backward: each sequence's chunks run as scans of their own, chaining the state through
// p.chunk_states, so y and state_out equal the plain forward's bitwise.
void scan_forward_checkpointed(const ScanParams& p) {
  const int L = p.seqlen, D = p.dim, N = p.dstate, chunk = p.state_chunk;
  const int64_t n_chunks = scan_chunks(L, chunk);
  const int64_t state_size = static_cast<int64_t>(D) * N;
  for (int b = 0; b < p.batch; b++) {
    float* ckpt = p.chunk_states + b * n_chunks * state_size;  // (n_chunks, D, N)
    if (p.state_in) {
      std::memcpy(ckpt, p.state_in + b * state_size, sizeof(float) * state_size);
    } else {
      std::memset(ckpt, 0, sizeof(float) * state_size);
    }
    for (int64_t c = 0; c < n_chunks; c++) {
      const int64_t t0 = c * chunk;
      const int64_t row = static_cast<int64_t>(b) * L + t0;
      // One sequence's chunk as a scan of its own: batch 1, length Lc, from checkpoint c to c + 1.
      ScanParams q = p;
      q.chunk_states = nullptr;
      q.batch = 1;
      q.seqlen = static_cast<int>(std::min<int64_t>(chunk, L - t0));
      q.y = static_cast<float*>(p.y) + row * p.y_stride;
      q.u = static_cast<const float*>(p.u) + row * p.u_stride;
      q.delta = static_cast<const float*>(p.delta) + row * p.delta_stride;
      if (!p.bc_per_channel) {  // per-channel B, C are the same for every chunk
        q.Bm = static_cast<const float*>(p.Bm) + row * p.B_stride;
        q.Cm = static_cast<const float*>(p.Cm) + row * p.C_stride;
      }
      q.z = p.z ? static_cast<const float*>(p.z) + row * p.z_stride : nullptr;
      q.state_in = ckpt + c * state_size;
      if (c + 1 < n_chunks) {
        q.state_out = ckpt + (c + 1) * state_size;
      } else {
        q.state_out = p.state_out ? p.state_out + b * state_size : nullptr;
      }
      if (q.bc_per_channel) {
        scan_forward<true>(q);
      } else {
        scan_forward<false>(q);
      }
    }
  }
}

}  // namespace

void selective_scan_forward(const ScanParams& p) {
  if (p.chunk_states) {
    scan_forward_checkpointed(p);
  } else if (p.bc_per_channel) {
    scan_forward<true>(p);
  } else {
    scan_forward<false>(p);
  }
}

}  // namespace mamba::cpu

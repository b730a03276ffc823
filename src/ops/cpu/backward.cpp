#include "ops/cpu/backward.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ops/cpu/blas.h"
#include "ops/cpu/math.h"

namespace mamba::cpu {

namespace {

// d SiLU(x) / dx = σ(x) (1 + x (1 − σ(x))).
inline float silu_grad(float x) {
  const float s = sigmoid(x);
  return s * (1.0f + x * (1.0f - s));
}

// SiLU(x) and its derivative from one σ(x).
inline void silu_and_grad(float x, float& value, float& grad) {
  const float s = sigmoid(x);
  value = x * s;
  grad = s * (1.0f + x * (1.0f - s));
}

// d softplus(x) / dx = σ(x), and 1 above 20 where the forward returns x itself (as torch does).
inline float softplus_grad(float x) { return x > 20.0f ? 1.0f : sigmoid(x); }

}  // namespace

void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t M, int C) {
  constexpr int kBlock = 64;  // columns per task
  const int blocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (M * C > 32768)
  for (int blk = 0; blk < blocks; blk++) {
    const int c0 = blk * kBlock, nc = std::min(kBlock, C - c0);
    for (int64_t m = 0; m < M; m++) {
      float* dst = dtable + static_cast<int64_t>(tokens[m]) * C + c0;
      const float* src = dout + m * C + c0;
      for (int i = 0; i < nc; i++) dst[i] += src[i];
    }
  }
}

void residual_rmsnorm_backward(float* dresidual, float* dweight, const float* dout, const float* residual,
                               const float* weight, int64_t M, int C, float eps) {
  const int threads = omp_get_max_threads();
  std::vector<float> partial(static_cast<size_t>(threads) * C, 0.0f);  // (threads, C) partial dweight
#pragma omp parallel num_threads(threads)
  {
    float* dw = partial.data() + static_cast<int64_t>(omp_get_thread_num()) * C;
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++) {
      const float* r = residual + m * C;
      const float* g = dout + m * C;
      float* dr = dresidual + m * C;
      // rstd recomputed as residual_rmsnorm_forward computes it (cheaper than saving it: one pass over C).
      float sum_sq = 0.0f;
      for (int c = 0; c < C; c++) sum_sq += r[c] * r[c];
      const float rstd = 1.0f / std::sqrt(sum_sq / static_cast<float>(C) + eps);
      // mean(g ⊙ weight ⊙ r̂), the projection of the gradient on r̂ that the normalization removes.
      float dot = 0.0f;
      for (int c = 0; c < C; c++) dot += g[c] * weight[c] * r[c] * rstd;
      const float mean = dot / static_cast<float>(C);
      for (int c = 0; c < C; c++) {
        const float rhat = r[c] * rstd;
        dw[c] += g[c] * rhat;
        dr[c] += rstd * (g[c] * weight[c] - rhat * mean);
      }
    }
  }
  for (int t = 0; t < threads; t++) {
    const float* dw = partial.data() + static_cast<int64_t>(t) * C;
    for (int c = 0; c < C; c++) dweight[c] += dw[c];
  }
}

void matmul_backward(float* dinp, int64_t lddi, float* dweight, float* dbias, const float* dout, int64_t ldo,
                     const float* inp, int64_t ldi, const float* weight, int64_t M, int K, int N) {
  if (M <= 0) return;
  // dinp (M, K) += dout (M, N) · weight (N, K)
  if (dinp) {
    sgemm(false, false, M, K, N, 1.0f, dout, ldo, weight, K, 1.0f, dinp, lddi);
  }
  // dweight (N, K) += dout (M, N)ᵀ · inp (M, K)
  sgemm(true, false, N, K, M, 1.0f, dout, ldo, inp, ldi, 1.0f, dweight, K);
  if (dbias) {
    constexpr int kBlock = 64;  // columns per task; rows summed in order within it
    const int blocks = (N + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (M * N > 32768)
    for (int blk = 0; blk < blocks; blk++) {
      const int n0 = blk * kBlock, nn = std::min(kBlock, N - n0);
      float acc[kBlock] = {};
      for (int64_t r = 0; r < M; r++) {
        const float* g = dout + r * ldo + n0;
        for (int i = 0; i < nn; i++) acc[i] += g[i];
      }
      for (int i = 0; i < nn; i++) dbias[n0 + i] += acc[i];
    }
  }
}

void conv1d_silu_backward(float* dinp, int64_t dinp_stride, float* dtail, float* dweight, float* dbias,
                          const float* dout, const float* inp, int64_t inp_stride, const float* tail,
                          const float* weight, const float* bias, int B, int L, int D, int K) {
  constexpr int kBlock = 64;  // channels per task, as in the forward
  const int blocks = (D + kBlock - 1) / kBlock;
  const int T = K - 1;  // tail length
  // Channels are split over threads and the batch runs inside, so dweight and dbias (shared across the
  // batch) have one writer each and sum in a fixed order.
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(B) * L * D > 32768)
  for (int blk = 0; blk < blocks; blk++) {
    const int d0 = blk * kBlock, nd = std::min(kBlock, D - d0);
    for (int b = 0; b < B; b++) {
      const float* x = inp + static_cast<int64_t>(b) * L * inp_stride + d0;
      float* dx = dinp + static_cast<int64_t>(b) * L * dinp_stride + d0;
      const float* tl = tail ? tail + static_cast<int64_t>(b) * T * D + d0 : nullptr;
      float* dtl = dtail ? dtail + static_cast<int64_t>(b) * T * D + d0 : nullptr;
      const float* g = dout + static_cast<int64_t>(b) * L * D + d0;
      // Input at time s (s ≥ −T) and where its gradient goes: the sequence when s ≥ 0, else tail row s + T.
      auto input = [&](int s) -> const float* {
        return s >= 0 ? x + static_cast<int64_t>(s) * inp_stride : (tl ? tl + (s + T) * D : nullptr);
      };
      auto dinput = [&](int s) -> float* {
        return s >= 0 ? dx + static_cast<int64_t>(s) * dinp_stride : (dtl ? dtl + (s + T) * D : nullptr);
      };
      for (int t = 0; t < L; t++) {
        // Recompute the pre-activation p, then dp = dout ⊙ SiLU'(p).
        float dp[kBlock];
        for (int i = 0; i < nd; i++) dp[i] = bias ? bias[d0 + i] : 0.0f;
        for (int k = 0; k < K; k++) {
          const float* xs = input(t - T + k);
          if (!xs) continue;  // a zero tail
          for (int i = 0; i < nd; i++) dp[i] += weight[(d0 + i) * K + k] * xs[i];
        }
        const float* gt = g + static_cast<int64_t>(t) * D;
        for (int i = 0; i < nd; i++) dp[i] = gt[i] * silu_grad(dp[i]);
        if (dbias) {
          for (int i = 0; i < nd; i++) dbias[d0 + i] += dp[i];
        }
        for (int k = 0; k < K; k++) {
          const float* xs = input(t - T + k);
          if (xs) {
            for (int i = 0; i < nd; i++) dweight[(d0 + i) * K + k] += dp[i] * xs[i];
          }
          float* dxs = dinput(t - T + k);
          if (dxs) {
            for (int i = 0; i < nd; i++) dxs[i] += weight[(d0 + i) * K + k] * dp[i];
          }
        }
      }
    }
  }
}

namespace {

// kPerChannel: B and C are (D, N) parameters (ScanParams::bc_per_channel): they are loaded per block
// like A, and their gradients summed per block like dA, so no per-thread partial is needed.
template <bool kPerChannel>
void scan_backward(const ScanGrads& g, const ScanParams& p) {
  const float* checkpoints = p.chunk_states;
  const int chunk = p.state_chunk;
  // Vectorized across channels, like the forward: a block of kLanes channels steps through time together,
  // each state index n one vector operation over the lanes. A partial last block runs on zero-padded
  // lanes (u = dy = 0 there, so their gradients are exactly zero) that are never stored.
  constexpr int kLanes = 16;
  constexpr int kBC = kPerChannel ? kMaxState : 1;  // rows of the per-channel B, C and their gradients
  const int N = p.dstate, D = p.dim, L = p.seqlen, B = p.batch;
  const int blocks = (D + kLanes - 1) / kLanes;
  const int n_chunks = static_cast<int>(scan_chunks(L, chunk));
  const int64_t rows = static_cast<int64_t>(B) * L;
  const int64_t state_size = static_cast<int64_t>(D) * N;
  const bool has_D = p.D && g.dD, has_z = p.z, has_bias = p.delta_bias;
  const auto* u_in = static_cast<const float*>(p.u);  // fp32 on the CPU, as in the forward
  const auto* delta_in = static_cast<const float*>(p.delta);
  const auto* B_in = static_cast<const float*>(p.Bm);
  const auto* C_in = static_cast<const float*>(p.Cm);
  const auto* z_in = static_cast<const float*>(p.z);

  // B_t and C_t are read by every channel, so each thread sums its channels' dB, dC into its own partial
  // (B, L, 2N), reduced in thread order at the end. Parameters (dA, dD, ddelta_bias) belong to one
  // channel: channel blocks are split over threads with the batch inside, so each has a single writer.
  const int threads = omp_get_max_threads();
  std::vector<float> partial(kPerChannel ? 0 : static_cast<size_t>(threads) * rows * 2 * N, 0.0f);  // (threads, B, L, 2N)

#pragma omp parallel num_threads(threads)
  {
    const FlushSubnormals ftz;
    float* dbc = kPerChannel ? nullptr : partial.data() + static_cast<int64_t>(omp_get_thread_num()) * rows * 2 * N;
    // The chunk recomputed (§3.3.2), lane-major: hs[j][n][l] is the state h_{t0+j−1} (slot 0 the
    // checkpoint), as[j][n][l] the decay a_{t0+j} = exp(Δ A), dts[j][l] Δ_{t0+j} = softplus(x) with
    // x = delta + bias, dsp[j][l] softplus'(x): the reverse pass then needs no exp or log of its own.
    const int64_t slab = static_cast<int64_t>(N) * kLanes;
    std::vector<float> hs(static_cast<size_t>((chunk + 1) * slab));  // (chunk + 1, N, kLanes)
    std::vector<float> as(static_cast<size_t>(chunk * slab));        // (chunk, N, kLanes)
    std::vector<float> dts(static_cast<size_t>(chunk) * kLanes), dsp(dts.size());  // (chunk, kLanes)

#pragma omp for schedule(static)
    for (int blk = 0; blk < blocks; blk++) {
      const int d0 = blk * kLanes, nd = std::min(kLanes, D - d0);
      // Lane vectors of this block's channels, zero on the padded lanes.
      auto load = [&](float* dst, const float* src) {
        for (int l = 0; l < kLanes; l++) dst[l] = l < nd ? src[l] : 0.0f;
      };
      alignas(64) float A[kMaxState][kLanes] = {};   // A transposed for this block
      alignas(64) float dA[kMaxState][kLanes] = {};  // this block's dA, summed over batch and time
      alignas(64) float bias[kLanes] = {}, skip[kLanes] = {}, dD[kLanes] = {}, dbias[kLanes] = {};
      // Per-channel B, C transposed, and this block's dB, dC summed over batch and time.
      alignas(64) float Bc[kBC][kLanes] = {}, Cc[kBC][kLanes] = {}, dBc[kBC][kLanes] = {}, dCc[kBC][kLanes] = {};
      for (int l = 0; l < nd; l++) {
        for (int n = 0; n < N; n++) A[n][l] = p.A[static_cast<int64_t>(d0 + l) * N + n];
        if constexpr (kPerChannel) {
          for (int n = 0; n < N; n++) {
            Bc[n][l] = B_in[static_cast<int64_t>(d0 + l) * N + n];
            Cc[n][l] = C_in[static_cast<int64_t>(d0 + l) * N + n];
          }
        }
        bias[l] = has_bias ? p.delta_bias[d0 + l] : 0.0f;
        skip[l] = p.D ? p.D[d0 + l] : 0.0f;
      }
      for (int b = 0; b < B; b++) {
        alignas(64) float dh[kMaxState][kLanes] = {};  // ∂loss/∂h_t, carried backwards across chunks
        if (g.dstate_out) {
          for (int l = 0; l < nd; l++) {
            for (int n = 0; n < N; n++) dh[n][l] = g.dstate_out[b * state_size + (d0 + l) * N + n];
          }
        }
        for (int c = n_chunks - 1; c >= 0; c--) {
          const int t0 = c * chunk, Lc = std::min(chunk, L - t0);
          const float* ckpt = checkpoints + (static_cast<int64_t>(b) * n_chunks + c) * state_size;
          for (int n = 0; n < N; n++) {
            for (int l = 0; l < kLanes; l++) hs[n * kLanes + l] = l < nd ? ckpt[(d0 + l) * N + n] : 0.0f;
          }

          // Recompute the chunk's states forward from its checkpoint: h_t = a_t h_{t−1} + Δ_t B_t u_t.
          for (int j = 0; j < Lc; j++) {
            const int64_t row = static_cast<int64_t>(b) * L + t0 + j;
            const float* Bt = kPerChannel ? nullptr : B_in + row * p.B_stride;
            alignas(64) float u[kLanes], x[kLanes], dtu[kLanes];
            load(u, u_in + row * p.u_stride + d0);
            load(x, delta_in + row * p.delta_stride + d0);
            float* dt = dts.data() + j * kLanes;
            float* dsp_j = dsp.data() + j * kLanes;
            for (int l = 0; l < kLanes; l++) {
              const float xb = x[l] + bias[l];
              dt[l] = p.delta_softplus ? softplus(xb) : xb;
              dsp_j[l] = p.delta_softplus ? softplus_grad(xb) : 1.0f;
              dtu[l] = dt[l] * u[l];
            }
            const float* hp = hs.data() + j * slab;
            float* h = hs.data() + (j + 1) * slab;
            float* a = as.data() + j * slab;
            for (int n = 0; n < N; n++) {
              if constexpr (kPerChannel) {
#pragma omp simd
                for (int l = 0; l < kLanes; l++) {
                  a[n * kLanes + l] = exp_approx(dt[l] * A[n][l]);
                  h[n * kLanes + l] = a[n * kLanes + l] * hp[n * kLanes + l] + dtu[l] * Bc[n][l];
                }
              } else {
#pragma omp simd
                for (int l = 0; l < kLanes; l++) {
                  a[n * kLanes + l] = exp_approx(dt[l] * A[n][l]);
                  h[n * kLanes + l] = a[n * kLanes + l] * hp[n * kLanes + l] + dtu[l] * Bt[n];
                }
              }
            }
          }

          // Reverse pass through the chunk.
          for (int j = Lc - 1; j >= 0; j--) {
            const int64_t row = static_cast<int64_t>(b) * L + t0 + j;
            const float* Bt = kPerChannel ? nullptr : B_in + row * p.B_stride;
            const float* Ct = kPerChannel ? nullptr : C_in + row * p.C_stride;
            const float* dt = dts.data() + j * kLanes;
            const float* hp = hs.data() + j * slab;
            const float* h = hs.data() + (j + 1) * slab;
            const float* a = as.data() + j * slab;
            alignas(64) float u[kLanes], gy[kLanes], dtu[kLanes], du[kLanes], ddt[kLanes];
            load(u, u_in + row * p.u_stride + d0);
            load(gy, g.dy + row * g.dy_stride + d0);
            for (int l = 0; l < kLanes; l++) dtu[l] = dt[l] * u[l];
            // Gate: y = y₀ ⊙ SiLU(z), so dz = dy ⊙ y₀ ⊙ SiLU'(z) and ḡ = dy ⊙ SiLU(z).
            if (has_z) {
              alignas(64) float z[kLanes], y0[kLanes];
              load(z, z_in + row * p.z_stride + d0);
              for (int l = 0; l < kLanes; l++) y0[l] = skip[l] * u[l];
              for (int n = 0; n < N; n++) {
                for (int l = 0; l < kLanes; l++) y0[l] += (kPerChannel ? Cc[n][l] : Ct[n]) * h[n * kLanes + l];
              }
              for (int l = 0; l < kLanes; l++) {
                float gate, gate_grad;
                silu_and_grad(z[l], gate, gate_grad);
                y0[l] *= gy[l] * gate_grad;  // now dz
                gy[l] *= gate;
              }
              if (g.dz) {
                for (int l = 0; l < nd; l++) g.dz[row * g.dz_stride + d0 + l] += y0[l];
              }
            }
            for (int l = 0; l < kLanes; l++) {
              dD[l] += gy[l] * u[l];
              du[l] = skip[l] * gy[l];
              ddt[l] = 0.0f;
            }
            if constexpr (kPerChannel) {
              for (int n = 0; n < N; n++) {
#pragma omp simd
                for (int l = 0; l < kLanes; l++) {
                  const int k = n * kLanes + l;
                  const float dhn = dh[n][l] + gy[l] * Cc[n][l];
                  const float dah = dhn * a[k] * hp[k];
                  dCc[n][l] += gy[l] * h[k];
                  dBc[n][l] += dhn * dtu[l];
                  du[l] += dhn * dt[l] * Bc[n][l];
                  ddt[l] += dah * A[n][l] + dhn * Bc[n][l] * u[l];
                  dA[n][l] += dah * dt[l];
                  dh[n][l] = a[k] * dhn;
                }
              }
            }
            float* dBt = kPerChannel ? nullptr : dbc + row * 2 * N;
            float* dCt = kPerChannel ? nullptr : dBt + N;
            for (int n = 0; n < (kPerChannel ? 0 : N); n++) {
              const float Bn = Bt[n], Cn = Ct[n];
              float sum_dB = 0.0f, sum_dC = 0.0f;  // over the lanes: B and C are shared by all channels
#pragma omp simd reduction(+ : sum_dB, sum_dC)
              for (int l = 0; l < kLanes; l++) {
                const int k = n * kLanes + l;
                const float dhn = dh[n][l] + gy[l] * Cn;  // dh_t = C_t ḡ_t + a_{t+1} dh_{t+1}
                const float dah = dhn * a[k] * hp[k];     // ∂loss/∂(Δ A) through a_t = exp(Δ A)
                sum_dC += gy[l] * h[k];
                sum_dB += dhn * dtu[l];
                du[l] += dhn * dt[l] * Bn;
                ddt[l] += dah * A[n][l] + dhn * Bn * u[l];
                dA[n][l] += dah * dt[l];
                dh[n][l] = a[k] * dhn;  // becomes dh_{t−1}'s carry: ∂h_t/∂h_{t−1} = a_t
              }
              dBt[n] += sum_dB;
              dCt[n] += sum_dC;
            }
            const float* dsp_j = dsp.data() + j * kLanes;
            for (int l = 0; l < nd; l++) {
              const float ddelta = ddt[l] * dsp_j[l];
              g.du[row * g.du_stride + d0 + l] += du[l];
              g.ddelta[row * g.ddelta_stride + d0 + l] += ddelta;
              dbias[l] += ddelta;
            }
          }
        }
        if (g.dstate_in) {
          for (int l = 0; l < nd; l++) {
            for (int n = 0; n < N; n++) g.dstate_in[b * state_size + (d0 + l) * N + n] += dh[n][l];
          }
        }
      }
      for (int l = 0; l < nd; l++) {
        for (int n = 0; n < N; n++) g.dA[static_cast<int64_t>(d0 + l) * N + n] += dA[n][l];
        if (has_D) g.dD[d0 + l] += dD[l];
        if (has_bias && g.ddelta_bias) g.ddelta_bias[d0 + l] += dbias[l];
        if constexpr (kPerChannel) {
          for (int n = 0; n < N; n++) {
            g.dB[static_cast<int64_t>(d0 + l) * N + n] += dBc[n][l];
            g.dC[static_cast<int64_t>(d0 + l) * N + n] += dCc[n][l];
          }
        }
      }
    }

    // Sum the per-thread dB, dC in thread order.
#pragma omp for schedule(static)
    for (int64_t row = 0; row < (kPerChannel ? 0 : rows); row++) {
      float* dBt = g.dB + row * g.dbc_stride;
      float* dCt = g.dC + row * g.dbc_stride;
      for (int t = 0; t < threads; t++) {
        const float* src = partial.data() + (static_cast<int64_t>(t) * rows + row) * 2 * N;
        for (int n = 0; n < N; n++) {
          dBt[n] += src[n];
          dCt[n] += src[N + n];
        }
      }
    }
  }
}

}  // namespace

void selective_scan_backward(const ScanGrads& g, const ScanParams& p) {
  if (p.bc_per_channel) {
    scan_backward<true>(g, p);
  } else {
    scan_backward<false>(g, p);
  }
}

float lm_head_cross_entropy(float* dhidden, float* dweight, const float* hidden, const float* weight,
                            const int32_t* targets, int64_t M, int C, int V, int ignore_index,
                            float* logits_scratch, int64_t scratch_rows, int64_t divisor, float grad_scale,
                            DType dlogits_dtype) {
  int64_t count = 0;
  for (int64_t m = 0; m < M; m++) count += targets[m] != ignore_index;
  if (count == 0) {
    std::memset(dhidden, 0, sizeof(float) * M * C);
    return 0.0f;
  }
  if (divisor > 0) count = divisor;
  const float scale = grad_scale / static_cast<float>(count);
  std::vector<double> row_loss(static_cast<size_t>(scratch_rows));  // summed in row order: deterministic
  double loss = 0.0;
  for (int64_t m0 = 0; m0 < M; m0 += scratch_rows) {
    const int rows = static_cast<int>(std::min(scratch_rows, M - m0));
    const float* h = hidden + m0 * C;
    float* dh = dhidden + m0 * C;
    // logits (rows, V) = hidden · weightᵀ
    sgemm(false, true, rows, V, C, 1.0f, h, C, weight, C, 0.0f, logits_scratch, V);
    // In place: logits → dlogits = (softmax − onehot) / count; log-softmax shifted by the row max.
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(rows) * V > 32768)
    for (int r = 0; r < rows; r++) {
      float* z = logits_scratch + static_cast<int64_t>(r) * V;
      const int32_t target = targets[m0 + r];
      if (target == ignore_index) {
        std::memset(z, 0, sizeof(float) * V);
        row_loss[r] = 0.0;
        continue;
      }
      float mx = z[0];
      for (int v = 1; v < V; v++) mx = std::max(mx, z[v]);
      const float shifted_target = z[target] - mx;
      // The sum over the other classes is kept on its own: p_target − 1 = −Σ_{v≠target} p_v, whereas
      // 1 − p_target rounds to 0 once the other probabilities fall below fp32's epsilon, and the
      // target's gradient would vanish with them.
      float others = 0.0f;
      for (int v = 0; v < V; v++) {
        z[v] = exp_approx(z[v] - mx);
        others += v == target ? 0.0f : z[v];
      }
      const float sum = others + z[target];
      // loss = logsumexp(z) − z_target = log(sum) − (z_target − max): finite even where p_target underflows
      row_loss[r] = std::log(static_cast<double>(sum)) - shifted_target;
      const float inv = scale / sum;
      for (int v = 0; v < V; v++) z[v] *= inv;
      z[target] = -others * inv;
      if (dlogits_dtype == DType::BF16) {
        for (int v = 0; v < V; v++) z[v] = bf16_to_f32(f32_to_bf16(z[v]));
      } else if (dlogits_dtype == DType::F16) {
        for (int v = 0; v < V; v++) z[v] = f16_to_f32(f32_to_f16(z[v]));
      }
    }
    for (int r = 0; r < rows; r++) loss += row_loss[r];
    // dhidden (rows, C) = dlogits · weight;  dweight (V, C) += dlogitsᵀ · hidden
    sgemm(false, false, rows, C, V, 1.0f, logits_scratch, V, weight, C, 0.0f, dh, C);
    sgemm(true, false, V, C, rows, 1.0f, logits_scratch, V, h, C, 1.0f, dweight, C);
  }
  return static_cast<float>(loss / static_cast<double>(count));
}

}  // namespace mamba::cpu

// The CPU ops against plain double-precision loops written from the equations, over the edges:
// length 1, lengths shorter than the conv tail, strided inputs, optional inputs absent and present.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "ops/cpu/math.h"
#include "ops/cpu/ops.h"
#include "test_util.h"

namespace mamba::cpu {
namespace {

std::vector<float> randn(size_t n, Rng& rng, double scale = 1.0) {
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(scale * rng.normal());
  return v;
}

TEST(Math, ExpLogSoftplusAgainstLibm) {
  double worst_exp = 0, worst_log = 0, worst_softplus = 0;
  for (double x = -87.0; x <= 88.0; x += 0.0137) {
    const float f = static_cast<float>(x);
    worst_exp = std::max(worst_exp, std::abs(exp_approx(f) / std::exp(static_cast<double>(f)) - 1));
    worst_softplus = std::max(worst_softplus, std::abs(softplus(f) / std::log1p(std::exp(static_cast<double>(f))) - 1));
  }
  for (double x = 1e-30; x < 1e30; x *= 1.37) {
    const float f = static_cast<float>(x);
    const double ref = std::log(static_cast<double>(f));
    worst_log = std::max(worst_log, std::abs(log_approx(f) - ref) / std::max(1.0, std::abs(ref)));
  }
  EXPECT_LT(worst_exp, 3e-7);
  EXPECT_LT(worst_log, 3e-7);
  EXPECT_LT(worst_softplus, 1e-6);
  EXPECT_EQ(softplus(30.0f), 30.0f);
}

// Subnormal results are zero inside the scope, and the caller's mode is back after it.
TEST(Math, FlushSubnormalsIsScoped) {
#if !defined(__SSE__)
  GTEST_SKIP() << "FlushSubnormals is a no-op on this ISA";
#endif
  volatile float tiny = 1e-30f, scale = 1e-10f;  // their product, 1e-40, is subnormal
  const float before = tiny * scale;
  {
    const FlushSubnormals ftz;
    EXPECT_EQ(tiny * scale, 0.0f);
    EXPECT_EQ(before * 1.0f, 0.0f);  // a subnormal input reads as zero
  }
  EXPECT_EQ(tiny * scale, before);
  EXPECT_GT(before, 0.0f);  // the default mode keeps subnormals
}

struct ScanCase {
  int B, L, D, N;
  bool with_z, with_D, with_bias, with_state;
};

class Scan : public ::testing::TestWithParam<ScanCase> {};

TEST_P(Scan, MatchesDoubleReference) {
  const ScanCase c = GetParam();
  Rng rng(c.B * 1000 + c.L * 10 + c.N);
  // Inputs as column slices of wider arrays, as the model passes them.
  const int su = c.D + 3, sd = c.D + 1, sbc = 2 * c.N + 5, sz = 2 * c.D, sy = c.D + 2;
  const int64_t rows = int64_t{c.B} * c.L;
  auto u = randn(rows * su, rng), delta = randn(rows * sd, rng, 0.5), bc = randn(rows * sbc, rng),
       z = randn(rows * sz, rng), A = randn(int64_t{c.D} * c.N, rng), Dv = randn(c.D, rng),
       bias = randn(c.D, rng, 0.5), h0 = randn(int64_t{c.B} * c.D * c.N, rng);
  for (float& a : A) a = -std::exp(a);
  std::vector<float> y(rows * sy, NAN), h1(h0.size(), NAN);

  ScanParams p;
  p.batch = c.B, p.seqlen = c.L, p.dim = c.D, p.dstate = c.N;
  p.y = y.data(), p.y_stride = sy;
  p.u = u.data(), p.u_stride = su;
  p.delta = delta.data(), p.delta_stride = sd;
  p.A = A.data();
  p.Bm = bc.data() + 2, p.Cm = bc.data() + 2 + c.N, p.B_stride = p.C_stride = sbc;
  p.D = c.with_D ? Dv.data() : nullptr;
  p.z = c.with_z ? z.data() + c.D : nullptr, p.z_stride = sz;
  p.delta_bias = c.with_bias ? bias.data() : nullptr;
  p.state_in = c.with_state ? h0.data() : nullptr;
  p.state_out = h1.data();
  selective_scan_forward(p);

  double worst_y = 0, scale_y = 0, worst_h = 0;
  for (int b = 0; b < c.B; b++) {
    for (int d = 0; d < c.D; d++) {
      std::vector<double> h(c.N);
      for (int n = 0; n < c.N; n++) h[n] = c.with_state ? h0[(int64_t{b} * c.D + d) * c.N + n] : 0.0;
      for (int t = 0; t < c.L; t++) {
        const int64_t r = int64_t{b} * c.L + t;
        double dt = delta[r * sd + d] + (c.with_bias ? bias[d] : 0.0);
        dt = dt > 20 ? dt : std::log1p(std::exp(dt));
        const double x = u[r * su + d];
        double out = 0;
        for (int n = 0; n < c.N; n++) {
          h[n] = std::exp(dt * A[d * c.N + n]) * h[n] + dt * bc[r * sbc + 2 + n] * x;
          out += bc[r * sbc + 2 + c.N + n] * h[n];
        }
        if (c.with_D) out += Dv[d] * x;
        if (c.with_z) {
          const double zz = z[r * sz + c.D + d];
          out *= zz / (1 + std::exp(-zz));
        }
        worst_y = std::max(worst_y, std::abs(out - y[r * sy + d]));
        scale_y = std::max(scale_y, std::abs(out));
      }
      for (int n = 0; n < c.N; n++) {
        worst_h = std::max(worst_h, std::abs(h[n] - h1[(int64_t{b} * c.D + d) * c.N + n]) / (1 + std::abs(h[n])));
      }
    }
  }
  EXPECT_LE(worst_y / scale_y, 1e-5);
  EXPECT_LE(worst_h, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Scan,
                         ::testing::Values(ScanCase{1, 1, 1, 1, false, false, false, false},
                                           ScanCase{2, 7, 13, 4, true, true, true, true},
                                           ScanCase{3, 33, 8, 16, true, false, true, false},
                                           ScanCase{1, 100, 17, 64, false, true, false, true},
                                           ScanCase{2, 5, 40, 3, true, true, false, true}));

TEST(Conv, TailCarriesAcrossCallsOfAnyLength) {
  for (int K : {1, 2, 4, 6}) {
    Rng rng(K);
    const int B = 2, L = 11, D = 70, stride = D + 9;
    auto x = randn(int64_t{B} * L * stride, rng), w = randn(int64_t{D} * K, rng), bias = randn(D, rng);
    std::vector<float> whole(int64_t{B} * L * D), tail_whole(int64_t{B} * (K - 1) * D, 0.0f);
    conv1d_silu_forward(whole.data(), D, tail_whole.data(), x.data(), stride, w.data(), bias.data(), B, L, D, K);
    // Against the definition.
    for (int b = 0; b < B; b++) {
      for (int t = 0; t < L; t++) {
        for (int d = 0; d < D; d++) {
          double acc = bias[d];
          for (int k = 0; k < K; k++) {
            const int s = t - (K - 1) + k;
            if (s >= 0) acc += w[d * K + k] * x[(int64_t{b} * L + s) * stride + d];
          }
          const double expect = acc / (1 + std::exp(-acc));
          ASSERT_NEAR(whole[(int64_t{b} * L + t) * D + d], expect, 1e-5 * (1 + std::abs(expect)));
        }
      }
    }
    // Pieces of lengths 1, 2, 3, 5 (shorter than the tail too) give the same outputs and tail.
    std::vector<float> tail(tail_whole.size(), 0.0f), pieces(whole.size());
    int t0 = 0;
    for (int len : {1, 2, 3, 5}) {
      std::vector<float> xs(int64_t{B} * len * stride), out(int64_t{B} * len * D);
      for (int b = 0; b < B; b++) {
        std::copy_n(x.begin() + (int64_t{b} * L + t0) * stride, int64_t{len} * stride, xs.begin() + int64_t{b} * len * stride);
      }
      conv1d_silu_forward(out.data(), D, tail.data(), xs.data(), stride, w.data(), bias.data(), B, len, D, K);
      for (int b = 0; b < B; b++) {
        std::copy_n(out.begin() + int64_t{b} * len * D, int64_t{len} * D, pieces.begin() + (int64_t{b} * L + t0) * D);
      }
      t0 += len;
    }
    EXPECT_EQ(pieces, whole) << "K " << K;
    EXPECT_EQ(tail, tail_whole) << "K " << K;
  }
}

}  // namespace
}  // namespace mamba::cpu

// The fp32 backward ops (ops/cpu/backward.h) against central finite differences of independent
// double-precision reference forwards written here from the equations, with simple loops. Each test
// projects the op's outputs on fixed random tensors (loss = Σ out ⊙ R), so one scalar loss checks the
// gradient of every input and parameter at once; every element of every input is perturbed, padding
// included (whose gradient must stay exactly what it was: zero).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "core/rng.h"
#include "ops/cpu/backward.h"
#include "ops/cpu/ops.h"
#include "test_util.h"

namespace mamba {
namespace {

using Vec = std::vector<float>;
using DVec = std::vector<double>;

Vec randn(Rng& rng, size_t n, double scale = 1.0, double shift = 0.0) {
  Vec v(n);
  for (auto& x : v) x = static_cast<float>(shift + scale * rng.normal());
  return v;
}

DVec to_double(const Vec& v) { return {v.begin(), v.end()}; }

// Central differences of loss() with respect to every element of x, which loss() reads.
template <class F>
DVec numeric_grad(DVec& x, F&& loss, double eps = 1e-6) {
  DVec g(x.size());
  for (size_t i = 0; i < x.size(); i++) {
    const double v = x[i];
    x[i] = v + eps;
    const double up = loss();
    x[i] = v - eps;
    const double down = loss();
    x[i] = v;
    g[i] = (up - down) / (2 * eps);
  }
  return g;
}

// max |analytic − numeric| / max |numeric|.
void expect_grad(const Vec& analytic, const DVec& numeric, const std::string& what, double tol = 1e-4) {
  ASSERT_EQ(analytic.size(), numeric.size()) << what;
  double diff = 0, scale = 0;
  for (size_t i = 0; i < numeric.size(); i++) {
    diff = std::max(diff, std::abs(analytic[i] - numeric[i]));
    scale = std::max(scale, std::abs(numeric[i]));
  }
  EXPECT_GT(scale, 0.0) << what << ": the check is vacuous";
  EXPECT_LE(diff / scale, tol) << what << ": max abs diff " << diff << ", scale " << scale;
}

double dot(const Vec& a, const DVec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}

double softplus_ref(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }
double silu_ref(double x) { return x / (1.0 + std::exp(-x)); }

// ---- embedding ----

TEST(GradOps, Embedding) {
  Rng rng(1);
  const int V = 6, C = 70;  // two column blocks
  const int64_t M = 9;
  std::vector<int32_t> tokens = {3, 1, 3, 0, 5, 3, 1, 1, 2};  // repeats must sum
  Vec table = randn(rng, V * C), R = randn(rng, M * C);
  DVec t = to_double(table), Rd = to_double(R);
  auto loss = [&] {
    double s = 0;
    for (int64_t m = 0; m < M; m++) {
      for (int c = 0; c < C; c++) s += t[tokens[m] * C + c] * Rd[m * C + c];
    }
    return s;
  };
  Vec dtable(V * C, 0.0f);
  cpu::embedding_backward(dtable.data(), R.data(), tokens.data(), M, C);
  expect_grad(dtable, numeric_grad(t, loss), "dtable");
}

// ---- residual + RMSNorm ----

struct NormCase {
  int64_t M;
  int C;
  bool first;
};

class GradNorm : public ::testing::TestWithParam<NormCase> {};

TEST_P(GradNorm, MatchesFiniteDifferences) {
  const auto [M, C, first] = GetParam();
  const float eps = 1e-5f;
  Rng rng(2 + M + C);
  Vec inp = randn(rng, M * C), prev = randn(rng, M * C), weight = randn(rng, C, 0.3, 1.0);
  Vec R = randn(rng, M * C), S = randn(rng, M * C);  // S: the gradient reaching the residual from later
  DVec x = to_double(inp), rp = to_double(prev), w = to_double(weight), Rd = to_double(R), Sd = to_double(S);
  // loss = Σ out ⊙ R + Σ residual ⊙ S, residual = inp (+ prev), out = residual · rstd · weight.
  auto loss = [&] {
    double s = 0;
    for (int64_t m = 0; m < M; m++) {
      std::vector<double> r(C);
      double sq = 0;
      for (int c = 0; c < C; c++) {
        r[c] = x[m * C + c] + (first ? 0.0 : rp[m * C + c]);
        sq += r[c] * r[c];
      }
      const double rstd = 1.0 / std::sqrt(sq / C + eps);
      for (int c = 0; c < C; c++) s += r[c] * rstd * w[c] * Rd[m * C + c] + r[c] * Sd[m * C + c];
    }
    return s;
  };

  Vec out(M * C), residual = prev;
  cpu::residual_rmsnorm_forward(out.data(), residual.data(), inp.data(), weight.data(), first, M, C, eps);
  Vec dres = S, dweight(C, 0.0f);
  cpu::residual_rmsnorm_backward(dres.data(), dweight.data(), R.data(), residual.data(), weight.data(), M, C, eps);

  expect_grad(dres, numeric_grad(x, loss), "dinp");
  if (!first) expect_grad(dres, numeric_grad(rp, loss), "dresidual_prev");
  expect_grad(dweight, numeric_grad(w, loss), "dweight");
}

INSTANTIATE_TEST_SUITE_P(Cases, GradNorm,
                         ::testing::Values(NormCase{1, 1, true}, NormCase{7, 33, false}, NormCase{40, 16, true},
                                           NormCase{40, 16, false}));

// ---- matmul ----

struct MatmulCase {
  int64_t M;
  int K, N;
  bool bias, dinp;
};

class GradMatmul : public ::testing::TestWithParam<MatmulCase> {};

TEST_P(GradMatmul, MatchesFiniteDifferencesAndAccumulates) {
  const auto [M, K, N, has_bias, has_dinp] = GetParam();
  // Strided like the model: inp a column slice of a wider array, out and dinp too.
  const int64_t ldi = K + 3, ldo = N + 2, lddi = K + 5;
  Rng rng(3 + M * 7 + K + N);
  Vec inp = randn(rng, M * ldi), weight = randn(rng, int64_t{N} * K), bias = randn(rng, N);
  Vec R(M * ldo, 0.0f);  // zero on the padding: it is no output
  for (int64_t m = 0; m < M; m++) {
    for (int n = 0; n < N; n++) R[m * ldo + n] = static_cast<float>(rng.normal());
  }
  DVec x = to_double(inp), w = to_double(weight), bb = to_double(bias), Rd = to_double(R);
  auto loss = [&] {
    double s = 0;
    for (int64_t m = 0; m < M; m++) {
      for (int n = 0; n < N; n++) {
        double o = has_bias ? bb[n] : 0.0;
        for (int k = 0; k < K; k++) o += x[m * ldi + k] * w[int64_t{n} * K + k];
        s += o * Rd[m * ldo + n];
      }
    }
    return s;
  };
  // Start from nonzero gradients: the op must add to them.
  Vec dinp0 = randn(rng, M * lddi), dweight0 = randn(rng, weight.size()), dbias0 = randn(rng, N);
  Vec dinp = dinp0, dweight = dweight0, dbias = dbias0;
  cpu::matmul_backward(has_dinp ? dinp.data() : nullptr, lddi, dweight.data(), has_bias ? dbias.data() : nullptr,
                       R.data(), ldo, inp.data(), ldi, weight.data(), M, K, N);
  auto added = [](const Vec& after, const Vec& before) {
    Vec d(after.size());
    for (size_t i = 0; i < d.size(); i++) d[i] = after[i] - before[i];
    return d;
  };
  expect_grad(added(dweight, dweight0), numeric_grad(w, loss), "dweight");
  if (has_bias) expect_grad(added(dbias, dbias0), numeric_grad(bb, loss), "dbias");
  if (has_dinp) {
    // dinp has its own stride: compare the (M, K) slice, and the padding must be untouched.
    DVec num = numeric_grad(x, loss);
    Vec got(M * ldi, 0.0f);
    for (int64_t m = 0; m < M; m++) {
      for (int k = 0; k < K; k++) got[m * ldi + k] = dinp[m * lddi + k] - dinp0[m * lddi + k];
      for (int k = K; k < lddi; k++) EXPECT_EQ(dinp[m * lddi + k], dinp0[m * lddi + k]);
    }
    expect_grad(got, num, "dinp");
  } else {
    EXPECT_EQ(dinp, dinp0);
  }
  if (!has_bias) {
    EXPECT_EQ(dbias, dbias0);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, GradMatmul,
                         ::testing::Values(MatmulCase{1, 4, 3, true, true}, MatmulCase{5, 7, 9, true, true},
                                           MatmulCase{6, 3, 70, true, false}, MatmulCase{9, 8, 2, false, true}));

// ---- conv1d + SiLU ----

struct ConvCase {
  int B, L, D, K;
  bool bias, tail;
};

class GradConv : public ::testing::TestWithParam<ConvCase> {};

TEST_P(GradConv, MatchesFiniteDifferences) {
  const auto [B, L, D, K, has_bias, has_tail] = GetParam();
  const int T = K - 1;
  const int64_t xs = 2 * D;  // x is the first half of xz (B, L, 2D), as in the model
  Rng rng(4 + B + L * 3 + D + K);
  Vec xz = randn(rng, int64_t{B} * L * xs), tail(int64_t{B} * T * D, 0.0f);
  if (has_tail) tail = randn(rng, tail.size());
  Vec weight = randn(rng, int64_t{D} * K, 0.5), bias = randn(rng, D, 0.5);
  Vec R = randn(rng, int64_t{B} * L * D);
  DVec x = to_double(xz), tl = to_double(tail), w = to_double(weight), bb = to_double(bias), Rd = to_double(R);
  auto loss = [&] {
    double s = 0;
    for (int b = 0; b < B; b++) {
      for (int t = 0; t < L; t++) {
        for (int d = 0; d < D; d++) {
          double p = has_bias ? bb[d] : 0.0;
          for (int k = 0; k < K; k++) {
            const int src = t - T + k;
            p += w[d * K + k] * (src >= 0 ? x[(int64_t{b} * L + src) * xs + d] : tl[(int64_t{b} * T + src + T) * D + d]);
          }
          s += silu_ref(p) * Rd[(int64_t{b} * L + t) * D + d];
        }
      }
    }
    return s;
  };
  Vec dxz(xz.size(), 0.0f), dtail(tail.size(), 0.0f), dweight(weight.size(), 0.0f), dbias(D, 0.0f);
  cpu::conv1d_silu_backward(dxz.data(), xs, has_tail ? dtail.data() : nullptr, dweight.data(),
                            has_bias ? dbias.data() : nullptr, R.data(), xz.data(), xs,
                            has_tail ? tail.data() : nullptr, weight.data(), has_bias ? bias.data() : nullptr, B, L,
                            D, K);
  expect_grad(dxz, numeric_grad(x, loss), "dinp");
  expect_grad(dweight, numeric_grad(w, loss), "dweight");
  if (has_bias) expect_grad(dbias, numeric_grad(bb, loss), "dbias");
  if (has_tail && T > 0) expect_grad(dtail, numeric_grad(tl, loss), "dtail");
}

INSTANTIATE_TEST_SUITE_P(Cases, GradConv,
                         ::testing::Values(ConvCase{2, 5, 70, 4, true, true}, ConvCase{1, 1, 3, 4, true, true},
                                           ConvCase{2, 2, 5, 4, false, true}, ConvCase{3, 6, 4, 2, true, false},
                                           ConvCase{1, 4, 66, 1, true, false}));

// ---- selective scan ----

struct ScanCase {
  int B, L, D, N, chunk;
  bool z, skip, bias, h0;
  bool softplus = true;
};

std::string scan_name(const ::testing::TestParamInfo<ScanCase>& info) {
  const ScanCase& c = info.param;
  std::ostringstream name;
  name << "B" << c.B << "_L" << c.L << "_D" << c.D << "_N" << c.N << "_chunk" << c.chunk << (c.z ? "_z" : "")
       << (c.skip ? "_D" : "") << (c.bias ? "_bias" : "") << (c.h0 ? "_h0" : "") << (c.softplus ? "" : "_nosoftplus");
  return name.str();
}

// Every input of one scan, in the layouts the model uses: u a column slice (offset 1, stride D + 3),
// B and C slices of x_proj's output (B, L, R + 2N), z the second half of xz (B, L, 2D), y strided.
struct ScanData {
  ScanCase c;
  static constexpr int R = 2;
  int64_t us, ys, ws, zs;
  Vec u, delta, A, xdbl, xz, Dv, bias, h0, Ry, Sh;  // Ry: dy in y's layout; Sh: dstate_out

  explicit ScanData(const ScanCase& sc) : c(sc) {
    us = c.D + 3, ys = c.D + 1, ws = R + 2 * c.N, zs = 2 * c.D;
    const int64_t rows = int64_t{c.B} * c.L;
    Rng rng(5 + c.B * 131 + c.L * 17 + c.D * 3 + c.N + c.chunk * 7);
    u = randn(rng, rows * us);
    delta = randn(rng, rows * c.D, 0.5, c.softplus ? -0.5 : 0.3);
    A = randn(rng, int64_t{c.D} * c.N, 0.5);
    for (auto& a : A) a = -std::exp(a);
    xdbl = randn(rng, rows * ws);
    xz = randn(rng, rows * zs);
    Dv = randn(rng, c.D);
    bias = randn(rng, c.D, 0.3);
    h0 = randn(rng, int64_t{c.B} * c.D * c.N);
    Ry = randn(rng, rows * ys);
    Sh = randn(rng, int64_t{c.B} * c.D * c.N);
  }

  ScanParams params(float* y, float* state_out) const {
    ScanParams p;
    p.batch = c.B, p.seqlen = c.L, p.dim = c.D, p.dstate = c.N;
    p.y = y, p.y_stride = ys;
    p.u = u.data() + 1, p.u_stride = us;
    p.delta = delta.data(), p.delta_stride = c.D;
    p.A = A.data();
    p.Bm = xdbl.data() + R, p.Cm = xdbl.data() + R + c.N, p.B_stride = p.C_stride = ws;
    p.D = c.skip ? Dv.data() : nullptr;
    p.z = c.z ? xz.data() + c.D : nullptr, p.z_stride = zs;
    p.delta_bias = c.bias ? bias.data() : nullptr;
    p.delta_softplus = c.softplus;
    p.state_in = c.h0 ? h0.data() : nullptr;
    p.state_out = state_out;
    return p;
  }
};

// The gradient buffers, in the inputs' layouts (padding included).
struct ScanGradData {
  Vec du, ddelta, dA, dxdbl, dxz, dD, dbias, dh0;
  explicit ScanGradData(const ScanData& s)
      : du(s.u.size()), ddelta(s.delta.size()), dA(s.A.size()), dxdbl(s.xdbl.size()), dxz(s.xz.size()),
        dD(s.Dv.size()), dbias(s.bias.size()), dh0(s.h0.size()) {}

  void run(const ScanData& s, const float* checkpoints) {
    const ScanCase& c = s.c;
    cpu::ScanGrads g;
    g.dy = s.Ry.data(), g.dy_stride = s.ys;
    g.dstate_out = s.Sh.data();
    g.du = du.data() + 1, g.du_stride = s.us;
    g.ddelta = ddelta.data(), g.ddelta_stride = c.D;
    g.dA = dA.data();
    g.dB = dxdbl.data() + ScanData::R, g.dC = dxdbl.data() + ScanData::R + c.N, g.dbc_stride = s.ws;
    g.dD = c.skip ? dD.data() : nullptr;
    g.dz = c.z ? dxz.data() + c.D : nullptr, g.dz_stride = s.zs;
    g.ddelta_bias = c.bias ? dbias.data() : nullptr;
    g.dstate_in = c.h0 ? dh0.data() : nullptr;
    cpu::selective_scan_backward(g, test::with_checkpoints(s.params(nullptr, nullptr), checkpoints, c.chunk));
  }
};

// loss = Σ y ⊙ Ry + Σ h_L ⊙ Sh in double, straight from the recurrence (paper eq. 2a–2b, Algorithm 2).
double scan_loss_ref(const ScanCase& c, const ScanData& s, const DVec& u, const DVec& delta, const DVec& A,
                     const DVec& xdbl, const DVec& xz, const DVec& Dv, const DVec& bias, const DVec& h0) {
  const int R = ScanData::R, N = c.N;
  double loss = 0;
  std::vector<double> h(N);
  for (int b = 0; b < c.B; b++) {
    for (int d = 0; d < c.D; d++) {
      for (int n = 0; n < N; n++) h[n] = c.h0 ? h0[(int64_t{b} * c.D + d) * N + n] : 0.0;
      for (int t = 0; t < c.L; t++) {
        const int64_t row = int64_t{b} * c.L + t;
        const double x = delta[row * c.D + d] + (c.bias ? bias[d] : 0.0);
        const double dt = c.softplus ? softplus_ref(x) : x;
        const double ut = u[row * s.us + 1 + d];
        double y = c.skip ? Dv[d] * ut : 0.0;
        for (int n = 0; n < N; n++) {
          h[n] = std::exp(dt * A[d * N + n]) * h[n] + dt * ut * xdbl[row * s.ws + R + n];
          y += xdbl[row * s.ws + R + N + n] * h[n];
        }
        if (c.z) y *= silu_ref(xz[row * s.zs + c.D + d]);
        loss += y * s.Ry[row * s.ys + d];
      }
      for (int n = 0; n < N; n++) loss += h[n] * s.Sh[(int64_t{b} * c.D + d) * N + n];
    }
  }
  return loss;
}

class GradScan : public ::testing::TestWithParam<ScanCase> {};

TEST_P(GradScan, MatchesFiniteDifferences) {
  const ScanCase c = GetParam();
  ScanData s(c);
  const int n_chunks = scan_chunks(c.L, c.chunk);
  Vec y(s.Ry.size(), 0.0f), state_out(s.Sh.size()), ckpt(int64_t{c.B} * n_chunks * c.D * c.N);
  cpu::selective_scan_forward(test::with_checkpoints(s.params(y.data(), state_out.data()), ckpt.data(), c.chunk));
  ScanGradData g(s);
  g.run(s, ckpt.data());

  DVec u = to_double(s.u), delta = to_double(s.delta), A = to_double(s.A), xdbl = to_double(s.xdbl),
       xz = to_double(s.xz), Dv = to_double(s.Dv), bias = to_double(s.bias), h0 = to_double(s.h0);
  auto loss = [&] { return scan_loss_ref(c, s, u, delta, A, xdbl, xz, Dv, bias, h0); };
  // The fp32 forward agrees with the reference, so the gradients are of the same function.
  const double loss32 = dot(y, to_double(s.Ry)) + dot(state_out, to_double(s.Sh));
  EXPECT_NEAR(loss32, loss(), 1e-4 * std::max(1.0, std::abs(loss())));

  expect_grad(g.du, numeric_grad(u, loss), "du");
  expect_grad(g.ddelta, numeric_grad(delta, loss), "ddelta");
  expect_grad(g.dA, numeric_grad(A, loss), "dA");
  expect_grad(g.dxdbl, numeric_grad(xdbl, loss), "dB, dC");
  if (c.z) expect_grad(g.dxz, numeric_grad(xz, loss), "dz");
  if (c.skip) expect_grad(g.dD, numeric_grad(Dv, loss), "dD");
  if (c.bias) expect_grad(g.dbias, numeric_grad(bias, loss), "ddelta_bias");
  if (c.h0) expect_grad(g.dh0, numeric_grad(h0, loss), "dstate_in");
}

TEST_P(GradScan, CheckpointedForwardEqualsPlainForwardBitwise) {
  const ScanCase c = GetParam();
  ScanData s(c);
  Vec y1(s.Ry.size(), 0.0f), y2 = y1, st1(s.Sh.size()), st2(s.Sh.size());
  Vec ckpt(int64_t{c.B} * scan_chunks(c.L, c.chunk) * c.D * c.N);
  cpu::selective_scan_forward(s.params(y1.data(), st1.data()));
  cpu::selective_scan_forward(test::with_checkpoints(s.params(y2.data(), st2.data()), ckpt.data(), c.chunk));
  EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), sizeof(float) * y1.size()));
  EXPECT_EQ(0, std::memcmp(st1.data(), st2.data(), sizeof(float) * st1.size()));
  // The first checkpoint is h_0.
  for (int b = 0; b < c.B; b++) {
    for (int64_t i = 0; i < int64_t{c.D} * c.N; i++) {
      const float h0 = c.h0 ? s.h0[b * int64_t{c.D} * c.N + i] : 0.0f;
      ASSERT_EQ(ckpt[(int64_t{b} * scan_chunks(c.L, c.chunk)) * c.D * c.N + i], h0);
    }
  }
}

TEST_P(GradScan, BackwardIsBitwiseDeterministic) {
  const ScanCase c = GetParam();
  ScanData s(c);
  Vec y(s.Ry.size(), 0.0f), ckpt(int64_t{c.B} * scan_chunks(c.L, c.chunk) * c.D * c.N);
  cpu::selective_scan_forward(test::with_checkpoints(s.params(y.data(), nullptr), ckpt.data(), c.chunk));
  ScanGradData g1(s), g2(s);
  g1.run(s, ckpt.data());
  g2.run(s, ckpt.data());
  auto same = [](const Vec& a, const Vec& b) { return std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0; };
  EXPECT_TRUE(same(g1.du, g2.du) && same(g1.ddelta, g2.ddelta) && same(g1.dA, g2.dA) && same(g1.dxdbl, g2.dxdbl) &&
              same(g1.dxz, g2.dxz) && same(g1.dD, g2.dD) && same(g1.dbias, g2.dbias) && same(g1.dh0, g2.dh0));
}

INSTANTIATE_TEST_SUITE_P(Cases, GradScan,
                         ::testing::Values(ScanCase{1, 1, 3, 1, 1, true, true, true, true},
                                           ScanCase{2, 7, 10, 4, 3, true, true, true, true},
                                           ScanCase{2, 20, 9, 4, 16, false, false, false, false},
                                           ScanCase{1, 16, 8, 1, 16, true, false, true, true},
                                           ScanCase{3, 5, 17, 4, 1, true, true, false, true},
                                           ScanCase{2, 7, 5, 4, 16, false, true, true, false},
                                           ScanCase{1, 9, 4, 4, 3, true, true, true, true, false}),
                         scan_name);

// ---- LM head + cross-entropy ----

struct CeCase {
  int64_t M;
  int C, V;
  int64_t scratch_rows;
  double scale;  // of hidden: large values make large logits, to exercise the log-sum-exp shift
};

class GradCrossEntropy : public ::testing::TestWithParam<CeCase> {};

constexpr int kIgnore = -100;

double ce_loss_ref(const DVec& h, const DVec& w, const std::vector<int32_t>& targets, int64_t M, int C, int V) {
  double total = 0;
  int64_t count = 0;
  std::vector<double> z(V);
  for (int64_t m = 0; m < M; m++) {
    if (targets[m] == kIgnore) continue;
    double mx = -INFINITY;
    for (int v = 0; v < V; v++) {
      z[v] = 0;
      for (int k = 0; k < C; k++) z[v] += h[m * C + k] * w[int64_t{v} * C + k];
      mx = std::max(mx, z[v]);
    }
    double sum = 0;
    for (int v = 0; v < V; v++) sum += std::exp(z[v] - mx);
    total += mx + std::log(sum) - z[targets[m]];
    count++;
  }
  return count ? total / count : 0.0;
}

TEST_P(GradCrossEntropy, MatchesFiniteDifferences) {
  const auto [M, C, V, scratch_rows, scale] = GetParam();
  Rng rng(6 + M + C * 5 + V);
  Vec hidden = randn(rng, M * C, scale), weight = randn(rng, int64_t{V} * C, 0.5);
  std::vector<int32_t> targets(M);
  for (int64_t m = 0; m < M; m++) targets[m] = m % 3 == 1 ? kIgnore : static_cast<int32_t>(rng.below(V));
  DVec h = to_double(hidden), w = to_double(weight);
  auto loss = [&] { return ce_loss_ref(h, w, targets, M, C, V); };

  Vec dhidden(M * C, 1.0f), dweight(weight.size(), 0.0f), scratch(scratch_rows * V);  // dhidden is written
  const float got = cpu::lm_head_cross_entropy(dhidden.data(), dweight.data(), hidden.data(), weight.data(),
                                               targets.data(), M, C, V, kIgnore, scratch.data(), scratch_rows);
  EXPECT_NEAR(got, loss(), 1e-5 * std::max(1.0, loss()));
  // Large logits: FD steps are relative to the loss's curvature, so widen the step with the scale.
  const double eps = 1e-6 * scale;
  expect_grad(dhidden, numeric_grad(h, loss, eps), "dhidden");
  expect_grad(dweight, numeric_grad(w, loss, eps), "dweight");
}

INSTANTIATE_TEST_SUITE_P(Cases, GradCrossEntropy,
                         ::testing::Values(CeCase{9, 6, 11, 4, 1.0}, CeCase{1, 3, 5, 1, 1.0}, CeCase{8, 5, 7, 8, 1.0},
                                           CeCase{5, 4, 6, 2, 60.0}));

// A confident right answer: p_target rounds to 1 in fp32, yet its gradient is −Σ_{v≠target} p_v, not
// 0, so the logits' gradients still sum to zero and training keeps widening the margin.
TEST(GradOps, CrossEntropyGradientSurvivesSaturation) {
  const int C = 1, V = 4;
  const int32_t target = 2;
  Vec hidden = {1.0f}, weight = {0.0f, 1.0f, 20.0f, -3.0f}, scratch(V);  // logits = weight (C = 1)
  Vec dhidden(1), dweight(V, 0.0f);
  cpu::lm_head_cross_entropy(dhidden.data(), dweight.data(), hidden.data(), weight.data(), &target, 1, C, V, kIgnore,
                             scratch.data(), 1);
  double others = 0, sum = 0;
  for (int v = 0; v < V; v++) others += v == target ? 0.0 : std::exp(double{weight[v]} - 20.0);
  for (int v = 0; v < V; v++) sum += dweight[v];
  ASSERT_LT(others, 1e-7);  // below fp32's epsilon next to 1
  EXPECT_NEAR(dweight[target], -others / (1 + others), 1e-6 * others);
  EXPECT_NEAR(sum, 0.0, 1e-6 * others);
}

TEST(GradOps, CrossEntropyAllIgnored) {
  const int64_t M = 4;
  const int C = 3, V = 5;
  Rng rng(7);
  Vec hidden = randn(rng, M * C), weight = randn(rng, int64_t{V} * C), scratch(2 * V);
  std::vector<int32_t> targets(M, kIgnore);
  Vec dhidden(M * C, 1.0f), dweight = randn(rng, weight.size()), dweight0 = dweight;
  const float loss = cpu::lm_head_cross_entropy(dhidden.data(), dweight.data(), hidden.data(), weight.data(),
                                                targets.data(), M, C, V, kIgnore, scratch.data(), 2);
  EXPECT_EQ(loss, 0.0f);
  EXPECT_EQ(dhidden, Vec(M * C, 0.0f));
  EXPECT_EQ(dweight, dweight0);
}

}  // namespace
}  // namespace mamba

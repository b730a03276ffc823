// The CUDA causal conv1d + SiLU against the CPU oracle (mamba::cpu::conv1d_silu_forward), its backward
// against a float64 reference (itself checked by central differences), and the decode steps against
// the full-sequence kernels: stepping token by token equals the forward over the sequence; fp32, bf16 and
// fp16. Outputs are poisoned with NaN first. Skipped when no GPU is present.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <vector>

#include "ops/cpu/ops.h"
#include "cuda_test_util.h"
#include "ops/cuda/check.h"
#include "ops/cuda/conv1d.h"

namespace {

using mamba::cuda::DType;
using namespace mamba::cuda::test;

// ‖out − ref‖ / ‖ref‖; NaN (unwritten) counts as failure.
template <typename R>
double rel_err(const std::vector<float>& out, const std::vector<R>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    if (!std::isfinite(out[i])) return INFINITY;
    num += (out[i] - static_cast<double>(ref[i])) * (out[i] - static_cast<double>(ref[i]));
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

class CudaConv : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  }
};

struct ConvData {
  int B, L, D, K;
  std::vector<float> x, w, bias, tail, dout;
};

ConvData random_conv(int B, int L, int D, int K, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  ConvData c{B, L, D, K, {}, {}, {}, {}, {}};
  auto fill = [&](std::vector<float>& v, size_t n, float scale) {
    v.resize(n);
    for (auto& e : v) e = scale * normal(rng);
  };
  fill(c.x, static_cast<size_t>(B) * L * D, 1.0f);
  fill(c.w, static_cast<size_t>(D) * K, 0.5f);
  fill(c.bias, D, 0.5f);
  fill(c.tail, static_cast<size_t>(B) * (K - 1) * D, 1.0f);
  fill(c.dout, static_cast<size_t>(B) * L * D, 1.0f);
  return c;
}

// float64: out, and the gradients of Σ dout·out.
struct ConvRef {
  std::vector<double> out, dx, dw, db, dtail;
};
ConvRef conv_reference(const ConvData& c, bool with_tail) {
  const int B = c.B, L = c.L, D = c.D, K = c.K;
  ConvRef r;
  r.out.assign(static_cast<size_t>(B) * L * D, 0), r.dx.assign(r.out.size(), 0);
  r.dw.assign(static_cast<size_t>(D) * K, 0), r.db.assign(D, 0), r.dtail.assign(static_cast<size_t>(B) * (K - 1) * D, 0);
  auto in = [&](int b, int s, int d) -> double {
    if (s >= 0) return c.x[(static_cast<size_t>(b) * L + s) * D + d];
    return with_tail ? c.tail[(static_cast<size_t>(b) * (K - 1) + s + K - 1) * D + d] : 0.0;
  };
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < L; t++) {
      for (int d = 0; d < D; d++) {
        double a = c.bias[d];
        for (int k = 0; k < K; k++) a += c.w[static_cast<size_t>(d) * K + k] * in(b, t - K + 1 + k, d);
        const double sg = 1 / (1 + std::exp(-a));
        const size_t i = (static_cast<size_t>(b) * L + t) * D + d;
        r.out[i] = a * sg;
        const double g = c.dout[i] * sg * (1 + a * (1 - sg));
        r.db[d] += g;
        for (int k = 0; k < K; k++) {
          const int s = t - K + 1 + k;
          r.dw[static_cast<size_t>(d) * K + k] += g * in(b, s, d);
          const double gx = g * c.w[static_cast<size_t>(d) * K + k];
          if (s >= 0) r.dx[(static_cast<size_t>(b) * L + s) * D + d] += gx;
          else r.dtail[(static_cast<size_t>(b) * (K - 1) + s + K - 1) * D + d] += gx;
        }
      }
    }
  }
  return r;
}

TEST(ConvReference, BackwardMatchesFiniteDifferences) {
  ConvData c = random_conv(2, 5, 3, 4, 11);
  const ConvRef r = conv_reference(c, true);
  auto loss = [&] {
    const ConvRef q = conv_reference(c, true);
    double l = 0;
    for (size_t i = 0; i < q.out.size(); i++) l += q.out[i] * c.dout[i];
    return l;
  };
  auto check = [&](std::vector<float>& v, const std::vector<double>& grad, const char* name) {
    for (size_t i = 0; i < v.size(); i++) {
      const float keep = v[i], vp = keep + 1e-2f, vm = keep - 1e-2f;
      v[i] = vp;
      const double lp = loss();
      v[i] = vm;
      const double lm = loss();
      v[i] = keep;
      const double num = (lp - lm) / (static_cast<double>(vp) - vm);
      EXPECT_NEAR(num, grad[i], 1e-4 * std::max(1.0, std::abs(num))) << name << "[" << i << "]";
    }
  };
  check(c.x, r.dx, "x");
  check(c.w, r.dw, "w");
  check(c.bias, r.db, "bias");
  check(c.tail, r.dtail, "tail");
}

void run_conv_case(int B, int L, int D, int K, bool bias, bool tail, DType dtype, uint32_t seed) {
  std::ostringstream name;
  name << "conv B=" << B << " L=" << L << " D=" << D << " K=" << K << (bias ? " bias" : "") << (tail ? " tail" : "")
       << " " << dtype_label(dtype);
  SCOPED_TRACE(name.str());
  ConvData c = random_conv(B, L, D, K, seed);
  if (!bias) std::fill(c.bias.begin(), c.bias.end(), 0.0f);
  if (!tail) std::fill(c.tail.begin(), c.tail.end(), 0.0f);
  const size_t X = static_cast<size_t>(B) * L * D, T = static_cast<size_t>(B) * (K - 1) * D;
  const size_t es = dtype == DType::F32 ? 4 : 2;
  DeviceArray x(c.x, dtype), dout(c.dout, dtype), w(c.w, DType::F32), bb(c.bias, DType::F32), tl(c.tail, DType::F32);
  DeviceArray out(X * es), tail_out(T * 4), dx(X * es), dtail(T * 4);
  std::vector<float> zeros_w(c.w.size(), 0.0f), zeros_b(D, 0.0f);
  DeviceArray dw(zeros_w, DType::F32), db(zeros_b, DType::F32);

  mamba::cuda::Conv1dParams p;
  p.batch = B, p.seqlen = L, p.dim = D, p.width = K, p.dtype = dtype;
  p.out = out.ptr, p.out_stride = D, p.x = x.ptr, p.x_stride = D, p.weight = w.as<float>(), p.bias = bias ? bb.as<float>() : nullptr;
  p.tail_in = tail ? tl.as<float>() : nullptr, p.tail_out = tail_out.as<float>();
  mamba::cuda::conv1d_silu_fwd(p, nullptr);
  mamba::cuda::Conv1dBwdParams q;
  q.fwd = p, q.dout = dout.ptr, q.dout_stride = D, q.dx = dx.ptr, q.dx_stride = D, q.dweight = dw.as<float>();
  q.dbias = bias ? db.as<float>() : nullptr, q.dtail_in = dtail.as<float>();
  DeviceArray ws(mamba::cuda::conv1d_silu_bwd_workspace(q));
  mamba::cuda::conv1d_silu_bwd(q, ws.ptr, nullptr);
  MAMBA_CUDA_CHECK(cudaDeviceSynchronize());

  // The oracle: CPU fp32 forward (tail updated in place).
  std::vector<float> out_ref(X), tail_ref = c.tail;
  mamba::cpu::conv1d_silu_forward(out_ref.data(), D, tail_ref.data(), c.x.data(), D, c.w.data(), bias ? c.bias.data() : nullptr,
                                  B, L, D, K);
  const ConvRef r = conv_reference(c, true);
  const double tol = dtype != DType::F32 ? 2e-2 : 1e-5, gtol = dtype != DType::F32 ? 2e-2 : 1e-5;
  const double e_out = rel_err(download(out.ptr, X, dtype), out_ref), e_tail = rel_err(download(tail_out.ptr, T, DType::F32), tail_ref);
  const double e_dx = rel_err(download(dx.ptr, X, dtype), r.dx), e_dw = rel_err(download(dw.ptr, c.w.size(), DType::F32), r.dw);
  const double e_dtail = rel_err(download(dtail.ptr, T, DType::F32), r.dtail);
  EXPECT_LE(e_out, tol);
  EXPECT_LE(e_tail, 1e-7);
  EXPECT_LE(e_dx, gtol);
  EXPECT_LE(e_dw, 1e-4);
  EXPECT_LE(e_dtail, 1e-4);
  double e_db = 0;
  if (bias) {
    e_db = rel_err(download(db.ptr, D, DType::F32), r.db);
    EXPECT_LE(e_db, 1e-4);
  }
  std::printf("  %-42s out %.1e tail %.1e dx %.1e dw %.1e db %.1e dtail %.1e\n", name.str().c_str(), e_out, e_tail,
              e_dx, e_dw, e_db, e_dtail);
}

TEST_F(CudaConv, ForwardBackward) {
  uint32_t seed = 1;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (int L : {1, 2, 7, 64, 65, 300}) {
      run_conv_case(3, L, 130, 4, true, true, dt, seed++);
      run_conv_case(1, L, 5, 2, false, L % 2, dt, seed++);
    }
    run_conv_case(2, 100, 64, 1, true, false, dt, seed++);
    run_conv_case(2, 100, 64, 8, true, true, dt, seed++);
  }
}

// Decode: the conv step and the scan step, one token at a time, equal the sequence kernels (in every
// dtype: the same fp32 arithmetic, so 16-bit outputs differ at most by their rounding).
void run_decode_case(DType dtype, int N) {
  SCOPED_TRACE(std::string(dtype_label(dtype)) + " N " + std::to_string(N));
  const int B = 3, L = 9, D = 70, K = 4;
  const size_t es = dtype == DType::F32 ? 4 : 2;
  auto at = [&](const DeviceArray& b, size_t elems) { return static_cast<char*>(b.ptr) + elems * es; };
  std::mt19937 rng(77);
  auto vec = [&](size_t n, float lo, float hi) {
    std::vector<float> v(n);
    for (auto& e : v) e = std::uniform_real_distribution<float>(lo, hi)(rng);
    return v;
  };
  // Conv.
  std::vector<float> x = vec(static_cast<size_t>(B) * L * D, -2, 2), w = vec(static_cast<size_t>(D) * K, -1, 1),
                     bias = vec(D, -0.5f, 0.5f), tail = vec(static_cast<size_t>(B) * (K - 1) * D, -1, 1);
  DeviceArray dx(x, dtype), dw(w, DType::F32), dbias(bias, DType::F32), dtail(tail, DType::F32);
  DeviceArray seq_out(x.size() * es), seq_tail(tail.size() * 4), step_out(static_cast<size_t>(B) * D * es);
  mamba::cuda::Conv1dParams p;
  p.batch = B, p.seqlen = L, p.dim = D, p.width = K, p.dtype = dtype;
  p.out = seq_out.ptr, p.out_stride = D, p.x = dx.ptr, p.x_stride = D;
  p.weight = dw.as<float>(), p.bias = dbias.as<float>(), p.tail_in = dtail.as<float>(), p.tail_out = seq_tail.as<float>();
  mamba::cuda::conv1d_silu_fwd(p, nullptr);
  std::vector<float> seq = download(seq_out.ptr, x.size(), dtype), stepped(x.size());
  for (int t = 0; t < L; t++) {  // dtail is updated in place by the steps
    mamba::cuda::conv1d_silu_step(step_out.ptr, dtail.as<float>(), at(dx, static_cast<size_t>(t) * D), static_cast<int64_t>(L) * D,
                                  dw.as<float>(), dbias.as<float>(), B, D, K, dtype, nullptr);
    const std::vector<float> o = download(step_out.ptr, static_cast<size_t>(B) * D, dtype);
    for (int b = 0; b < B; b++) std::copy(o.begin() + b * D, o.begin() + (b + 1) * D, stepped.begin() + (static_cast<size_t>(b) * L + t) * D);
  }
  EXPECT_LE(rel_err(stepped, seq), 1e-6);
  EXPECT_LE(rel_err(download(dtail.ptr, tail.size(), DType::F32), download(seq_tail.ptr, tail.size(), DType::F32)), 1e-7);

  // Scan.
  std::vector<float> u = vec(static_cast<size_t>(B) * L * D, -2, 2), delta = vec(u.size(), -3, 1), z = vec(u.size(), -2, 2),
                     Bm = vec(static_cast<size_t>(B) * L * N, -1, 1), Cm = vec(Bm.size(), -1, 1),
                     A = vec(static_cast<size_t>(D) * N, -4, -0.3f), Dk = vec(D, 0.5f, 1.5f), db2 = vec(D, -2, 0),
                     h0 = vec(static_cast<size_t>(B) * D * N, -1, 1);
  DeviceArray du(u, dtype), ddelta(delta, dtype), dz(z, dtype), dB(Bm, dtype), dC(Cm, dtype), dA(A, DType::F32),
      dD(Dk, DType::F32), ddb(db2, DType::F32), dh(h0, DType::F32);
  DeviceArray y(u.size() * es), hL(h0.size() * 4), ystep(static_cast<size_t>(B) * D * es);
  mamba::cuda::ScanParams s;
  s.batch = B, s.seqlen = L, s.dim = D, s.dstate = N, s.dtype = dtype;
  s.y = y.ptr, s.y_stride = D, s.u = du.ptr, s.u_stride = D;
  s.delta = ddelta.ptr, s.delta_stride = D, s.A = dA.as<float>(), s.Bm = dB.ptr, s.B_stride = N, s.Cm = dC.ptr, s.C_stride = N;
  s.D = dD.as<float>(), s.z = dz.ptr, s.z_stride = D, s.delta_bias = ddb.as<float>(), s.state_in = dh.as<float>(), s.state_out = hL.as<float>();
  DeviceArray ws(mamba::cuda::selective_scan_fwd_workspace(s));
  mamba::cuda::selective_scan_fwd(s, ws.ptr, nullptr);
  std::vector<float> yseq = download(y.ptr, u.size(), dtype), ystepped(u.size());
  for (int t = 0; t < L; t++) {
    mamba::cuda::ScanParams one = s;
    one.seqlen = 1;
    one.y = ystep.ptr, one.y_stride = D;
    one.u = at(du, static_cast<size_t>(t) * D), one.u_stride = static_cast<int64_t>(L) * D;
    one.delta = at(ddelta, static_cast<size_t>(t) * D), one.delta_stride = static_cast<int64_t>(L) * D;
    one.z = at(dz, static_cast<size_t>(t) * D), one.z_stride = static_cast<int64_t>(L) * D;
    one.Bm = at(dB, static_cast<size_t>(t) * N), one.B_stride = static_cast<int64_t>(L) * N;
    one.Cm = at(dC, static_cast<size_t>(t) * N), one.C_stride = static_cast<int64_t>(L) * N;
    mamba::cuda::selective_scan_step(one, dh.as<float>(), nullptr);
    const std::vector<float> o = download(ystep.ptr, static_cast<size_t>(B) * D, dtype);
    for (int b = 0; b < B; b++) std::copy(o.begin() + b * D, o.begin() + (b + 1) * D, ystepped.begin() + (static_cast<size_t>(b) * L + t) * D);
  }
  const double ey = rel_err(ystepped, yseq), eh = rel_err(download(dh.ptr, h0.size(), DType::F32), download(hL.ptr, h0.size(), DType::F32));
  EXPECT_LE(ey, dtype == DType::F32 ? 1e-5 : 2e-3);  // 16-bit: an output may round the other way
  EXPECT_LE(eh, 1e-5);
  std::printf("  decode steps vs sequence (%s, N %d): conv %.1e, scan y %.1e, state %.1e\n", dtype_label(dtype), N,
              rel_err(stepped, seq), ey, eh);
}

TEST_F(CudaConv, DecodeStepsEqualSequence) {
  // N = 16, 32, 64: four states a lane; 3 and 40: one a lane (40 / 4 is no power of two).
  for (int N : {16, 32, 64, 3, 40}) {
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) run_decode_case(dt, N);
  }
}

}  // namespace

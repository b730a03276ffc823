// The CUDA selective scan against the CPU fp32 oracle (mamba::cpu::selective_scan_forward) on fresh
// random inputs: lengths 1, 7, 2048, 2049, 65537 and 2^22 (rows strided so that offsets pass 2^32), N in
// {1, 4, 16, 64}, optional z, D, Δ bias and initial state, every (channels per thread, states per
// thread, segments) split, fp32, bf16 and fp16.
// Outputs are poisoned with NaN first, so an unwritten element fails. Skipped when no GPU is present (CI
// builds this without one).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops/cpu/ops.h"
#include "cuda_test_util.h"
#include "ops/cuda/check.h"
#include "ops/cuda/scan.h"

namespace {

using mamba::cuda::DType;
using namespace mamba::cuda::test;

struct Errors {
  double rel_l2 = 0, max_abs = 0, ref_max = 0;
  size_t nonfinite = 0;
};

// ‖out − ref‖ / ‖ref‖ over the elements the op writes, and a count of NaN/Inf (unwritten) elements.
Errors compare(const std::vector<float>& out, const std::vector<float>& ref) {
  Errors e;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    if (!std::isfinite(out[i])) {
      e.nonfinite++;
      continue;
    }
    const double diff = static_cast<double>(out[i]) - ref[i];
    num += diff * diff;
    den += static_cast<double>(ref[i]) * ref[i];
    e.max_abs = std::max(e.max_abs, std::abs(diff));
    e.ref_max = std::max(e.ref_max, static_cast<double>(std::abs(ref[i])));
  }
  e.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return e;
}

struct Case {
  int B, L, D, N;
  bool z, skip, bias, state_in;
  DType dtype;
  mamba::cuda::ScanTuning tuning{};
  bool softplus = true;
  bool chunk_states = false;
  bool aligned = false;  // B and C at 16-byte aligned columns (else at column 3, as an odd dt_rank puts them)
  // Run the blocked kernel a second time element by element (ScanTuning::vector_rows = −1) and require
  // bitwise the same y, state and chunk states.
  bool vector_twin = false;

  std::string name() const {
    std::ostringstream s;
    s << "B=" << B << " L=" << L << " D=" << D << " N=" << N << (z ? " z" : "") << (skip ? " D" : "")
      << (bias ? " bias" : "") << (state_in ? " h0" : "") << (softplus ? "" : " no-softplus")
      << (aligned ? " aligned" : "") << (vector_twin ? " twin" : "")
      << " " << dtype_label(dtype) << " kC=" << tuning.channels_per_thread << " kG=" << tuning.states_per_thread
      << " S=" << tuning.segments << (tuning.one_state_per_lane == 1 ? " lanes" : "");
    return s.str();
  }
};

void run_case(const Case& c, uint32_t seed) {
  SCOPED_TRACE(c.name());
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto uniform = [&](float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); };
  const int64_t rows = static_cast<int64_t>(c.B) * c.L;
  const int B = c.B, L = c.L, D = c.D, N = c.N;

  // u and z are the two halves of one (B, L, 2D) buffer, as in_proj writes them; B and C are column
  // slices of one (B, L, 3 + 2N) buffer, as x_proj writes them (3 columns standing in for Δ's rank).
  const int bc_col = c.aligned ? 8 : 3;
  const int64_t xz_stride = 2 * D, bc_stride = bc_col + 2 * N;
  std::vector<float> xz(rows * xz_stride), delta(rows * D), bc(rows * bc_stride);
  for (auto& v : xz) v = normal(rng);
  for (auto& v : delta) v = c.softplus ? uniform(-3.0f, 1.0f) : uniform(0.0f, 0.2f);
  for (auto& v : bc) v = normal(rng);
  std::vector<float> A(static_cast<size_t>(D) * N), Dskip(D), dbias(D), h0(static_cast<size_t>(B) * D * N);
  for (auto& v : A) v = -std::exp(uniform(-1.0f, 2.8f));
  for (auto& v : Dskip) v = uniform(0.5f, 1.5f);
  for (auto& v : dbias) v = c.softplus ? uniform(-2.0f, 0.0f) : uniform(0.0f, 0.1f);
  for (auto& v : h0) v = normal(rng);

  DeviceArray d_xz(xz, c.dtype), d_delta(delta, c.dtype), d_bc(bc, c.dtype);
  DeviceArray d_A(A, DType::F32), d_D(Dskip, DType::F32), d_bias(dbias, DType::F32), d_h0(h0, DType::F32);
  const size_t esize = dtype_size(c.dtype);
  DeviceArray d_y(rows * D * esize), d_hL(h0.size() * 4);
  const int64_t chunks = mamba::cuda::state_chunks(L);
  DeviceArray d_chunks(c.chunk_states ? B * chunks * D * N * 4 : 0);

  mamba::cuda::ScanParams p;
  p.batch = B, p.seqlen = L, p.dim = D, p.dstate = N, p.dtype = c.dtype;
  p.y = d_y.ptr, p.y_stride = D;
  p.u = d_xz.ptr, p.u_stride = xz_stride;
  p.delta = d_delta.ptr, p.delta_stride = D;
  p.A = d_A.as<float>();
  p.Bm = static_cast<char*>(d_bc.ptr) + bc_col * esize, p.B_stride = bc_stride;
  p.Cm = static_cast<char*>(d_bc.ptr) + (bc_col + N) * esize, p.C_stride = bc_stride;
  p.D = c.skip ? d_D.as<float>() : nullptr;
  p.z = c.z ? static_cast<char*>(d_xz.ptr) + D * esize : nullptr, p.z_stride = xz_stride;
  p.delta_bias = c.bias ? d_bias.as<float>() : nullptr;
  p.delta_softplus = c.softplus;
  p.state_in = c.state_in ? d_h0.as<float>() : nullptr;
  p.state_out = d_hL.as<float>();
  p.chunk_states = c.chunk_states ? d_chunks.as<float>() : nullptr;
  const size_t ws_bytes = mamba::cuda::selective_scan_fwd_workspace(p, c.tuning);
  DeviceArray d_ws(ws_bytes);
  mamba::cuda::selective_scan_fwd(p, d_ws.ptr, nullptr, c.tuning);
  MAMBA_CUDA_CHECK(cudaDeviceSynchronize());

  // The oracle, on the same (rounded) inputs, one kStateChunk at a time so that it also gives the
  // chunk-boundary states.
  std::vector<float> y_ref(rows * D), hL_ref(h0.size()), chunks_ref(c.chunk_states ? B * chunks * D * N : 0);
  for (int b = 0; b < B; b++) {
    std::vector<float> h(c.state_in ? std::vector<float>(h0.begin() + static_cast<int64_t>(b) * D * N,
                                                         h0.begin() + static_cast<int64_t>(b + 1) * D * N)
                                    : std::vector<float>(static_cast<size_t>(D) * N, 0.0f));
    for (int64_t k = 0; k * mamba::cuda::kStateChunk < std::max(L, 1); k++) {
      const int64_t t0 = k * mamba::cuda::kStateChunk, row = static_cast<int64_t>(b) * L + t0;
      if (c.chunk_states) std::copy(h.begin(), h.end(), chunks_ref.begin() + ((b * chunks + k) * D) * N);
      mamba::ScanParams r;
      r.batch = 1, r.seqlen = static_cast<int>(std::min<int64_t>(mamba::cuda::kStateChunk, L - t0)), r.dim = D,
      r.dstate = N;
      r.y = y_ref.data() + row * D, r.y_stride = D;
      r.u = xz.data() + row * xz_stride, r.u_stride = xz_stride;
      r.delta = delta.data() + row * D, r.delta_stride = D;
      r.A = A.data();
      r.Bm = bc.data() + row * bc_stride + bc_col, r.Cm = bc.data() + row * bc_stride + bc_col + N, r.B_stride = r.C_stride = bc_stride;
      r.D = p.D ? Dskip.data() : nullptr;
      r.z = c.z ? xz.data() + row * xz_stride + D : nullptr, r.z_stride = xz_stride;
      r.delta_bias = c.bias ? dbias.data() : nullptr;
      r.delta_softplus = c.softplus;
      r.state_in = h.data(), r.state_out = h.data();
      if (r.seqlen > 0) mamba::cpu::selective_scan_forward(r);
    }
    std::copy(h.begin(), h.end(), hL_ref.begin() + static_cast<int64_t>(b) * D * N);
  }

  const bool half = c.dtype != DType::F32;  // bf16 or fp16 inputs and output
  const double tol = half ? 2e-2 : 1e-5;
  const Errors ey = compare(download(d_y.ptr, y_ref.size(), c.dtype), y_ref);
  const Errors eh = compare(download(d_hL.ptr, hL_ref.size(), DType::F32), hL_ref);
  EXPECT_EQ(ey.nonfinite, 0u) << "y elements left unwritten or not finite";
  EXPECT_EQ(eh.nonfinite, 0u);
  EXPECT_LE(ey.rel_l2, tol) << "y max abs err " << ey.max_abs << " (max |ref| " << ey.ref_max << ")";
  // The state is fp32 in every dtype; with 16-bit inputs only the output rounding differs.
  EXPECT_LE(eh.rel_l2, half ? 1e-4 : 1e-5) << "state max abs err " << eh.max_abs;
  if (c.chunk_states) {
    const Errors ec = compare(download(d_chunks.ptr, chunks_ref.size(), DType::F32), chunks_ref);
    EXPECT_EQ(ec.nonfinite, 0u);
    EXPECT_LE(ec.rel_l2, half ? 1e-4 : 1e-5);
  }
  if (c.vector_twin) {
    mamba::cuda::ScanTuning elementwise = c.tuning;
    elementwise.vector_rows = -1;
    const size_t y_bytes = rows * D * esize, h_bytes = h0.size() * 4, chunk_bytes = chunks_ref.size() * 4;
    DeviceArray d_y2(y_bytes), d_hL2(h_bytes), d_chunks2(chunk_bytes);
    p.y = d_y2.ptr, p.state_out = d_hL2.as<float>();
    p.chunk_states = c.chunk_states ? d_chunks2.as<float>() : nullptr;
    DeviceArray d_ws2(mamba::cuda::selective_scan_fwd_workspace(p, elementwise));
    mamba::cuda::selective_scan_fwd(p, d_ws2.ptr, nullptr, elementwise);
    MAMBA_CUDA_CHECK(cudaDeviceSynchronize());
    auto same = [](const DeviceArray& a, const DeviceArray& b, size_t n) {
      std::vector<char> ha(n), hb(n);
      MAMBA_CUDA_CHECK(cudaMemcpy(ha.data(), a.ptr, n, cudaMemcpyDeviceToHost));
      MAMBA_CUDA_CHECK(cudaMemcpy(hb.data(), b.ptr, n, cudaMemcpyDeviceToHost));
      return ha == hb;
    };
    EXPECT_TRUE(same(d_y, d_y2, y_bytes)) << "y differs from the element-wise kernel's";
    EXPECT_TRUE(same(d_hL, d_hL2, h_bytes)) << "the final state differs from the element-wise kernel's";
    if (c.chunk_states) EXPECT_TRUE(same(d_chunks, d_chunks2, chunk_bytes)) << "the chunk states differ";
  }
  std::printf("  %-70s y rel %.2e  h rel %.2e\n", c.name().c_str(), ey.rel_l2, eh.rel_l2);
}

class CudaScan : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(CudaScan, LengthsStatesAndOptions) {
  uint32_t seed = 1;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (int L : {1, 7, 2048, 2049}) {
      for (int N : {1, 4, 16, 64}) {
        const bool odd = (L + N) % 2;
        run_case({2, L, 48 + 16 * odd + 3 * (N == 4), N, odd, !odd, true, N != 4, dt}, seed++);
        run_case({1, L, 33, N, !odd, odd, N == 4, true, dt}, seed++);
      }
    }
  }
}

TEST_F(CudaScan, LongSequence) {
  uint32_t seed = 100;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    run_case({1, 65537, 64, 16, true, true, true, true, dt}, seed++);
    run_case({2, 65537, 40, 4, false, true, true, false, dt, {4, 0}}, seed++);
    // Aligned rows and few channels: the dispatcher's one-state-per-lane kernel.
    Case c{1, 65537, 64, 16, true, true, true, true, dt};
    c.aligned = true, c.chunk_states = true;
    run_case(c, seed++);
  }
}

// Every compiled split (channels and states per thread; N that fills it or leaves it part empty), one and
// several segments, with the chunk-boundary states for the backward.
TEST_F(CudaScan, EverySplit) {
  uint32_t seed = 200;
  struct Split {
    int N, kG, kC;
  };
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (Split sp : {Split{1, 1, 1}, Split{4, 4, 1}, Split{16, 1, 1}, Split{16, 2, 1}, Split{16, 4, 1}, Split{16, 8, 1},
                     Split{16, 16, 1}, Split{64, 4, 1}, Split{64, 16, 1}, Split{200, 16, 1}, Split{16, 2, 2},
                     Split{16, 4, 2}, Split{12, 4, 2}, Split{16, 8, 2}, Split{16, 2, 4}, Split{5, 2, 4},
                     Split{16, 4, 4}}) {
      for (int S : {1, 3, 7}) {
        Case c{3, 2049, 70, sp.N, true, true, true, true, dt, {sp.kG, S, sp.kC}};
        c.chunk_states = true;
        run_case(c, seed++);
      }
    }
  }
}

// Aligned rows, where the blocked kernel moves u, Δ, z, y, B and C in 16-byte vectors (16-bit dtypes;
// fp32 stays element-wise, and the twin check holds trivially): every split that vectorizes, one and
// several segments, a partial last tile (L = 2049) and a part-empty last block of channels (D = 72),
// bitwise equal to the element-wise kernel and within tolerance of the oracle.
TEST_F(CudaScan, VectorRowsMatchElementwise) {
  uint32_t seed = 400;
  struct Split {
    int N, kG, kC;
  };
  for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
    for (Split sp : {Split{16, 1, 1}, Split{16, 2, 1}, Split{16, 4, 1}, Split{16, 8, 1}, Split{16, 16, 1},
                     Split{64, 16, 1}, Split{16, 2, 2}, Split{16, 4, 2}, Split{16, 8, 2}, Split{16, 2, 4},
                     Split{16, 4, 4}}) {
      for (int S : {1, 3}) {
        const bool odd = seed % 2;
        Case c{3, 2049, odd ? 72 : 64, sp.N, !odd, true, true, odd, dt, {sp.kG, S, sp.kC}};
        c.aligned = true, c.vector_twin = true, c.chunk_states = S == 3;
        run_case(c, seed++);
      }
    }
    // The dispatcher's own choice at a long sequence (segments, the staged Δ read back as vectors).
    Case c{1, 65537, 256, 16, true, true, true, true, dt};
    c.aligned = true, c.vector_twin = true;
    c.tuning.one_state_per_lane = -1;
    run_case(c, seed++);
  }
}

// The one-state-per-lane kernel (N = 16 only): lengths around its 32-step tiles and its 4-tile copy
// pipeline, channel counts that leave its 8-channel blocks part empty (the unaligned path), aligned rows
// (the cp.async path), every option, the chunk states.
TEST_F(CudaScan, OneStatePerLane) {
  uint32_t seed = 300;
  mamba::cuda::ScanTuning lanes{};
  lanes.one_state_per_lane = 1;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (int L : {1, 7, 31, 32, 33, 100, 129, 2049, 65537}) {
      const bool odd = L % 2;
      Case c{L > 4096 ? 1 : 3, L, L > 4096 ? 40 : 70, 16, odd, !odd, true, odd, dt, lanes};
      c.chunk_states = true;
      run_case(c, seed++);
      run_case({2, L, 9, 16, !odd, odd, false, !odd, dt, lanes}, seed++);
      Case a{2, L, L > 4096 ? 32 : 48, 16, !odd, true, true, odd, dt, lanes};
      a.aligned = true, a.chunk_states = odd;
      run_case(a, seed++);
      a.z = !a.z, a.skip = false, a.aligned = true;
      run_case(a, seed++);
    }
    Case c{2, 300, 24, 16, true, true, true, true, dt, lanes};
    c.softplus = false;
    run_case(c, seed++);
  }
}

// The same splits on short sequences, small enough for compute-sanitizer's memcheck and racecheck.
TEST_F(CudaScan, EverySplitSmall) {
  uint32_t seed = 250;
  {
    mamba::cuda::ScanTuning lanes{};
    lanes.one_state_per_lane = 1;
    Case c{2, 77, 70, 16, true, true, true, true, DType::F32, lanes};
    c.chunk_states = true;
    run_case(c, seed++);
    c.D = 24, c.aligned = true;
    run_case(c, seed++);
    c.dtype = DType::BF16, c.L = 200;
    run_case(c, seed++);
  }
  for (int kC : {1, 2, 4}) {
    for (int kG : {2, 4, 8}) {
      for (int S : {1, 3}) {
        Case c{2, 77, 70, 16, true, true, true, true, DType::F32, {kG, S, kC}};
        c.chunk_states = true;
        if (kC * kG <= 16) run_case(c, seed++);
      }
    }
  }
  // 16-byte vectors (aligned rows, bf16), a part-empty last block of channels.
  for (int kG : {4, 8}) {
    for (int S : {1, 3}) {
      Case c{2, 77, 40, 16, true, true, true, true, DType::BF16, {kG, S, 1}};
      c.aligned = true, c.vector_twin = true, c.chunk_states = true;
      run_case(c, seed++);
    }
  }
}

// L = 2^22 with u, Δ, z and y rows 1024 elements apart: offsets reach 2^32, so any 32-bit index
// arithmetic in the kernels would read or write the wrong rows. 32 GB of device memory (skipped when
// less is free); only the L × D elements in use are copied, with cudaMemcpy2D.
TEST_F(CudaScan, OffsetsBeyond32Bits) {
  const int L = 1 << 22, D = 4, N = 4;
  const int64_t stride = 1024;
  const size_t big = static_cast<size_t>(L) * stride * 2;  // bf16 bytes of one strided array
  size_t free_bytes = 0, total_bytes = 0;
  MAMBA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (free_bytes < 4 * big + (size_t{1} << 30)) GTEST_SKIP() << "needs 33 GB of free device memory";
  std::mt19937 rng(400);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> dt_dist(-3.0f, 1.0f);
  const int64_t n = static_cast<int64_t>(L) * D;
  std::vector<float> u(n), delta(n), z(n), Bm(static_cast<size_t>(L) * N), Cm(static_cast<size_t>(L) * N);
  std::vector<float> A(D * N), Dskip(D, 1.0f), dbias(D, -1.0f), h0(D * N);
  for (auto* v : {&u, &z, &Bm, &Cm, &h0}) {
    for (auto& x : *v) x = normal(rng);
  }
  for (auto& x : delta) x = dt_dist(rng);
  for (int i = 0; i < D * N; i++) A[i] = -1.0f - static_cast<float>(i % N);
  // Strided device copies of u, Δ, z (rounded to bf16 on the host too, as DeviceArray does).
  auto strided = [&](std::vector<float>& host) {
    const std::vector<uint16_t> bits = round_to(host, DType::BF16);
    DeviceArray d(big);
    MAMBA_CUDA_CHECK(cudaMemcpy2D(d.ptr, stride * 2, bits.data(), D * 2, D * 2, L, cudaMemcpyHostToDevice));
    return d;
  };
  DeviceArray d_u = strided(u), d_delta = strided(delta), d_z = strided(z), d_y(big);
  DeviceArray d_B(Bm, DType::BF16), d_C(Cm, DType::BF16), d_A(A, DType::F32), d_D(Dskip, DType::F32);
  DeviceArray d_bias(dbias, DType::F32), d_h0(h0, DType::F32), d_hL(h0.size() * 4);

  mamba::cuda::ScanParams p;
  p.batch = 1, p.seqlen = L, p.dim = D, p.dstate = N, p.dtype = DType::BF16;
  p.y = d_y.ptr, p.y_stride = stride, p.u = d_u.ptr, p.u_stride = stride;
  p.delta = d_delta.ptr, p.delta_stride = stride, p.z = d_z.ptr, p.z_stride = stride;
  p.A = d_A.as<float>(), p.Bm = d_B.ptr, p.B_stride = N, p.Cm = d_C.ptr, p.C_stride = N;
  p.D = d_D.as<float>(), p.delta_bias = d_bias.as<float>(), p.delta_softplus = true;
  p.state_in = d_h0.as<float>(), p.state_out = d_hL.as<float>();
  DeviceArray d_ws(mamba::cuda::selective_scan_fwd_workspace(p));
  mamba::cuda::selective_scan_fwd(p, d_ws.ptr, nullptr);
  MAMBA_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> y_bits(n);
  MAMBA_CUDA_CHECK(cudaMemcpy2D(y_bits.data(), D * 2, d_y.ptr, stride * 2, D * 2, L, cudaMemcpyDeviceToHost));
  std::vector<float> y(n);
  for (int64_t i = 0; i < n; i++) y[i] = bf16_value(y_bits[i]);

  std::vector<float> y_ref(n), h = h0;
  mamba::ScanParams r;
  r.batch = 1, r.seqlen = L, r.dim = D, r.dstate = N;
  r.y = y_ref.data(), r.y_stride = D, r.u = u.data(), r.u_stride = D, r.delta = delta.data(), r.delta_stride = D;
  r.A = A.data(), r.Bm = Bm.data(), r.Cm = Cm.data(), r.B_stride = r.C_stride = N, r.D = Dskip.data();
  r.z = z.data(), r.z_stride = D, r.delta_bias = dbias.data(), r.delta_softplus = true;
  r.state_in = h.data(), r.state_out = h.data();
  mamba::cpu::selective_scan_forward(r);
  const Errors ey = compare(y, y_ref);
  const Errors eh = compare(download(d_hL.ptr, h.size(), DType::F32), h);
  EXPECT_EQ(ey.nonfinite, 0u);
  EXPECT_LE(ey.rel_l2, 2e-2) << "y max abs err " << ey.max_abs;
  EXPECT_LE(eh.rel_l2, 1e-4) << "state max abs err " << eh.max_abs;
  std::printf("  L=2^22 strided rows (offsets to 2^32) bf16  y rel %.2e  h rel %.2e\n", ey.rel_l2, eh.rel_l2);
}

TEST_F(CudaScan, NoSoftplusAndLargeState) {
  Case c{2, 300, 32, 16, true, true, true, true, DType::F32};
  c.softplus = false;
  run_case(c, 300);
  run_case({1, 513, 16, 200, true, true, true, true, DType::F32}, 301);
}

// ---- backward ----
// A float64 reference written from the equations (scan_bwd_kernel.cuh's header lists them), checked by
// central differences below, then the GPU backward against it.

struct ScanData {
  int B, L, D, N;
  bool softplus = true;
  std::vector<float> u, delta, z, Bm, Cm, A, Dskip, bias, h0, dy, dhL;  // dense (B, L, X) layouts
  bool has_z, has_D, has_bias, has_h0, has_dhL;
};

struct ScanGrads {
  std::vector<double> y, du, ddelta, dz, dB, dC, dA, dD, dbias, dh0;
};

double softplus_d(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }
double sigmoid_d(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// y and every gradient of loss = Σ dy·y + Σ dhL·h_L.
ScanGrads reference_backward(const ScanData& s) {
  const int B = s.B, L = s.L, D = s.D, N = s.N;
  ScanGrads g;
  const size_t X = static_cast<size_t>(B) * L * D, BC = static_cast<size_t>(B) * L * N;
  g.y.assign(X, 0), g.du.assign(X, 0), g.ddelta.assign(X, 0), g.dz.assign(X, 0);
  g.dB.assign(BC, 0), g.dC.assign(BC, 0), g.dA.assign(static_cast<size_t>(D) * N, 0);
  g.dD.assign(D, 0), g.dbias.assign(D, 0), g.dh0.assign(static_cast<size_t>(B) * D * N, 0);
  std::vector<double> H((L + 1) * static_cast<size_t>(N)), dtv(L), out(L), dh(N);
  for (int b = 0; b < B; b++) {
    for (int d = 0; d < D; d++) {
      for (int n = 0; n < N; n++) H[n] = s.has_h0 ? s.h0[(static_cast<size_t>(b) * D + d) * N + n] : 0.0;
      for (int t = 0; t < L; t++) {
        const size_t r = static_cast<size_t>(b) * L + t, x = r * D + d;
        const double pre = s.delta[x] + (s.has_bias ? s.bias[d] : 0.0);
        const double dt = s.softplus ? softplus_d(pre) : pre;
        dtv[t] = dt;
        double acc = 0;
        for (int n = 0; n < N; n++) {
          const double e = std::exp(dt * s.A[static_cast<size_t>(d) * N + n]);
          H[(t + 1) * N + n] = e * H[t * N + n] + dt * s.Bm[r * N + n] * s.u[x];
          acc += s.Cm[r * N + n] * H[(t + 1) * N + n];
        }
        out[t] = acc + (s.has_D ? s.Dskip[d] * s.u[x] : 0.0);
        g.y[x] = s.has_z ? out[t] * s.z[x] * sigmoid_d(s.z[x]) : out[t];
      }
      for (int n = 0; n < N; n++) dh[n] = s.has_dhL ? s.dhL[(static_cast<size_t>(b) * D + d) * N + n] : 0.0;
      for (int t = L - 1; t >= 0; t--) {
        const size_t r = static_cast<size_t>(b) * L + t, x = r * D + d;
        const double dt = dtv[t], gy = s.dy[x];
        double dout = gy;
        if (s.has_z) {
          const double zz = s.z[x], sg = sigmoid_d(zz);
          dout = gy * zz * sg;
          g.dz[x] = gy * out[t] * sg * (1 + zz * (1 - sg));
        }
        double ddt = 0, dsum = 0;
        for (int n = 0; n < N; n++) {
          const double A = s.A[static_cast<size_t>(d) * N + n], e = std::exp(dt * A);
          dh[n] += dout * s.Cm[r * N + n];
          g.dC[r * N + n] += dout * H[(t + 1) * N + n];
          const double w = dh[n] * e * H[t * N + n];
          ddt += w * A + dh[n] * s.Bm[r * N + n] * s.u[x];
          g.dA[static_cast<size_t>(d) * N + n] += w * dt;
          dsum += dh[n] * s.Bm[r * N + n];
          g.dB[r * N + n] += dh[n] * dt * s.u[x];
          dh[n] *= e;
        }
        g.du[x] = dt * dsum + (s.has_D ? s.Dskip[d] * dout : 0.0);
        const double pre = s.delta[x] + (s.has_bias ? s.bias[d] : 0.0);
        g.ddelta[x] = s.softplus ? ddt * sigmoid_d(pre) : ddt;
        g.dD[d] += dout * s.u[x];
        g.dbias[d] += g.ddelta[x];
      }
      for (int n = 0; n < N; n++) g.dh0[(static_cast<size_t>(b) * D + d) * N + n] = dh[n];
    }
  }
  return g;
}

ScanData random_scan_data(int B, int L, int D, int N, bool opts, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto uniform = [&](float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); };
  ScanData s;
  s.B = B, s.L = L, s.D = D, s.N = N;
  s.has_z = s.has_D = s.has_bias = s.has_h0 = s.has_dhL = opts;
  const size_t X = static_cast<size_t>(B) * L * D, BC = static_cast<size_t>(B) * L * N;
  auto fill = [&](std::vector<float>& v, size_t n, auto gen) {
    v.resize(n);
    for (auto& x : v) x = gen();
  };
  fill(s.u, X, [&] { return normal(rng); });
  fill(s.delta, X, [&] { return uniform(-3.0f, 1.0f); });
  fill(s.z, X, [&] { return normal(rng); });
  fill(s.dy, X, [&] { return normal(rng); });
  fill(s.Bm, BC, [&] { return normal(rng); });
  fill(s.Cm, BC, [&] { return normal(rng); });
  fill(s.A, static_cast<size_t>(D) * N, [&] { return -std::exp(uniform(-1.0f, 2.8f)); });
  fill(s.Dskip, D, [&] { return uniform(0.5f, 1.5f); });
  fill(s.bias, D, [&] { return uniform(-2.0f, 0.0f); });
  fill(s.h0, static_cast<size_t>(B) * D * N, [&] { return normal(rng); });
  fill(s.dhL, static_cast<size_t>(B) * D * N, [&] { return normal(rng); });
  return s;
}

double loss_of(const ScanData& s) {
  const ScanGrads g = reference_backward(s);
  double l = 0;
  for (size_t i = 0; i < g.y.size(); i++) l += g.y[i] * s.dy[i];
  return l;  // the Σ dhL·h_L term is left out: the check below runs with has_dhL = false

}

TEST(ScanReference, BackwardMatchesFiniteDifferences) {
  ScanData s = random_scan_data(2, 6, 3, 4, true, 7);
  s.has_dhL = false;
  const ScanGrads g = reference_backward(s);
  const double eps = 1e-3;
  double worst = 0;
  auto check = [&](std::vector<float>& v, const std::vector<double>& grad, const char* name) {
    for (size_t i = 0; i < v.size(); i += 1 + v.size() / 5) {
      const float keep = v[i];
      const float vp = keep + static_cast<float>(eps), vm = keep - static_cast<float>(eps);
      v[i] = vp;
      const double lp = loss_of(s);
      v[i] = vm;
      const double lm = loss_of(s);
      v[i] = keep;
      const double num = (lp - lm) / (static_cast<double>(vp) - vm), err = std::abs(num - grad[i]) / std::max(1.0, std::abs(num));
      worst = std::max(worst, err);
      EXPECT_LT(err, 1e-4) << name << "[" << i << "] analytic " << grad[i] << " numeric " << num;
    }
  };
  check(s.u, g.du, "u");
  check(s.delta, g.ddelta, "delta");
  check(s.z, g.dz, "z");
  check(s.Bm, g.dB, "B");
  check(s.Cm, g.dC, "C");
  check(s.A, g.dA, "A");
  check(s.Dskip, g.dD, "D");
  check(s.bias, g.dbias, "delta_bias");
  check(s.h0, g.dh0, "h0");
  std::printf("  reference backward vs central differences: worst rel err %.2e\n", worst);
}

// The GPU backward against the reference; twice, to check it is bitwise deterministic.
void run_backward_case(int B, int L, int D, int N, bool opts, DType dtype, uint32_t seed, int segments = 0) {
  std::ostringstream name;
  name << "bwd B=" << B << " L=" << L << " D=" << D << " N=" << N << (opts ? " z D bias h0 dhL" : "")
       << " " << dtype_label(dtype) << " S=" << segments;
  SCOPED_TRACE(name.str());
  ScanData s = random_scan_data(B, L, D, N, opts, seed);
  const size_t X = static_cast<size_t>(B) * L * D, BC = static_cast<size_t>(B) * L * N;
  const size_t esize = dtype_size(dtype);
  DeviceArray d_u(s.u, dtype), d_delta(s.delta, dtype), d_z(s.z, dtype), d_B(s.Bm, dtype), d_C(s.Cm, dtype),
      d_dy(s.dy, dtype);
  DeviceArray d_A(s.A, DType::F32), d_D(s.Dskip, DType::F32), d_bias(s.bias, DType::F32), d_h0(s.h0, DType::F32),
      d_dhL(s.dhL, DType::F32);
  const ScanGrads ref = reference_backward(s);  // on the rounded inputs

  mamba::cuda::ScanParams p;
  p.batch = B, p.seqlen = L, p.dim = D, p.dstate = N, p.dtype = dtype;
  DeviceArray d_y(X * esize), d_chunks(static_cast<size_t>(B) * mamba::cuda::state_chunks(L) * D * N * 4);
  p.y = d_y.ptr, p.y_stride = D, p.u = d_u.ptr, p.u_stride = D, p.delta = d_delta.ptr, p.delta_stride = D;
  p.A = d_A.as<float>(), p.Bm = d_B.ptr, p.B_stride = N, p.Cm = d_C.ptr, p.C_stride = N;
  p.D = opts ? d_D.as<float>() : nullptr;
  p.z = opts ? d_z.ptr : nullptr, p.z_stride = D;
  p.delta_bias = opts ? d_bias.as<float>() : nullptr;
  p.state_in = opts ? d_h0.as<float>() : nullptr;
  p.chunk_states = d_chunks.as<float>();
  DeviceArray d_ws(mamba::cuda::selective_scan_fwd_workspace(p));
  mamba::cuda::selective_scan_fwd(p, d_ws.ptr, nullptr);

  std::vector<std::vector<float>> first;
  for (int rep = 0; rep < 2; rep++) {
    DeviceArray d_du(X * esize), d_ddelta(X * esize), d_dz(X * esize), d_dB(BC * esize), d_dC(BC * esize),
        d_dh0(s.h0.size() * 4);
    std::vector<float> zeros(static_cast<size_t>(D) * N, 0.0f);
    DeviceArray d_dA(zeros, DType::F32), d_dD(zeros, DType::F32), d_dbias(zeros, DType::F32);
    mamba::cuda::ScanBwdParams q;
    q.fwd = p;
    q.dy = d_dy.ptr, q.dy_stride = D, q.dstate_out = opts ? d_dhL.as<float>() : nullptr;
    q.du = d_du.ptr, q.du_stride = D, q.ddelta = d_ddelta.ptr, q.ddelta_stride = D, q.dz = d_dz.ptr, q.dz_stride = D;
    q.dB = d_dB.ptr, q.dB_stride = N, q.dC = d_dC.ptr, q.dC_stride = N;
    q.dA = d_dA.as<float>(), q.dD = d_dD.as<float>(), q.ddelta_bias = d_dbias.as<float>(), q.dstate_in = d_dh0.as<float>();
    DeviceArray d_bws(mamba::cuda::selective_scan_bwd_workspace(q, {0, segments}));
    mamba::cuda::selective_scan_bwd(q, d_bws.ptr, nullptr, {0, segments});
    MAMBA_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<std::vector<float>> got = {download(d_du.ptr, X, dtype),     download(d_ddelta.ptr, X, dtype),
                                           download(d_dB.ptr, BC, dtype),    download(d_dC.ptr, BC, dtype),
                                           download(d_dA.ptr, D * N, DType::F32),
                                           download(d_dh0.ptr, s.h0.size(), DType::F32)};
    if (opts) {
      got.push_back(download(d_dz.ptr, X, dtype));
      got.push_back(download(d_dD.ptr, D, DType::F32));
      got.push_back(download(d_dbias.ptr, D, DType::F32));
    }
    if (rep == 0) {
      first = got;
      const char* names[] = {"du", "ddelta", "dB", "dC", "dA", "dh0", "dz", "dD", "ddelta_bias"};
      const std::vector<double>* refs[] = {&ref.du, &ref.ddelta, &ref.dB, &ref.dC, &ref.dA, &ref.dh0, &ref.dz, &ref.dD, &ref.dbias};
      std::printf("  %-48s", name.str().c_str());
      for (size_t k = 0; k < got.size(); k++) {
        std::vector<float> r(refs[k]->begin(), refs[k]->end());
        const Errors e = compare(got[k], r);
        const bool act = k < 4 || k == 6;  // activation gradients come back in the input dtype
        const double tol = dtype != DType::F32 ? (act ? 2e-2 : 1e-3) : 1e-4;
        EXPECT_EQ(e.nonfinite, 0u) << names[k];
        EXPECT_LE(e.rel_l2, tol) << names[k] << " max abs err " << e.max_abs << " (max |ref| " << e.ref_max << ")";
        std::printf(" %s %.1e", names[k], e.rel_l2);
      }
      std::printf("\n");
    } else {
      for (size_t k = 0; k < got.size(); k++) {
        EXPECT_EQ(std::memcmp(got[k].data(), first[k].data(), got[k].size() * 4), 0) << "run-to-run difference in output " << k;
      }
    }
  }
}

TEST_F(CudaScan, Backward) {
  uint32_t seed = 500;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    run_backward_case(2, 7, 5, 4, true, dt, seed++);
    run_backward_case(1, 1, 3, 1, false, dt, seed++);
    run_backward_case(2, 600, 40, 16, true, dt, seed++);
    run_backward_case(2, 600, 40, 16, true, dt, seed++, 1);
    run_backward_case(2, 600, 40, 16, true, dt, seed++, 3);
    run_backward_case(3, 300, 37, 16, false, dt, seed++);
    run_backward_case(3, 300, 37, 16, false, dt, seed++, 1);
    run_backward_case(1, 2049, 33, 16, true, dt, seed++);
    run_backward_case(2, 300, 24, 64, true, dt, seed++);
    run_backward_case(2, 300, 24, 64, true, dt, seed++, 1);
  }
}

// What the kernels cannot do is refused with std::invalid_argument and a message that says why.
TEST_F(CudaScan, BadArguments) {
  mamba::cuda::ScanParams p;
  p.batch = 1, p.seqlen = 8, p.dim = 4, p.dstate = 65, p.dtype = DType::BF16;
  int dummy = 0;  // never dereferenced: every call below throws before any launch
  p.y = &dummy, p.u = &dummy, p.delta = &dummy, p.A = reinterpret_cast<float*>(&dummy), p.Bm = &dummy, p.Cm = &dummy;
  p.chunk_states = reinterpret_cast<float*>(&dummy);
  mamba::cuda::ScanBwdParams q;
  q.fwd = p;
  q.dy = &dummy, q.du = &dummy, q.ddelta = &dummy, q.dB = &dummy, q.dC = &dummy, q.dA = reinterpret_cast<float*>(&dummy);
  auto expect_throw = [](auto&& call, const char* needle) {
    try {
      call();
      ADD_FAILURE() << "no exception; expected one mentioning '" << needle << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      std::printf("  refused: %s\n", e.what());
    }
  };
  // The backward holds N ≤ 64.
  expect_throw([&] { mamba::cuda::selective_scan_bwd(q, &dummy, nullptr); }, "above 64");
  expect_throw([&] { (void)mamba::cuda::selective_scan_bwd_workspace(q); }, "N = 65");
  // Splits that were not compiled, or make no sense.
  q.fwd.dstate = 16;
  expect_throw([&] { mamba::cuda::selective_scan_bwd(q, &dummy, nullptr, {8, 0}); }, "states_per_thread");
  expect_throw([&] { mamba::cuda::selective_scan_bwd(q, &dummy, nullptr, {0, -1}); }, "segments");
  p.dstate = 64;
  expect_throw([&] { (void)mamba::cuda::selective_scan_fwd_workspace(p, {8, 0}); }, "no compiled split");
  expect_throw([&] { mamba::cuda::selective_scan_fwd(p, &dummy, nullptr, {8, 0}); }, "no compiled split");
  expect_throw([&] { mamba::cuda::selective_scan_fwd(p, &dummy, nullptr, {0, -2}); }, "segments");
  expect_throw([&] { mamba::cuda::selective_scan_fwd(p, &dummy, nullptr, {0, 0, 0, 1}); }, "needs N = 16");
  expect_throw([&] { (void)mamba::cuda::selective_scan_fwd_workspace(p, {0, 0, 0, 2}); }, "one_state_per_lane");
  expect_throw([&] { (void)mamba::cuda::selective_scan_fwd_workspace(p, {0, 0, 0, 0, 1}); }, "vector_rows");
  p.dstate = 16;
  expect_throw([&] { mamba::cuda::selective_scan_fwd(p, &dummy, nullptr, {0, 4, 0, 1}); }, "excludes");
  p.dtype = static_cast<DType>(7);
  expect_throw([&] { mamba::cuda::selective_scan_fwd(p, &dummy, nullptr); }, "dtype");
}

}  // namespace

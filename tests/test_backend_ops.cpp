// Every op of the backend seam (ops/backend.h), on every backend this machine has, in every dtype that
// backend takes, against the CPU's fp32 ops (ops/cpu/ops.h) as the oracle, after ggml's
// test-backend-ops. Inputs are random, shapes awkward (length 1, sizes that are no multiple of a vector or
// a tile, strided rows, optional inputs absent and present), and every input is first rounded to the dtype
// under test so that the oracle and the backend start from the same values: what is left is the backend's
// own arithmetic and its output rounding, bounded per dtype. Backends this machine lacks (no GPU, a build
// without CUDA) are reported as skipped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "ops/backend.h"
#include "ops/cpu/backward.h"
#include "ops/cpu/ops.h"
#include "ops/cpu/optimizer.h"

namespace mamba {
namespace {

// The backends under test, by name: the CPU, and GPU 0 when this build and machine have one.
struct Target {
  std::string name;
  Device device;
};

void PrintTo(const Target& t, std::ostream* os) { *os << t.name; }  // readable test names in ctest's list

std::vector<Target> targets() { return {{"cpu", Device{}}, {"cuda", Device{Device::Kind::Cuda, 0}}}; }

// The backend, or the reason it is not here (for GTEST_SKIP).
Backend* backend_or_skip(const Target& t, std::string* why) {
  try {
    return &Backend::get(t.device);
  } catch (const Error& e) {
    *why = e.what();
    return nullptr;
  }
}

// Largest error each dtype's outputs may have, relative to the largest reference value: the output's own
// rounding (bf16 keeps 8 bits, fp16 11) plus intermediate roundings inside the op, with margin.
double tolerance(DType dtype) {
  switch (dtype) {
    case DType::F32: return 2e-5;
    case DType::F16: return 4e-3;
    case DType::BF16: return 2e-2;
    case DType::I8: return 2e-2;  // int8 weights: tested per kernel path in test_cpu_kernels
  }
  return 0;
}

std::vector<float> randn(size_t n, Rng& rng, double scale = 1.0) {
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(scale * rng.normal());
  return v;
}

// Rounds v to what a `dtype` array holds.
void round_to(std::vector<float>& v, DType dtype) {
  if (dtype == DType::F32) return;
  std::vector<uint16_t> bits(v.size());
  convert_from_f32(bits.data(), v.data(), dtype, v.size());
  convert_to_f32(v.data(), bits.data(), dtype, v.size());
}

// An array on a backend, written from and read back into fp32 host values.
class Array {
 public:
  Array(Backend& b, const std::vector<float>& host, DType dtype)
      : backend_(&b), dtype_(dtype), n_(host.size()), buf_(b, std::max<size_t>(1, host.size()) * dtype_size(dtype)) {
    std::vector<uint8_t> bytes(n_ * dtype_size(dtype));
    convert_from_f32(bytes.data(), host.data(), dtype, n_);
    if (n_) b.upload(buf_.data(), bytes.data(), bytes.size());
  }
  void* data() const { return buf_.data(); }
  float* f32() const { return buf_.as<float>(); }
  std::vector<float> read() const {
    std::vector<uint8_t> bytes(n_ * dtype_size(dtype_));
    if (n_) backend_->download(bytes.data(), buf_.data(), bytes.size());
    std::vector<float> out(n_);
    convert_to_f32(out.data(), bytes.data(), dtype_, n_);
    return out;
  }

 private:
  Backend* backend_;
  DType dtype_;
  size_t n_;
  Buffer buf_;
};

// max |got − want| / max |want| over the elements `keep` selects (all when empty).
double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); i++) {
    if (!std::isfinite(got[i])) return INFINITY;
    diff = std::max(diff, std::abs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::abs(static_cast<double>(want[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

class BackendOps : public ::testing::TestWithParam<std::tuple<Target, DType>> {
 protected:
  void SetUp() override {
    std::string why;
    b_ = backend_or_skip(std::get<0>(GetParam()), &why);
    if (!b_) GTEST_SKIP() << why;
    dtype_ = std::get<1>(GetParam());
  }
  // Whether the backend takes this op with activations in the dtype under test; prints why not.
  bool runs(OpQuery q) {
    q.dtype = dtype_;
    if (q.op == Op::Matmul || q.op == Op::Embedding || q.op == Op::MatmulBwd || q.op == Op::Xent) q.weight = dtype_;
    const std::string why = b_->unsupported(q);
    if (!why.empty()) std::printf("  not run on %s: %s\n", b_->describe().c_str(), why.c_str());
    return why.empty();
  }
  // For the ops that read weights: the activations' dtype that goes with weights of the dtype under test
  // (the same one on a GPU; fp32 on the CPU, which reads bf16 and fp16 weights in their type), or false.
  bool weights_run(Op op, DType* act) {
    for (DType a : {dtype_, DType::F32}) {
      if (b_->unsupported({op, a, dtype_}).empty()) {
        *act = a;
        return true;
      }
    }
    return runs({op});
  }
  // rel_err, printed for the half dtypes: how far each backend's roundings leave it from the fp32 oracle, to
  // compare the backends (the bound is a ceiling; a GPU kernel that rounds more than the CPU's shows here).
  double err(const char* what, const std::vector<float>& got, const std::vector<float>& want) {
    const double e = rel_err(got, want);
    if (dtype_ != DType::F32) {
      std::printf("  error %s %s: %.2e\n", ::testing::UnitTest::GetInstance()->current_test_info()->name(), what, e);
    }
    return e;
  }
  Backend* b_ = nullptr;
  DType dtype_ = DType::F32;
};

TEST_P(BackendOps, Embedding) {
  DType act = dtype_;
  if (!weights_run(Op::Embedding, &act)) GTEST_SKIP();
  Rng rng(1);
  const int V = 37, C = 70;
  const int64_t M = 13;
  auto table = randn(int64_t{V} * C, rng);
  round_to(table, dtype_);
  std::vector<int32_t> ids(M);
  for (int64_t m = 0; m < M; m++) ids[m] = static_cast<int32_t>(rng.below(V));
  ids[0] = V - 1;
  Array d_table(*b_, table, dtype_), d_out(*b_, std::vector<float>(M * C), act);
  Buffer d_ids(*b_, sizeof(int32_t) * M);
  b_->upload(d_ids.data(), ids.data(), sizeof(int32_t) * M);
  b_->embedding({act, d_out.data(), d_ids.as<int32_t>(), WeightView{d_table.data(), dtype_}, M, C});
  std::vector<float> want(M * C);
  cpu::embedding_forward(want.data(), ids.data(), table.data(), M, C);
  EXPECT_EQ(d_out.read(), want);  // a copy: exact in every dtype
}

TEST_P(BackendOps, ResidualRmsNorm) {
  if (!runs({Op::RmsNorm})) GTEST_SKIP();
  for (bool first : {true, false}) {
    for (int C : {1, 24, 768, 1037, 3100}) {  // CUDA keeps up to 3072 columns of a row in registers
      Rng rng(C + first);
      const int64_t M = 9;
      auto inp = randn(M * C, rng), residual = randn(M * C, rng, 3.0), weight = randn(C, rng);
      round_to(inp, dtype_);
      Array d_inp(*b_, inp, dtype_), d_res(*b_, residual, DType::F32), d_w(*b_, weight, DType::F32),
          d_out(*b_, std::vector<float>(M * C), dtype_);
      const RmsNormParams p{dtype_, d_out.data(), d_res.f32(), d_inp.data(), d_w.f32(), first, M, C, 1e-5f};
      Buffer ws(*b_, std::max<size_t>(1, b_->rmsnorm_workspace(p)));
      b_->rmsnorm(p, ws.data());
      std::vector<float> want(M * C), want_res = residual;
      cpu::residual_rmsnorm_forward(want.data(), want_res.data(), inp.data(), weight.data(), first, M, C, 1e-5f);
      EXPECT_LE(rel_err(d_out.read(), want), tolerance(dtype_)) << "C " << C << " first " << first;
      EXPECT_LE(rel_err(d_res.read(), want_res), 1e-6) << "C " << C << " first " << first;
      // Again from the updated residual alone (training's recomputation): the same bits, the residual kept.
      Array d_again(*b_, std::vector<float>(M * C), dtype_);
      RmsNormParams q = p;
      q.out = d_again.data(), q.inp = nullptr;
      const std::vector<float> res_before = d_res.read();
      b_->rmsnorm(q, ws.data());
      EXPECT_EQ(d_again.read(), d_out.read()) << "C " << C << " first " << first;
      EXPECT_EQ(d_res.read(), res_before) << "C " << C << " first " << first;
    }
  }
}

struct MatmulShape {
  int64_t M;
  int K, N;
  int pad_in, pad_out;  // extra elements per row: strided views of wider arrays
  bool bias, out_f32;   // out_f32: fp32 output from activations of any dtype (the LM head)
};

TEST_P(BackendOps, Matmul) {
  DType act = dtype_;
  if (!weights_run(Op::Matmul, &act)) GTEST_SKIP();
  const MatmulShape shapes[] = {{1, 24, 37, 0, 0, false, false}, {1, 768, 1536, 0, 0, true, false},
                                {5, 33, 70, 3, 5, true, false},  {64, 48, 130, 0, 7, false, true},
                                {130, 70, 17, 9, 0, true, true}, {3, 1, 1, 0, 0, false, false},
                                // M ≤ 8 with 16-byte rows: CUDA's decode kernel (1, 2, up to 4, up to 8
                                // rows a pass; weight rows longer than one sweep of the warp's loads; 4, 2
                                // and 1 warps a column, a last block only partly live)
                                {1, 1040, 75, 0, 0, true, true}, {2, 64, 9, 8, 3, false, false},
                                {3, 40, 33, 0, 0, true, false},   {7, 128, 96, 8, 0, false, true},
                                {8, 48, 1536, 32, 0, true, false}, {1, 64, 2049, 0, 0, true, false}};
  for (const MatmulShape& s : shapes) {
    Rng rng(s.M * 1000 + s.K + s.N);
    const int64_t ldi = s.K + s.pad_in, ldo = s.N + s.pad_out;
    const DType out_dtype = s.out_f32 ? DType::F32 : act;
    auto inp = randn(s.M * ldi, rng), w = randn(int64_t{s.N} * s.K, rng, 1.0 / std::sqrt(s.K)),
         bias = randn(s.N, rng);
    round_to(inp, act);
    round_to(w, dtype_);
    Array d_inp(*b_, inp, act), d_w(*b_, w, dtype_), d_bias(*b_, bias, DType::F32),
        d_out(*b_, std::vector<float>(s.M * ldo, 0.0f), out_dtype);
    MatmulParams p;
    p.out = d_out.data(), p.ldo = ldo, p.out_dtype = out_dtype;
    p.inp = d_inp.data(), p.ldi = ldi, p.dtype = act;
    p.weight = WeightView{d_w.data(), dtype_};
    p.bias = s.bias ? d_bias.f32() : nullptr;
    p.M = s.M, p.K = s.K, p.N = s.N;
    Buffer ws(*b_, std::max<size_t>(1, b_->matmul_workspace(p)));
    b_->matmul(p, ws.data());
    std::vector<float> want(s.M * ldo, 0.0f);
    cpu::matmul_forward(want.data(), ldo, inp.data(), ldi, w.data(), s.bias ? bias.data() : nullptr, s.M, s.K, s.N);
    // Products of rounded values summed in fp32: the sum's order is the backend's; only the output's
    // rounding depends on the dtype.
    EXPECT_LE(rel_err(d_out.read(), want), 2 * tolerance(out_dtype)) << s.M << " × " << s.K << " · " << s.N;
  }
}

// A bias that nearly cancels the product (a biased projection of a trained model can): a bf16/fp16 output
// must be the fp32 sum rounded once, not the product rounded and the sum rounded again (whose error is the
// product's half ulp, here as large as the output itself). Sixteenths make every product and sum exact
// in fp32 in any order, so the only error left is the output's one rounding. 4100 × 4096 outputs pass the
// rows CUDA stages in fp32 at a time.
TEST_P(BackendOps, MatmulBiasRoundsOnce) {
  DType act = dtype_;
  if (!weights_run(Op::Matmul, &act)) GTEST_SKIP();
  for (const auto& [M, K, N] : {std::tuple<int64_t, int, int>{37, 64, 100}, {4100, 16, 4096}}) {
    Rng rng(M + N);
    auto sixteenths = [&](int64_t n) {
      std::vector<float> v(n);
      for (float& x : v) x = static_cast<float>(static_cast<int>(rng.below(63)) - 31) / 16.0f;
      return v;
    };
    const std::vector<float> row = sixteenths(K), w = sixteenths(int64_t{N} * K);
    std::vector<float> inp(M * K), bias(N), want(M * N);
    for (int64_t m = 0; m < M; m++) std::copy(row.begin(), row.end(), inp.begin() + m * K);
    for (int n = 0; n < N; n++) {
      double product = 0;
      for (int k = 0; k < K; k++) product += static_cast<double>(row[k]) * w[int64_t{n} * K + k];
      bias[n] = static_cast<float>(-product + rng.uniform(-0.25, 0.25));
      for (int64_t m = 0; m < M; m++) want[m * N + n] = static_cast<float>(product + bias[n]);
    }
    Array d_inp(*b_, inp, act), d_w(*b_, w, dtype_), d_bias(*b_, bias, DType::F32),
        d_out(*b_, std::vector<float>(M * N, 0.0f), act);
    MatmulParams p;
    p.out = d_out.data(), p.ldo = N, p.out_dtype = act;
    p.inp = d_inp.data(), p.ldi = K, p.dtype = act;
    p.weight = WeightView{d_w.data(), dtype_};
    p.bias = d_bias.f32();
    p.M = M, p.K = K, p.N = N;
    Buffer ws(*b_, std::max<size_t>(1, b_->matmul_workspace(p)));
    b_->matmul(p, ws.data());
    const double rounding = act == DType::F32 ? 1e-6 : act == DType::F16 ? 0x1p-10 : 0x1p-8;
    EXPECT_LE(rel_err(d_out.read(), want), rounding) << M << " × " << K << " · " << N;
  }
}

struct ConvShape {
  int B, L, D, K;
  enum Tail { None, InPlace, Apart } tail;
};

TEST_P(BackendOps, Conv1d) {
  const ConvShape shapes[] = {{1, 1, 8, 4, ConvShape::InPlace}, {3, 1, 70, 4, ConvShape::InPlace},
                              {2, 19, 70, 4, ConvShape::InPlace}, {2, 19, 33, 3, ConvShape::Apart},
                              {1, 2, 16, 4, ConvShape::None},     {2, 40, 24, 1, ConvShape::InPlace}};
  int ran = 0;
  for (const ConvShape& s : shapes) {
    if (!runs({Op::Conv1d, dtype_, dtype_, false, 0, s.K})) continue;
    ran++;
    Rng rng(s.B * 100 + s.L + s.D);
    const int64_t xs = 2 * s.D + 3, T = int64_t{s.B} * (s.K - 1) * s.D;
    auto x = randn(int64_t{s.B} * s.L * xs, rng), w = randn(int64_t{s.D} * s.K, rng, 0.5), bias = randn(s.D, rng),
         tail = randn(T, rng);
    round_to(x, dtype_);
    Array d_x(*b_, x, dtype_), d_w(*b_, w, DType::F32), d_bias(*b_, bias, DType::F32), d_tail(*b_, tail, DType::F32),
        d_tail2(*b_, std::vector<float>(T, 0.0f), DType::F32), d_out(*b_, std::vector<float>(int64_t{s.B} * s.L * s.D), dtype_);
    Conv1dParams p;
    p.batch = s.B, p.seqlen = s.L, p.dim = s.D, p.width = s.K, p.dtype = dtype_;
    p.out = d_out.data(), p.out_stride = s.D;
    p.x = d_x.data(), p.x_stride = xs;
    p.weight = d_w.f32(), p.bias = d_bias.f32();
    p.tail_in = s.tail == ConvShape::None ? nullptr : d_tail.f32();
    p.tail_out = s.tail == ConvShape::InPlace ? d_tail.f32() : s.tail == ConvShape::Apart ? d_tail2.f32() : nullptr;
    Buffer ws(*b_, std::max<size_t>(1, b_->conv1d_workspace(p)));
    b_->conv1d(p, ws.data());
    std::vector<float> want(int64_t{s.B} * s.L * s.D), want_tail = s.tail == ConvShape::None ? std::vector<float>(T, 0.0f) : tail;
    cpu::conv1d_silu_forward(want.data(), s.D, want_tail.data(), x.data(), xs, w.data(), bias.data(), s.B, s.L, s.D, s.K);
    const std::string where = "B " + std::to_string(s.B) + " L " + std::to_string(s.L) + " D " + std::to_string(s.D) +
                              " K " + std::to_string(s.K);
    EXPECT_LE(rel_err(d_out.read(), want), tolerance(dtype_)) << where;
    if (s.tail != ConvShape::None) {
      EXPECT_EQ((s.tail == ConvShape::InPlace ? d_tail : d_tail2).read(), want_tail) << where;  // inputs moved: exact
    }
  }
  if (!ran) GTEST_SKIP();
}

struct ScanShape {
  int B, L, D, N;
  bool z, skip, bias, state, chunks;
  bool low_rank = false;  // Δ as x_proj's first R columns times dt_proj's weight (ScanParams::delta_proj)
};

TEST_P(BackendOps, Scan) {
  const ScanShape shapes[] = {
      {1, 1, 8, 16, true, true, true, true, false},     // a decode step
      {5, 1, 70, 16, true, true, true, true, false},    // a batched decode step
      {3, 1, 37, 40, true, false, true, true, false},   // a step with more states than a warp has lanes
      {2, 1, 9, 3, false, true, false, true, false},    // a step with N below a group's lanes, no gate
      {2, 33, 70, 16, true, true, true, true, true},    // prefill from a state, with chunk states
      {1, 300, 24, 16, true, false, true, false, false},
      {3, 17, 33, 4, false, true, false, true, false},  // no gate, no bias, N = 4
      {1, 64, 16, 1, true, true, true, false, true},
      // Δ low-rank: in the step kernel (four states a lane, one), and as a product before a sequence
      {1, 1, 70, 16, true, true, true, true, false, true},
      {3, 1, 37, 40, true, false, true, true, false, true},
      {2, 9, 24, 16, true, true, true, true, false, true},
      {12, 1, 40, 16, true, true, true, true, false, true},  // more sequences than CUDA's step computes Δ for
  };
  int ran = 0;
  for (const ScanShape& s : shapes) {
    if (!runs({Op::Scan, dtype_, dtype_, false, s.N, 0})) continue;
    ran++;
    Rng rng(s.B * 1000 + s.L * 10 + s.N);
    const int64_t rows = int64_t{s.B} * s.L;
    // u and z as column slices of one (rows, 2D) array, Δ dense, B and C slices of a (rows, R + 2N) one.
    const int R = s.low_rank ? 9 : 3, xw = R + 2 * s.N;
    auto xz = randn(rows * 2 * s.D, rng), delta = randn(rows * s.D, rng, 0.5), xdbl = randn(rows * xw, rng),
         A = randn(int64_t{s.D} * s.N, rng, 0.5), Dv = randn(s.D, rng), bias = randn(s.D, rng, 0.5),
         h0 = randn(int64_t{s.B} * s.D * s.N, rng), dt_w = randn(int64_t{s.D} * R, rng, 0.3);
    for (float& a : A) a = -std::exp(a);
    round_to(xz, dtype_);
    round_to(delta, dtype_);
    round_to(xdbl, dtype_);
    round_to(dt_w, dtype_);
    // Low-rank: the oracle's Δ is the product of the rounded values, in fp32, rounded to the dtype.
    if (s.low_rank) {
      cpu::matmul_forward(delta.data(), s.D, xdbl.data(), xw, dt_w.data(), nullptr, rows, R, s.D);
      round_to(delta, dtype_);
    }
    Array d_dt_w(*b_, dt_w, dtype_);
    const int64_t chunks = s.chunks ? scan_chunks(s.L, kCudaStateChunk) : 0;
    Array d_xz(*b_, xz, dtype_), d_delta(*b_, delta, dtype_), d_xdbl(*b_, xdbl, dtype_), d_A(*b_, A, DType::F32),
        d_D(*b_, Dv, DType::F32), d_bias(*b_, bias, DType::F32), d_h(*b_, h0, DType::F32),
        d_y(*b_, std::vector<float>(rows * s.D), dtype_),
        d_chunks(*b_, std::vector<float>(s.B * chunks * s.D * s.N), DType::F32);
    const size_t e = dtype_size(dtype_);
    auto params = [&](void* xz_p, void* delta_p, void* xdbl_p, void* y, const float* Ap, const float* Dp,
                      const float* biasp, float* h, float* ck) {
      ScanParams p;
      p.batch = s.B, p.seqlen = s.L, p.dim = s.D, p.dstate = s.N, p.dtype = dtype_;
      p.y = y, p.y_stride = s.D;
      p.u = xz_p, p.u_stride = 2 * s.D;
      p.delta = delta_p, p.delta_stride = s.D;
      p.A = Ap;
      p.Bm = static_cast<char*>(xdbl_p) + R * e, p.Cm = static_cast<char*>(xdbl_p) + (R + s.N) * e;
      p.B_stride = p.C_stride = xw;
      p.D = s.skip ? Dp : nullptr;
      p.z = s.z ? static_cast<char*>(xz_p) + s.D * e : nullptr, p.z_stride = 2 * s.D;
      p.delta_bias = s.bias ? biasp : nullptr;
      p.state_in = s.state ? h : nullptr;
      p.state_out = h;
      p.chunk_states = ck;
      p.state_chunk = ck ? kCudaStateChunk : 0;
      return p;
    };
    ScanParams p = params(d_xz.data(), d_delta.data(), d_xdbl.data(), d_y.data(), d_A.f32(), d_D.f32(),
                          d_bias.f32(), d_h.f32(), s.chunks ? d_chunks.f32() : nullptr);
    if (s.low_rank) {
      p.delta = d_xdbl.data(), p.delta_stride = xw;
      p.delta_proj = WeightView{d_dt_w.data(), dtype_}, p.delta_rank = R;
    }
    Buffer ws(*b_, std::max<size_t>(1, b_->scan_workspace(p)));
    b_->scan(p, ws.data());

    // The oracle works in fp32 on the same rounded values; the CPU's float pointers need its own byte offsets.
    std::vector<float> want_y(rows * s.D), want_h = h0, want_chunks(s.B * chunks * s.D * s.N);
    ScanParams q = params(xz.data(), delta.data(), xdbl.data(), want_y.data(), A.data(), Dv.data(), bias.data(),
                          want_h.data(), s.chunks ? want_chunks.data() : nullptr);
    q.dtype = DType::F32;
    q.Bm = xdbl.data() + R, q.Cm = xdbl.data() + R + s.N;
    q.z = s.z ? xz.data() + s.D : nullptr;
    cpu::selective_scan_forward(q);
    const std::string where = "B " + std::to_string(s.B) + " L " + std::to_string(s.L) + " D " + std::to_string(s.D) +
                              " N " + std::to_string(s.N);
    EXPECT_LE(rel_err(d_y.read(), want_y), tolerance(dtype_)) << where;
    // fp32 on every backend, from the same rounded inputs; except that a low-rank Δ, summed in another
    // order, may round to its neighbour in a half type.
    EXPECT_LE(rel_err(d_h.read(), want_h), s.low_rank ? tolerance(dtype_) : 2e-5) << where;
    if (s.chunks) {
      EXPECT_LE(rel_err(d_chunks.read(), want_chunks), 2e-5) << where;
    }
  }
  if (!ran) GTEST_SKIP();
}

// The backward of the scan and of the conv, the ops whose gradients the GPU already has: against the
// CPU's kernels of ops/cpu/backward.h (themselves checked by finite differences in test_grad_ops.cpp),
// with outputs the contract writes pre-filled with garbage, and strided slices as the model passes them.
TEST_P(BackendOps, ScanBackward) {
  const int B = 2, L = 37, D = 40, N = 16, R = 3, xw = R + 2 * N;
  if (!runs({Op::ScanBwd, dtype_, dtype_, false, N, 0})) GTEST_SKIP();
  Rng rng(11);
  const int64_t rows = int64_t{B} * L;
  const int chunk = kCudaStateChunk;
  auto xz = randn(rows * 2 * D, rng), delta = randn(rows * D, rng, 0.5), xdbl = randn(rows * xw, rng),
       A = randn(int64_t{D} * N, rng, 0.5), Dv = randn(D, rng), bias = randn(D, rng, 0.5), dy = randn(rows * D, rng);
  for (float& a : A) a = -std::exp(a);
  for (auto* v : {&xz, &delta, &xdbl, &dy}) round_to(*v, dtype_);
  const size_t e = dtype_size(dtype_);
  const int64_t nck = B * scan_chunks(L, chunk) * D * N;
  const std::vector<float> garbage_d(rows * D, 7.0f), garbage_z(rows * 2 * D, 7.0f), garbage_x(rows * xw, 7.0f);
  Array d_xz(*b_, xz, dtype_), d_delta(*b_, delta, dtype_), d_xdbl(*b_, xdbl, dtype_), d_A(*b_, A, DType::F32),
      d_D(*b_, Dv, DType::F32), d_bias(*b_, bias, DType::F32), d_dy(*b_, dy, dtype_),
      d_y(*b_, std::vector<float>(rows * D), dtype_), d_ck(*b_, std::vector<float>(nck), DType::F32),
      d_du(*b_, garbage_d, dtype_), d_ddelta(*b_, garbage_d, dtype_), d_dxz(*b_, garbage_z, dtype_),
      d_dxdbl(*b_, garbage_x, dtype_), d_dA(*b_, std::vector<float>(int64_t{D} * N, 1.0f), DType::F32),
      d_dD(*b_, std::vector<float>(D, 1.0f), DType::F32), d_dbias(*b_, std::vector<float>(D, 1.0f), DType::F32);
  auto fwd_params = [&](const void* xzp, const void* deltap, const void* xdblp, void* y, const float* Ap,
                        const float* Dp, const float* biasp, float* ck, size_t esize) {
    ScanParams p;
    p.batch = B, p.seqlen = L, p.dim = D, p.dstate = N, p.dtype = dtype_;
    p.y = y, p.y_stride = D;
    p.u = xzp, p.u_stride = 2 * D;
    p.delta = deltap, p.delta_stride = D;
    p.A = Ap;
    p.Bm = static_cast<const char*>(xdblp) + R * esize, p.Cm = static_cast<const char*>(xdblp) + (R + N) * esize;
    p.B_stride = p.C_stride = xw;
    p.D = Dp;
    p.z = static_cast<const char*>(xzp) + D * esize, p.z_stride = 2 * D;
    p.delta_bias = biasp;
    p.chunk_states = ck, p.state_chunk = chunk;
    return p;
  };
  ScanParams f = fwd_params(d_xz.data(), d_delta.data(), d_xdbl.data(), d_y.data(), d_A.f32(), d_D.f32(),
                            d_bias.f32(), d_ck.f32(), e);
  Buffer ws(*b_, std::max<size_t>(1, b_->scan_workspace(f)));
  b_->scan(f, ws.data());
  ScanBwdParams g;
  g.fwd = f;
  g.dy = d_dy.data(), g.dy_stride = D;
  g.du = d_du.data(), g.du_stride = D;
  g.ddelta = d_ddelta.data(), g.ddelta_stride = D;
  g.dz = static_cast<char*>(d_dxz.data()) + D * e, g.dz_stride = 2 * D;
  g.dB = static_cast<char*>(d_dxdbl.data()) + R * e, g.dC = static_cast<char*>(d_dxdbl.data()) + (R + N) * e;
  g.dB_stride = g.dC_stride = xw;
  g.dA = d_dA.f32(), g.dD = d_dD.f32(), g.ddelta_bias = d_dbias.f32();
  Buffer wsb(*b_, std::max<size_t>(1, b_->scan_bwd_workspace(g)));
  b_->scan_bwd(g, wsb.data());

  // The oracle: the CPU kernels (which accumulate) into zeroed activation gradients, parameters from 1.
  std::vector<float> y(rows * D), ck(nck), du(rows * D, 0.0f), ddelta(rows * D, 0.0f), dxz(rows * 2 * D, 7.0f),
      dxdbl(rows * xw, 7.0f), dA(int64_t{D} * N, 1.0f), dD(D, 1.0f), dbias(D, 1.0f);
  for (int64_t r = 0; r < rows; r++) {
    std::fill_n(dxz.begin() + r * 2 * D + D, D, 0.0f);
    std::fill_n(dxdbl.begin() + r * xw + R, 2 * N, 0.0f);
  }
  ScanParams q = fwd_params(xz.data(), delta.data(), xdbl.data(), y.data(), A.data(), Dv.data(), bias.data(),
                            ck.data(), sizeof(float));
  q.dtype = DType::F32;
  cpu::selective_scan_forward(q);
  cpu::ScanGrads cg;
  cg.dy = dy.data(), cg.dy_stride = D;
  cg.du = du.data(), cg.du_stride = D;
  cg.ddelta = ddelta.data(), cg.ddelta_stride = D;
  cg.dz = dxz.data() + D, cg.dz_stride = 2 * D;
  cg.dB = dxdbl.data() + R, cg.dC = dxdbl.data() + R + N, cg.dbc_stride = xw;
  cg.dA = dA.data(), cg.dD = dD.data(), cg.ddelta_bias = dbias.data();
  cpu::selective_scan_backward(cg, q);
  const double tol = dtype_ == DType::F32 ? 1e-4 : 5e-2;  // gradients through L steps of a recurrence
  EXPECT_LE(err("du", d_du.read(), du), tol);
  EXPECT_LE(err("ddelta", d_ddelta.read(), ddelta), tol);
  EXPECT_LE(err("dxz", d_dxz.read(), dxz), tol);      // dz written, the x half left as it was (7)
  EXPECT_LE(err("dxdbl", d_dxdbl.read(), dxdbl), tol);  // dB, dC written, δ's columns left as they were
  EXPECT_LE(err("dA", d_dA.read(), dA), tol);
  EXPECT_LE(err("dD", d_dD.read(), dD), tol);
  EXPECT_LE(err("dbias", d_dbias.read(), dbias), tol);
}

TEST_P(BackendOps, Conv1dBackward) {
  const int B = 3, L = 29, D = 70, K = 4;
  if (!runs({Op::Conv1dBwd, dtype_, dtype_, false, 0, K})) GTEST_SKIP();
  Rng rng(12);
  const int64_t rows = int64_t{B} * L, T = int64_t{B} * (K - 1) * D;
  auto xz = randn(rows * 2 * D, rng), w = randn(int64_t{D} * K, rng, 0.5), bias = randn(D, rng),
       tail = randn(T, rng), dout = randn(rows * D, rng);
  round_to(xz, dtype_);
  round_to(dout, dtype_);
  Array d_xz(*b_, xz, dtype_), d_w(*b_, w, DType::F32), d_bias(*b_, bias, DType::F32), d_tail(*b_, tail, DType::F32),
      d_dout(*b_, dout, dtype_), d_dxz(*b_, std::vector<float>(rows * 2 * D, 7.0f), dtype_),
      d_dw(*b_, std::vector<float>(int64_t{D} * K, 1.0f), DType::F32), d_db(*b_, std::vector<float>(D, 1.0f), DType::F32),
      d_dtail(*b_, std::vector<float>(T, 7.0f), DType::F32);
  Conv1dBwdParams p;
  p.fwd = Conv1dParams{B, L, D, K, dtype_, nullptr, 0, d_xz.data(), 2 * D, d_w.f32(), d_bias.f32(), d_tail.f32(), nullptr};
  p.dout = d_dout.data(), p.dout_stride = D;
  p.dx = d_dxz.data(), p.dx_stride = 2 * D;
  p.dweight = d_dw.f32(), p.dbias = d_db.f32(), p.dtail_in = d_dtail.f32();
  Buffer ws(*b_, std::max<size_t>(1, b_->conv1d_bwd_workspace(p)));
  b_->conv1d_bwd(p, ws.data());
  std::vector<float> dxz(rows * 2 * D, 7.0f), dw(int64_t{D} * K, 1.0f), db(D, 1.0f), dtail(T, 0.0f);
  for (int64_t r = 0; r < rows; r++) std::fill_n(dxz.begin() + r * 2 * D, D, 0.0f);
  cpu::conv1d_silu_backward(dxz.data(), 2 * D, dtail.data(), dw.data(), db.data(), dout.data(), xz.data(), 2 * D,
                            tail.data(), w.data(), bias.data(), B, L, D, K);
  const double tol = dtype_ == DType::F32 ? 1e-5 : 2e-2;
  EXPECT_LE(err("dxz", d_dxz.read(), dxz), tol);  // dx written, the z half untouched
  EXPECT_LE(err("dw", d_dw.read(), dw), tol);
  EXPECT_LE(err("db", d_db.read(), db), tol);
  EXPECT_LE(err("dtail", d_dtail.read(), dtail), tol);
}

// The backward ops the model's training needs beyond the scan and the conv, the fused head + loss and the
// optimizer step, against the CPU's kernels, with parameter gradients starting from non-zero values (they
// accumulate) and activation gradients from garbage where the contract writes them.
TEST_P(BackendOps, EmbeddingBackward) {
  if (!runs({Op::EmbeddingBwd})) GTEST_SKIP();
  for (int64_t M : {int64_t{1}, int64_t{13}, int64_t{700}}) {
    Rng rng(M + 21);
    const int V = 37, C = 300;  // more than one block of columns
    auto dout = randn(M * C, rng), dtable = randn(int64_t{V} * C, rng);
    round_to(dout, dtype_);
    std::vector<int32_t> ids(M);
    for (int64_t m = 0; m < M; m++) ids[m] = static_cast<int32_t>(rng.below(m % 3 ? V : 3));  // many repeats
    ids[0] = V - 1;
    Array d_dout(*b_, dout, dtype_), d_dtable(*b_, dtable, DType::F32);
    Buffer d_ids(*b_, sizeof(int32_t) * M);
    b_->upload(d_ids.data(), ids.data(), sizeof(int32_t) * M);
    const EmbeddingBwdParams p{dtype_, d_dtable.f32(), d_dout.data(), d_ids.as<int32_t>(), M, C};
    Buffer ws(*b_, std::max<size_t>(1, b_->embedding_bwd_workspace(p)));
    b_->embedding_bwd(p, ws.data());
    std::vector<float> want = dtable;
    cpu::embedding_backward(want.data(), dout.data(), ids.data(), M, C);
    EXPECT_EQ(d_dtable.read(), want) << "M " << M;  // the same additions in the same order: exact
  }
}

TEST_P(BackendOps, RmsNormBackward) {
  if (!runs({Op::RmsNormBwd})) GTEST_SKIP();
  for (int64_t M : {int64_t{9}, int64_t{300}}) {
    for (int C : {1, 24, 768, 1037}) {
      Rng rng(M * 7 + C);
      auto dout = randn(M * C, rng), residual = randn(M * C, rng, 3.0), weight = randn(C, rng),
           dresid = randn(M * C, rng), dweight = randn(C, rng);
      round_to(dout, dtype_);
      Array d_dout(*b_, dout, dtype_), d_res(*b_, residual, DType::F32), d_w(*b_, weight, DType::F32),
          d_dresid(*b_, dresid, DType::F32), d_dw(*b_, dweight, DType::F32);
      const RmsNormBwdParams p{dtype_, d_dresid.f32(), d_dw.f32(), d_dout.data(), d_res.f32(), d_w.f32(), M, C, 1e-5f};
      Buffer ws(*b_, std::max<size_t>(1, b_->rmsnorm_bwd_workspace(p)));
      b_->rmsnorm_bwd(p, ws.data());
      std::vector<float> want_dr = dresid, want_dw = dweight;
      cpu::residual_rmsnorm_backward(want_dr.data(), want_dw.data(), dout.data(), residual.data(), weight.data(), M, C,
                                     1e-5f);
      // fp32 arithmetic from the same rounded inputs in every dtype: only the order of the sums differs.
      EXPECT_LE(err("dresid", d_dresid.read(), want_dr), 2e-5) << "M " << M << " C " << C;
      EXPECT_LE(err("dw", d_dw.read(), want_dw), 2e-5) << "M " << M << " C " << C;
    }
  }
}

struct MatmulBwdShape {
  int64_t M;
  int K, N;
  int pad_in, pad_out;
  bool bias, accumulate, dinp;
};

TEST_P(BackendOps, MatmulBackward) {
  if (!runs({Op::MatmulBwd})) GTEST_SKIP();
  const MatmulBwdShape shapes[] = {{1, 24, 37, 0, 0, false, false, true},  {5, 33, 70, 3, 5, true, false, true},
                                   {64, 48, 130, 0, 7, false, true, true}, {130, 70, 17, 9, 0, true, true, true},
                                   {37, 16, 40, 0, 0, true, false, false}, {3, 1, 1, 0, 0, false, false, true}};
  for (const MatmulBwdShape& s : shapes) {
    Rng rng(s.M * 1000 + s.K + s.N + 7);
    const int64_t ldi = s.K + s.pad_in, ldo = s.N + s.pad_out;
    auto inp = randn(s.M * ldi, rng), dout = randn(s.M * ldo, rng), w = randn(int64_t{s.N} * s.K, rng, 1.0 / std::sqrt(s.K)),
         dinp = randn(s.M * ldi, rng), dw = randn(int64_t{s.N} * s.K, rng), db = randn(s.N, rng);
    for (auto* v : {&inp, &dout, &w, &dinp}) round_to(*v, dtype_);
    Array d_inp(*b_, inp, dtype_), d_dout(*b_, dout, dtype_), d_w(*b_, w, dtype_), d_dinp(*b_, dinp, dtype_),
        d_dw(*b_, dw, DType::F32), d_db(*b_, db, DType::F32);
    MatmulBwdParams p;
    p.dtype = dtype_;
    p.dinp = s.dinp ? d_dinp.data() : nullptr, p.lddi = ldi, p.accumulate = s.accumulate;
    p.dweight = d_dw.f32(), p.dbias = s.bias ? d_db.f32() : nullptr;
    p.dout = d_dout.data(), p.ldo = ldo, p.inp = d_inp.data(), p.ldi = ldi;
    p.weight = WeightView{d_w.data(), dtype_};
    p.M = s.M, p.K = s.K, p.N = s.N;
    Buffer ws(*b_, std::max<size_t>(1, b_->matmul_bwd_workspace(p)));
    b_->matmul_bwd(p, ws.data());
    std::vector<float> want_dinp = dinp, want_dw = dw, want_db = db;
    if (s.dinp && !s.accumulate) {
      for (int64_t m = 0; m < s.M; m++) std::fill_n(want_dinp.begin() + m * ldi, s.K, 0.0f);  // written, not added to
    }
    cpu::matmul_backward(s.dinp ? want_dinp.data() : nullptr, ldi, want_dw.data(), s.bias ? want_db.data() : nullptr,
                         dout.data(), ldo, inp.data(), ldi, w.data(), s.M, s.K, s.N);
    const std::string where = std::to_string(s.M) + " × " + std::to_string(s.K) + " · " + std::to_string(s.N);
    EXPECT_LE(err("dinp", d_dinp.read(), want_dinp), 2 * tolerance(dtype_)) << where;  // the padding left as it was
    EXPECT_LE(err("dw", d_dw.read(), want_dw), 2e-5) << where;  // fp32 sums of products of the same rounded values
    EXPECT_LE(err("db", d_db.read(), want_db), 2e-5) << where;
  }
}

struct XentShape {
  int64_t M;
  int C, V;
  int ignored;  // every k-th target is ignore_index (0: none; 1: all)
  bool head_grad;
  float scale = 1.0f;  // the gradients' factor: fp16 training's loss scale
};

TEST_P(BackendOps, LmHeadCrossEntropy) {
  if (!runs({Op::Xent})) GTEST_SKIP();
  std::vector<XentShape> shapes = {{1, 16, 5, 0, true}, {37, 24, 300, 3, true}, {19, 70, 1000, 1, true},
                                   {300, 8, 257, 0, false}, {64, 24, 300, 5, true, 65536.0f}};
  // More rows than one chunk of logits holds (2^26 logits) on a GPU; the CPU's chunks are 256 rows. At a
  // real vocabulary most of dlogits (~1/V) lies below fp16's normal range: fp16 is taken at its training's
  // loss scale, as without it the rounded dlogits lose their small terms (why fp16 training scales).
  if (!b_->host_memory()) shapes.push_back({1400, 16, 50280, 5, true, dtype_ == DType::F16 ? 65536.0f : 1.0f});
  for (const XentShape& s : shapes) {
    Rng rng(s.M + s.V);
    auto hidden = randn(s.M * s.C, rng), w = randn(int64_t{s.V} * s.C, rng, 2.0 / std::sqrt(s.C)),
         dw = randn(int64_t{s.V} * s.C, rng);
    round_to(hidden, dtype_);
    round_to(w, dtype_);
    std::vector<int32_t> targets(s.M);
    for (int64_t m = 0; m < s.M; m++) {
      targets[m] = s.ignored && m % s.ignored == 0 ? -100 : static_cast<int32_t>(rng.below(s.V));
    }
    Array d_hidden(*b_, hidden, dtype_), d_w(*b_, w, dtype_), d_dw(*b_, dw, DType::F32),
        d_dhidden(*b_, std::vector<float>(s.M * s.C, 7.0f), dtype_), d_loss(*b_, {7.0f}, DType::F32);
    Buffer d_targets(*b_, sizeof(int32_t) * s.M);
    b_->upload(d_targets.data(), targets.data(), sizeof(int32_t) * s.M);
    XentParams p;
    p.dtype = dtype_, p.loss = d_loss.f32(), p.dhidden = d_dhidden.data(), p.dweight = s.head_grad ? d_dw.f32() : nullptr;
    p.hidden = d_hidden.data(), p.weight = WeightView{d_w.data(), dtype_}, p.targets = d_targets.as<int32_t>();
    p.M = s.M, p.C = s.C, p.V = s.V, p.scale = s.scale;
    Buffer ws(*b_, std::max<size_t>(1, b_->xent_workspace(p)));
    b_->xent(p, ws.data());
    std::vector<float> want_dh(s.M * s.C), want_dw = dw, scratch(256 * static_cast<size_t>(s.V));
    const float want_loss = cpu::lm_head_cross_entropy(want_dh.data(), want_dw.data(), hidden.data(), w.data(),
                                                       targets.data(), s.M, s.C, s.V, -100, scratch.data(), 256, 0,
                                                       s.scale);
    if (!s.head_grad) want_dw = dw;
    const std::string where = "M " + std::to_string(s.M) + " V " + std::to_string(s.V);
    EXPECT_LE(std::abs(d_loss.read()[0] - want_loss), 1e-5 * std::max(1.0f, std::abs(want_loss))) << where;
    EXPECT_LE(err("dhidden", d_dhidden.read(), want_dh), 2 * tolerance(dtype_)) << where;
    EXPECT_LE(err("dw", d_dw.read(), want_dw), dtype_ == DType::F32 ? 2e-5 : 2e-2) << where;
  }
}

TEST_P(BackendOps, AdamWWithClipping) {
  if (dtype_ != DType::F32) GTEST_SKIP() << "the optimizer's buffers are fp32 whatever the activations' dtype";
  if (!runs({Op::AdamW})) GTEST_SKIP();
  const std::vector<AdamWRange> ranges = {{0, 1000, true}, {1000, 70001, false}, {71001, 3, true}, {71004, 200000, true}};
  const int64_t n = 271004;
  struct Case {
    float grad_scale;
    double max_norm;
    int64_t step;
  };
  for (const Case& k : {Case{1.0f, 0.0, 1}, Case{0.5f, 1.0, 3}, Case{0.25f, 1e3, 7}}) {
    Rng rng(k.step);
    auto params = randn(n, rng), grads = randn(n, rng, 0.01), m = randn(n, rng, 0.01), v = randn(n, rng, 1e-4);
    for (float& x : v) x = std::abs(x);
    Array d_p(*b_, params, DType::F32), d_g(*b_, grads, DType::F32), d_m(*b_, m, DType::F32), d_v(*b_, v, DType::F32);
    Buffer d_norm(*b_, sizeof(double));
    AdamWParams p;
    p.params = d_p.f32(), p.grads = d_g.f32(), p.m = d_m.f32(), p.v = d_v.f32(), p.n = n;
    p.ranges = ranges.data(), p.n_ranges = static_cast<int>(ranges.size());
    p.norm = d_norm.as<double>(), p.grad_scale = k.grad_scale, p.max_norm = k.max_norm, p.step = k.step;
    p.lr = 3e-3, p.weight_decay = 0.1;
    Buffer ws(*b_, std::max<size_t>(1, b_->adamw_workspace(p)));
    b_->adamw(p, ws.data());
    double norm = 0;
    b_->download(&norm, d_norm.data(), sizeof(double));
    AdamWParams q = p;
    double want_norm = 0;
    q.params = params.data(), q.grads = grads.data(), q.m = m.data(), q.v = v.data(), q.norm = &want_norm;
    cpu::adamw(q);
    const std::string where = "scale " + std::to_string(k.grad_scale) + " clip " + std::to_string(k.max_norm);
    EXPECT_LE(std::abs(norm - want_norm), 1e-12 * want_norm) << where;  // double sums in another order
    // The same fp32 formulas; contractions into FMA may differ by an ulp per operation.
    EXPECT_LE(rel_err(d_g.read(), grads), 1e-6) << where;
    EXPECT_LE(rel_err(d_m.read(), m), 1e-6) << where;
    EXPECT_LE(rel_err(d_v.read(), v), 1e-6) << where;
    EXPECT_LE(rel_err(d_p.read(), params), 1e-6) << where;
  }
}

// Data parallel: two shards of a batch, each divided by the whole batch's count of targets, add up to the
// whole batch's loss and head gradient, and each shard's dhidden is the whole's rows.
TEST_P(BackendOps, LmHeadCrossEntropyOfShards) {
  if (dtype_ != DType::F32) GTEST_SKIP() << "the divisor is the same for every dtype";
  if (!runs({Op::Xent})) GTEST_SKIP();
  const int64_t M = 64;
  const int C = 24, V = 300;
  Rng rng(11);
  auto hidden = randn(M * C, rng), w = randn(int64_t{V} * C, rng, 2.0 / std::sqrt(C));
  std::vector<int32_t> targets(M);
  for (int64_t m = 0; m < M; m++) targets[m] = m % 5 == 0 ? -100 : static_cast<int32_t>(rng.below(V));
  int64_t count = 0;
  for (int32_t t : targets) count += t != -100;
  std::vector<float> want_dh(M * C), want_dw(int64_t{V} * C, 0.0f), scratch(256 * static_cast<size_t>(V));
  const float want_loss = cpu::lm_head_cross_entropy(want_dh.data(), want_dw.data(), hidden.data(), w.data(),
                                                     targets.data(), M, C, V, -100, scratch.data(), 256);
  Array d_w(*b_, w, DType::F32), d_dw(*b_, std::vector<float>(want_dw.size(), 0.0f), DType::F32);
  double loss = 0;
  std::vector<float> dh;
  for (int64_t half : {0, 1}) {
    const int64_t rows = M / 2, first = half * rows;
    Array d_hidden(*b_, std::vector<float>(hidden.begin() + first * C, hidden.begin() + (first + rows) * C), DType::F32);
    Array d_dhidden(*b_, std::vector<float>(rows * C, 7.0f), DType::F32), d_loss(*b_, {7.0f}, DType::F32);
    Buffer d_targets(*b_, sizeof(int32_t) * rows);
    b_->upload(d_targets.data(), targets.data() + first, sizeof(int32_t) * rows);
    XentParams p;
    p.dtype = DType::F32, p.loss = d_loss.f32(), p.dhidden = d_dhidden.data(), p.dweight = d_dw.f32();
    p.hidden = d_hidden.data(), p.weight = WeightView{d_w.data(), DType::F32}, p.targets = d_targets.as<int32_t>();
    p.M = rows, p.C = C, p.V = V, p.divisor = count;
    Buffer ws(*b_, std::max<size_t>(1, b_->xent_workspace(p)));
    b_->xent(p, ws.data());
    loss += d_loss.read()[0];
    const auto part = d_dhidden.read();
    dh.insert(dh.end(), part.begin(), part.end());
  }
  EXPECT_LE(std::abs(loss - want_loss), 1e-5 * std::abs(want_loss));
  EXPECT_LE(rel_err(dh, want_dh), 1e-5);
  EXPECT_LE(rel_err(d_dw.read(), want_dw), 2e-5);
}

// ZeRO-1: a rank updates the elements [begin, end) alone, with moments for those alone, after the norm and
// the clipping of all the gradients; the updated elements equal the whole update's, the others stay.
TEST_P(BackendOps, AdamWOnAShard) {
  if (dtype_ != DType::F32) GTEST_SKIP() << "the optimizer's buffers are fp32 whatever the activations' dtype";
  if (!runs({Op::AdamW})) GTEST_SKIP();
  const std::vector<AdamWRange> ranges = {{0, 1000, true}, {1000, 70001, false}, {71001, 3, true}, {71004, 200000, true}};
  const int64_t n = 271004;
  Rng rng(9);
  auto params = randn(n, rng), grads = randn(n, rng, 0.01), m = randn(n, rng, 0.01), v = randn(n, rng, 1e-4);
  for (float& x : v) x = std::abs(x);
  AdamWParams whole;
  double want_norm = 0;
  auto want_p = params, want_g = grads, want_m = m, want_v = v;
  whole.params = want_p.data(), whole.grads = want_g.data(), whole.m = want_m.data(), whole.v = want_v.data();
  whole.n = n, whole.ranges = ranges.data(), whole.n_ranges = static_cast<int>(ranges.size());
  whole.norm = &want_norm, whole.grad_scale = 0.5f, whole.max_norm = 1.0, whole.step = 4, whole.lr = 3e-3;
  whole.weight_decay = 0.1;
  cpu::adamw(whole);
  // Shards that cut ranges, one of a single range's inside, the last one, and an empty one.
  for (const auto& [begin, end] : std::vector<std::pair<int64_t, int64_t>>{{500, 71002}, {2000, 3000}, {200000, n}, {7, 7}}) {
    std::vector<float> sm(m.begin() + begin, m.begin() + end), sv(v.begin() + begin, v.begin() + end);
    Array d_p(*b_, params, DType::F32), d_g(*b_, grads, DType::F32);
    Array d_m(*b_, sm.empty() ? std::vector<float>{0.0f} : sm, DType::F32);
    Array d_v(*b_, sv.empty() ? std::vector<float>{0.0f} : sv, DType::F32);
    Buffer d_norm(*b_, sizeof(double));
    AdamWParams p = whole;
    p.params = d_p.f32(), p.grads = d_g.f32(), p.m = d_m.f32(), p.v = d_v.f32(), p.norm = d_norm.as<double>();
    p.shard_begin = begin, p.shard_end = end;
    Buffer ws(*b_, std::max<size_t>(1, b_->adamw_workspace(p)));
    b_->adamw(p, ws.data());
    double norm = 0;
    b_->download(&norm, d_norm.data(), sizeof(double));
    const std::string where = "shard [" + std::to_string(begin) + ", " + std::to_string(end) + ")";
    EXPECT_LE(std::abs(norm - want_norm), 1e-12 * want_norm) << where;
    EXPECT_LE(rel_err(d_g.read(), want_g), 1e-6) << where;  // every gradient scaled and clipped
    const auto got = d_p.read();
    std::vector<float> want = params;  // outside the shard: untouched
    std::copy(want_p.begin() + begin, want_p.begin() + end, want.begin() + begin);
    EXPECT_LE(rel_err(got, want), 1e-6) << where;
    if (end > begin) {
      EXPECT_LE(rel_err(d_m.read(), std::vector<float>(want_m.begin() + begin, want_m.begin() + end)), 1e-6) << where;
      EXPECT_LE(rel_err(d_v.read(), std::vector<float>(want_v.begin() + begin, want_v.begin() + end)), 1e-6) << where;
    }
    for (int64_t i : {int64_t{0}, begin - 1, end, n - 1}) {
      if (i >= 0 && i < n && (i < begin || i >= end)) {
        EXPECT_EQ(got[static_cast<size_t>(i)], params[static_cast<size_t>(i)]) << where << " at " << i;
      }
    }
  }
}

TEST_P(BackendOps, Argmax) {
  if (dtype_ != DType::F32) GTEST_SKIP() << "argmax reads fp32 logits whatever the activations' dtype";
  Rng rng(5);
  const int64_t M = 7;
  const int N = 50280;
  auto x = randn(M * N, rng);
  x[3 * N + 17] = x[3 * N + 40000] = 100.0f;  // a tie: the first index wins
  x[6 * N + N - 1] = 50.0f;                   // the last column
  Array d_x(*b_, x, DType::F32);
  Buffer d_ids(*b_, sizeof(int32_t) * M);
  b_->argmax(d_ids.as<int32_t>(), d_x.f32(), M, N);
  std::vector<int32_t> ids(M);
  b_->download(ids.data(), d_ids.data(), sizeof(int32_t) * M);
  for (int64_t m = 0; m < M; m++) {
    const float* row = x.data() + m * N;
    EXPECT_EQ(ids[m], std::max_element(row, row + N) - row) << "row " << m;
  }
  EXPECT_EQ(ids[3], 17);
}

// Conversions between the float types, the low-precision copies of mixed-precision training: bitwise the
// CPU's (core/dtype.h, round to nearest even), with ties, values that overflow fp16 and fp16 subnormals.
TEST_P(BackendOps, Convert) {
  if (!runs({Op::Convert})) GTEST_SKIP();
  Rng rng(17);
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{1037}, int64_t{70001}}) {
    std::vector<float> x = randn(static_cast<size_t>(n), rng, 3.0);
    const float special[] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 65520.0f,
                             -1e6f, 3e-7f, -1e-5f, 1e38f, -0.0f, INFINITY};
    for (size_t i = 0; i < std::min(x.size(), std::size(special)); i++) x[i] = special[i];
    for (size_t i = std::size(special); i < x.size(); i += 97) x[i] *= 1e-4f * static_cast<float>(i % 7);
    Array d_x(*b_, x, DType::F32), d_y(*b_, std::vector<float>(static_cast<size_t>(n)), dtype_),
        d_back(*b_, std::vector<float>(static_cast<size_t>(n)), DType::F32);
    b_->convert(d_y.data(), dtype_, d_x.data(), DType::F32, n);
    b_->convert(d_back.data(), DType::F32, d_y.data(), dtype_, n);
    std::vector<float> want = x;
    round_to(want, dtype_);
    const std::vector<float> got = d_y.read(), back = d_back.read();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); i++) {
      ASSERT_EQ(std::memcmp(&got[i], &want[i], 4), 0) << "n " << n << " at " << i << ": " << x[i] << " became " << got[i]
                                                      << ", not " << want[i];
      ASSERT_EQ(std::memcmp(&back[i], &want[i], 4), 0) << "n " << n << " at " << i;  // widening is exact
    }
  }
}

// What each backend refuses, it refuses by name, before running anything.
TEST(BackendSeam, UnsupportedSaysWhy) {
  Backend& cpu = Backend::cpu();
  EXPECT_EQ(cpu.unsupported({Op::Matmul, DType::F32, DType::BF16}), "");
  EXPECT_EQ(cpu.unsupported({Op::Matmul, DType::BF16, DType::BF16}), "");  // bf16 widened to fp32 (cpu/half.h)
  EXPECT_NE(cpu.unsupported({Op::Embedding, DType::BF16, DType::I8}), "");
  EXPECT_NE(cpu.unsupported({Op::MatmulBwd, DType::F32, DType::I8}), "");
  EXPECT_NE(cpu.unsupported({Op::Convert, DType::I8}), "");
  EXPECT_EQ(cpu.unsupported({Op::Scan, DType::F32, DType::F32, true, 16, 0}), "");  // the CPU has the LTI form
  EXPECT_NE(cpu.unsupported({Op::Scan, DType::F32, DType::F32, false, kMaxState + 1, 0}), "");
  std::string why;
  if (Backend* gpu = backend_or_skip(targets()[1], &why)) {
    EXPECT_NE(gpu->unsupported({Op::Scan, DType::BF16, DType::BF16, true, 16, 0}), "");  // no LTI on CUDA
    EXPECT_NE(gpu->unsupported({Op::Matmul, DType::BF16, DType::F32}), "");
  }
}

TEST(BackendSeam, DeviceNames) {
  EXPECT_EQ(Device::parse("cpu").name(), "cpu");
  EXPECT_EQ(Device::parse("cuda").name(), "cuda:0");
  EXPECT_EQ(Device::parse("cuda:3").index, 3);
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", ""}) {
    EXPECT_THROW(Device::parse(bad), Error) << bad;
  }
}

// Without a usable GPU, asking for one is an error that says why; it never falls back to the CPU.
TEST(BackendSeam, NoGpuIsAClearError) {
  std::string why;
  if (backend_or_skip(targets()[1], &why)) GTEST_SKIP() << "this machine has a GPU";
  EXPECT_TRUE(why.find("cuda:0") != std::string::npos) << why;
}

std::string name(const ::testing::TestParamInfo<std::tuple<Target, DType>>& info) {
  return std::get<0>(info.param).name + "_" + std::string(dtype_name(std::get<1>(info.param)));
}

INSTANTIATE_TEST_SUITE_P(AllBackends, BackendOps,
                         ::testing::Combine(::testing::ValuesIn(targets()),
                                            ::testing::Values(DType::F32, DType::BF16, DType::F16)),
                         name);

}  // namespace
}  // namespace mamba

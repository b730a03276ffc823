// The CPU's matrix kernels for every weight type (F32, BF16, F16, int8) and every SIMD target of the build
// against the fp32 oracle (cpu::matmul_forward and friends with the weights widened to fp32 exactly): each
// target runs on its own (restrict_simd), the ones this CPU lacks are reported as skipped, with their
// names. Then typed and quantized models against fp32. (tests/test_backend_ops.cpp runs the ops' shared
// contracts on every backend.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/runtime.h"
#include "model/engine.h"
#include "ops/backend.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/ops.h"
#include "ops/cpu/simd.h"
#include "small_model.h"
#include "test_util.h"

namespace mamba {
namespace {

using test::relative_error;

// A (rows, cols) weight in `dtype` made from normal values, and the same weight widened to fp32: the
// oracle's input, exactly the values the typed kernels read.
struct TypedWeight {
  std::vector<uint8_t> bytes;
  WeightView view;
  std::vector<float> f32;
};

TypedWeight make_weight(DType dtype, int64_t rows, int64_t cols, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (float& x : w) x = static_cast<float>(rng.normal());
  TypedWeight t;
  const int64_t values = rows * cols * static_cast<int64_t>(dtype_size(dtype));
  const int64_t at = (values + 63) / 64 * 64;
  t.bytes.resize(static_cast<size_t>(at + (dtype == DType::I8 ? 2 * rows * q8_blocks(cols) : 0)) + 64);
  t.view = WeightView{t.bytes.data(), dtype, dtype == DType::I8 ? reinterpret_cast<uint16_t*>(t.bytes.data() + at) : nullptr};
  convert_weight(t.view, WeightView{w.data(), DType::F32}, rows, cols);
  t.f32.resize(w.size());
  convert_weight(WeightView{t.f32.data(), DType::F32}, t.view, rows, cols);
  return t;
}

const DType kWeightTypes[] = {DType::F32, DType::BF16, DType::F16, DType::I8};

// Restricts the kernels to one target for the scope of a test, or skips it when the CPU lacks it.
class SimdTargetTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    for (const cpu::SimdTarget& t : cpu::simd_targets()) {
      if (t.name != GetParam()) continue;
      if (!t.supported) GTEST_SKIP() << GetParam() << ": this CPU lacks it";
      ASSERT_TRUE(cpu::restrict_simd(GetParam()));
      ASSERT_EQ(cpu::simd_target(), GetParam());
      return;
    }
    GTEST_SKIP() << GetParam() << ": not compiled into this build";
  }
  void TearDown() override {
    cpu::restrict_simd("");
    set_bf16_products(false);
  }
};

// out = inp · wᵀ (+ bias) through the dispatch (rows ≤ 16: the SIMD kernels; more: widened panels and
// sgemm) against sgemm on the fp32 weight, over lengths that are and are not multiples of a vector or a
// block, strided rows, with and without bias.
TEST_P(SimdTargetTest, MatmulEveryWeightTypeAgainstTheFp32Oracle) {
  const int64_t Ms[] = {1, 2, 3, 4, 5, 8, 13, 16, 17, 40};
  const std::pair<int, int> KNs[] = {{1, 3}, {7, 5}, {31, 4}, {32, 9}, {33, 2}, {48, 37}, {100, 16}, {768, 24}};
  uint64_t seed = 1;
  for (bool products : {false, true}) {  // the exact path, then bf16 products where the CPU has them
    for (DType dtype : kWeightTypes) {
      set_bf16_products(products);
      for (auto [K, N] : KNs) {
        TypedWeight w = make_weight(dtype, N, K, seed++);
        Rng rng(seed++);
        std::vector<float> bias(static_cast<size_t>(N));
        for (float& b : bias) b = static_cast<float>(rng.normal());
        for (int64_t M : Ms) {
          const bool with_bias = (M + K) % 2 == 0;
          const int64_t ldi = K + 3, ldo = N + 2;
          std::vector<float> x(static_cast<size_t>(M * ldi));
          for (float& v : x) v = static_cast<float>(rng.normal());
          std::vector<float> out(static_cast<size_t>(M * ldo), 7.0f), ref(out);
          MatmulParams p;
          p.out = out.data(), p.ldo = ldo, p.inp = x.data(), p.ldi = ldi, p.weight = w.view;
          p.bias = with_bias ? bias.data() : nullptr;
          p.M = M, p.K = K, p.N = N;
          cpu::matmul(p);
          // With bf16 products (AVX-512 BF16 and oneDNN), many rows of BF16 weights meet the activations
          // rounded to bf16: the oracle rounds them too, and sits within bf16's rounding of the exact one.
          const bool bf16_products = products && dtype == DType::BF16 && M > cpu::kGemvMaxRows && cpu::bf16_gemm_available();
          std::vector<float> xr(x);
          if (bf16_products) {
            for (float& v : xr) v = bf16_to_f32(f32_to_bf16(v));
            std::vector<float> exact(ref);
            cpu::matmul_forward(exact.data(), ldo, x.data(), ldi, w.f32.data(), p.bias, M, K, N);
            EXPECT_LE(relative_error(out, exact), 1.0 / 256) << "BF16 products, M " << M << " K " << K << " N " << N;
          }
          cpu::matmul_forward(ref.data(), ldo, xr.data(), ldi, w.f32.data(), p.bias, M, K, N);
          if (dtype == DType::I8 && M <= cpu::kGemvMaxRows) {
            // The int8 GEMV rounds each block of kQ8Block activations to int16 (steps of the block's largest
            // magnitude / 32767): each output is off by at most Σ_k |w_k| · half a step of k's block, plus
            // fp32 rounding.
            for (int64_t m = 0; m < M; m++) {
              for (int n = 0; n < N; n++) {
                double bound = 0, magnitude = 0;
                for (int k0 = 0; k0 < K; k0 += kQ8Block) {
                  double peak = 0;
                  for (int k = k0; k < std::min(K, k0 + kQ8Block); k++) peak = std::max(peak, std::abs(double{x[m * ldi + k]}));
                  for (int k = k0; k < std::min(K, k0 + kQ8Block); k++) {
                    const double wk = std::abs(double{w.f32[static_cast<size_t>(n) * K + k]});
                    bound += wk * peak / 65534.0;
                    magnitude += wk * std::abs(double{x[m * ldi + k]});
                  }
                }
                EXPECT_LE(std::abs(double{out[m * ldo + n]} - ref[m * ldo + n]), bound + 1e-6 * magnitude + 1e-6)
                    << "I8 M " << M << " K " << K << " N " << N << " at (" << m << ", " << n << ")";
              }
            }
          } else {
            EXPECT_LE(relative_error(out, ref), 2e-6 * std::sqrt(static_cast<double>(K)) + 1e-6)
                << dtype_name(dtype) << " M " << M << " K " << K << " N " << N << (with_bias ? " bias" : "");
          }
          for (int64_t m = 0; m < M; m++) {  // the padding between rows is untouched
            for (int64_t n = N; n < ldo; n++) ASSERT_EQ(out[m * ldo + n], 7.0f);
          }
        }
      }
    }
  }
}

// A NaN or an infinity among the activations reaches every output it touches (the model's non-finite
// check depends on it), also through the int8 kernels' rounding of activations to int16; a block of
// zeros or of values too small to scale contributes nothing.
TEST_P(SimdTargetTest, NonFiniteActivationsReachTheOutputs) {
  const int K = 100, N = 5;
  for (DType dtype : kWeightTypes) {
    TypedWeight w = make_weight(dtype, N, K, 11);
    for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
      std::vector<float> x(K, 0.5f), out(N);
      x[37] = bad;
      MatmulParams p;
      p.out = out.data(), p.ldo = N, p.inp = x.data(), p.ldi = K, p.weight = w.view, p.M = 1, p.K = K, p.N = N;
      cpu::matmul(p);
      for (int n = 0; n < N; n++) EXPECT_FALSE(std::isfinite(out[n])) << dtype_name(dtype) << " " << bad << " row " << n;
    }
    // Many rows (the GEMM paths, bf16 products included): the row with the bad value alone.
    const int64_t M = cpu::kGemvMaxRows + 3;
    for (auto [products, bad] : {std::pair{false, std::nanf("")}, {false, INFINITY}, {true, std::nanf("")}, {true, INFINITY}}) {
      set_bf16_products(products);
      std::vector<float> xs(static_cast<size_t>(M * K), 0.5f), outs(static_cast<size_t>(M * N));
      xs[2 * K + 37] = bad;
      MatmulParams p;
      p.out = outs.data(), p.ldo = N, p.inp = xs.data(), p.ldi = K, p.weight = w.view, p.M = M, p.K = K, p.N = N;
      cpu::matmul(p);
      for (int64_t m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
          EXPECT_EQ(std::isfinite(outs[m * N + n]), m != 2)
              << dtype_name(dtype) << (products ? " bf16 products " : " ") << bad << " at (" << m << ", " << n << ")";
        }
      }
    }
    std::vector<float> x(K, 0.0f), out(N, 1.0f), ref(N);
    for (int k = 64; k < K; k++) x[k] = 1e-39f;  // subnormal: flushed to zero
    x[3] = 2.0f;
    MatmulParams p;
    p.out = out.data(), p.ldo = N, p.inp = x.data(), p.ldi = K, p.weight = w.view, p.M = 1, p.K = K, p.N = N;
    cpu::matmul(p);
    for (int n = 0; n < N; n++) EXPECT_NEAR(out[n], 2.0f * w.f32[static_cast<size_t>(n) * K + 3], 1e-5) << dtype_name(dtype);
  }
}

TEST_P(SimdTargetTest, EmbeddingEveryWeightType) {
  const int V = 11, C = 45;
  for (DType dtype : kWeightTypes) {
    TypedWeight table = make_weight(dtype, V, C, 5);
    const int32_t tokens[] = {3, 0, 10, 3};
    std::vector<float> out(4 * C), ref(4 * C);
    cpu::embedding(out.data(), tokens, table.view, 4, C);
    cpu::embedding_forward(ref.data(), tokens, table.f32.data(), 4, C);
    EXPECT_EQ(out, ref) << dtype_name(dtype);
  }
}

// bf16 products run where the CPU has AVX-512 BF16 and the kernels are not held below AVX-512: forcing
// AVX2 (MAMBA_CPU_TARGET) turns them off, and then many rows of BF16 weights take the widening path.
TEST(Bf16Products, FollowTheCpuAndTheTarget) {
  const bool cpu_has = __builtin_cpu_supports("avx512bf16");
  std::printf("  bf16 products: %s (%s)\n", cpu::bf16_gemm_available() ? "on" : "off", cpu::gemm_describe().c_str());
  if (!cpu_has) {
    EXPECT_FALSE(cpu::bf16_gemm_available());
    GTEST_SKIP() << "this CPU lacks AVX-512 BF16";
  }
  if (cpu::gemm_describe().rfind("oneDNN", 0) != 0) GTEST_SKIP() << "built without oneDNN";
  EXPECT_TRUE(cpu::bf16_gemm_available());
  ASSERT_TRUE(cpu::restrict_simd("AVX2"));
  EXPECT_FALSE(cpu::bf16_gemm_available());
  EXPECT_THROW(cpu::gemm_bf16(nullptr, 1, nullptr, 1, nullptr, 1, 1, 1), Error);
  cpu::restrict_simd("");
  EXPECT_TRUE(cpu::bf16_gemm_available());
  // A prefill-sized product (a 130m in_proj over 64 tokens) against sgemm on the same bf16 values.
  const int M = 64, K = 768, N = 3072;
  Rng rng(3);
  std::vector<uint16_t> a(static_cast<size_t>(M) * K), w(static_cast<size_t>(N) * K);
  std::vector<float> af(a.size()), wf(w.size()), out(static_cast<size_t>(M) * N), ref(out.size());
  for (size_t i = 0; i < a.size(); i++) af[i] = bf16_to_f32(a[i] = f32_to_bf16(static_cast<float>(rng.normal())));
  for (size_t i = 0; i < w.size(); i++) wf[i] = bf16_to_f32(w[i] = f32_to_bf16(static_cast<float>(0.02 * rng.normal())));
  cpu::gemm_bf16(out.data(), N, a.data(), K, w.data(), M, K, N);
  cpu::matmul_forward(ref.data(), N, af.data(), K, wf.data(), nullptr, M, K, N);
  EXPECT_LE(relative_error(out, ref), 2e-6 * std::sqrt(static_cast<double>(K)));
  // Through cpu::matmul over enough rows that the rounding of the activations runs on every thread.
  const int64_t rows = 2 * M;
  std::vector<float> x(static_cast<size_t>(rows) * K), got(static_cast<size_t>(rows) * N), want(got.size());
  for (size_t i = 0; i < x.size(); i++) x[i] = af[i % af.size()];
  MatmulParams p;
  p.out = got.data(), p.ldo = N, p.inp = x.data(), p.ldi = K, p.weight = WeightView{w.data(), DType::BF16, nullptr};
  p.M = rows, p.K = K, p.N = N;
  set_bf16_products(true);
  cpu::matmul(p);
  set_bf16_products(false);
  cpu::matmul_forward(want.data(), N, x.data(), K, wf.data(), nullptr, rows, K, N);
  EXPECT_LE(relative_error(got, want), 2e-6 * std::sqrt(static_cast<double>(K)));
}

// Every target compiled into this build (on x86: AVX3_DL, AVX3, AVX2, SSE4, SSSE3 and a portable one).
std::vector<std::string> compiled_targets() {
  std::vector<std::string> names;
  for (const cpu::SimdTarget& t : cpu::simd_targets()) names.push_back(t.name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(Cpu, SimdTargetTest, ::testing::ValuesIn(compiled_targets()),
                         [](const auto& p) { return p.param; });

TEST(SimdTargets, TheBestIsChosenAndUnknownNamesAreRefused) {
  const auto targets = cpu::simd_targets();
  ASSERT_FALSE(targets.empty());
  for (const cpu::SimdTarget& t : targets) std::printf("  %-8s %s\n", t.name.c_str(), t.supported ? "runs here" : "not on this CPU");
  EXPECT_FALSE(cpu::restrict_simd("NOT_A_TARGET"));
  for (const cpu::SimdTarget& t : targets) {
    if (t.supported) {
      EXPECT_EQ(cpu::simd_target(), t.name);  // the best one this CPU has
      break;
    }
  }
}

// q8 blocks as GGUF's q8_0: d = max|w|/127 stored as F16, q = round(w/d); the last block of a row may be
// short; an all-zero block has d = 0.
TEST(Quantize, Q8BlocksAreGgufQ8AndWithinHalfAStep) {
  const int64_t rows = 3, cols = 70;
  Rng rng(9);
  std::vector<float> w(rows * cols);
  for (float& x : w) x = static_cast<float>(rng.normal());
  for (int k = 32; k < 64; k++) w[k] = 0.0f;  // row 0, block 1
  std::vector<int8_t> q(w.size());
  std::vector<uint16_t> d(rows * q8_blocks(cols));
  quantize_q8(q.data(), d.data(), w.data(), rows, cols);
  std::vector<float> back(w.size());
  dequantize_q8(back.data(), q.data(), d.data(), rows, cols);
  EXPECT_EQ(d[1], 0);
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t b = 0; b < q8_blocks(cols); b++) {
      float amax = 0;
      const int64_t k0 = b * kQ8Block, k1 = std::min<int64_t>(cols, k0 + kQ8Block);
      for (int64_t k = k0; k < k1; k++) amax = std::max(amax, std::abs(w[r * cols + k]));
      const float scale = amax / 127.0f;
      EXPECT_EQ(d[r * q8_blocks(cols) + b], f32_to_f16(scale));
      for (int64_t k = k0; k < k1; k++) {
        EXPECT_EQ(q[r * cols + k], static_cast<int8_t>(std::round(w[r * cols + k] / scale * (scale ? 1 : 0))));
        // Half a step, plus the F16 rounding of d times at most 127 steps.
        EXPECT_LE(std::abs(back[r * cols + k] - w[r * cols + k]), scale * (0.5f + 127.0f / 2048.0f) + 1e-7f);
      }
    }
  }
}

// A model's matrices in each type through the whole forward: the logits stay near fp32's, and a
// quantized model saved and loaded gives exactly the logits of quantizing on load.
TEST(TypedModel, EveryWeightTypeNearFp32AndQuantizedFilesRoundTrip) {
  test::TempDir tmp;
  Model f32 = test::small_model(3);
  f32.save(tmp / "f32", DType::F32);
  const int B = 2, L = 9, V = f32.config().vocab_size;
  const auto tokens = test::random_tokens(B * L, V, 4);
  auto run = [&](const Model& m) {
    Engine engine(m);
    State state(m.config(), B);
    std::vector<float> logits(static_cast<size_t>(B) * L * V);
    engine.forward(tokens.data(), B, L, state, logits.data());
    return logits;
  };
  const std::vector<float> ref = run(Model::load(tmp / "f32"));
  const std::pair<DType, double> tolerances[] = {{DType::BF16, 3e-2}, {DType::F16, 3e-3}, {DType::I8, 3e-2}};
  for (auto [dtype, tol] : tolerances) {
    Model m = Model::load(tmp / "f32", dtype);
    EXPECT_EQ(m.weight_dtype(), dtype);
    EXPECT_LE(relative_error(run(m), ref), tol) << dtype_name(dtype);
  }
  Model on_load = Model::load(tmp / "f32", DType::I8);
  on_load.save(tmp / "q8", DType::I8);
  Model from_file = Model::load(tmp / "q8");
  EXPECT_EQ(from_file.weight_dtype(), DType::I8);
  // The matrices are used in place from the file (small fp32 tensors that follow an odd-sized one in the
  // file are copied to align them).
  int64_t matrix_bytes = 0;
  for (const ParamSpec& spec : from_file.specs()) {
    if (spec.matrix) matrix_bytes += spec.numel + 2 * spec.shape[0] * q8_blocks(spec.numel / spec.shape[0]);
  }
  EXPECT_GE(from_file.mapped_bytes(), matrix_bytes);
  EXPECT_EQ(run(from_file), run(on_load));
  // Read back as fp32, the quantized file gives the dequantized weights: the same products, summed in
  // another order, except where the int8 GEMV rounds activations to int16 (2^-16 of a block's largest).
  EXPECT_LE(relative_error(run(Model::load(tmp / "q8", DType::F32)), run(on_load)), 1e-4);
}

// `mambacpp quantize` writes a folder that loads as int8 and scores like quantizing on load.
TEST(TypedModel, QuantizeCommandWritesAnInt8Folder) {
  test::TempDir tmp;
  const auto src = test::fixtures_dir() / "hf_f32_L3_bias_untied";
  const std::string command = std::string(MAMBA_CLI_PATH) + " quantize " + src.string() + " --out " +
                              (tmp / "q8").string() + " > /dev/null 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  Model from_file = Model::load(tmp / "q8");
  Model on_load = Model::load(src, DType::I8);
  EXPECT_EQ(from_file.weight_dtype(), DType::I8);
  EXPECT_EQ(from_file.params_f32(), on_load.params_f32());
}

}  // namespace
}  // namespace mamba

// Training on the GPU against the CPU: every parameter gradient of the golden fixtures and of the
// PyTorch training fixture (fp32, within 1e-5 of each tensor's largest), a 10-step AdamW trajectory with
// clipping and accumulation, resume bitwise on the GPU, checkpoints that move between the GPU and the CPU,
// and the CLI with --device cuda. Mixed precision against the CPU's bf16 and fp16 (the same code path,
// ops/cpu/half.h; tests/test_train_precision.cpp holds it to fp32): gradients, trajectories, resume,
// overfitting, fp16's skipped steps. Skipped where this build or machine has no GPU; the refusals run
// everywhere.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/npy.h"
#include "model/backprop.h"
#include "model/model.h"
#include "model/trainer.h"
#include "small_model.h"
#include "test_util.h"

namespace mamba {
namespace {

using test::fixture_cases;
using test::fixtures_dir;
using test::random_tokens;
using test::relative_error;

using test::have_gpu;
using test::kGpu;

// The gradients of one batch from zero, on a backend, in `dtype`; params and the result in host memory.
std::vector<float> gradients(const Config& c, const std::vector<float>& params, const std::vector<int32_t>& ids,
                             const std::vector<int32_t>& targets, int B, int L, Backend& backend, double* loss,
                             DType dtype = DType::F32, int recompute = 1) {
  Backprop bp(c, B, L, 256, backend, dtype, recompute);
  const size_t bytes = sizeof(float) * params.size();
  Buffer d_params(backend, bytes), d_grads(backend, bytes);
  backend.upload(d_params.data(), params.data(), bytes);
  backend.fill_zero(d_grads.data(), bytes);
  *loss = bp.step(d_params.as<float>(), d_grads.as<float>(), ids.data(), targets.data(), -100);
  std::vector<float> grads(params.size());
  backend.download(grads.data(), d_grads.data(), bytes);
  return grads;
}

void expect_gradients_close(const Model& model, const std::vector<int32_t>& ids, const std::vector<int32_t>& targets,
                            int B, int L, double tolerance) {
  const std::vector<float> params = model.params_f32();
  double loss_cpu = 0, loss_gpu = 0;
  const auto cpu = gradients(model.config(), params, ids, targets, B, L, Backend::cpu(), &loss_cpu);
  const auto gpu = gradients(model.config(), params, ids, targets, B, L, Backend::get(kGpu), &loss_gpu);
  EXPECT_LE(std::abs(loss_gpu - loss_cpu), 1e-6 * std::abs(loss_cpu));
  for (const ParamSpec& s : model.specs()) {
    const double err = relative_error(gpu.data() + s.offset, cpu.data() + s.offset, static_cast<size_t>(s.numel));
    EXPECT_LE(err, tolerance) << s.name;
  }
}

class GpuGradients : public ::testing::TestWithParam<std::string> {};

// fp32 gradients of every golden fixture's model on random batches (with ignored targets), per tensor.
TEST_P(GpuGradients, EqualTheCpusPerTensor) {
  REQUIRE_GPU();
  Model model = Model::load(fixtures_dir() / GetParam(), DType::F32);
  const Config& c = model.config();
  const int B = 2, L = 37;
  auto ids = random_tokens(B * L, c.vocab_size, 1), targets = random_tokens(B * L, c.vocab_size, 2);
  targets[5] = targets[40] = -100;
  if (c.ssm_mode == SsmMode::Lti) {
    EXPECT_THROW(Backprop(c, B, L, 256, Backend::get(kGpu)), Error);  // the LTI scan is the CPU's only
    return;
  }
  expect_gradients_close(model, ids, targets, B, L, 1e-5);
}

// bf16 gradients of every golden fixture's model on the GPU against the CPU's bf16, per tensor, as close as
// the CPU's bf16 is to its fp32 (at least 1e-2 of the tensor's largest): the products' sums run in another
// order on each device (cuBLAS, OpenBLAS), so their bf16 roundings differ now and then by a unit. Both round
// dlogits to bf16 before the head's products. A failure names how far each device's bf16 is from fp32, to
// tell a less accurate GPU path from a bound too tight for two independent roundings.
TEST_P(GpuGradients, Bf16EqualTheCpusBf16) {
  REQUIRE_GPU();
  Model model = Model::load(fixtures_dir() / GetParam(), DType::F32);
  const Config& c = model.config();
  const int B = 2, L = 37;
  auto ids = random_tokens(B * L, c.vocab_size, 1), targets = random_tokens(B * L, c.vocab_size, 2);
  targets[5] = targets[40] = -100;
  if (c.ssm_mode == SsmMode::Lti) {
    EXPECT_THROW(Backprop(c, B, L, 256, Backend::get(kGpu), DType::BF16), Error);
    return;
  }
  const std::vector<float> params = model.params_f32();
  double loss_f32 = 0, loss_cpu = 0, loss_gpu = 0;
  const auto f32 = gradients(c, params, ids, targets, B, L, Backend::cpu(), &loss_f32);
  const auto cpu = gradients(c, params, ids, targets, B, L, Backend::cpu(), &loss_cpu, DType::BF16);
  const auto gpu = gradients(c, params, ids, targets, B, L, Backend::get(kGpu), &loss_gpu, DType::BF16);
  EXPECT_LE(std::abs(loss_gpu - loss_cpu), std::max(2e-3, 2 * std::abs(loss_cpu - loss_f32) / std::abs(loss_f32)) *
                                               std::abs(loss_cpu));
  for (const ParamSpec& s : model.specs()) {
    const size_t n = static_cast<size_t>(s.numel);
    const double bf16_vs_f32 = relative_error(cpu.data() + s.offset, f32.data() + s.offset, n);
    EXPECT_LE(relative_error(gpu.data() + s.offset, cpu.data() + s.offset, n), std::max(1e-2, 2 * bf16_vs_f32))
        << s.name << " (the GPU's bf16 vs fp32: " << relative_error(gpu.data() + s.offset, f32.data() + s.offset, n)
        << ", the CPU's: " << bf16_vs_f32 << ")";
  }
}

// The recomputation levels on the GPU: the forward's kernels run again on the same inputs, so the loss and
// the gradients are the same bit for bit at every level (the GPU's reductions keep a fixed order).
TEST_P(GpuGradients, RecomputeLevelsAreBitwiseEqual) {
  REQUIRE_GPU();
  Model model = Model::load(fixtures_dir() / GetParam(), DType::F32);
  const Config& c = model.config();
  if (c.ssm_mode == SsmMode::Lti) GTEST_SKIP() << "the LTI scan is the CPU's only";
  const int B = 2, L = 37;
  auto ids = random_tokens(B * L, c.vocab_size, 1), targets = random_tokens(B * L, c.vocab_size, 2);
  const std::vector<float> params = model.params_f32();
  for (DType dtype : {DType::F32, DType::BF16}) {
    double loss0 = 0;
    const auto kept = gradients(c, params, ids, targets, B, L, Backend::get(kGpu), &loss0, dtype, 0);
    for (int level = 1; level <= Backprop::kMaxRecompute; level++) {
      double loss = 0;
      const auto got = gradients(c, params, ids, targets, B, L, Backend::get(kGpu), &loss, dtype, level);
      EXPECT_EQ(loss, loss0) << "level " << level;
      EXPECT_EQ(std::memcmp(got.data(), kept.data(), sizeof(float) * got.size()), 0)
          << "level " << level << " " << dtype_name(dtype);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GpuGradients, ::testing::ValuesIn(fixture_cases()),
                         [](const auto& p) { return p.param; });

std::vector<int32_t> read_ids(const std::filesystem::path& path) {
  auto v = read_npy(path).as_i64();
  return {v.begin(), v.end()};
}

// The PyTorch training fixture (tools/mamba_train_ref.py): the GPU's gradients equal the CPU's, which
// test_train.cpp holds to the reference's.
TEST(GpuTraining, TrainingFixtureGradientsEqualTheCpus) {
  REQUIRE_GPU();
  const auto dir = fixtures_dir() / "train";
  Model model = Model::load(dir);
  expect_gradients_close(model, read_ids(dir / "ids.npy"), read_ids(dir / "targets.npy"), 2, 23, 1e-5);
}

// The model and corpus of these tests (tests/small_model.h).
Config byte_config() { return test::byte_config(32, 16, 2); }
Dataset text_dataset(const test::TempDir& tmp) { return test::text_dataset(tmp.path(), 60); }

TrainOptions options(int64_t steps) {
  TrainOptions o;
  o.batch = 3;
  o.seq_len = 40;
  o.accum = 2;
  o.steps = steps;
  o.warmup = 2;
  o.lr = 3e-3;
  o.clip = 0.5;  // clipping at work on most steps
  o.eval_every = 5;
  o.eval_batches = 2;
  return o;
}

struct LogLine {
  double loss, grad_norm;
};

std::vector<LogLine> log_lines(const std::filesystem::path& log) {
  std::vector<LogLine> out;
  std::ifstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back({j["loss"].get<double>(), j["grad_norm"].get<double>()});
  }
  return out;
}

std::vector<float> model_params(const std::filesystem::path& dir) { return Model::load(dir).params_f32(); }

// 10 steps of AdamW (accumulation, clipping, weight decay) on the GPU follow the CPU's within 1e-5.
TEST(GpuTraining, TenStepTrajectoryEqualsTheCpus) {
  REQUIRE_GPU();
  test::TempDir tmp;
  Dataset data = text_dataset(tmp);
  Config c = byte_config();
  Trainer(c, test::initial_params(c, 5), data, options(10), tmp / "cpu").run();
  Trainer(c, test::initial_params(c, 5), data, options(10), tmp / "gpu", Backend::get(kGpu)).run();
  const auto a = log_lines(tmp / "cpu" / "log.jsonl"), b = log_lines(tmp / "gpu" / "log.jsonl");
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u);
  for (size_t i = 0; i < a.size(); i++) {
    EXPECT_LE(std::abs(b[i].loss - a[i].loss), 1e-5 * std::abs(a[i].loss)) << "step " << i + 1;
    EXPECT_LE(std::abs(b[i].grad_norm - a[i].grad_norm), 1e-5 * a[i].grad_norm) << "step " << i + 1;
  }
  EXPECT_LE(relative_error(model_params(tmp / "gpu"), model_params(tmp / "cpu")), 1e-5);
}

// Stopped after 5 of 8 steps and resumed on the GPU, a run with `opts` (8 steps) is bitwise the
// uninterrupted one (deterministic kernels), and resumes in the precision it ran in.
void expect_bitwise_resume(const TrainOptions& opts) {
  test::TempDir tmp;
  Dataset data = text_dataset(tmp);
  Config c = byte_config();
  Backend& gpu = Backend::get(kGpu);
  Trainer(c, test::initial_params(c, 6), data, opts, tmp / "whole", gpu).run();
  {
    Trainer part(c, test::initial_params(c, 6), data, opts, tmp / "split", gpu);
    EXPECT_TRUE(part.run(nullptr, 5).interrupted);
  }
  Trainer resumed = Trainer::resume(tmp / "split", data, nlohmann::json::object(), tmp / "split", gpu);
  EXPECT_EQ(resumed.step(), 5);
  EXPECT_EQ(resumed.options().dtype, opts.dtype);
  resumed.run();
  const auto a = log_lines(tmp / "whole" / "log.jsonl"), b = log_lines(tmp / "split" / "log.jsonl");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); i++) {
    EXPECT_EQ(a[i].loss, b[i].loss) << "step " << i + 1;
    EXPECT_EQ(a[i].grad_norm, b[i].grad_norm) << "step " << i + 1;
  }
  EXPECT_EQ(model_params(tmp / "whole"), model_params(tmp / "split"));
}

TEST(GpuTraining, ResumeIsBitwiseIdentical) {
  REQUIRE_GPU();
  expect_bitwise_resume(options(8));
}

// A checkpoint written on the GPU resumes on the CPU and back: GPU → CPU → GPU follows the all-CPU run.
TEST(GpuTraining, CheckpointsMoveBetweenGpuAndCpu) {
  REQUIRE_GPU();
  test::TempDir tmp;
  Dataset data = text_dataset(tmp);
  Config c = byte_config();
  Backend& gpu = Backend::get(kGpu);
  Trainer(c, test::initial_params(c, 7), data, options(9), tmp / "cpu").run();
  {
    Trainer first(c, test::initial_params(c, 7), data, options(9), tmp / "mixed", gpu);
    EXPECT_TRUE(first.run(nullptr, 3).interrupted);
  }
  {
    Trainer second = Trainer::resume(tmp / "mixed", data, nlohmann::json::object(), tmp / "mixed");  // the CPU
    EXPECT_TRUE(second.run(nullptr, 6).interrupted);
  }
  Trainer third = Trainer::resume(tmp / "mixed", data, nlohmann::json::object(), tmp / "mixed", gpu);
  EXPECT_EQ(third.step(), 6);
  third.run();
  const auto a = log_lines(tmp / "cpu" / "log.jsonl"), b = log_lines(tmp / "mixed" / "log.jsonl");
  ASSERT_EQ(a.size(), 9u);
  ASSERT_EQ(b.size(), 9u);
  for (size_t i = 0; i < a.size(); i++) {
    EXPECT_LE(std::abs(b[i].loss - a[i].loss), 1e-5 * std::abs(a[i].loss)) << "step " << i + 1;
  }
  EXPECT_LE(relative_error(model_params(tmp / "mixed"), model_params(tmp / "cpu")), 1e-5);
}

// A tiny model trained on one fixed batch of random bytes (300 steps at lr 1e-2) on the GPU in `dtype`
// ends below loss 0.05, as it does on the CPU.
void expect_overfit(DType dtype) {
  test::TempDir tmp;
  Config c = byte_config();
  const int B = 2, L = 16;
  std::vector<int32_t> rows(static_cast<size_t>(B) * (L + 1));
  Rng rng(3);
  for (auto& t : rows) t = static_cast<int32_t>(rng.below(256));
  write_npy(tmp / "batch.npy", rows.data(), {B, L + 1});
  Dataset data = load_fixed_batch(tmp / "batch.npy");
  TrainOptions o;
  o.batch = B, o.seq_len = L, o.steps = 300, o.warmup = 0, o.lr = 1e-2, o.schedule = "constant";
  o.weight_decay = 0, o.eval_every = 0, o.fixed_batch = true, o.dtype = dtype;
  Trainer t(c, test::initial_params(c, 1), data, o, tmp / "run", Backend::get(kGpu));
  EXPECT_LT(t.run().loss, 0.05) << dtype_name(dtype);
}

TEST(GpuTraining, OverfitsOneBatch) {
  REQUIRE_GPU();
  expect_overfit(DType::F32);
}

// ---- mixed precision ----

TrainOptions mixed_options(int64_t steps, DType dtype) {
  TrainOptions o = options(steps);
  o.dtype = dtype;
  return o;
}

// 10 steps in bf16 and in fp16 (accumulation, clipping, loss scaling) on the GPU follow the CPU's in the
// same precision. The CPU's bf16 stays within 1e-4 of its fp32 losses in this setting and 6e-2 of its
// parameters (Adam's normalized steps turn the sign of near-zero gradients into whole steps); the bounds
// allow the GPU's rounding the same room.
TEST(GpuMixedPrecision, TenStepsFollowTheCpusInTheSamePrecision) {
  REQUIRE_GPU();
  for (DType dtype : {DType::BF16, DType::F16}) {
    test::TempDir tmp;
    Dataset data = text_dataset(tmp);
    Config c = byte_config();
    Trainer(c, test::initial_params(c, 5), data, mixed_options(10, dtype), tmp / "cpu").run();
    Trainer(c, test::initial_params(c, 5), data, mixed_options(10, dtype), tmp / "gpu", Backend::get(kGpu)).run();
    const auto a = log_lines(tmp / "cpu" / "log.jsonl"), b = log_lines(tmp / "gpu" / "log.jsonl");
    ASSERT_EQ(a.size(), 10u);
    ASSERT_EQ(b.size(), 10u);
    const std::string name(dtype_name(dtype));
    for (size_t i = 0; i < a.size(); i++) {
      EXPECT_LE(std::abs(b[i].loss - a[i].loss), 2e-3 * std::abs(a[i].loss)) << name << " step " << i + 1;
      EXPECT_LE(std::abs(b[i].grad_norm - a[i].grad_norm), 3e-2 * a[i].grad_norm) << name << " step " << i + 1;
    }
    EXPECT_LE(relative_error(model_params(tmp / "gpu"), model_params(tmp / "cpu")), 0.15) << name;
  }
}

// The same in bf16.
TEST(GpuMixedPrecision, Bf16ResumeIsBitwiseIdentical) {
  REQUIRE_GPU();
  expect_bitwise_resume(mixed_options(8, DType::BF16));
}

TEST(GpuMixedPrecision, Bf16OverfitsOneBatch) {
  REQUIRE_GPU();
  expect_overfit(DType::BF16);
}

// fp16 on the GPU with an embedding scaled up 10^4 times (tests/test_train_precision.cpp): the first step's
// gradients overflow, it is skipped with the parameters left as they were, and the scale halves until they fit.
TEST(GpuMixedPrecision, Fp16OverflowSkipsTheStepAndHalvesTheScale) {
  REQUIRE_GPU();
  test::TempDir tmp;
  Dataset data = text_dataset(tmp);
  Config c = byte_config();
  std::vector<float> params = test::initial_params(c, 6);
  const ParamSpec embedding = param_specs(c).front();
  for (int64_t i = 0; i < embedding.numel; i++) params[embedding.offset + i] *= 1e4f;
  Trainer one(c, params, data, mixed_options(1, DType::F16), tmp / "one", Backend::get(kGpu));
  EXPECT_EQ(one.run().skipped_steps, 1);
  EXPECT_EQ(one.params(), params);
  Trainer t(c, params, data, mixed_options(8, DType::F16), tmp / "run", Backend::get(kGpu));
  const TrainResult r = t.run();
  EXPECT_GE(r.skipped_steps, 1);
  EXPECT_LT(r.skipped_steps, 8);
  std::ifstream in(tmp / "run" / "log.jsonl");
  std::string line;
  double scale = 65536.0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["loss_scale"].get<double>(), scale) << line;
    if (j.value("skipped", false)) scale /= 2;
  }
}

// mambacpp train --device cuda trains and saves; without a GPU it says why and never trains on the CPU.
TEST(GpuCli, TrainOnTheGpuAndClearRefusalWithout) {
  test::TempDir tmp;
  text_dataset(tmp);
  std::string why;
  const bool gpu = have_gpu(&why);
  const std::string cmd = std::string(MAMBA_CLI_PATH) + " train --data " + (tmp / "text").string() +
                          " --d-model 32 --n-layer 2 --seq-len 32 --batch 2 --steps 3 --eval-every 0 --eval-batches 1"
                          " --device cuda --progress off --out " + (tmp / "run").string() + " 2>" +
                          (tmp / "err.txt").string();
  const int rc = std::system(cmd.c_str());
  std::ifstream err(tmp / "err.txt");
  const std::string text((std::istreambuf_iterator<char>(err)), {});
  if (!gpu) {
    EXPECT_NE(rc, 0);
    EXPECT_NE(text.find("cuda:0"), std::string::npos) << text;
    EXPECT_FALSE(std::filesystem::exists(tmp / "run" / "model.safetensors"));
    return;
  }
  ASSERT_EQ(rc, 0) << text;
  EXPECT_EQ(log_lines(tmp / "run" / "log.jsonl").size(), 3u);
  EXPECT_TRUE(std::filesystem::exists(tmp / "run" / "checkpoints" / "step-00000003" / "optimizer.safetensors"));
  // bf16 is the GPU's default precision; the checkpoint holds the fp32 masters.
  std::ifstream state(tmp / "run" / "checkpoints" / "step-00000003" / "trainer.json");
  EXPECT_EQ(nlohmann::json::parse(state)["options"]["dtype"], "bf16");
  EXPECT_EQ(Model::load(tmp / "run").file_dtype(), DType::F32);
}

}  // namespace
}  // namespace mamba

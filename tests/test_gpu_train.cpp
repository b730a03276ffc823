// Training on the GPU against the CPU: every parameter gradient of the golden fixtures and of the
// PyTorch training fixture (fp32, within 1e-5 of each tensor's largest), a 10-step AdamW trajectory with
// clipping and accumulation, resume bitwise on the GPU, checkpoints that move between the GPU and the CPU,
// and the CLI with --device cuda. Skipped where this build or machine has no GPU; the refusals run
// everywhere.
#include <gtest/gtest.h>

#include <cstdio>
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

// The gradients of one batch from zero, on a backend; params and the result in host memory.
std::vector<float> gradients(const Config& c, const std::vector<float>& params, const std::vector<int32_t>& ids,
                             const std::vector<int32_t>& targets, int B, int L, Backend& backend, double* loss) {
  Backprop bp(c, B, L, 256, backend);
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

// Stopped and resumed on the GPU, a run is bitwise the uninterrupted one (deterministic kernels).
TEST(GpuTraining, ResumeIsBitwiseIdentical) {
  REQUIRE_GPU();
  test::TempDir tmp;
  Dataset data = text_dataset(tmp);
  Config c = byte_config();
  Backend& gpu = Backend::get(kGpu);
  Trainer(c, test::initial_params(c, 6), data, options(8), tmp / "whole", gpu).run();
  {
    Trainer part(c, test::initial_params(c, 6), data, options(8), tmp / "split", gpu);
    EXPECT_TRUE(part.run(nullptr, 5).interrupted);
  }
  Trainer resumed = Trainer::resume(tmp / "split", data, nlohmann::json::object(), tmp / "split", gpu);
  EXPECT_EQ(resumed.step(), 5);
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

// A tiny model overfits one batch on the GPU as it does on the CPU.
TEST(GpuTraining, OverfitsOneBatch) {
  REQUIRE_GPU();
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
  o.weight_decay = 0, o.eval_every = 0, o.fixed_batch = true;
  Trainer t(c, test::initial_params(c, 1), data, o, tmp / "run", Backend::get(kGpu));
  const TrainResult r = t.run();
  EXPECT_LT(r.loss, 0.05);
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
}

}  // namespace
}  // namespace mamba

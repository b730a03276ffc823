// Training: the whole model's gradients and AdamW trajectories against the PyTorch reference
// (tools/mamba_train_ref.py), a finite-difference check of the whole model, overfitting one batch,
// and checkpoints: exact resume, a save interrupted mid-write, a corrupted checkpoint.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <fstream>

#include "core/error.h"
#include "core/npy.h"
#include "core/safetensors.h"
#include "model/backprop.h"
#include "model/model.h"
#include "model/optimizer.h"
#include "model/trainer.h"
#include "grad_check.h"
#include "small_model.h"
#include "test_util.h"

namespace mamba {
namespace {

const std::filesystem::path kTrain = test::fixtures_dir() / "train";

std::vector<float> flat_params(const Model& model) {
  return model.params_f32();
}

std::vector<int32_t> read_ids(const std::filesystem::path& path) {
  auto v = read_npy(path).as_i64();
  return {v.begin(), v.end()};
}

// Compares a flat buffer against a safetensors file of the same names, tensor by tensor, relative to
// each tensor's largest value.
void expect_close_to_file(const std::vector<float>& values, const Model& model, const std::filesystem::path& file,
                          double tolerance) {
  SafeTensorsReader reader = SafeTensorsReader::open_file(file);
  for (const ParamSpec& s : model.specs()) {
    const TensorView* t = reader.find(s.name);
    ASSERT_NE(t, nullptr) << s.name;
    std::vector<float> expected(static_cast<size_t>(s.numel));
    convert_to_f32(expected.data(), t->data, t->dtype, expected.size());
    EXPECT_LE(test::relative_error(values.data() + s.offset, expected.data(), expected.size()), tolerance) << s.name;
  }
}

TEST(TrainParity, GradientsMatchTheReference) {
  Model model = Model::load(kTrain);
  auto params = flat_params(model);
  std::vector<float> grads(params.size(), 0.0f);
  auto ids = read_ids(kTrain / "ids.npy"), targets = read_ids(kTrain / "targets.npy");
  for (int chunk : {256, 5}) {  // the scan's saved-state interval changes nothing
    std::fill(grads.begin(), grads.end(), 0.0f);
    Backprop bp(model.config(), 2, 23, chunk);
    const double loss = bp.step(params.data(), grads.data(), ids.data(), targets.data(), -100);
    const double expected = read_npy(kTrain / "loss.npy").as_f32()[0];
    EXPECT_NEAR(loss, expected, 1e-5 * std::abs(expected));
    expect_close_to_file(grads, model, kTrain / "grads.safetensors", 1e-4);
  }
}

// The recomputation levels trade memory for time: the same kernels on the same inputs, so the same loss and
// gradients bit for bit, in fp32 and bf16, with less kept at each level and within bytes_needed.
TEST(TrainParity, RecomputeLevelsGiveTheSameGradients) {
  Model model = Model::load(kTrain);
  const Config& c = model.config();
  auto params = flat_params(model);
  auto ids = read_ids(kTrain / "ids.npy"), targets = read_ids(kTrain / "targets.npy");
  for (DType dtype : {DType::F32, DType::BF16}) {
    std::vector<float> kept;
    double kept_loss = 0;
    int64_t bytes_before = INT64_MAX;
    for (int level = 0; level <= Backprop::kMaxRecompute; level++) {
      std::vector<float> grads(params.size(), 0.0f);
      Backprop bp(c, 2, 23, 5, Backend::cpu(), dtype, level);  // chunks of 5: the scan keeps states
      const double loss = bp.step(params.data(), grads.data(), ids.data(), targets.data(), -100);
      EXPECT_LT(bp.activation_bytes(), bytes_before) << "level " << level;
      bytes_before = bp.activation_bytes();
      EXPECT_GE(Backprop::bytes_needed(c, 2, 23, 5, dtype, level), bp.activation_bytes() + bp.weight_copy_bytes());
      if (level == 0) {
        kept = grads;
        kept_loss = loss;
        continue;
      }
      EXPECT_EQ(loss, kept_loss) << "level " << level;
      EXPECT_EQ(std::memcmp(grads.data(), kept.data(), sizeof(float) * grads.size()), 0)
          << "level " << level << " " << dtype_name(dtype);
    }
  }
  EXPECT_THROW(Backprop(c, 2, 23, 5, Backend::cpu(), DType::F32, Backprop::kMaxRecompute + 1), Error);
}

struct Trajectory {
  const char* suffix;
  double weight_decay, clip;
};

class AdamWParity : public ::testing::TestWithParam<Trajectory> {};

TEST_P(AdamWParity, TenStepsMatchTorch) {
  const Trajectory run = GetParam();
  Model model = Model::load(kTrain);
  auto params = flat_params(model);
  std::vector<float> grads(params.size());
  auto ids = read_ids(kTrain / "ids.npy"), targets = read_ids(kTrain / "targets.npy");
  const auto expected = read_npy(kTrain / (std::string("trajectory") + run.suffix + ".npy")).as_f32();
  std::vector<float> norms;
  if (run.clip > 0) norms = read_npy(kTrain / "grad_norms_clip.npy").as_f32();
  Backprop bp(model.config(), 2, 23);
  AdamW adam(model.specs(), static_cast<int64_t>(params.size()), AdamWOptions{1e-2, 0.9, 0.95, 1e-8, run.weight_decay});
  for (int k = 0; k < 10; k++) {
    std::fill(grads.begin(), grads.end(), 0.0f);
    const double loss = bp.step(params.data(), grads.data(), ids.data(), targets.data(), -100);
    EXPECT_LE(std::abs(loss - expected[k]) / std::abs(expected[k]), 1e-4) << "step " << k;
    if (run.clip > 0) {
      const double norm = clip_grad_norm(grads.data(), static_cast<int64_t>(grads.size()), run.clip);
      EXPECT_LE(std::abs(norm - norms[k]) / norms[k], 1e-4) << "step " << k;
    }
    adam.update(params.data(), grads.data(), 1e-2);
  }
  expect_close_to_file(params, model, kTrain / (std::string("final_params") + run.suffix + ".safetensors"), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Runs, AdamWParity,
                         ::testing::Values(Trajectory{"", 0.0, 0.0}, Trajectory{"_wd", 0.1, 0.0},
                                           Trajectory{"_clip", 0.1, 0.5}),
                         [](const auto& p) { return std::string(p.param.suffix).empty() ? "plain" : p.param.suffix + 1; });

// A tiny model built here (not from the fixture), its gradient against central differences of the
// loss in double-precision accumulation of many fp32 forwards: a few entries of every tensor.
TEST(TrainGradients, WholeModelAgainstFiniteDifferences) {
  Config c;
  c.d_model = 8;
  c.n_layer = 2;
  c.vocab_size = 11;
  c.d_state = 3;
  c.dt_rank = 2;
  c.use_bias = true;
  c.tie_embeddings = false;
  test::expect_model_gradient_matches_finite_differences(c);
}

// The model, corpus and options of these tests (tests/small_model.h).
using test::tiny_byte_config;
using test::tiny_options;
Dataset tiny_text_dataset(const test::TempDir& tmp) { return test::tiny_text_dataset(tmp.path()); }

std::vector<double> losses(const std::filesystem::path& log) {
  std::vector<double> out;
  std::ifstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());  // not the lines that note a resume
  }
  return out;
}

TEST(Training, OverfitsOneBatch) {
  Config c = tiny_byte_config();
  auto params = test::initial_params(c, 1);
  Backprop bp(c, 2, 16);
  AdamW adam(param_specs(c), static_cast<int64_t>(params.size()), AdamWOptions{1e-2, 0.9, 0.95, 1e-8, 0.0});
  std::vector<int32_t> ids(32), targets(32);
  Rng rng(3);
  for (int i = 0; i < 32; i++) ids[i] = static_cast<int32_t>(rng.below(256));
  for (int i = 0; i < 32; i++) targets[i] = ids[(i + 1) % 32];
  std::vector<float> grads(params.size());
  double loss = 0;
  int step = 0;
  for (; step < 400; step++) {
    std::fill(grads.begin(), grads.end(), 0.0f);
    loss = bp.step(params.data(), grads.data(), ids.data(), targets.data(), -100);
    if (loss < 0.05) break;
    adam.update(params.data(), grads.data(), 1e-2);
  }
  EXPECT_LT(loss, 0.05) << "after " << step << " steps";
}

TEST(Training, ResumeIsBitwiseIdentical) {
  test::TempDir tmp;
  Dataset data = tiny_text_dataset(tmp);
  Config c = tiny_byte_config();
  {
    Trainer whole(c, test::initial_params(c, 4), data, tiny_options(8), tmp / "whole");
    whole.run();
  }
  {
    // Stopped after 5 of 8 steps, as SIGINT would: the trainer saves a checkpoint and returns.
    Trainer part(c, test::initial_params(c, 4), data, tiny_options(8), tmp / "split");
    EXPECT_TRUE(part.run(nullptr, 5).interrupted);
  }
  Trainer resumed = Trainer::resume(tmp / "split", data, nlohmann::json::object(), tmp / "split");
  EXPECT_EQ(resumed.step(), 5);
  resumed.run();
  auto a = losses(tmp / "whole" / "log.jsonl"), b = losses(tmp / "split" / "log.jsonl");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); i++) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;  // bitwise
  Model m1 = Model::load(tmp / "whole"), m2 = Model::load(tmp / "split");
  EXPECT_EQ(flat_params(m1), flat_params(m2));
}

TEST(Training, InterruptedSaveLeavesThePreviousCheckpoint) {
  test::TempDir tmp;
  Dataset data = tiny_text_dataset(tmp);
  Config c = tiny_byte_config();
  Trainer t(c, test::initial_params(c, 6), data, tiny_options(3), tmp / "run");
  t.run();
  const auto good = Trainer::latest_checkpoint(tmp / "run");
  ASSERT_FALSE(good.empty());
  // What a kill -9 during the next save leaves: a temporary folder with part of the files.
  const auto partial = tmp / "run" / "checkpoints" / ".step-00000004.tmp";
  std::filesystem::create_directories(partial);
  std::ofstream(partial / "model.safetensors") << "partial";
  EXPECT_EQ(Trainer::latest_checkpoint(tmp / "run"), good);
  Trainer resumed = Trainer::resume(tmp / "run", data, {{"steps", 4}}, tmp / "run");
  EXPECT_EQ(resumed.step(), 3);
}

TEST(Training, CorruptedCheckpointIsAClearError) {
  test::TempDir tmp;
  Dataset data = tiny_text_dataset(tmp);
  Config c = tiny_byte_config();
  Trainer t(c, test::initial_params(c, 7), data, tiny_options(2), tmp / "run");
  t.run();
  const auto dir = Trainer::latest_checkpoint(tmp / "run");
  std::filesystem::resize_file(dir / "optimizer.safetensors", 100);
  try {
    Trainer::resume(tmp / "run", data, nlohmann::json::object(), tmp / "run");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer.safetensors"), std::string::npos) << e.what();
  }
  std::ofstream(dir / "trainer.json") << "{not json";
  EXPECT_THROW(Trainer::resume(tmp / "run", data, nlohmann::json::object(), tmp / "run"), Error);
}

TEST(Training, KeepsTheLastKCheckpoints) {
  test::TempDir tmp;
  Dataset data = tiny_text_dataset(tmp);
  Config c = tiny_byte_config();
  TrainOptions o = tiny_options(6);
  o.save_every = 1;
  o.keep = 2;
  Trainer t(c, test::initial_params(c, 8), data, o, tmp / "run");
  t.run();
  int count = 0;
  for (const auto& e : std::filesystem::directory_iterator(tmp / "run" / "checkpoints")) count += e.is_directory();
  EXPECT_EQ(count, 2);
  EXPECT_EQ(Trainer::latest_checkpoint(tmp / "run").filename(), "step-00000006");
}

TEST(Training, NonFiniteLossStopsWithoutSaving) {
  test::TempDir tmp;
  Dataset data = tiny_text_dataset(tmp);
  Config c = tiny_byte_config();
  Trainer good(c, test::initial_params(c, 9), data, tiny_options(2), tmp / "run");
  good.run();
  const auto last = Trainer::latest_checkpoint(tmp / "run");
  auto params = test::initial_params(c, 9);
  params[param_specs(c)[1].offset] = std::numeric_limits<float>::quiet_NaN();  // a poisoned weight
  TrainOptions o = tiny_options(4);
  Trainer bad(c, params, data, o, tmp / "run");
  try {
    bad.run();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nan"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(last.string()), std::string::npos) << e.what();
  }
  EXPECT_EQ(Trainer::latest_checkpoint(tmp / "run"), last);
}

TEST(Training, AccumulatedMicroBatchesEqualOneBatch) {
  Config c = tiny_byte_config();
  auto params = test::initial_params(c, 10);
  Rng rng(4);
  std::vector<int32_t> ids(2 * 16), targets(2 * 16);
  for (auto& t : ids) t = static_cast<int32_t>(rng.below(256));
  for (auto& t : targets) t = static_cast<int32_t>(rng.below(256));
  std::vector<float> whole(params.size(), 0.0f), parts(params.size(), 0.0f);
  Backprop two(c, 2, 16), one(c, 1, 16);
  const double loss = two.step(params.data(), whole.data(), ids.data(), targets.data());
  double sum = 0;
  for (int b = 0; b < 2; b++) sum += one.step(params.data(), parts.data(), ids.data() + b * 16, targets.data() + b * 16);
  for (float& g : parts) g *= 0.5f;  // what the trainer does with --accum 2
  EXPECT_NEAR(loss, sum / 2, 1e-6);
  EXPECT_LE(test::relative_error(parts, whole), 1e-5);
}

TEST(Data, TokenFilesRoundTripAndSplitDocuments) {
  test::TempDir tmp;
  std::vector<int32_t> tokens;
  for (int d = 0; d < 10; d++) {
    for (int i = 0; i < 30; i++) tokens.push_back(d == 3 && i == 7 ? 69999 : 1 + (d * 31 + i) % 300);  // 69999: 32-bit ids
    tokens.push_back(0);  // end of document
  }
  write_token_file(tmp / "a.tok", tokens, 4);
  Dataset data = load_token_dataset({tmp / "a.tok"}, 0, 5);
  EXPECT_EQ(data.train.documents, 8);
  EXPECT_EQ(data.val.documents, 2);
  EXPECT_EQ(data.train.tokens.size() + data.val.tokens.size(), tokens.size());
  EXPECT_EQ(data.max_token, 69999);
  write_token_file(tmp / "b.tok", {1, 2, 3}, 2);
  EXPECT_EQ(load_token_dataset({tmp / "b.tok"}, 0, 0).train.tokens, (std::vector<int32_t>{1, 2, 3, 0}));
  std::ofstream(tmp / "bad.tok") << "MAMBATOK but not really";
  EXPECT_THROW(load_token_dataset({tmp / "bad.tok"}, 0, 0), Error);
}

TEST(Schedule, WarmupThenCosineToTheFloor) {
  Schedule s{"cosine", 1.0, 0.1, 10, 110};
  EXPECT_DOUBLE_EQ(s.at(0), 0.1);
  EXPECT_DOUBLE_EQ(s.at(9), 1.0);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_NEAR(s.at(109), 0.1, 1e-12);
  EXPECT_LT(s.at(60), 0.6);
  Schedule constant{"constant", 0.5, 0.0, 0, 100};
  EXPECT_DOUBLE_EQ(constant.at(77), 0.5);
}

}  // namespace
}  // namespace mamba

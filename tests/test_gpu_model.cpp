// The whole model on the GPU against the CPU: fp32 logits against the PyTorch reference's golden files
// and the CPU oracle, bf16 and fp16 within a stated bound, decoding step by step (recorded in CUDA graphs
// or not) against the full forward, chunked prefill and saved states, greedy continuations, and the CLI
// with --device cuda. Skipped where this build or machine has no GPU; the refusals run everywhere.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "core/npy.h"
#include "model/engine.h"
#include "model/generator.h"
#include "small_model.h"
#include "test_util.h"

namespace mamba {
namespace {

using test::fixture_cases;
using test::fixtures_dir;
using test::random_tokens;
using test::relative_error;
using test::small_model;

using test::have_gpu;
using test::kGpu;

// The bound on bf16 and fp16 logits against the fp32 oracle: max |Δlogit| / max |logit|. Activations
// rounded to 8 (bf16) or 11 (fp16) bits at every layer's boundaries, over two small layers.
constexpr double kHalfBound = 2e-2;

std::vector<float> logits_on(const Model& model, EngineOptions options, const std::vector<int32_t>& tokens, int B,
                             int L) {
  Engine engine(model, options);
  State state = engine.new_state(B);
  std::vector<float> logits(static_cast<size_t>(B) * L * model.config().vocab_size);
  engine.forward(tokens.data(), B, L, state, logits.data());
  return logits;
}


class GpuGolden : public ::testing::TestWithParam<std::string> {};

// fp32 on the GPU against the float64 PyTorch reference, as the CPU is held (≤ 1e-5 relative); LTI
// fixtures are refused by the CUDA backend and checked to be.
TEST_P(GpuGolden, Fp32LogitsMatchTheReference) {
  REQUIRE_GPU();
  const auto dir = fixtures_dir() / GetParam();
  Model model = Model::load(dir, DType::F32);
  NpyArray ids = read_npy(dir / "ids.npy");
  const int B = static_cast<int>(ids.shape[0]), L = static_cast<int>(ids.shape[1]);
  std::vector<int64_t> wide = ids.as_i64();
  std::vector<int32_t> tokens(wide.begin(), wide.end());
  if (model.config().ssm_mode == SsmMode::Lti) {
    EXPECT_THROW(Engine(model, EngineOptions{kGpu, DType::F32}), Error);
    return;
  }
  Engine engine(model, EngineOptions{kGpu, DType::F32});
  State state = engine.new_state(B);
  std::vector<float> logits(static_cast<size_t>(B) * L * model.config().vocab_size);
  engine.forward(tokens.data(), B, L, state, logits.data());
  EXPECT_LE(relative_error(logits, read_npy(dir / "logits.npy").as_f32()), 1e-5);
  EXPECT_LE(relative_error(state.ssm(), read_npy(dir / "ssm_state.npy").as_f32()), 1e-5);
  EXPECT_LE(relative_error(state.conv(), read_npy(dir / "conv_state.npy").as_f32()), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GpuGolden, ::testing::ValuesIn(fixture_cases()), [](const auto& p) { return p.param; });

TEST(GpuModel, HalfPrecisionWithinTheStatedBound) {
  REQUIRE_GPU();
  Model model = small_model(3);
  const int B = 3, L = 41;
  auto tokens = random_tokens(B * L, model.config().vocab_size, 4);
  const std::vector<float> oracle = logits_on(model, {}, tokens, B, L);
  for (DType dtype : {DType::BF16, DType::F16}) {
    const double err = relative_error(logits_on(model, {kGpu, dtype}, tokens, B, L), oracle);
    std::printf("  %s logits vs the fp32 CPU: %.2e (bound %.0e)\n", std::string(dtype_name(dtype)).c_str(), err,
                kHalfBound);
    EXPECT_LE(err, kHalfBound) << dtype_name(dtype);
  }
}

// The CPU's bf16 and fp16 (activations widened to fp32 inside each op, ops/cpu/half.h), the reference for the
// GPU's: within the stated bound of the fp32 oracle, decoding step by step as its full forward does; and
// with a GPU, the GPU's logits in each precision within that bound of the CPU's. Runs without a GPU.
TEST(HalfPrecisionReference, CpuWithinTheStatedBoundAndTheGpuNearIt) {
  Model model = small_model(3);
  const int B = 3, L = 41, V = model.config().vocab_size;
  auto tokens = random_tokens(B * L, V, 4);
  const std::vector<float> oracle = logits_on(model, {}, tokens, B, L);
  std::string why;
  const bool gpu = have_gpu(&why);
  for (DType dtype : {DType::BF16, DType::F16}) {
    const std::string name(dtype_name(dtype));
    const std::vector<float> cpu = logits_on(model, {Device{}, dtype}, tokens, B, L);
    const double err = relative_error(cpu, oracle);
    std::printf("  the CPU's %s logits vs its fp32: %.2e (bound %.0e)\n", name.c_str(), err, kHalfBound);
    EXPECT_LE(err, kHalfBound) << name;
    Engine engine(model, EngineOptions{Device{}, dtype});
    State state = engine.new_state(B);
    std::vector<float> stepped(cpu.size()), one(static_cast<size_t>(B) * V);
    for (int t = 0; t < L; t++) {
      const int32_t step[3] = {tokens[t], tokens[L + t], tokens[2 * L + t]};
      engine.step(step, B, state, one.data());
      for (int b = 0; b < B; b++) std::copy_n(one.data() + int64_t{b} * V, V, stepped.data() + (int64_t{b} * L + t) * V);
    }
    EXPECT_LE(relative_error(stepped, cpu), kHalfBound) << name;
    if (gpu) {
      EXPECT_LE(relative_error(logits_on(model, {kGpu, dtype}, tokens, B, L), cpu), kHalfBound) << name;
    }
  }
}

// Step by step equals the full forward; with CUDA graphs the steps are bitwise the eager ones.
TEST(GpuModel, StepsEqualTheFullForwardAndGraphsEqualEager) {
  REQUIRE_GPU();
  Model model = small_model(7);
  const int B = 2, L = 19, V = model.config().vocab_size;
  auto tokens = random_tokens(B * L, V, 3);
  const std::vector<float> full = logits_on(model, {kGpu, DType::F32}, tokens, B, L);
  std::vector<std::vector<float>> by_mode;
  for (bool graphs : {false, true}) {
    EngineOptions o{kGpu, DType::F32};
    o.graphs = graphs;
    Engine engine(model, o);
    State state = engine.new_state(B);
    std::vector<float> stepped(full.size()), one(static_cast<size_t>(B) * V);
    for (int t = 0; t < L; t++) {
      const int32_t step[2] = {tokens[t], tokens[L + t]};
      engine.step(step, B, state, one.data());
      for (int b = 0; b < B; b++) std::copy_n(one.data() + int64_t{b} * V, V, stepped.data() + (int64_t{b} * L + t) * V);
    }
    EXPECT_LE(relative_error(stepped, full), 1e-5) << "graphs " << graphs;
    by_mode.push_back(stepped);
  }
  EXPECT_EQ(by_mode[0], by_mode[1]);  // replaying the recording is the same work on the same addresses
}

// Prefill in chunks of any size, and a state saved and loaded, continue exactly as one piece.
TEST(GpuModel, ChunkedPrefillAndSavedStateEqualOnePiece) {
  REQUIRE_GPU();
  test::TempDir tmp;
  Model model = small_model(11);
  const int L = 37, V = model.config().vocab_size;
  auto tokens = random_tokens(L, V, 5);
  Engine engine(model, EngineOptions{kGpu, DType::F32});
  State whole = engine.new_state(1);
  std::vector<float> logits_whole(static_cast<size_t>(V));
  engine.forward(tokens.data(), 1, L, whole, logits_whole.data(), Logits::Last);
  for (int chunk : {1, 5, 16}) {
    State state = engine.new_state(1);
    std::vector<float> last(static_cast<size_t>(V));
    for (int t0 = 0; t0 < L; t0 += chunk) {
      const int len = std::min(chunk, L - t0);
      engine.forward(tokens.data() + t0, 1, len, state, last.data(), Logits::Last);
    }
    EXPECT_LE(relative_error(last, logits_whole), 1e-5) << "chunk " << chunk;
    EXPECT_LE(relative_error(state.ssm(), whole.ssm()), 1e-5) << "chunk " << chunk;
  }
  State first = engine.new_state(1);
  engine.forward(tokens.data(), 1, 20, first, nullptr, Logits::None);
  first.save(tmp / "state.safetensors");
  State loaded = State::load(tmp / "state.safetensors", model.config(), engine.backend());
  EXPECT_EQ(loaded.ssm(), first.ssm());
  std::vector<float> a(static_cast<size_t>(V)), b(static_cast<size_t>(V));
  engine.forward(tokens.data() + 20, 1, L - 20, first, a.data(), Logits::Last);
  engine.forward(tokens.data() + 20, 1, L - 20, loaded, b.data(), Logits::Last);
  EXPECT_EQ(a, b);
}

// Greedy continuations of the GPU (fp32) and the CPU are the same tokens, batched with per-sequence stops.
TEST(GpuModel, GreedyContinuationsMatchTheCpu) {
  REQUIRE_GPU();
  Model model = small_model(13, {.vocab = 257, .byte_level = true, .perturb = 0.4});
  const TextCodec codec = TextCodec::bytes();
  std::vector<std::vector<int32_t>> outputs[2];
  for (int gpu = 0; gpu < 2; gpu++) {
    Engine engine(model, gpu ? EngineOptions{kGpu, DType::F32} : EngineOptions{});
    GenerateOptions g;
    g.max_new_tokens = 40;
    g.eos_token_id = model.config().eos_token_id;
    Generator gen(engine, codec, SamplerOptions{.temperature = 0}, g);
    for (const char* prompt : {"Fellow-Citizens", "a", "The Congress shall"}) gen.feed_text(gen.add(), prompt);
    gen.run();
    for (int i = 0; i < gen.size(); i++) outputs[gpu].push_back(gen.output(i));
  }
  EXPECT_EQ(outputs[0], outputs[1]);
}

TEST(GpuModel, GreedyStepArgmaxIsTheLogitsArgmax) {
  REQUIRE_GPU();
  Model model = small_model(17);
  const int B = 4, V = model.config().vocab_size;
  Engine engine(model, EngineOptions{kGpu, DType::F32});
  State s1 = engine.new_state(B), s2 = engine.new_state(B);
  std::vector<int32_t> t1 = random_tokens(B, V, 9), t2 = t1;
  std::vector<float> logits(static_cast<size_t>(B) * V);
  for (int step = 0; step < 12; step++) {
    engine.step(t1.data(), B, s1, logits.data());
    for (int b = 0; b < B; b++) {
      const float* row = logits.data() + int64_t{b} * V;
      t1[b] = static_cast<int32_t>(std::max_element(row, row + V) - row);
    }
    engine.step_greedy(t2.data(), B, s2, t2.data());
    ASSERT_EQ(t1, t2) << "step " << step;
  }
}

// An engine refuses a state that lives on another device, by name.
TEST(GpuModel, StateOnAnotherDeviceIsRefused) {
  REQUIRE_GPU();
  Model model = small_model(19);
  Engine engine(model, EngineOptions{kGpu, DType::F32});
  State cpu_state(model.config(), 1);
  const int32_t t = 1;
  EXPECT_THROW(engine.forward(&t, 1, 1, cpu_state, nullptr, Logits::None), Error);
}

// The CLI on the GPU gives the CPU's logits (fp32); without a GPU it says why and never runs on the CPU.
TEST(GpuCli, ScoreOnTheGpuAndClearRefusalWithout) {
  test::TempDir tmp;
  const auto model_dir = fixtures_dir() / fixture_cases().front();
  std::string why;
  const bool gpu = have_gpu(&why);
  const std::string cli = MAMBA_CLI_PATH;
  auto run = [&](const std::string& args) {
    const std::string cmd = cli + " score " + model_dir.string() + " --ids 1,2,3,4,5 " + args + " 2>" +
                            (tmp / "err.txt").string();
    return std::system(cmd.c_str());
  };
  if (!gpu) {
    EXPECT_NE(run("--device cuda --out " + (tmp / "gpu.npy").string()), 0);
    std::ifstream err(tmp / "err.txt");
    const std::string text((std::istreambuf_iterator<char>(err)), {});
    EXPECT_NE(text.find("cuda:0"), std::string::npos) << text;
    EXPECT_FALSE(std::filesystem::exists(tmp / "gpu.npy"));
    return;
  }
  ASSERT_EQ(run("--out " + (tmp / "cpu.npy").string()), 0);
  ASSERT_EQ(run("--device cuda --dtype fp32 --out " + (tmp / "gpu.npy").string()), 0);
  EXPECT_LE(relative_error(read_npy(tmp / "gpu.npy").as_f32(), read_npy(tmp / "cpu.npy").as_f32()), 1e-5);
}

}  // namespace
}  // namespace mamba

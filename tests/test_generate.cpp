// Sampling and generation: the samplers' cuts, greedy generation against the full forward, a batch
// against its sequences one by one, a saved session against an uninterrupted run, stop strings and
// EOS, streaming text, perplexity against the full forward, and the CLI's errors on bad input.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <numeric>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "model/generator.h"
#include "ops/cpu/math.h"
#include "small_model.h"
#include "test_util.h"

namespace mamba {
namespace {

using test::random_tokens;
using test::relative_error;
using test::SmallModelOptions;

// Perturbed more than test_model's, so that the next-token distributions are far from uniform.
Model generation_model(uint64_t seed, SmallModelOptions o = {}) {
  o.perturb = 0.5;
  return test::small_model(seed, o);
}


int32_t argmax(const float* x, int n) { return static_cast<int32_t>(std::max_element(x, x + n) - x); }

GenerateOptions no_eos(int n) {
  GenerateOptions g;
  g.max_new_tokens = n;
  g.stop_at_eos = false;
  return g;
}

SamplerOptions greedy() {
  SamplerOptions s;
  s.temperature = 0;
  return s;
}

// ---- the sampler ----

TEST(Sampler, GreedyAndCutsToOneTokenAreTheArgmax) {
  const int V = 50;
  std::vector<float> logits(V);
  Rng rng(3);
  for (int trial = 0; trial < 20; trial++) {
    for (float& x : logits) x = static_cast<float>(3 * rng.normal());
    const int32_t best = argmax(logits.data(), V);
    SamplerOptions o;
    o.temperature = 0;
    EXPECT_EQ(Sampler(o, V).sample(logits.data()), best);
    o.temperature = 1.5;
    o.top_k = 1;
    EXPECT_EQ(Sampler(o, V).sample(logits.data()), best);
    o.top_k = 0;
    o.top_p = 1e-9;
    EXPECT_EQ(Sampler(o, V).sample(logits.data()), best);
    o.top_p = 1;
    o.min_p = 1;
    EXPECT_EQ(Sampler(o, V).sample(logits.data()), best);
  }
}

TEST(Sampler, SameSeedSameDraws) {
  const int V = 40;
  auto logits = std::vector<float>(V);
  Rng rng(5);
  for (float& x : logits) x = static_cast<float>(rng.normal());
  SamplerOptions o;
  o.temperature = 1;
  o.top_p = 0.9;
  o.seed = 42;
  Sampler a(o, V), b(o, V);
  std::vector<int32_t> da, db;
  for (int i = 0; i < 200; i++) {
    da.push_back(a.sample(logits.data()));
    db.push_back(b.sample(logits.data()));
  }
  EXPECT_EQ(da, db);
  o.seed = 43;
  Sampler c(o, V);
  std::vector<int32_t> dc;
  for (int i = 0; i < 200; i++) dc.push_back(c.sample(logits.data()));
  EXPECT_NE(da, dc);
}

// Frequencies of many draws against the distribution each cut should leave.
TEST(Sampler, FrequenciesFollowTheCutDistribution) {
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f};
  const int V = static_cast<int>(logits.size());
  std::vector<double> p(V);
  double total = 0;
  for (int v = 0; v < V; v++) total += p[v] = std::exp(logits[v] / 0.7);
  for (double& x : p) x /= total;  // 0.70 0.17 0.08 0.04 0.01 0.0006 (temperature 0.7)
  struct Case {
    SamplerOptions o;
    int support;  // the tokens 0..support−1 survive the cut
  };
  std::vector<Case> cases(4);
  for (auto& c : cases) c.o.temperature = 0.7;
  cases[0].support = V;
  cases[1].o.top_k = 3, cases[1].support = 3;
  cases[2].o.top_p = 0.85, cases[2].support = 2;  // 0.70 < 0.85 ≤ 0.70 + 0.17
  cases[3].o.min_p = 0.2, cases[3].support = 2;   // p ≥ 0.14
  for (const Case& c : cases) {
    Sampler s(c.o, V);
    const int n = 40000;
    std::vector<int> count(V, 0);
    for (int i = 0; i < n; i++) count[s.sample(logits.data())]++;
    double mass = 0;
    for (int v = 0; v < c.support; v++) mass += p[v];
    for (int v = 0; v < V; v++) {
      const double expected = v < c.support ? p[v] / mass : 0.0;
      EXPECT_NEAR(count[v] / double(n), expected, 0.01) << "token " << v << " support " << c.support;
    }
  }
}

// With a cut, the sampler sorts only the tokens that can survive it; a plain reference that sorts the
// whole vocabulary (HF's order: top-k, top-p, min-p) must pick the same token from the same draw.
int32_t reference_sample(const std::vector<float>& x, const SamplerOptions& o, double u) {
  const int V = static_cast<int>(x.size());
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  const int n = o.top_k > 0 ? std::min(o.top_k, V) : V;
  std::vector<float> e(n);
  double total = 0;
  const float t = static_cast<float>(o.temperature);
  for (int i = 0; i < n; i++) e[i] = cpu::exp_approx((x[order[i]] - x[order[0]]) / t);
  // The sampler sums in vocabulary order without top-k, in sorted order with it.
  if (o.top_k > 0) {
    for (int i = 0; i < n; i++) total += e[i];
  } else {
    for (int v = 0; v < V; v++) total += cpu::exp_approx((x[v] - x[order[0]]) / t);
  }
  int keep = n;
  if (o.top_p < 1) {
    double mass = 0;
    keep = 0;
    while (keep < n && mass < o.top_p * total) mass += e[keep++];
  }
  int cut = 1;
  while (cut < keep && e[cut] >= o.min_p) cut++;
  double kept = 0;
  for (int i = 0; i < cut; i++) kept += e[i];
  double r = u * kept;
  for (int i = 0; i < cut; i++) {
    r -= e[i];
    if (r < 0) return order[i];
  }
  return order[cut - 1];
}

TEST(Sampler, CutsEqualAFullSortReference) {
  const int V = 300;
  Rng rng(11);
  std::vector<float> x(V);
  int checked = 0;
  for (double scale : {0.3, 2.0, 8.0}) {
    for (int trial = 0; trial < 30; trial++) {
      for (float& v : x) v = static_cast<float>(scale * rng.normal());
      for (int top_k : {0, 40}) {
        for (double top_p : {1.0, 0.95, 0.5}) {
          for (double min_p : {0.0, 0.05}) {
            if (top_k == 0 && top_p == 1.0 && min_p == 0.0) continue;  // no cut: walks in id order
            SamplerOptions o;
            o.temperature = 0.9;
            o.top_k = top_k, o.top_p = top_p, o.min_p = min_p;
            o.seed = static_cast<uint64_t>(trial);
            Sampler s(o, V);
            Rng same(o.seed);
            EXPECT_EQ(s.sample(x.data()), reference_sample(x, o, same.uniform()))
                << "scale " << scale << " top-k " << top_k << " top-p " << top_p << " min-p " << min_p;
            checked++;
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, 3 * 30 * 11);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  const std::vector<float> logits = {2.0f, 1.9f, -0.5f, -0.6f};
  SamplerOptions o;
  o.temperature = 0;
  o.repetition_penalty = 1.5;
  Sampler s(o, 4);
  EXPECT_EQ(s.sample(logits.data()), 0);
  s.observe(0);  // 2.0 / 1.5 = 1.33 < 1.9
  EXPECT_EQ(s.sample(logits.data()), 1);
  s.observe(1);  // 1.27 < 1.33
  EXPECT_EQ(s.sample(logits.data()), 0);
  const std::vector<float> negative = {-0.5f, -0.6f};
  Sampler t(o, 2);
  t.observe(0);  // −0.75 < −0.6
  EXPECT_EQ(t.sample(negative.data()), 1);
}

TEST(Sampler, InvalidOptionsAreErrors) {
  auto bad = [](auto change) {
    SamplerOptions o;
    change(o);
    EXPECT_THROW(Sampler(o, 10), Error);
  };
  bad([](SamplerOptions& o) { o.temperature = -1; });
  bad([](SamplerOptions& o) { o.temperature = NAN; });
  bad([](SamplerOptions& o) { o.top_k = -2; });
  bad([](SamplerOptions& o) { o.top_p = 0; });
  bad([](SamplerOptions& o) { o.top_p = 1.5; });
  bad([](SamplerOptions& o) { o.min_p = -0.1; });
  bad([](SamplerOptions& o) { o.repetition_penalty = 0; });
}

// ---- generation ----

TEST(Generate, GreedyIsTheArgmaxOfTheFullForwardAtEachStep) {
  Model model = generation_model(7);
  const int V = model.config().vocab_size, P = 9, N = 25;
  auto prompt = random_tokens(P, V, 1);
  Engine engine(model);
  TextCodec codec = TextCodec::ids_only();
  Generator gen(engine, codec, greedy(), no_eos(N));
  const int i = gen.add();
  gen.feed(i, prompt);
  gen.run();
  const std::vector<int32_t>& out = gen.output(i);
  ASSERT_EQ(static_cast<int>(out.size()), N);
  EXPECT_EQ(gen.finish(i), Finish::Length);

  std::vector<int32_t> all = prompt;
  all.insert(all.end(), out.begin(), out.end() - 1);
  State state(model.config(), 1);
  std::vector<float> logits(all.size() * V);
  engine.forward(all.data(), 1, static_cast<int>(all.size()), state, logits.data());
  for (int t = 0; t < N; t++) {
    EXPECT_EQ(out[t], argmax(logits.data() + static_cast<size_t>(P - 1 + t) * V, V)) << "token " << t;
  }
}

// Runs each prompt in its own generator with the seed its batch position gives it.
std::vector<std::vector<int32_t>> one_by_one(Engine& engine, const std::vector<std::vector<int32_t>>& prompts,
                                             SamplerOptions sampling, const GenerateOptions& options) {
  TextCodec codec = TextCodec::ids_only();
  std::vector<std::vector<int32_t>> outs;
  for (size_t b = 0; b < prompts.size(); b++) {
    SamplerOptions s = sampling;
    s.seed += b;
    Generator gen(engine, codec, s, options);
    gen.feed(gen.add(), prompts[b]);
    gen.run();
    outs.push_back(gen.output(0));
  }
  return outs;
}

TEST(Generate, BatchEqualsSequencesOneByOne) {
  Model model = generation_model(13);
  const int V = model.config().vocab_size;
  Engine engine(model);
  TextCodec codec = TextCodec::ids_only();
  const std::vector<std::vector<int32_t>> prompts = {random_tokens(5, V, 2), random_tokens(1, V, 3),
                                                     random_tokens(17, V, 4), random_tokens(8, V, 5)};
  SamplerOptions sampled;
  sampled.temperature = 1.0;
  sampled.top_k = 20;
  sampled.repetition_penalty = 1.2;
  sampled.seed = 9;
  for (const SamplerOptions& sampling : {greedy(), sampled}) {
    // EOS on: pick as EOS a token the greedy run of one sequence produces early, so that sequences
    // finish at different steps and the batch shrinks.
    GenerateOptions options = no_eos(30);
    auto free_run = one_by_one(engine, prompts, sampling, options);
    options.stop_at_eos = true;
    options.eos_token_id = free_run[1][4];
    auto expected = one_by_one(engine, prompts, sampling, options);

    Generator gen(engine, codec, sampling, options);
    for (const auto& p : prompts) gen.feed(gen.add(), p);
    // Reports after a sequence finished would make more reports than tokens.
    std::map<int, int> reported;
    gen.run([&](int seq, int32_t id, std::string_view) { reported[seq] += id >= 0; });
    int eos_finishes = 0;
    for (size_t b = 0; b < prompts.size(); b++) {
      EXPECT_EQ(gen.output(static_cast<int>(b)), expected[b]) << "sequence " << b << " temperature " << sampling.temperature;
      EXPECT_EQ(reported[static_cast<int>(b)], static_cast<int>(expected[b].size()));
      eos_finishes += gen.finish(static_cast<int>(b)) == Finish::Eos;
    }
    EXPECT_GE(eos_finishes, 1);
  }
}

TEST(Generate, SavedSessionContinuesLikeAnUninterruptedRun) {
  test::TempDir tmp;
  Model model = generation_model(17);
  const int V = model.config().vocab_size;
  Engine engine(model);
  TextCodec codec = TextCodec::ids_only();
  auto prompt = random_tokens(11, V, 6);
  SamplerOptions sampling;
  sampling.temperature = 1.0;
  sampling.top_p = 0.95;
  sampling.repetition_penalty = 1.3;
  sampling.seed = 5;

  Generator whole(engine, codec, sampling, no_eos(20));
  whole.feed(whole.add(), prompt);
  whole.run();

  // Saved after generating (a pending token), and saved right after the prompt (logits only).
  Generator first(engine, codec, sampling, no_eos(8));
  first.feed(first.add(), prompt);
  first.save(0, tmp / "prompt.safetensors");
  first.run();
  first.save(0, tmp / "after8.safetensors");

  Generator rest(engine, codec, sampling, no_eos(12));
  const int i = rest.load(tmp / "after8.safetensors");
  rest.run();
  std::vector<int32_t> joined = first.output(0);
  joined.insert(joined.end(), rest.output(i).begin(), rest.output(i).end());
  EXPECT_EQ(joined, whole.output(0));

  Generator from_prompt(engine, codec, sampling, no_eos(20));
  from_prompt.run();  // nothing to continue from
  EXPECT_THROW(from_prompt.feed(from_prompt.add(), {}), Error);
  Generator resumed(engine, codec, sampling, no_eos(20));
  resumed.load(tmp / "prompt.safetensors");
  resumed.run();
  EXPECT_EQ(resumed.output(0), whole.output(0));

  // A state saved for another model is refused with the file's name.
  Model other = generation_model(3, {.vocab = 41});
  Engine other_engine(other);
  Generator wrong(other_engine, codec, sampling, no_eos(3));
  try {
    wrong.load(tmp / "after8.safetensors");
    ADD_FAILURE() << "loaded a state of another vocabulary";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("after8.safetensors"), std::string::npos) << e.what();
  }
}

// Interactive turns: feeding more prompt after a run equals feeding it all in one go.
TEST(Generate, TurnsContinueTheState) {
  Model model = generation_model(19);
  const int V = model.config().vocab_size;
  Engine engine(model);
  TextCodec codec = TextCodec::ids_only();
  auto p1 = random_tokens(6, V, 7), p2 = random_tokens(4, V, 8);
  Generator turns(engine, codec, greedy(), no_eos(5));
  turns.feed(turns.add(), p1);
  turns.run();
  std::vector<int32_t> all = p1;
  all.insert(all.end(), turns.output(0).begin(), turns.output(0).end());
  all.insert(all.end(), p2.begin(), p2.end());
  turns.feed(0, p2);
  turns.run();

  Generator once(engine, codec, greedy(), no_eos(5));
  once.feed(once.add(), all);
  once.run();
  EXPECT_EQ(turns.output(0), once.output(0));
}

TEST(Generate, StopStringsEndTheTextBeforeThem) {
  Model model = generation_model(23, {.vocab = 257, .byte_level = true});
  Engine engine(model);
  TextCodec codec = TextCodec::bytes();
  SamplerOptions sampling;
  sampling.temperature = 1;
  sampling.top_k = 8;  // printable or not, the text stays valid UTF-8
  sampling.seed = 2;
  Generator free_run(engine, codec, sampling, no_eos(60));
  free_run.feed_text(free_run.add(), "Hello");
  std::string streamed;
  free_run.run([&](int, int32_t, std::string_view text) { streamed += text; });
  const std::string text = free_run.text(0);
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(text, utf8_lossy(text));
  ASSERT_GE(text.size(), 12u);

  const std::string stop = text.substr(text.size() / 2, 3);
  GenerateOptions options = no_eos(60);
  options.stop = {"\x01never\x02", stop};
  Generator stopped(engine, codec, sampling, options);
  stopped.feed_text(stopped.add(), "Hello");
  streamed.clear();
  stopped.run([&](int, int32_t, std::string_view piece) { streamed += piece; });
  EXPECT_EQ(stopped.finish(0), Finish::Stop);
  EXPECT_EQ(stopped.text(0), text.substr(0, text.find(stop)));
  EXPECT_EQ(streamed, stopped.text(0));
}

TEST(Generate, BadInputIsAnError) {
  Model model = generation_model(29);
  Engine engine(model);
  TextCodec codec = TextCodec::ids_only();
  GenerateOptions options = no_eos(4);
  options.max_prompt_tokens = 8;
  Generator gen(engine, codec, greedy(), options);
  const int i = gen.add();
  EXPECT_THROW(gen.feed(i, std::vector<int32_t>{1, 37}), Error);             // not a token of this model
  EXPECT_THROW(gen.feed(i, std::vector<int32_t>{1, -1}), Error);
  EXPECT_THROW(gen.feed(i, std::vector<int32_t>(9, 1)), Error);              // over the limit
  EXPECT_THROW(gen.feed_text(i, "text"), Error);                             // no tokenizer
  EXPECT_THROW(gen.run(), Error);                                            // nothing fed
  GenerateOptions with_stop = options;
  with_stop.stop = {"x"};
  EXPECT_THROW(Generator(engine, codec, greedy(), with_stop), Error);        // stop strings need text
}

// ---- text ----

std::filesystem::path neox_tokenizer() { return test::shared_dir() / "data" / "gpt-neox-20b" / "tokenizer.json"; }

TEST(TextCodec, BytesStreamWholeCharacters) {
  TextCodec codec = TextCodec::bytes();
  const std::string text = "a\xc3\xa9\xf0\x9f\x98\x80z";  // a é 😀 z
  auto ids = codec.encode(text);
  ASSERT_EQ(ids.size(), text.size());
  EXPECT_EQ(ids[1], 0xc3);
  auto stream = codec.stream();
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(stream.push(id));
  EXPECT_EQ(pieces, (std::vector<std::string>{"a", "", "\xc3\xa9", "", "", "", "\xf0\x9f\x98\x80", "z"}));
  EXPECT_EQ(stream.push(256), "");  // end of document: no text
  EXPECT_EQ(stream.push(0xf0), "");
  EXPECT_EQ(stream.finish(), "\xef\xbf\xbd");  // an unfinished character becomes U+FFFD
}

TEST(TextCodec, TokenizerStreamEqualsDecode) {
  if (!std::filesystem::exists(neox_tokenizer())) GTEST_SKIP() << neox_tokenizer() << " not present";
  TextCodec codec = TextCodec::tokenizer(Tokenizer::load(neox_tokenizer().string()));
  Tokenizer reference = Tokenizer::load(neox_tokenizer().string());
  const std::string text = "Mamba: linear-time sequence modeling 🐍 with selective state spaces — 状態空間.";
  auto ids = codec.encode(text);
  auto stream = codec.stream();
  std::string streamed;
  for (int32_t id : ids) streamed += stream.push(id);
  streamed += stream.finish();
  EXPECT_EQ(streamed, reference.decode(ids));
  EXPECT_EQ(streamed, text);

  // Generation through the real tokenizer with a tiny model of its vocabulary: the streamed text is
  // the decoded output.
  Model model = generation_model(31, {.vocab = 50280});
  Engine engine(model);
  SamplerOptions sampling;
  sampling.temperature = 1;
  sampling.seed = 4;
  Generator gen(engine, codec, sampling, no_eos(40));
  gen.feed_text(gen.add(), "The state space model");
  std::string out;
  gen.run([&](int, int32_t, std::string_view piece) { out += piece; });
  EXPECT_EQ(out, reference.decode(gen.output(0)));
  EXPECT_EQ(out, gen.text(0));
}

// ---- perplexity ----

TEST(Perplexity, EqualsTheFullForwardWhateverTheChunk) {
  Model model = generation_model(37);
  const int V = model.config().vocab_size, L = 45;
  auto tokens = random_tokens(L, V, 10);
  Engine engine(model);
  std::vector<int32_t> inputs = {0};
  inputs.insert(inputs.end(), tokens.begin(), tokens.end() - 1);
  State state(model.config(), 1);
  std::vector<float> logits(static_cast<size_t>(L) * V);
  engine.forward(inputs.data(), 1, L, state, logits.data());
  double nll = 0;
  for (int t = 0; t < L; t++) {
    const float* row = logits.data() + static_cast<size_t>(t) * V;
    double sum = 0;
    for (int v = 0; v < V; v++) sum += std::exp(static_cast<double>(row[v]));
    nll += std::log(sum) - row[tokens[t]];
  }
  for (int chunk : {1, 7, 16, L, 100}) {
    PerplexityResult r = perplexity(engine, tokens, 0, chunk);
    EXPECT_EQ(r.tokens, L);
    EXPECT_NEAR(r.nll, nll, 1e-4 * nll) << "chunk " << chunk;
  }
  EXPECT_THROW(perplexity(engine, std::vector<int32_t>{1, 99}, 0), Error);
}

// ---- the command line ----

int run_cli(const std::string& args, std::string* output, const std::string& input = "") {
  std::string command = std::string(MAMBA_CLI_PATH) + " " + args + " 2>&1";
  if (!input.empty()) command = "printf '" + input + "' | " + command;
  FILE* pipe = popen(command.c_str(), "r");
  std::array<char, 4096> buffer;
  output->clear();
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output->append(buffer.data(), n);
  int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

class GenerateCli : public ::testing::Test {
 protected:
  void SetUp() override {
    generation_model(41).save(tmp_ / "ids", DType::F32);
    generation_model(43, {.vocab = 257, .byte_level = true}).save(tmp_ / "bytes", DType::F32);
  }
  std::string ids_model() const { return (tmp_ / "ids").string(); }
  std::string byte_model() const { return (tmp_ / "bytes").string(); }
  test::TempDir tmp_;
};

TEST_F(GenerateCli, IdsInIdsOutAndResumedSessions) {
  std::string out, a, b;
  const std::string base = "generate " + ids_model() + " --ids 1,2,3 --temperature 1 --seed 3 --ignore-eos";
  ASSERT_EQ(run_cli(base + " -n 10", &out), 0) << out;
  const std::string whole = first_line(out);
  EXPECT_EQ(std::count(whole.begin(), whole.end(), ','), 9) << out;
  EXPECT_NE(out.find("decode:"), std::string::npos) << out;
  const std::string state = (tmp_ / "s.safetensors").string();
  ASSERT_EQ(run_cli(base + " -n 4 --save-state " + state, &a), 0) << a;
  ASSERT_EQ(run_cli("generate " + ids_model() + " --temperature 1 --ignore-eos -n 6 --load-state " + state, &b), 0) << b;
  EXPECT_EQ(first_line(a) + "," + first_line(b), whole);
}

TEST_F(GenerateCli, BatchFileInOrderAndEqualToSingleRuns) {
  std::ofstream(tmp_ / "prompts.txt") << "1,2,3\n\n5 6\n7\n";
  std::string out, one;
  ASSERT_EQ(run_cli("generate " + ids_model() + " --batch-file " + (tmp_ / "prompts.txt").string() +
                        " -n 5 --temperature 0 --ignore-eos", &out), 0) << out;
  std::vector<nlohmann::json> lines;
  std::stringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line[0] == '{') lines.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(lines.size(), 3u) << out;
  EXPECT_EQ(lines[1]["prompt"].get<std::vector<int>>(), (std::vector<int>{5, 6}));
  ASSERT_EQ(run_cli("generate " + ids_model() + " --ids 5,6 -n 5 --temperature 0 --ignore-eos", &one), 0) << one;
  std::string joined;
  for (auto& id : lines[1]["ids"]) joined += (joined.empty() ? "" : ",") + std::to_string(id.get<int>());
  EXPECT_EQ(joined, first_line(one));
}

TEST_F(GenerateCli, ByteLevelTextInteractiveAndPerplexity) {
  std::string out;
  ASSERT_EQ(run_cli("generate " + byte_model() + " -p Hello -n 20 --temperature 0.8 --top-k 5 --seed 1", &out), 0) << out;
  EXPECT_EQ(out.rfind("Hello", 0), 0u) << out;  // the prompt, then its continuation
  ASSERT_EQ(run_cli("generate " + byte_model() + " -p Hi -n 5 --interactive", &out, "more\\nagain\\n"), 0) << out;
  std::ofstream(tmp_ / "text.txt") << "The quick brown fox jumps over the lazy dog.\n";
  ASSERT_EQ(run_cli("perplexity " + byte_model() + " -f " + (tmp_ / "text.txt").string() + " --json --chunk 7", &out), 0) << out;
  const auto line = out.substr(out.find('{'));
  nlohmann::json j = nlohmann::json::parse(first_line(line));
  EXPECT_EQ(j["tokens"].get<int>(), 45);
  EXPECT_GT(j["perplexity"].get<double>(), 1.0);
  EXPECT_NEAR(j["bits_per_byte"].get<double>(), std::log2(j["perplexity"].get<double>()), 1e-9);  // bytes = tokens
}

TEST_F(GenerateCli, BadInputGivesAClearErrorAndNoCrash) {
  std::string out;
  auto expect_error = [&](const std::string& args, const std::string& part) {
    const int rc = run_cli(args, &out);
    EXPECT_TRUE(rc >= 1 && rc < 128) << args << " exited " << rc << ": " << out;
    EXPECT_NE(out.find(part), std::string::npos) << args << ": " << out;
  };
  expect_error("generate " + ids_model() + " --ids 1,99 -n 3", "out of range");
  expect_error("generate " + ids_model() + " --ids 1,x -n 3", "not a token id");
  expect_error("generate " + ids_model() + " -p hello -n 3", "--ids");
  expect_error("generate " + ids_model() + " --ids 1,2,3,4,5 --max-prompt 4 -n 3", "longer than the limit");
  expect_error("generate " + ids_model() + " --ids 1 --top-p 1.5", "top-p");
  expect_error("generate " + ids_model() + " --ids 1 --temperature -1", "temperature");
  expect_error("generate " + ids_model() + " --ids 1 --repeat-penalty 0", "repeat-penalty");
  expect_error("generate " + ids_model() + " --ids 1 -n 0", "tokens");
  expect_error("generate " + ids_model() + " --ids 1 --bogus", "bogus");
  expect_error("generate " + ids_model() + " -n 3", "prompt");
  expect_error("generate " + ids_model() + " --ids 1 --load-state " + (tmp_ / "none.safetensors").string(),
               "none.safetensors");
  expect_error("generate " + byte_model() + " -p a --stop ''", "stop");
  expect_error("perplexity " + ids_model() + " -f " + (tmp_ / "missing.txt").string(), "missing.txt");
  // A malformed tokenizer.json beside the weights is named in the error.
  std::ofstream(tmp_ / "ids" / "tokenizer.json") << "{\"model\": {\"type\": \"BPE\", \"vocab\": [";
  expect_error("generate " + ids_model() + " -p hello -n 3", "tokenizer.json");
  // A state saved by another model.
  const std::string state = (tmp_ / "bytes.safetensors").string();
  ASSERT_EQ(run_cli("generate " + byte_model() + " -p ab -n 2 --save-state " + state, &out), 0) << out;
  expect_error("generate " + ids_model() + " --ids 1 -n 2 --load-state " + state, "bytes.safetensors");
}

}  // namespace
}  // namespace mamba

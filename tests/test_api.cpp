// The library API (include/mamba/mamba.h) as a frontend sees it: cancellation and callbacks' exceptions
// end a call at a clean boundary and leave the session going on as if uninterrupted; streaming equals
// a whole run; several threads share one model; States batch sessions as a server would; training
// reports through its callback and stops with a checkpoint, and resumes with changed options; memory is
// checked before work that would not fit. The Python tests (python/tests) cover the
// same API through the binding; these also run under the sanitizers.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <fstream>
#include <map>
#include <stdexcept>
#include <thread>

#include "mamba/mamba.h"
#include "test_util.h"

namespace mamba {
namespace {

using api::Completion;
using api::GenerationOptions;
using api::Model;
using api::ModelOptions;
using api::SamplingOptions;
using api::Session;

const std::filesystem::path kModel = test::fixtures_dir() / "official_f32_L17_tied";  // V = 64, ids only

SamplingOptions sampling(double temperature, uint64_t seed) {
  SamplingOptions s;
  s.temperature = temperature;
  s.seed = seed;
  return s;
}

GenerationOptions tokens(int n) {
  GenerationOptions g;
  g.max_new_tokens = n;
  g.stop_at_eos = false;
  return g;
}

// Weights kept in bf16 on the CPU (the arithmetic stays fp32).
ModelOptions bf16() {
  ModelOptions o;
  o.dtype = "bf16";
  return o;
}

std::vector<int32_t> prompt(int n, int V) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int i = 0; i < n; i++) ids[i] = (i * 7 + 3) % V;
  return ids;
}

TEST(Api, CancelledFeedLeavesTheSessionAsItWas) {
  ModelOptions o;
  o.max_tokens = 8;  // a 40-token prompt takes 5 passes: cancellable between them
  Model model(kModel, o);
  Session s = model.session(sampling(0.9, 3), tokens(12));
  s.feed(prompt(5, 64));
  const std::vector<float> ssm = s.state().ssm();
  const std::vector<float> logits = s.logits();
  int asked = 0;
  EXPECT_THROW(s.feed(prompt(40, 64), [&] { return ++asked == 2; }), Cancelled);
  EXPECT_EQ(asked, 2);
  EXPECT_EQ(s.state().ssm(), ssm);
  EXPECT_EQ(s.logits(), logits);
  // And it goes on exactly like a session that was never interrupted.
  Session fresh = model.session(sampling(0.9, 3), tokens(12));
  fresh.feed(prompt(5, 64));
  fresh.feed(prompt(40, 64));
  s.feed(prompt(40, 64));
  EXPECT_EQ(s.generate().ids, fresh.generate().ids);
}

TEST(Api, CancelledOrFailingGenerationGoesOnExactly) {
  Model model(kModel);
  Session whole = model.session(sampling(1.0, 5), tokens(30));
  whole.feed(prompt(6, 64));
  const Completion want = whole.generate();
  ASSERT_EQ(want.ids.size(), 30u);

  // Cancelled after 9 steps: 9 tokens reported; the next run gives the rest.
  Session s = model.session(sampling(1.0, 5), tokens(30));
  s.feed(prompt(6, 64));
  int steps = 0;
  EXPECT_THROW(s.generate({}, [&] { return ++steps == 9; }), Cancelled);
  std::vector<int32_t> got = s.output();
  EXPECT_EQ(got.size(), 9u);
  EXPECT_EQ(s.finish(), api::Finish::None);
  EXPECT_EQ(s.logits().size(), 64u);
  const Completion rest = s.generate();
  got.insert(got.end(), rest.ids.begin(), rest.ids.end() - 9);
  EXPECT_EQ(got, want.ids);

  // A callback that throws: the exception comes out, the session is as after a cancel.
  Session t = model.session(sampling(1.0, 5), tokens(30));
  t.feed(prompt(6, 64));
  int seen = 0;
  EXPECT_THROW(t.generate([&](int, int32_t, std::string_view) {
    if (++seen == 4) throw std::runtime_error("stop here");
  }),
               std::runtime_error);
  std::vector<int32_t> again = t.output();
  EXPECT_EQ(again.size(), 4u);
  const Completion more = t.generate();
  again.insert(again.end(), more.ids.begin(), more.ids.end() - 4);
  EXPECT_EQ(again, want.ids);
}

TEST(Api, StreamingEqualsAWholeRunAndCopiesAreIndependent) {
  Model model(kModel);
  Session a = model.session(sampling(0.8, 9), tokens(20));
  a.feed(prompt(3, 64));
  Session b = a;
  std::vector<int32_t> streamed;
  int calls = 0;
  while (a.next([&](int, int32_t id, std::string_view) {
    if (id >= 0) streamed.push_back(id);
  })) {
    calls++;
  }
  EXPECT_EQ(calls, 20);
  EXPECT_EQ(streamed, b.generate().ids);
  EXPECT_EQ(a.output(), streamed);
  EXPECT_EQ(a.finish(), api::Finish::Length);
}

TEST(Api, ThreadsShareOneModel) {
  Model model(kModel);
  auto run = [&](uint64_t seed) {
    Session s = model.session(sampling(1.0, seed), tokens(25));
    s.feed(prompt(static_cast<int>(4 + seed), 64));
    return s.generate().ids;
  };
  std::vector<std::vector<int32_t>> alone;
  for (uint64_t seed = 0; seed < 4; seed++) alone.push_back(run(seed));
  std::vector<std::vector<int32_t>> together(4);
  std::vector<std::thread> threads;
  for (uint64_t seed = 0; seed < 4; seed++) threads.emplace_back([&, seed] { together[seed] = run(seed); });
  for (auto& t : threads) t.join();
  EXPECT_EQ(together, alone);
}

// What a server's scheduler does: sessions' states stacked into one batch, stepped together, rows
// leaving the batch; each row's logits equal those of its sequence run alone.
TEST(Api, StatesBatchSequencesTogether) {
  Model model(kModel);
  const int V = model.config().vocab_size;
  std::vector<api::State> singles;
  std::vector<std::vector<float>> single_logits;
  for (int i = 0; i < 3; i++) {
    api::State st = model.new_state(1);
    const std::vector<int32_t> ids = prompt(5 + i, V);
    std::vector<float> logits(static_cast<size_t>(V));
    model.forward(ids.data(), 1, static_cast<int>(ids.size()), st, logits.data(), api::Logits::Last);
    singles.push_back(std::move(st));
  }
  const api::State* parts[] = {&singles[0], &singles[1], &singles[2]};
  api::State batch = api::State::concat(parts);
  ASSERT_EQ(batch.batch(), 3);
  const int32_t next[] = {1, 2, 3};
  std::vector<float> batch_logits(static_cast<size_t>(3 * V));
  model.step(next, batch, batch_logits.data());
  for (int i = 0; i < 3; i++) {
    std::vector<float> alone(static_cast<size_t>(V));
    model.step(&next[i], singles[i], alone.data());
    for (int v = 0; v < V; v++) EXPECT_NEAR(batch_logits[static_cast<size_t>(i * V + v)], alone[v], 1e-4);
    EXPECT_EQ(batch.row(i).bytes(), singles[i].bytes());
  }
  // Each row samples with its own options, as its session would.
  api::Sampler greedy(sampling(0, 0), V);
  const std::span<const float> row0(batch_logits.data(), static_cast<size_t>(V));
  EXPECT_EQ(greedy.sample(row0), static_cast<int32_t>(std::max_element(row0.begin(), row0.end()) - row0.begin()));
  EXPECT_THROW(greedy.sample(std::span<const float>(batch_logits.data(), 3)), Error);
  EXPECT_THROW(api::Sampler(sampling(-1, 0), V), Error);
  const int keep[] = {0, 2};
  batch.keep_rows(keep);
  EXPECT_EQ(batch.batch(), 2);
  const std::vector<float> kept = batch.row(1).ssm(), alone = singles[2].ssm();
  for (size_t k = 0; k < kept.size(); k++) EXPECT_NEAR(kept[k], alone[k], 1e-4);
  EXPECT_THROW(batch.row(2), Error);
}

// Continuous batching (api::Batch): sessions with their own sampling and lengths, joining at different
// steps, each give exactly the tokens they give alone. Exactly, because with bf16 weights the CPU's
// decode matmul computes each of up to 8 rows as it computes one; OpenBLAS's fp32 rows differ with the
// batch in the last bits (StatesBatchSequencesTogether's tolerance, docs/server.md).
TEST(Api, BatchedSessionsEqualEachAlone) {
  Model model(kModel, bf16());
  struct Spec {
    double temperature;
    uint64_t seed;
    int tokens, prompt, join_at;
  };
  const std::vector<Spec> specs = {{0, 1, 20, 3, 0}, {0.9, 2, 12, 7, 0}, {1.0, 3, 25, 1, 2}, {0.7, 4, 5, 11, 4},
                                   {0, 5, 30, 4, 4}, {1.0, 6, 9, 2, 17}};
  auto make = [&](const Spec& s) {
    Session x = model.session(sampling(s.temperature, s.seed), tokens(s.tokens));
    x.feed(prompt(s.prompt, 64));
    return x;
  };
  std::vector<std::vector<int32_t>> alone;
  for (const Spec& s : specs) alone.push_back(make(s).generate().ids);

  std::deque<Session> sessions;  // a session stays where it is while in a batch
  std::map<const Session*, std::vector<int32_t>> reported;
  api::Batch batch(model);
  size_t finished = 0;
  for (int step = 0; finished < specs.size(); step++) {
    ASSERT_LT(step, 100);
    for (const Spec& s : specs) {
      if (s.join_at != step) continue;
      sessions.push_back(make(s));
      EXPECT_TRUE(batch.add(sessions.back()));
      EXPECT_THROW(sessions.back().generate(), Error);  // the batch's until it leaves
    }
    const auto done = batch.step([&](Session& s, int32_t id, std::string_view, std::span<const float> logits) {
      if (id < 0) return;
      reported[&s].push_back(id);
      EXPECT_EQ(logits.size(), 64u);
    });
    for (Session* s : done) {
      EXPECT_FALSE(batch.contains(*s));
      EXPECT_EQ(s->finish(), api::Finish::Length);
    }
    finished += done.size();
  }
  EXPECT_EQ(batch.size(), 0);
  for (size_t i = 0; i < specs.size(); i++) {
    const Session& s = sessions[i];
    EXPECT_EQ(s.output(), alone[i]) << "session " << i;
    EXPECT_EQ(reported[&s], alone[i]) << "session " << i;
  }
  EXPECT_EQ(batch.stats().decode_tokens, 20 + 12 + 25 + 5 + 30 + 9 - static_cast<int64_t>(specs.size()));
}

// A session taken out between steps (a cancelled request) keeps what it reported and goes on from
// there alone; the others in the batch are not disturbed.
TEST(Api, SessionRemovedFromABatchGoesOnExactly) {
  Model model(kModel, bf16());
  auto make = [&](uint64_t seed) {
    Session x = model.session(sampling(1.0, seed), tokens(16));
    x.feed(prompt(5 + static_cast<int>(seed), 64));
    return x;
  };
  const std::vector<int32_t> a_alone = make(1).generate().ids, b_alone = make(2).generate().ids;
  Session a = make(1), b = make(2);
  api::Batch batch(model);
  batch.add(a);
  batch.add(b);
  for (int i = 0; i < 6; i++) EXPECT_TRUE(batch.step().empty());
  batch.remove(a);
  EXPECT_FALSE(batch.contains(a));
  std::vector<int32_t> got = a.output();
  ASSERT_EQ(got.size(), 6u);
  const std::vector<int32_t> rest = a.generate().ids;
  got.insert(got.end(), rest.begin(), rest.end() - 6);
  EXPECT_EQ(got, a_alone);
  while (batch.step().empty()) {
  }
  EXPECT_EQ(b.output(), b_alone);
  // A session removed before its first step, and one with nothing to generate.
  Session c = make(3);
  batch.add(c);
  batch.remove(c);
  EXPECT_EQ(c.generate().ids, make(3).generate().ids);
  Session none = model.session(sampling(0, 1), tokens(0));
  none.feed(prompt(3, 64));
  EXPECT_FALSE(batch.add(none));
  EXPECT_EQ(batch.size(), 0);
}

// New options between runs: the copies of one prefilled prompt sample as sessions made with those
// options would (what a server does for n > 1), and the state carries on.
TEST(Api, SetOptionsReseedsAndKeepsTheState) {
  Model model(kModel);
  Session base = model.session(sampling(0.9, 1), tokens(10));
  base.feed(prompt(8, 64));
  Session copy = base;
  copy.set_options(sampling(0.9, 2), tokens(14));
  Session direct = model.session(sampling(0.9, 2), tokens(14));
  direct.feed(prompt(8, 64));
  EXPECT_EQ(copy.generate().ids, direct.generate().ids);
  EXPECT_EQ(copy.sampling().seed, 2u);
  EXPECT_EQ(copy.options().max_new_tokens, 14);
  // A second turn after new options equals a session that had them for that turn.
  copy.set_options(sampling(0, 0), tokens(5));
  direct.set_options(sampling(0, 0), tokens(5));
  copy.feed(prompt(2, 64));
  direct.feed(prompt(2, 64));
  EXPECT_EQ(copy.generate().ids, direct.generate().ids);
  GenerationOptions bad = tokens(5);
  bad.max_new_tokens = -1;
  EXPECT_THROW(copy.set_options(sampling(0, 0), bad), Error);
}

// Four documents of 600 repeated bytes in tmp/texts, and a run in tmp/run of a 1-layer, 16-wide model on
// batches of 2 × 16 bytes.
api::TrainOptions tiny_training(const test::TempDir& tmp) {
  std::filesystem::create_directories(tmp / "texts");
  for (int d = 0; d < 4; d++) {
    std::ofstream(tmp / "texts" / ("d" + std::to_string(d) + ".txt")) << std::string(600, static_cast<char>('a' + d));
  }
  api::TrainOptions o;
  o.data = {tmp / "texts"};
  o.out = tmp / "run";
  o.d_model = 16;
  o.n_layer = 1;
  o.batch = 2;
  o.seq_len = 16;
  return o;
}

TEST(Api, TrainingReportsThroughItsCallbackAndStopsWithACheckpoint) {
  test::TempDir tmp;
  api::TrainOptions o = tiny_training(tmp);
  o.steps = 5;
  o.eval_every = 2;
  o.eval_batches = 1;
  api::Training training(o);
  EXPECT_EQ(training.step(), 0);
  EXPECT_EQ(training.steps(), 5);
  EXPECT_TRUE(training.config().byte_level);
  std::vector<api::TrainStep> seen;
  const api::TrainSummary s = training.run([&](const api::TrainStep& step) {
    seen.push_back(step);
    return step.step < 3;
  });
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_TRUE(seen[1].evaluated);
  EXPECT_FALSE(seen[2].evaluated);
  EXPECT_TRUE(s.interrupted);
  EXPECT_EQ(s.steps, 3);
  EXPECT_EQ(s.checkpoint.filename(), "step-00000003");

  o.resume = o.out;
  api::Training resumed(o);
  EXPECT_EQ(resumed.step(), 3);
  EXPECT_THROW(resumed.run([](const api::TrainStep&) -> bool { throw std::runtime_error("callback failed"); }),
               std::runtime_error);
  EXPECT_TRUE(std::filesystem::exists(o.out / "checkpoints" / "step-00000004" / "trainer.json"));
}

// Resuming through the API: the options named in `given` that a run may change are applied and
// reported, the others refused in the caller's own names; a run that would not fit in the memory limit
// is refused before anything is built.
TEST(Api, ResumeChangesWhatItMayAndRefusesTheRest) {
  test::TempDir tmp;
  api::TrainOptions o = tiny_training(tmp);
  o.steps = 2;
  o.eval_batches = 1;
  api::Training(o).run();

  api::TrainOptions r;
  r.data = o.data;
  r.resume = o.out;
  r.batch = 2;
  r.lr = 2e-3;
  r.steps = 4;
  r.given = {"batch", "lr", "steps"};  // batch given equal to the run's: not a change
  api::Training resumed(r);
  ASSERT_EQ(resumed.changes().size(), 2u);
  EXPECT_EQ(resumed.changes()[0].option, "lr");
  EXPECT_EQ(resumed.changes()[0].was, "0.001");
  EXPECT_EQ(resumed.changes()[0].now, "0.002");
  EXPECT_EQ(resumed.changes()[1].option, "steps");
  EXPECT_EQ(resumed.run().steps, 4);

  r.steps = 6;
  r.batch = 4;
  auto expect_refused = [&](const api::TrainOptions& options, const std::string& part) {
    try {
      api::Training t(options);
      FAIL() << "resumed with " << part;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_refused(r, "batch 4 cannot change in a resumed run (it is 2 there)");
  r.option_name = [](const std::string& field) { return "<" + field + ">"; };
  expect_refused(r, "<batch> 4 cannot change");
  r.batch = 2;
  r.data.clear();
  r.tokens = {tmp / "texts" / "d0.txt"};
  expect_refused(r, "was trained on text (<data>)");

  api::set_memory_limit(1 << 20);
  o.out = tmp / "big";
  o.d_model = 256;
  o.n_layer = 4;
  expect_refused(o, "needed");
  EXPECT_FALSE(std::filesystem::exists(o.out / "checkpoints"));
  api::set_memory_limit(0);
}

TEST(Api, MemoryChecksAndQuantizedModels) {
  const Model model(kModel);
  const int64_t bytes = model.forward_bytes(4, 1000, api::Logits::All);
  EXPECT_GT(bytes, int64_t{4} * 1000 * 64 * 4);  // the logits, and more
  EXPECT_LT(model.forward_bytes(4, 1000, api::Logits::Last), bytes);
  EXPECT_GT(model.generation_bytes(8), 0);
  api::set_memory_limit(bytes - 1);
  EXPECT_THROW(api::check_memory(bytes, "these logits"), Error);
  api::set_memory_limit(0);

  test::TempDir tmp;
  const api::QuantizeSummary q = api::quantize_model(kModel, tmp / "int8");
  EXPECT_GT(q.bytes, 0);
  EXPECT_EQ(q.config.d_model, model.config().d_model);
  ModelOptions o;
  o.dtype = "int8";
  const Model on_load(kModel, o), from_file(tmp / "int8");
  EXPECT_EQ(from_file.weight_dtype(), "int8");
  const std::vector<int32_t> ids = prompt(9, 64);
  std::vector<float> a(9 * 64), b(9 * 64);
  on_load.score(ids.data(), 1, 9, a.data());
  from_file.score(ids.data(), 1, 9, b.data());
  EXPECT_EQ(a, b);  // quantizing on load and reading the quantized file give the same weights
}

TEST(Api, ErrorsCarryTheCliMessages) {
  EXPECT_THROW(Model(test::fixtures_dir() / "no-such-model"), Error);
  ModelOptions o;
  o.device = "tpu";
  try {
    Model m(kModel, o);
    FAIL() << "loaded on a tpu";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("device \"tpu\""), std::string::npos) << e.what();
  }
  Model model(kModel);
  EXPECT_FALSE(model.has_text());
  EXPECT_THROW(model.encode("text"), Error);
  Session s = model.session();
  const std::vector<int32_t> bad = {1, 64};
  EXPECT_THROW(s.feed(bad), Error);
  EXPECT_THROW(model.session(sampling(-1, 0)), Error);
}

}  // namespace
}  // namespace mamba

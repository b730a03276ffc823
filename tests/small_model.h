// Small random models with awkward sizes, built in memory, and a small text corpus, shared by the model,
// generation and training tests.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "model/data.h"
#include "model/model.h"
#include "model/trainer.h"

namespace mamba::test {

// The official initialisation of a model of config c, as flat fp32 parameters.
inline std::vector<float> initial_params(const Config& c, uint64_t seed) {
  auto specs = param_specs(c);
  std::vector<float> params(static_cast<size_t>(param_layout_size(specs)));
  init_params(params.data(), c, specs, seed);
  return params;
}

// A byte-level model of 2 layers with these widths.
inline Config byte_config(int d_model, int d_state, int dt_rank) {
  Config c;
  c.d_model = d_model;
  c.n_layer = 2;
  c.vocab_size = kByteVocab;
  c.d_state = d_state;
  c.dt_rank = dt_rank;
  c.byte_level = true;
  c.eos_token_id = kByteEndOfDoc;
  return c;
}

// Six short documents of `sentences` numbered sentences each in dir/text, every third held out.
inline Dataset text_dataset(const std::filesystem::path& dir, int sentences) {
  std::filesystem::create_directories(dir / "text");
  for (int d = 0; d < 6; d++) {
    std::ofstream out(dir / "text" / ("doc" + std::to_string(d) + ".txt"));
    for (int i = 0; i < sentences; i++) out << "the state of the union is strong " << d << " " << i << ". ";
  }
  return load_text_dataset({dir / "text"}, 3);
}

struct SmallModelOptions {
  int vocab = 37;
  int d_conv = 4;
  bool byte_level = false;  // vocabulary 257 with end-of-text 256, for streaming-text tests
  // Every parameter gets N(0, perturb²) added after the official initialisation, so that A_log and D are
  // not at their initial values and the next-token distributions are far from uniform.
  double perturb = 0.2;
};

inline Model small_model(uint64_t seed, const SmallModelOptions& o = {}) {
  Config c;
  c.d_model = 24;
  c.n_layer = 2;
  c.vocab_size = o.vocab;
  c.d_state = 5;
  c.d_conv = o.d_conv;
  c.dt_rank = 3;
  c.use_bias = true;
  c.tie_embeddings = false;
  c.byte_level = o.byte_level;
  c.eos_token_id = o.byte_level ? 256 : 0;
  auto specs = param_specs(c);
  std::vector<float> params = initial_params(c, seed);
  Rng rng(seed + 1);
  for (const ParamSpec& s : specs) {
    for (int64_t i = 0; i < s.numel; i++) params[s.offset + i] += static_cast<float>(o.perturb * rng.normal());
  }
  return Model::from_params(c, std::move(params));
}

inline std::vector<int32_t> random_tokens(int n, int vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  return t;
}

// The tiny model, corpus and options of the training tests (test_train.cpp, test_train_precision.cpp).
inline Config tiny_byte_config() { return byte_config(16, 4, 1); }
inline Dataset tiny_text_dataset(const std::filesystem::path& dir) { return text_dataset(dir, 40); }
inline TrainOptions tiny_options(int64_t steps, DType dtype = DType::F32) {
  TrainOptions o;
  o.batch = 2;
  o.seq_len = 32;
  o.steps = steps;
  o.warmup = 2;
  o.lr = 3e-3;
  o.eval_every = 3;
  o.eval_batches = 2;
  o.dtype = dtype;
  return o;
}

}  // namespace mamba::test

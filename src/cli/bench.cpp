#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/limits.h"
#include "core/rng.h"
#include "model/engine.h"
#include "model/validate.h"

namespace mamba::cli {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Measure prefill and decode speed on the CPU (JSON lines on stdout)");
  struct Options {
    std::string dir;
    int batch = 1, prompt = 512, steps = 128, repeats = 3;
  };
  static Options o;
  cmd->add_option("dir", o.dir, "Model folder")->required();
  cmd->add_option("--batch", o.batch, "Sequences run together")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--prompt", o.prompt, "Prefill length in tokens")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--steps", o.steps, "Decode steps")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--repeats", o.repeats, "Timed repeats (the median is reported)")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->callback([] {
    Model model = Model::load(o.dir);
    const Config& c = model.config();
    check_memory(forward_bytes(c, o.batch, o.prompt, o.batch),
                 "bench: " + std::to_string(o.batch) + " × " + std::to_string(o.prompt) + " prompt tokens");
    Engine engine(model);
    State state(c, o.batch);
    Rng rng(1);
    std::vector<int32_t> tokens(static_cast<size_t>(o.batch) * o.prompt);
    for (int32_t& t : tokens) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size)));
    std::vector<float> logits(static_cast<size_t>(o.batch) * c.vocab_size);
    const nlohmann::json common = {{"model", o.dir}, {"params", c.parameter_count()}, {"batch", o.batch},
                                   {"threads", thread_count()}, {"build", MAMBA_BUILD_FLAGS},
                                   {"blas", openblas_get_config()}};

    // Prefill: the parallel path over B × prompt tokens, logits of the last position only.
    std::vector<double> prefill;
    for (int r = 0; r <= o.repeats; r++) {  // the first run warms up
      state.reset();
      auto start = std::chrono::steady_clock::now();
      engine.forward(tokens.data(), o.batch, o.prompt, state, logits.data(), Logits::Last);
      if (r > 0) prefill.push_back(seconds_since(start));
    }
    double t = median(prefill);
    nlohmann::json line = common;
    line.update({{"bench", "prefill"}, {"tokens", int64_t{o.batch} * o.prompt}, {"seconds", t},
                 {"tokens_per_s", int64_t{o.batch} * o.prompt / t}});
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);

    // Decode: one token per sequence per step, full logits each step.
    std::vector<double> decode;
    std::vector<int32_t> next(static_cast<size_t>(o.batch), 0);
    for (int r = 0; r <= o.repeats; r++) {
      auto start = std::chrono::steady_clock::now();
      for (int s = 0; s < o.steps; s++) {
        engine.step(next.data(), o.batch, state, logits.data());
        for (int b = 0; b < o.batch; b++) {
          const float* row = logits.data() + int64_t{b} * c.vocab_size;
          next[b] = static_cast<int32_t>(std::max_element(row, row + c.vocab_size) - row);
        }
      }
      if (r > 0) decode.push_back(seconds_since(start));
    }
    t = median(decode);
    line = common;
    line.update({{"bench", "decode"}, {"tokens", int64_t{o.batch} * o.steps}, {"seconds", t},
                 {"tokens_per_s", int64_t{o.batch} * o.steps / t}, {"ms_per_step", 1000.0 * t / o.steps}});
    std::printf("%s\n", line.dump().c_str());
  });
}

}  // namespace mamba::cli

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include <sys/resource.h>

#include "cli/commands.h"
#include "core/limits.h"
#include "core/rng.h"
#include "core/runtime.h"
#include "model/engine.h"
#include "model/validate.h"

namespace mamba::cli {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The process's peak resident memory so far: weights touched, activations, state, the program itself.
int64_t max_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return int64_t{usage.ru_maxrss} * 1024;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Measure prefill and greedy decode speed (JSON lines on stdout)");
  struct Options {
    std::string dir;
    int batch = 1, prompt = 512, steps = 128, repeats = 3;
    DeviceFlags device;
  };
  static Options o;
  add_device_flags(cmd, o.device);
  cmd->add_option("dir", o.dir, "Model folder")->required();
  cmd->add_option("--batch", o.batch, "Sequences run together")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--prompt", o.prompt, "Prefill length in tokens")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--steps", o.steps, "Decode steps")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--repeats", o.repeats, "Timed repeats (the median is reported)")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->callback([] {
    Model model = load_model(o.dir, o.device);
    const Config& c = model.config();
    check_memory(forward_bytes(c, o.batch, o.prompt, o.batch),
                 "bench: " + std::to_string(o.batch) + " × " + std::to_string(o.prompt) + " prompt tokens");
    Engine engine(model, engine_options(o.device, std::max<int64_t>(2048, int64_t{o.batch} * o.prompt)));
    State state = engine.new_state(o.batch);
    Rng rng(1);
    std::vector<int32_t> tokens(static_cast<size_t>(o.batch) * o.prompt);
    for (int32_t& t : tokens) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size)));
    std::vector<float> logits(static_cast<size_t>(o.batch) * c.vocab_size);
    const nlohmann::json common = {{"model", o.dir}, {"params", c.parameter_count()}, {"batch", o.batch},
                                   {"device", engine.backend().device().name()},
                                   {"dtype", std::string(dtype_name(engine.dtype()))},
                                   {"weights", std::string(dtype_name(model.weight_dtype()))},
                                   {"weight_bytes", engine.weight_bytes()}, {"backend", engine.backend().describe()},
                                   {"threads", runtime_threads()}, {"build", MAMBA_BUILD_FLAGS}};

    // Prefill: the parallel path over B × prompt tokens, logits of the last position only.
    std::vector<double> prefill;
    for (int r = 0; r <= o.repeats; r++) {  // the first run warms up
      state.reset();
      auto start = std::chrono::steady_clock::now();
      engine.forward(tokens.data(), o.batch, o.prompt, state, logits.data(), Logits::Last);
      engine.backend().synchronize();
      if (r > 0) prefill.push_back(seconds_since(start));
    }
    double t = median(prefill);
    nlohmann::json line = common;
    line.update({{"bench", "prefill"}, {"tokens", int64_t{o.batch} * o.prompt}, {"seconds", t},
                 {"tokens_per_s", int64_t{o.batch} * o.prompt / t}, {"activation_bytes", engine.activation_bytes()},
                 {"max_rss_bytes", max_rss_bytes()}});
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);

    // Decode: one token per sequence per step, greedy (the argmax of every logit, on the device).
    std::vector<double> decode;
    std::vector<int32_t> next(static_cast<size_t>(o.batch), 0);
    for (int r = 0; r <= o.repeats; r++) {
      auto start = std::chrono::steady_clock::now();
      for (int s = 0; s < o.steps; s++) engine.step_greedy(next.data(), o.batch, state, next.data());
      if (r > 0) decode.push_back(seconds_since(start));
    }
    t = median(decode);
    line = common;
    line.update({{"bench", "decode"}, {"tokens", int64_t{o.batch} * o.steps}, {"seconds", t},
                 {"tokens_per_s", int64_t{o.batch} * o.steps / t}, {"ms_per_step", 1000.0 * t / o.steps},
                 {"max_rss_bytes", max_rss_bytes()}});
    std::printf("%s\n", line.dump().c_str());
  });
}

}  // namespace mamba::cli

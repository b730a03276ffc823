#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "model/engine.h"
#include "model/sampler.h"

namespace mamba::cli {

void add_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Continue a prompt, streaming the output (byte-level models, or --ids)");
  struct Options {
    std::string dir, prompt, ids;
    int n = 200;
    SamplerOptions sampling;
  };
  static Options o;
  cmd->add_option("dir", o.dir, "Model folder")->required();
  cmd->add_option("-p,--prompt", o.prompt, "Prompt text (byte-level models)");
  cmd->add_option("--ids", o.ids, "Prompt as comma-separated token ids; prints ids");
  cmd->add_option("-n,--tokens", o.n, "New tokens to generate")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", o.sampling.temperature, "Sampling temperature (0: greedy)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", o.sampling.top_k, "Sample among the k most likely (0: all)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", o.sampling.seed, "Sampling seed")->capture_default_str();
  cmd->callback([] {
    Model model = Model::load(o.dir);
    const Config& c = model.config();
    std::vector<int32_t> prompt;
    const bool as_ids = !o.ids.empty();
    if (as_ids) {
      size_t pos = 0;
      while (pos <= o.ids.size()) {
        size_t comma = o.ids.find(',', pos);
        std::string item = o.ids.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        char* end = nullptr;
        long v = std::strtol(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || v < 0 || v >= c.vocab_size) {
          fail("--ids: \"", item, "\" is not a token id of this model (0..", c.vocab_size - 1, ")");
        }
        prompt.push_back(static_cast<int32_t>(v));
        if (comma == std::string::npos) break;
        pos = comma + 1;
      }
    } else {
      if (!c.byte_level) fail(o.dir, ": not a byte-level model; give the prompt as --ids");
      if (o.prompt.empty()) fail("generate: give a prompt with -p");
      for (unsigned char ch : o.prompt) prompt.push_back(ch);
    }
    Engine engine(model);
    State state(c, 1);
    Sampler sampler(o.sampling, c.vocab_size);
    std::vector<float> logits(static_cast<size_t>(c.vocab_size));
    auto t0 = std::chrono::steady_clock::now();
    engine.forward(prompt.data(), 1, static_cast<int>(prompt.size()), state, logits.data(), Logits::Last);
    auto t1 = std::chrono::steady_clock::now();
    if (!as_ids) std::fwrite(o.prompt.data(), 1, o.prompt.size(), stdout);
    int produced = 0;
    for (; produced < o.n; produced++) {
      int32_t next = sampler.sample(logits.data());
      if (c.byte_level && next == c.eos_token_id) break;
      if (as_ids) {
        std::printf("%s%d", produced ? "," : "", next);
      } else if (next < 256) {
        std::fputc(next, stdout);
      }
      std::fflush(stdout);
      engine.step(&next, 1, state, logits.data());
    }
    std::printf("\n");
    std::fflush(stdout);
    auto t2 = std::chrono::steady_clock::now();
    const double prefill = std::chrono::duration<double>(t1 - t0).count();
    const double decode = std::chrono::duration<double>(t2 - t1).count();
    std::fprintf(stderr, "prompt: %zu tokens, %.1f tokens/s; generated: %d tokens, %.1f tokens/s\n", prompt.size(),
                 prompt.size() / std::max(prefill, 1e-9), produced, produced / std::max(decode, 1e-9));
  });
}

}  // namespace mamba::cli

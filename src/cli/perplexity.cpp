#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"

namespace mamba::cli {

void add_perplexity(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "perplexity",
      "Perplexity and bits per byte of a text: the whole text through the recurrent state in chunks (no window)");
  struct Options {
    std::string dir, file;
    int chunk = 512;
    bool json = false;
    DeviceFlags device;
  };
  static Options o;
  add_device_flags(cmd, o.device);
  cmd->add_option("dir", o.dir, "Model folder (with tokenizer.json, or byte-level)")->required();
  cmd->add_option("-f,--file", o.file, "Text file")->required();
  cmd->add_option("--chunk", o.chunk, "Tokens per forward pass (memory: chunk × vocabulary logits)")
      ->capture_default_str()->check(CLI::Range(1, 65536));
  cmd->add_flag("--json", o.json, "One JSON line on stdout instead of text");
  cmd->callback([] {
    std::ifstream in(o.file, std::ios::binary);
    if (!in) fail(o.file, ": cannot open");
    const std::string text(std::istreambuf_iterator<char>(in), {});
    if (text.empty()) fail(o.file, ": empty");
    const api::Model model(o.dir, model_options(o.device));
    if (!model.has_text()) fail(o.dir, ": no tokenizer.json and not byte-level: cannot read text");
    const std::vector<int32_t> tokens = model.encode(text);
    // The first token is predicted from the end-of-document token, so every token of the text counts.
    const api::Perplexity r = model.perplexity(tokens, o.chunk, [&](int64_t done) {
      std::fprintf(stderr, "\r%lld / %zu tokens", static_cast<long long>(done), tokens.size());
    });
    std::fprintf(stderr, "\n");
    const double bits_per_byte = r.nll / std::log(2.0) / static_cast<double>(text.size());
    const double tokens_per_s = r.tokens / std::max(r.seconds, 1e-9);
    if (o.json) {
      nlohmann::json j = {{"file", o.file}, {"tokens", r.tokens}, {"bytes", text.size()}, {"nll", r.nll},
                          {"perplexity", r.perplexity()}, {"bits_per_byte", bits_per_byte},
                          {"seconds", r.seconds}, {"tokens_per_s", tokens_per_s}};
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      std::printf("%s: %lld tokens, %zu bytes: perplexity %.4f, %.4f bits per byte (%.1f tokens/s)\n",
                  o.file.c_str(), static_cast<long long>(r.tokens), text.size(), r.perplexity(), bits_per_byte,
                  tokens_per_s);
    }
  });
}

}  // namespace mamba::cli

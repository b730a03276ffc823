#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/file.h"
#include "core/limits.h"

namespace mamba::cli {

void add_perplexity(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "perplexity",
      "Perplexity and bits per byte of a text, or of token ids: the whole text through the recurrent state in "
      "chunks (no window)");
  struct Options {
    std::string dir, file, ids_file;
    int chunk = 512;
    bool json = false;
    DeviceFlags device;
  };
  static Options o;
  add_device_flags(cmd, o.device);
  cmd->add_option("dir", o.dir, "Model folder (with tokenizer.json, or byte-level)")->required();
  auto* file = cmd->add_option("-f,--file", o.file, "Text file");
  cmd->add_option("--ids-file", o.ids_file,
                  "Token ids as .npy instead of text: (L,), or (B, L) for B texts scored each from the start")
      ->excludes(file);
  cmd->add_option("--chunk", o.chunk, "Tokens per forward pass (memory: chunk × vocabulary logits)")
      ->capture_default_str()->check(CLI::Range(1, 65536));
  cmd->add_flag("--json", o.json, "One JSON line on stdout instead of text");
  cmd->callback([] {
    if (o.file.empty() == o.ids_file.empty()) fail("perplexity: give a text file (-f) or token ids (--ids-file)");
    // Rows of token ids, each scored from the zero state; text is one row.
    std::vector<std::vector<int32_t>> rows;
    int64_t bytes = 0;  // of text: bits per byte need them
    std::string text;
    if (!o.file.empty()) {
      text = read_text_file(o.file);
      if (text.empty()) fail(o.file, ": empty");
      bytes = static_cast<int64_t>(text.size());
    } else {
      std::vector<int64_t> shape;
      const std::vector<int32_t> ids = read_ids_npy(o.ids_file, shape);
      const auto L = static_cast<size_t>(shape.back());
      for (size_t i = 0; i < ids.size(); i += L) rows.emplace_back(ids.begin() + i, ids.begin() + i + L);
    }
    api::ModelOptions options = model_options(o.device);
    options.text = rows.empty();  // token ids need no tokenizer
    const api::Model model(o.dir, options);
    api::check_memory(model.forward_bytes(1, o.chunk, api::Logits::All), "perplexity: --chunk " + std::to_string(o.chunk));
    if (rows.empty()) {
      if (!model.has_text()) fail(o.dir, ": no tokenizer.json and not byte-level: cannot read text (give --ids-file)");
      api::check_memory(sat_mul(bytes, 4), o.file + ": its tokens");
      rows.push_back(model.encode(text));
    }
    int64_t total = 0;
    for (const auto& row : rows) total += static_cast<int64_t>(row.size());
    // The first token of each row is predicted from the end-of-document token, so every token counts.
    api::Perplexity r;
    for (const auto& row : rows) {
      const int64_t before = r.tokens;
      const api::Perplexity one = model.perplexity(row, o.chunk, [&](int64_t done) {
        std::fprintf(stderr, "\r%lld / %lld tokens", static_cast<long long>(before + done), static_cast<long long>(total));
      });
      r.nll += one.nll;
      r.tokens += one.tokens;
      r.seconds += one.seconds;
    }
    std::fprintf(stderr, "\n");
    const std::string source = o.file.empty() ? o.ids_file : o.file;
    const double bits_per_token = r.nll / std::log(2.0) / static_cast<double>(r.tokens);
    const double bits_per_byte = bytes > 0 ? r.nll / std::log(2.0) / static_cast<double>(bytes) : 0;
    const double tokens_per_s = r.tokens / std::max(r.seconds, 1e-9);
    if (o.json) {
      nlohmann::json j = {{"file", source}, {"tokens", r.tokens}, {"nll", r.nll}, {"perplexity", r.perplexity()},
                          {"bits_per_token", bits_per_token}, {"seconds", r.seconds}, {"tokens_per_s", tokens_per_s}};
      if (bytes > 0) j.update({{"bytes", bytes}, {"bits_per_byte", bits_per_byte}});
      if (rows.size() > 1) j["sequences"] = rows.size();
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else if (bytes > 0) {
      std::printf("%s: %lld tokens, %lld bytes: perplexity %.4f, %.4f bits per byte (%.1f tokens/s)\n",
                  source.c_str(), static_cast<long long>(r.tokens), static_cast<long long>(bytes), r.perplexity(),
                  bits_per_byte, tokens_per_s);
    } else {
      std::printf("%s: %zu sequences, %lld tokens: perplexity %.4f, %.4f bits per token (%.1f tokens/s)\n",
                  source.c_str(), rows.size(), static_cast<long long>(r.tokens), r.perplexity(), bits_per_token,
                  tokens_per_s);
    }
  });
}

}  // namespace mamba::cli

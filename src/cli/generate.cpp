#include <algorithm>
#include <cstdio>
#include <sstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/file.h"
#include "core/limits.h"

namespace mamba::cli {

namespace {

std::string read_file(const std::string& path) {
  return path == "-" ? read_stdin("--prompt-file -") : read_text_file(path);
}

// One line of stdin without its newline; false at the end. A line longer than the memory limit (a
// stream without newlines) is an error, not an ever-growing string.
bool read_line(std::string& line) {
  line.clear();
  const int64_t limit = memory_limit();
  for (int c; (c = std::getchar()) != EOF;) {
    if (c == '\n') return true;
    line += static_cast<char>(c);
    if (limit > 0 && static_cast<int64_t>(line.size()) > limit) {
      fail("stdin: a line of more than ", format_bytes(limit), ", the memory allowed (", memory_limit_source(), ")");
    }
  }
  return !line.empty();
}

void write(std::string_view s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

std::string dump(const nlohmann::ordered_json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

}  // namespace

void add_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "generate",
      "Continue a prompt, streaming the output. Text goes through DIR/tokenizer.json, or bytes for a "
      "byte-level model; with --ids (or a folder without a tokenizer) ids go in and come out");
  struct Options {
    std::string dir, prompt, prompt_file, ids, batch_file, save_state, load_state;
    bool interactive = false, ignore_eos = false;
    api::SamplingOptions sampling;
    api::GenerationOptions gen;
    DeviceFlags device;
  };
  static Options o;
  add_device_flags(cmd, o.device);
  cmd->add_option("dir", o.dir, "Model folder")->required();
  auto* prompt = cmd->add_option("-p,--prompt", o.prompt, "Prompt text");
  auto* prompt_file = cmd->add_option("--prompt-file", o.prompt_file, "Prompt text from a file (- for stdin)")
                          ->excludes(prompt);
  auto* ids = cmd->add_option("--ids", o.ids, "Prompt as token ids (1,2,3); prints ids")
                  ->excludes(prompt)->excludes(prompt_file);
  auto* batch = cmd->add_option("--batch-file", o.batch_file,
                                "One prompt per line (blank lines skipped), decoded together; JSON lines out, in order")
                    ->excludes(prompt)->excludes(prompt_file)->excludes(ids);
  cmd->add_flag("-i,--interactive", o.interactive,
                "Then read prompts from stdin, one per line, continuing the same state")->excludes(batch);
  cmd->add_option("-n,--tokens", o.gen.max_new_tokens, "New tokens to generate (per prompt or turn)")
      ->capture_default_str()->check(CLI::Range(1, 1 << 30));
  cmd->add_option("--temperature", o.sampling.temperature, "Sampling temperature (0: greedy)")
      ->capture_default_str()->check(CLI::Range(0.0, 1000.0));
  cmd->add_option("--top-k", o.sampling.top_k, "Sample among the k most likely (0: all)")
      ->capture_default_str()->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--top-p", o.sampling.top_p, "Sample among the most likely tokens holding this mass (1: all)")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--min-p", o.sampling.min_p, "Drop tokens less likely than min-p × the most likely (0: none)")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--repeat-penalty", o.sampling.repetition_penalty,
                  "Divide the positive logits of tokens already seen by this, multiply the negative (1: none)")
      ->capture_default_str()->check(CLI::Range(1e-3, 1e3));
  auto* seed = cmd->add_option("--seed", o.sampling.seed, "Sampling seed (prompt i of a batch uses seed + i)")
                   ->capture_default_str();
  cmd->add_option("--stop", o.gen.stop, "Stop when the text contains this (not printed); may be repeated");
  cmd->add_flag("--ignore-eos", o.ignore_eos, "Do not stop at the end-of-sequence token");
  cmd->add_option("--max-prompt", o.gen.max_prompt_tokens, "Refuse prompts longer than this many tokens")
      ->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_option("--save-state", o.save_state, "At the end, save the session (state, last token, sampler)")
      ->excludes(batch);
  cmd->add_option("--load-state", o.load_state, "Continue a session saved by --save-state (the prompt is optional)")
      ->excludes(batch);
  cmd->callback([seed] {
    if (o.sampling.top_p <= 0) fail("--top-p: must be > 0");
    api::ModelOptions options = model_options(o.device);
    options.text = o.ids.empty();  // with --ids the tokenizer is not needed
    const api::Model model(o.dir, options);
    // With --ids (or a folder without a tokenizer) ids go in and come out.
    const bool as_ids = !model.has_text();
    auto encode = [&](const std::string& text, const std::string& where) {
      return as_ids ? parse_ids(text, where) : model.encode(text);
    };
    o.gen.stop_at_eos = !o.ignore_eos;

    bool line_started = false;  // ids mode: a comma goes before every id but the first of a line
    auto print = [&](int, int32_t id, std::string_view text) {
      if (!as_ids) {
        write(text);
      } else if (id >= 0) {
        write((line_started ? "," : "") + std::to_string(id));
        line_started = true;
      }
    };
    auto end_line = [&] {
      write("\n");
      line_started = false;
    };

    int64_t generated = 0;
    api::GenerationStats stats;
    if (!o.batch_file.empty()) {
      std::istringstream in(read_text_file(o.batch_file));
      std::vector<std::string> prompts;
      std::vector<int> numbers;  // line numbers, for errors
      std::string line;
      for (int number = 1; std::getline(in, line); number++) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        prompts.push_back(line);
        numbers.push_back(number);
      }
      if (prompts.empty()) fail(o.batch_file, ": no prompts");
      // Each prompt is a sequence with its own state, logits and sampler: the batch is checked against the
      // memory limit before any prompt is encoded.
      api::check_memory(model.generation_bytes(static_cast<int64_t>(prompts.size())),
                        o.batch_file + ": " + std::to_string(prompts.size()) + " prompts decoded together");
      std::vector<std::vector<int32_t>> prompt_ids;
      for (size_t k = 0; k < prompts.size(); k++) {
        prompt_ids.push_back(encode(prompts[k], o.batch_file + ":" + std::to_string(numbers[k])));
      }
      const std::vector<api::Completion> out = model.generate(prompt_ids, o.sampling, o.gen, {}, {}, &stats);
      for (size_t i = 0; i < out.size(); i++) {
        nlohmann::ordered_json j;  // keys in this order: prompt, text, ids, finish
        if (as_ids) {
          j["prompt"] = prompt_ids[i];
        } else {
          j["prompt"] = prompts[i];
          j["text"] = out[i].text;
        }
        j["ids"] = out[i].ids;
        j["finish"] = api::finish_name(out[i].finish);
        write(dump(j) + "\n");
        generated += static_cast<int64_t>(out[i].ids.size());
      }
    } else {
      api::Session session = o.load_state.empty()
                                 ? model.session(o.sampling, o.gen)
                                 : model.load_session(o.load_state, o.sampling, o.gen, seed->count() == 0);
      std::string text = o.prompt;
      if (!o.prompt_file.empty()) text = read_file(o.prompt_file);
      std::vector<int32_t> tokens;
      if (!o.ids.empty()) {
        tokens = parse_ids(o.ids, "--ids");
        if (tokens.empty()) fail("--ids: no token ids given");
      } else if (!text.empty()) {
        if (as_ids) fail(o.dir, ": no tokenizer.json and not byte-level: give the prompt as token ids (--ids)");
        tokens = model.encode(text);
      }
      const bool first_turn = !tokens.empty() || !o.load_state.empty();
      if (!first_turn && !o.interactive) fail("generate: give a prompt (-p, --prompt-file or --ids) or --load-state");
      if (first_turn) {
        session.feed(tokens);
        if (!as_ids) write(text);  // the prompt, then its continuation
        generated += static_cast<int64_t>(session.generate(print).ids.size());
        end_line();
      }
      if (o.interactive) {
        std::string line;
        for (;;) {
          std::fprintf(stderr, "> ");
          if (!read_line(line)) break;
          try {
            session.feed(encode(line, "stdin"));
          } catch (const Error& e) {  // a bad line is reported; the session goes on
            std::fprintf(stderr, "error: %s\n", e.what());
            continue;
          }
          generated += static_cast<int64_t>(session.generate(print).ids.size());
          end_line();
        }
        std::fprintf(stderr, "\n");
      }
      if (!o.save_state.empty()) {
        session.save(o.save_state);
        std::fprintf(stderr, "saved the session to %s\n", o.save_state.c_str());
      }
      stats = session.stats();
    }
    std::fprintf(stderr, "prompt: %lld tokens, %.1f tokens/s; generated: %lld tokens; decode: %.1f tokens/s\n",
                 static_cast<long long>(stats.prefill_tokens),
                 stats.prefill_tokens / std::max(stats.prefill_seconds, 1e-9), static_cast<long long>(generated),
                 stats.decode_tokens / std::max(stats.decode_seconds, 1e-9));
  });
}

}  // namespace mamba::cli

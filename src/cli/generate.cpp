#include <cstdio>
#include <sstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/file.h"
#include "core/limits.h"
#include "model/validate.h"
#include "model/generator.h"

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
    SamplerOptions sampling;
    GenerateOptions gen;
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
    Model model = load_model(o.dir, o.device);
    const Config& c = model.config();
    // With --ids the tokenizer is not needed; a folder without one takes and gives ids everywhere.
    const TextCodec codec = o.ids.empty() ? TextCodec::for_model(o.dir, c) : TextCodec::ids_only();
    const bool as_ids = !codec.has_text();
    auto encode = [&](const std::string& text, const std::string& where) {
      return as_ids ? parse_ids(text, where) : codec.encode(text);
    };
    o.gen.stop_at_eos = !o.ignore_eos;
    o.gen.eos_token_id = c.eos_token_id;
    Engine engine(model, engine_options(o.device));
    Generator gen(engine, codec, o.sampling, o.gen);

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
      // Each prompt is a sequence with its own state, logits and sampler tables, and a row in the batch.
      const int64_t per_sequence = sat_add(sat_mul(state_bytes(c, 1), 2), sat_mul(c.vocab_size, 4 * 4 + 1));
      check_memory(sat_mul(static_cast<int64_t>(prompts.size()), per_sequence),
                   o.batch_file + ": " + std::to_string(prompts.size()) + " prompts decoded together");
      for (size_t k = 0; k < prompts.size(); k++) {
        const int i = gen.add();
        gen.feed(i, encode(prompts[k], o.batch_file + ":" + std::to_string(numbers[k])));
      }
      gen.run();
      for (int i = 0; i < gen.size(); i++) {
        nlohmann::ordered_json j;  // keys in this order: prompt, text, ids, finish
        if (as_ids) {
          j["prompt"] = parse_ids(prompts[i], o.batch_file);
        } else {
          j["prompt"] = prompts[i];
          j["text"] = gen.text(i);
        }
        j["ids"] = gen.output(i);
        j["finish"] = finish_name(gen.finish(i));
        write(dump(j) + "\n");
        generated += static_cast<int64_t>(gen.output(i).size());
      }
    } else {
      const int seq = o.load_state.empty() ? gen.add() : gen.load(o.load_state, seed->count() == 0);
      std::string text = o.prompt;
      if (!o.prompt_file.empty()) text = read_file(o.prompt_file);
      std::vector<int32_t> tokens;
      if (!o.ids.empty()) {
        tokens = parse_ids(o.ids, "--ids");
        if (tokens.empty()) fail("--ids: no token ids given");
      } else if (!text.empty()) {
        if (as_ids) fail(o.dir, ": no tokenizer.json and not byte-level: give the prompt as token ids (--ids)");
        tokens = codec.encode(text);
      }
      const bool first_turn = !tokens.empty() || !o.load_state.empty();
      if (!first_turn && !o.interactive) fail("generate: give a prompt (-p, --prompt-file or --ids) or --load-state");
      if (first_turn) {
        gen.feed(seq, tokens);
        if (!as_ids) write(text);  // the prompt, then its continuation
        gen.run(print);
        generated += static_cast<int64_t>(gen.output(seq).size());
        end_line();
      }
      if (o.interactive) {
        std::string line;
        for (;;) {
          std::fprintf(stderr, "> ");
          if (!read_line(line)) break;
          try {
            gen.feed(seq, encode(line, "stdin"));
          } catch (const Error& e) {  // a bad line is reported; the session goes on
            std::fprintf(stderr, "error: %s\n", e.what());
            continue;
          }
          gen.run(print);
          generated += static_cast<int64_t>(gen.output(seq).size());
          end_line();
        }
        std::fprintf(stderr, "\n");
      }
      if (!o.save_state.empty()) {
        gen.save(seq, o.save_state);
        std::fprintf(stderr, "saved the session to %s\n", o.save_state.c_str());
      }
    }
    std::fprintf(stderr, "prompt: %lld tokens, %.1f tokens/s; generated: %lld tokens; decode: %.1f tokens/s\n",
                 static_cast<long long>(gen.prefill_tokens()),
                 gen.prefill_tokens() / std::max(gen.prefill_seconds(), 1e-9), static_cast<long long>(generated),
                 gen.decode_tokens() / std::max(gen.decode_seconds(), 1e-9));
  });
}

}  // namespace mamba::cli

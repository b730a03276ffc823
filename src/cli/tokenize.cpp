#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/file.h"
#include "core/json.h"

namespace mamba::cli {

namespace {

void write(const std::string& s) { std::fwrite(s.data(), 1, s.size(), stdout); }

// --jsonl: one JSON value per line in, one per line out. Encoding takes strings and writes arrays of
// ids; decoding takes arrays and writes strings. Blank lines are skipped.
void run_jsonl(const api::Tokenizer& tokenizer, const std::string& file, bool decode) {
  std::istringstream in(read_text_file(file));
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json value = parse_json(line, file + ":" + std::to_string(number));
    nlohmann::json out;
    if (!decode) {
      if (!value.is_string()) fail(file, ":", number, ": expected a JSON string, got ", value.type_name());
      out = tokenizer.encode(value.get<std::string>());
    } else {
      if (!value.is_array())
        fail(file, ":", number, ": expected a JSON array of token ids, got ", value.type_name());
      std::vector<int32_t> ids;
      for (const auto& v : value) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
          fail(file, ":", number, ": ", json_brief(v), " is not a token id");
        }
        ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
      }
      try {
        out = tokenizer.decode(ids);
      } catch (const Error& e) {
        fail(file, ":", number, ": ", e.what());
      }
    }
    write(out.dump() + "\n");
  }
}

}  // namespace

void add_tokenize(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("tokenize", "Turn text into token ids with a tokenizer.json, or ids back into text");
  struct Options {
    std::string tokenizer, text, file, jsonl, sep = ",";
    bool decode = false;
  };
  static Options o;
  cmd->add_option("tokenizer", o.tokenizer, "A tokenizer.json, or a model folder that holds one")->required();
  auto* text =
      cmd->add_option("text", o.text, "The text (or with --decode, the ids: \"1,2,3\"); none: read stdin");
  auto* file =
      cmd->add_option("-f,--file", o.file, "Read the text (or ids) from this file, bytes as they are")
          ->excludes(text);
  cmd->add_option("--jsonl", o.jsonl,
                  "JSON lines: a string per line in, an array of ids per line out "
                  "(with --decode, arrays in, strings out)")
      ->excludes(text)
      ->excludes(file);
  cmd->add_flag("-d,--decode", o.decode, "Turn ids into text (printed as it is, without a newline added)");
  cmd->add_option("--sep", o.sep, "What goes between the printed ids")->capture_default_str();
  cmd->callback([text] {
    const api::Tokenizer tokenizer(o.tokenizer);
    if (!o.jsonl.empty()) {
      run_jsonl(tokenizer, o.jsonl, o.decode);
      return;
    }
    const std::string input = !o.file.empty()     ? read_text_file(o.file)
                              : text->count() > 0 ? o.text
                                                  : read_stdin("tokenize: standard input");
    if (o.decode) {
      const std::vector<int32_t> ids = parse_ids(input, o.file.empty() ? "tokenize --decode" : o.file);
      write(tokenizer.decode(ids));
      return;
    }
    std::string line;
    for (int32_t id : tokenizer.encode(input)) {
      if (!line.empty()) line += o.sep;
      line += std::to_string(id);
    }
    write(line + "\n");
  });
}

}  // namespace mamba::cli

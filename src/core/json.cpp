#include "core/json.h"

#include <algorithm>

#include "core/error.h"
#include "core/file.h"

namespace mamba {

namespace {

// The deepest nesting of arrays and objects in `text`, counted outside strings; stops counting once
// past `limit`. Linear and allocation-free, so it runs before the parser.
int json_depth(std::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); i++) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        i++;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == ']' || c == '}') {
      depth--;
    }
  }
  return deepest;
}

}  // namespace

nlohmann::json parse_json(std::string_view text, const std::string& where) {
  if (json_depth(text, kMaxJsonDepth) > kMaxJsonDepth) {
    fail(where, ": not valid here: JSON nested deeper than ", kMaxJsonDepth, " levels");
  }
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": not valid JSON: ", e.what());
  }
}

nlohmann::json read_json_file(const std::string& path) { return parse_json(read_text_file(path), path); }

std::string json_brief(const nlohmann::json& value) {
  if (value.is_array() || value.is_object()) {
    return std::string(value.is_array() ? "an array of " : "an object of ") + std::to_string(value.size());
  }
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

}  // namespace mamba

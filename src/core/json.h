// Reading JSON that comes from files: a depth limit before parsing, and short descriptions of values
// for error messages.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace mamba {

// The deepest nesting any file this program reads has is 4 (tokenizer.json's merges); nlohmann's
// copies and dumps recurse once per level, so a file nested a million deep would overflow the stack.
constexpr int kMaxJsonDepth = 64;

// Parses `text`, failing with an Error that names `where` when it is not JSON or nests deeper than
// kMaxJsonDepth.
nlohmann::json parse_json(std::string_view text, const std::string& where);
// Reads and parses a file.
nlohmann::json read_json_file(const std::string& path);

// A value for an error message: numbers, booleans and short strings as JSON, others by their type
// ("an array of 3"); never more than about 80 characters, whatever the value holds.
std::string json_brief(const nlohmann::json& value);

}  // namespace mamba

#include "server/chat_template.h"

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace mamba::server {

namespace {

std::string read(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A special token as tokenizer_config.json writes it: a string, or {"content": ...}.
std::string token(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  return {};
}

}  // namespace

std::optional<ChatTemplate> ChatTemplate::find(const std::filesystem::path& dir) {
  std::string bos, eos, source;
  const auto config_path = dir / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    const nlohmann::json config = nlohmann::json::parse(read(config_path), nullptr, false);
    if (config.is_discarded()) fail(config_path.string(), ": not valid JSON");
    bos = token(config, "bos_token");
    eos = token(config, "eos_token");
    if (auto it = config.find("chat_template"); it != config.end()) {
      if (it->is_string()) {
        source = it->get<std::string>();
      } else if (it->is_array()) {  // named templates: [{"name": "default", "template": ...}, ...]
        for (const auto& t : *it) {
          if (t.value("name", "") == "default" && t.contains("template") && t["template"].is_string()) {
            source = t["template"].get<std::string>();
          }
        }
      }
    }
  }
  if (source.empty() && std::filesystem::exists(dir / "chat_template.jinja")) source = read(dir / "chat_template.jinja");
  if (source.empty()) return std::nullopt;
  return ChatTemplate(std::move(source), std::move(bos), std::move(eos));
}

ChatTemplate::ChatTemplate(std::string source, std::string bos, std::string eos)
    : source_(std::move(source)), bos_(std::move(bos)), eos_(std::move(eos)) {}

std::string ChatTemplate::render(const std::vector<ChatMessage>&) const {
  throw ApiError(400, "this model's chat template (Jinja) cannot be rendered by this server yet: use /v1/completions",
                 "messages", "chat_template_unsupported");
}

}  // namespace mamba::server

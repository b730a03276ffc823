// A model folder's chat template: how a conversation's messages become the text the model continues.
// Hugging Face keeps it as a Jinja template in tokenizer_config.json ("chat_template") or in
// chat_template.jinja. Mamba base models have none, and then /v1/chat/completions says so.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "server/protocol.h"

namespace mamba::server {

class ChatTemplate {
 public:
  // The folder's template, or nullopt when it has none.
  static std::optional<ChatTemplate> find(const std::filesystem::path& dir);
  explicit ChatTemplate(std::string source, std::string bos = {}, std::string eos = {});

  // The prompt for `messages`, ending where the assistant's reply begins. ApiError 400 when the
  // template cannot be rendered (it raises an error, or uses what this renderer does not know).
  std::string render(const std::vector<ChatMessage>& messages) const;
  const std::string& source() const { return source_; }

 private:
  std::string source_, bos_, eos_;
};

}  // namespace mamba::server

// The OpenAI API as `mambacpp serve` reads and writes it: request bodies parsed and checked into plain
// data, every mistake an ApiError (a 4xx with OpenAI's error shape, naming the field and what was
// expected), and the JSON pieces of replies. No HTTP and no scheduling here: server.cpp and
// scheduler.cpp use these, and the tests call them directly.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "mamba/mamba.h"

namespace mamba::server {

// An error sent back as HTTP `status` with {"error": {"message", "type", "param", "code"}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message, std::string param = {}, std::string code = {});
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }
  // "invalid_request_error" for a 4xx, "server_error" otherwise; 401 is "authentication_error".
  std::string type() const;
  nlohmann::ordered_json body() const;

 private:
  int status_;
  std::string param_, code_;
};

// What requests may ask for on this server.
struct Limits {
  int vocab = 0;                         // token ids are in [0, vocab)
  int64_t max_prompt_tokens = 1 << 20;   // per prompt, after tokenization (with a session: the new text)
  int max_tokens = 1 << 20;              // new tokens per choice
  int max_choices = 64;                  // prompts × n: each choice is one sequence of the batch
};

// Text → ids with the model's tokenizer, and ids → text.
struct Codec {
  std::function<std::vector<int32_t>(std::string_view)> encode;
  std::function<std::string(std::span<const int32_t>)> decode;
};

// POST /v1/completions, checked. Each prompt is continued n times; choice i·n + j is prompt i's
// j-th, sampling with seed + j (what `mambacpp generate` gives prompt i with --seed seed + j).
struct CompletionRequest {
  std::string model;
  std::vector<std::vector<int32_t>> prompts;  // token ids
  std::vector<std::string> prompt_texts;      // as given, or the ids' text (for echo)
  int n = 1;
  api::SamplingOptions sampling;
  api::GenerationOptions generation;
  int logprobs = -1;  // -1: none; k ≥ 0: the chosen token's log-probability and the k most likely
  bool echo = false;
  bool stream = false, include_usage = false;
  std::string session;  // continue (or start) this kept session: the prompt is the new text only
  int choices() const { return static_cast<int>(prompts.size()) * n; }
};

// `random_seed` is the seed of a request that names none.
CompletionRequest parse_completion(const nlohmann::json& body, const Limits& limits, const Codec& codec,
                                   uint64_t random_seed);

// POST /v1/chat/completions: the messages, checked ({"role": "system"|"user"|"assistant", "content":
// text}), and the options as for completions (prompt aside).
struct ChatMessage {
  std::string role, content;
};
std::vector<ChatMessage> parse_chat_messages(const nlohmann::json& body);
// The rest of a chat request, its prompt being the messages as the chat template `rendered` them.
CompletionRequest parse_chat(const nlohmann::json& body, const std::string& rendered, const Limits& limits,
                             const Codec& codec, uint64_t random_seed);

// The body of a request as a JSON object, or a 400 saying what is wrong with it.
nlohmann::json parse_body(std::string_view body);

// A session id: 1 to 128 of [A-Za-z0-9_.-], not starting with '.' (it names a file).
bool valid_session_id(std::string_view id);

// "stop" for the end-of-sequence token or a stop string, "length" for max_tokens; null for none.
nlohmann::ordered_json finish_reason(api::Finish finish);

// The log-probabilities of one generated token: the chosen one and the k most likely, from the
// logits it was drawn from (log-softmax; the model's distribution, before temperature and cuts).
struct TokenLogprobs {
  int32_t id = -1;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // most likely first
};
TokenLogprobs token_logprobs(std::span<const float> logits, int32_t id, int k);

}  // namespace mamba::server

#include "server/protocol.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

namespace mamba::server {

using nlohmann::json;

ApiError::ApiError(int status, const std::string& message, std::string param, std::string code)
    : std::runtime_error(message), status_(status), param_(std::move(param)), code_(std::move(code)) {}

std::string ApiError::type() const {
  if (status_ == 401) return "authentication_error";
  return status_ < 500 ? "invalid_request_error" : "server_error";
}

nlohmann::ordered_json ApiError::body() const {
  nlohmann::ordered_json e = {{"message", what()}, {"type", type()}, {"param", nullptr}, {"code", nullptr}};
  if (!param_.empty()) e["param"] = param_;
  if (!code_.empty()) e["code"] = code_;
  return nlohmann::ordered_json{{"error", e}};
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

template <typename T>
std::string text(const T& v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// A request body's fields: each read once with its type and range checked, and a field this server
// does not know is an error (as OpenAI's API answers), so that a misspelt option is never ignored.
class Fields {
 public:
  Fields(const json& body, std::initializer_list<std::string_view> known) : body_(body) {
    for (const auto& [key, value] : body.items()) {
      if (std::find(known.begin(), known.end(), key) == known.end()) {
        bad(key, "unrecognized field \"" + key + "\"");
      }
    }
  }

  // The field's value, or null when it is absent or null (OpenAI's "not given").
  const json* get(const std::string& name) const {
    auto it = body_.find(name);
    return it == body_.end() || it->is_null() ? nullptr : &*it;
  }

  bool boolean(const std::string& name, bool otherwise) const {
    const json* v = get(name);
    if (!v) return otherwise;
    if (!v->is_boolean()) wrong_type(name, *v, "a boolean");
    return v->get<bool>();
  }

  double number(const std::string& name, double otherwise, double lo, double hi, bool lo_open = false) const {
    const json* v = get(name);
    if (!v) return otherwise;
    if (!v->is_number()) wrong_type(name, *v, "a number");
    const double x = v->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo)) {
      bad(name, "\"" + name + "\" is " + v->dump() + "; it must be " + (lo_open ? "greater than " : "between ") +
                    text(lo) + (lo_open ? " and at most " : " and ") + text(hi));
    }
    return x;
  }

  int64_t integer(const std::string& name, int64_t otherwise, int64_t lo, int64_t hi) const {
    const json* v = get(name);
    if (!v) return otherwise;
    if (!v->is_number_integer()) wrong_type(name, *v, "an integer");
    const bool huge = v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX);
    const int64_t x = huge ? INT64_MAX : v->get<int64_t>();
    if (huge || x < lo || x > hi) {
      bad(name, "\"" + name + "\" is " + v->dump() + "; it must be between " + text(lo) + " and " + text(hi));
    }
    return x;
  }

  std::string string(const std::string& name, const std::string& otherwise = {}) const {
    const json* v = get(name);
    if (!v) return otherwise;
    if (!v->is_string()) wrong_type(name, *v, "a string");
    return v->get<std::string>();
  }

  [[noreturn]] static void wrong_type(const std::string& name, const json& v, const char* expected) {
    bad(name, "\"" + name + "\" must be " + expected + ", not " + (v.is_number_integer() ? "an integer" : json_kind(v)));
  }

  static std::string json_kind(const json& v) {
    switch (v.type()) {
      case json::value_t::null: return "null";
      case json::value_t::object: return "an object";
      case json::value_t::array: return "an array";
      case json::value_t::string: return "a string";
      case json::value_t::boolean: return "a boolean";
      default: return "a number";
    }
  }

 private:
  const json& body_;
};

bool is_token(const json& v) { return v.is_number_integer(); }

bool is_token_list(const json& v) {
  return v.is_array() && !v.empty() && std::all_of(v.begin(), v.end(), [](const json& x) { return is_token(x); });
}

std::vector<int32_t> token_ids(const json& list, const Limits& limits, const std::string& where) {
  std::vector<int32_t> ids;
  ids.reserve(list.size());
  for (const json& x : list) {
    const bool in_range = x.is_number_unsigned() ? x.get<uint64_t>() < static_cast<uint64_t>(limits.vocab)
                                                 : x.get<int64_t>() >= 0 && x.get<int64_t>() < limits.vocab;
    if (!in_range) {
      bad("prompt", where + ": token id " + x.dump() + " is out of range for this model (vocabulary 0.." +
                        std::to_string(limits.vocab - 1) + ")");
    }
    ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
  }
  return ids;
}

// prompt: a string, a list of strings, a list of token ids, or a list of lists of token ids.
void read_prompts(const json& prompt, const Limits& limits, const Codec& codec, CompletionRequest& r) {
  auto add_text = [&](const std::string& text) {
    r.prompts.push_back(codec.encode(text));
    r.prompt_texts.push_back(text);
  };
  auto add_ids = [&](const json& list, const std::string& where) {
    r.prompts.push_back(token_ids(list, limits, where));
    r.prompt_texts.push_back(codec.decode(r.prompts.back()));
  };
  if (prompt.is_string()) {
    add_text(prompt.get<std::string>());
  } else if (is_token_list(prompt)) {
    add_ids(prompt, "prompt");
  } else if (prompt.is_array() && !prompt.empty() &&
             std::all_of(prompt.begin(), prompt.end(), [](const json& x) { return x.is_string(); })) {
    for (const json& x : prompt) add_text(x.get<std::string>());
  } else if (prompt.is_array() && !prompt.empty() &&
             std::all_of(prompt.begin(), prompt.end(), [](const json& x) { return is_token_list(x); })) {
    for (size_t i = 0; i < prompt.size(); i++) add_ids(prompt[i], "prompt[" + std::to_string(i) + "]");
  } else {
    bad("prompt", "\"prompt\" must be a string, a list of strings, a list of token ids or a list of lists of token ids" +
                      std::string(prompt.is_array() && prompt.empty() ? " (it is an empty list)" : ""));
  }
  for (size_t i = 0; i < r.prompts.size(); i++) {
    if (static_cast<int64_t>(r.prompts[i].size()) > limits.max_prompt_tokens) {
      throw ApiError(400,
                     "prompt" + (r.prompts.size() > 1 ? "[" + std::to_string(i) + "]" : std::string()) + " has " +
                         std::to_string(r.prompts[i].size()) + " tokens, more than this server's limit of " +
                         std::to_string(limits.max_prompt_tokens) + " (--max-prompt)",
                     "prompt", "context_length_exceeded");
    }
  }
}

// The options that completions and chat share.
void read_options(const Fields& f, const Limits& limits, uint64_t random_seed, int default_max_tokens,
                  const char* max_tokens_field, CompletionRequest& r) {
  r.model = f.string("model");
  const int64_t max_tokens = f.integer(max_tokens_field, default_max_tokens, 1, limits.max_tokens);
  r.generation.max_new_tokens = static_cast<int>(max_tokens);
  r.sampling.temperature = f.number("temperature", 1.0, 0.0, 2.0);
  r.sampling.top_p = f.number("top_p", 1.0, 0.0, 1.0, /*lo_open=*/true);
  const int64_t top_k = f.integer("top_k", 0, -1, INT32_MAX);  // -1 and 0: the whole vocabulary
  r.sampling.top_k = static_cast<int>(std::max<int64_t>(0, top_k));
  r.sampling.min_p = f.number("min_p", 0.0, 0.0, 1.0);
  r.sampling.repetition_penalty = f.number("repetition_penalty", 1.0, 1e-3, 1e3);
  if (const json* seed = f.get("seed")) {
    if (!seed->is_number_integer()) Fields::wrong_type("seed", *seed, "an integer");
    r.sampling.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : static_cast<uint64_t>(seed->get<int64_t>());
  } else {
    r.sampling.seed = random_seed;
  }
  r.n = static_cast<int>(f.integer("n", 1, 1, limits.max_choices));
  r.generation.stop_at_eos = !f.boolean("ignore_eos", false);
  if (const json* stop = f.get("stop")) {
    if (stop->is_string()) {
      r.generation.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array() && std::all_of(stop->begin(), stop->end(), [](const json& x) { return x.is_string(); })) {
      if (stop->size() > 16) bad("stop", "\"stop\" has " + std::to_string(stop->size()) + " strings; at most 16");
      for (const json& x : *stop) r.generation.stop.push_back(x.get<std::string>());
    } else {
      bad("stop", "\"stop\" must be a string or a list of strings");
    }
    for (const std::string& s : r.generation.stop) {
      if (s.empty()) bad("stop", "\"stop\" strings must not be empty");
    }
  }
  r.stream = f.boolean("stream", false);
  if (const json* options = f.get("stream_options")) {
    if (!options->is_object()) Fields::wrong_type("stream_options", *options, "an object");
    if (!r.stream) bad("stream_options", "\"stream_options\" is only for \"stream\": true");
    const Fields o(*options, {"include_usage"});
    r.include_usage = o.boolean("include_usage", false);
  }
  r.session = f.string("session");
  if (f.get("session") && !valid_session_id(r.session)) {
    bad("session", "\"session\" must be 1 to 128 letters, digits, '_', '-' or '.' (not starting with '.')");
  }
  f.string("user");  // accepted, not used
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    if (f.number(penalty, 0.0, -2.0, 2.0) != 0.0) {
      bad(penalty, std::string("\"") + penalty + "\" is not supported by this server (\"repetition_penalty\" is)");
    }
  }
  if (const json* bias = f.get("logit_bias")) {
    if (!bias->is_object()) Fields::wrong_type("logit_bias", *bias, "an object");
    if (!bias->empty()) bad("logit_bias", "\"logit_bias\" is not supported by this server");
  }
}

void check_choices(const Limits& limits, const CompletionRequest& r) {
  if (r.choices() > limits.max_choices) {
    bad("n", std::to_string(r.prompts.size()) + " prompts × n = " + std::to_string(r.n) + " make " +
                 std::to_string(r.choices()) + " sequences, more than this server runs at once (--max-batch " +
                 std::to_string(limits.max_choices) + ")");
  }
  if (!r.session.empty() && r.choices() != 1) bad("session", "a request with a \"session\" has one prompt and n = 1");
}

}  // namespace

json parse_body(std::string_view body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // a syntax error, or a number out of range
    std::string what = e.what();  // "[json.exception.parse_error.101] parse error at line 1, column 2: ..."
    if (const size_t at = what.find("] "); at != std::string::npos) what.erase(0, at + 2);
    throw ApiError(400, "the request body is not valid JSON: " + what);
  }
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object, not " + Fields::json_kind(j));
  return j;
}

CompletionRequest parse_completion(const json& body, const Limits& limits, const Codec& codec, uint64_t random_seed) {
  const Fields f(body, {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                        "seed", "n", "stop", "logprobs", "echo", "stream", "stream_options", "ignore_eos", "session",
                        "user", "presence_penalty", "frequency_penalty", "logit_bias", "best_of", "suffix"});
  CompletionRequest r;
  const json* prompt = f.get("prompt");
  if (!prompt) bad("prompt", "\"prompt\" is required");
  read_options(f, limits, random_seed, 16, "max_tokens", r);
  read_prompts(*prompt, limits, codec, r);
  r.logprobs = static_cast<int>(f.integer("logprobs", -1, 0, 20));
  r.echo = f.boolean("echo", false);
  if (r.echo && r.logprobs >= 0) bad("echo", "\"echo\" with \"logprobs\" (the prompt's log-probabilities) is not supported");
  if (f.integer("best_of", r.n, 1, limits.max_choices) != r.n) bad("best_of", "\"best_of\" other than n is not supported");
  if (!f.string("suffix").empty()) bad("suffix", "\"suffix\" (inserting text) is not supported by this model");
  check_choices(limits, r);
  return r;
}

std::vector<ChatMessage> parse_chat_messages(const json& body) {
  auto it = body.find("messages");
  if (it == body.end() || it->is_null()) bad("messages", "\"messages\" is required");
  if (!it->is_array() || it->empty()) bad("messages", "\"messages\" must be a non-empty list of messages");
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < it->size(); i++) {
    const json& m = (*it)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad(where, where + " must be an object with \"role\" and \"content\"");
    const Fields f(m, {"role", "content", "name"});
    ChatMessage msg;
    msg.role = f.string("role");
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" && msg.role != "developer") {
      bad(where + ".role", where + ".role must be \"system\", \"developer\", \"user\" or \"assistant\"");
    }
    const json* content = f.get("content");
    if (content && content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content && content->is_array()) {  // [{"type": "text", "text": ...}, ...]
      for (const json& part : *content) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string()) {
          bad(where + ".content", where + ".content parts must be {\"type\": \"text\", \"text\": ...}");
        }
        msg.content += part["text"].get<std::string>();
      }
    } else {
      bad(where + ".content", where + ".content must be a string or a list of text parts");
    }
    messages.push_back(std::move(msg));
  }
  return messages;
}

CompletionRequest parse_chat(const json& body, const std::string& rendered, const Limits& limits, const Codec& codec,
                             uint64_t random_seed) {
  const Fields f(body, {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                        "min_p", "repetition_penalty", "seed", "n", "stop", "logprobs", "top_logprobs", "stream",
                        "stream_options", "ignore_eos", "session", "user", "presence_penalty", "frequency_penalty",
                        "logit_bias"});
  CompletionRequest r;
  const char* max_field = f.get("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  read_options(f, limits, random_seed, std::min(limits.max_tokens, 1024), max_field, r);
  read_prompts(json(rendered), limits, codec, r);
  if (f.boolean("logprobs", false)) r.logprobs = static_cast<int>(f.integer("top_logprobs", 0, 0, 20));
  check_choices(limits, r);
  return r;
}

bool valid_session_id(std::string_view id) {
  if (id.empty() || id.size() > 128 || id[0] == '.') return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
  });
}

nlohmann::ordered_json finish_reason(api::Finish finish) {
  switch (finish) {
    case api::Finish::Eos:
    case api::Finish::Stop: return "stop";
    case api::Finish::Length: return "length";
    case api::Finish::None: break;
  }
  return nullptr;
}

TokenLogprobs token_logprobs(std::span<const float> logits, int32_t id, int k) {
  TokenLogprobs t;
  t.id = id;
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - max);
  const double lse = max + std::log(sum);
  t.logprob = static_cast<float>(logits[id] - lse);
  k = std::min<int>(k, static_cast<int>(logits.size()));
  if (k > 0) {
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    // Ties broken by the lower id, as the sampler's greedy choice is.
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    for (int i = 0; i < k; i++) t.top.emplace_back(order[i], static_cast<float>(logits[order[i]] - lse));
  }
  return t;
}

}  // namespace mamba::server

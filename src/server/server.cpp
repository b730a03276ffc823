#include "server/server.h"

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>

#include "core/error.h"
#include "mamba/mamba.h"
#include "server/chat_template.h"
#include "server/protocol.h"
#include "server/scheduler.h"
#include "server/sessions.h"

namespace mamba::server {

// Replies keep their keys in the order written (OpenAI's order; top log-probabilities most likely first).
using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

namespace {

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status(), e.body()); }

// Whether `s` is valid UTF-8 (a token may hold part of a character).
bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (int k = 1; k < n; k++) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    }
    i += n;
  }
  return true;
}

// ---- the client's connection ----

// Whether the client of a request has closed its connection, for a request that is waiting for the
// model (queued, in a long prefill, or not streaming). cpp-httplib 0.11 does not give handlers the
// socket, so it is found once among the process's descriptors by its two ends: the request's local
// and remote address and port, which no other open connection shares. A stream also notices when a
// write fails; this covers the time before anything is written.
class ClientWatch {
 public:
  explicit ClientWatch(const httplib::Request& req) : req_(req) {}

  bool gone() {
    if (fd_ == -2) fd_ = find();
    if (fd_ < 0) return false;
    pollfd p{fd_, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  }

 private:
  static bool same(const sockaddr_storage& addr, socklen_t len, const std::string& host, int port) {
    char name[NI_MAXHOST], serv[NI_MAXSERV];
    if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, name, sizeof(name), serv, sizeof(serv),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
      return false;
    }
    return host == name && std::to_string(port) == serv;
  }

  int find() const {
    DIR* dir = opendir("/proc/self/fd");
    if (!dir) return -1;
    int found = -1;
    while (dirent* e = readdir(dir)) {
      const int fd = std::atoi(e->d_name);
      if (fd <= 2 || fd == dirfd(dir)) continue;
      struct stat st;
      if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
      sockaddr_storage local{}, peer{};
      socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
      if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) continue;
      if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) continue;
      if (same(local, local_len, req_.local_addr, req_.local_port) &&
          same(peer, peer_len, req_.remote_addr, req_.remote_port)) {
        found = fd;
        break;
      }
    }
    closedir(dir);
    return found;
  }

  const httplib::Request& req_;
  int fd_ = -2;  // -2: not looked for yet; -1: not found
};

// ---- replies ----

// The JSON of one request's reply, whole or as stream chunks, in OpenAI's shapes for completions
// ("text_completion") and chat ("chat.completion"); pieces are the scheduler's.
class Reply {
 public:
  using TokenText = std::function<std::string(int32_t)>;
  Reply(bool chat, std::string id, std::string model, const CompletionRequest& request, TokenText token_text)
      : chat_(chat), id_(std::move(id)), model_(std::move(model)), created_(std::time(nullptr)), request_(request),
        token_text_(std::move(token_text)), choices_(static_cast<size_t>(request.choices())) {
    if (request.echo) {
      for (size_t c = 0; c < choices_.size(); c++) choices_[c].text = request.prompt_texts[c / request.n];
    }
  }

  // ---- whole ----
  void add(const Piece& p) {
    Choice& c = choices_.at(static_cast<size_t>(p.choice));
    for (const TokenLogprobs& t : p.logprobs) c.logprobs.push_back(logprob_entry(c, t));
    c.text += p.text;
    if (p.finished) c.finish = p.finish;
  }

  json whole(const Usage& usage) const {
    json choices = json::array();
    for (size_t i = 0; i < choices_.size(); i++) {
      const Choice& c = choices_[i];
      json choice = {{"index", i}};
      if (chat_) {
        choice["message"] = {{"role", "assistant"}, {"content", c.text}};
        choice["logprobs"] = request_.logprobs >= 0 ? json{{"content", c.logprobs}} : json(nullptr);
      } else {
        choice["text"] = c.text;
        choice["logprobs"] = request_.logprobs >= 0 ? legacy_logprobs(c.logprobs) : json(nullptr);
      }
      choice["finish_reason"] = finish_reason(c.finish);
      choices.push_back(std::move(choice));
    }
    json out = head(chat_ ? "chat.completion" : "text_completion");
    out["choices"] = std::move(choices);
    out["usage"] = usage_json(usage);
    if (!request_.session.empty()) out["session"] = request_.session;
    return out;
  }

  // ---- streamed ----
  // The first chunks: chat's role, and the echoed prompts.
  std::vector<json> opening() {
    std::vector<json> out;
    for (size_t i = 0; i < choices_.size(); i++) {
      if (chat_) {
        out.push_back(chunk(i, json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr));
      } else if (request_.echo) {
        out.push_back(chunk(i, choices_[i].text, nullptr, nullptr));
      }
    }
    return out;
  }

  json streamed(const Piece& p) {
    Choice& c = choices_.at(static_cast<size_t>(p.choice));
    json logprobs = nullptr;
    if (request_.logprobs >= 0 && !p.logprobs.empty()) {
      json entries = json::array();
      for (const TokenLogprobs& t : p.logprobs) entries.push_back(logprob_entry(c, t));
      logprobs = chat_ ? json{{"content", entries}} : legacy_logprobs(entries);
    }
    c.text += p.text;
    const json finish = p.finished ? finish_reason(p.finish) : json(nullptr);
    const json content = chat_ ? (p.finished && p.text.empty() ? json::object() : json{{"content", p.text}})
                               : json(p.text);
    return chunk(static_cast<size_t>(p.choice), content, logprobs, finish);
  }

  json usage_chunk(const Usage& usage) const {
    json out = head(chat_ ? "chat.completion.chunk" : "text_completion");
    out["choices"] = json::array();
    out["usage"] = usage_json(usage);
    return out;
  }

 private:
  struct Choice {
    std::string text;
    json logprobs = json::array();
    api::Finish finish = api::Finish::None;
  };

  json head(const char* object) const {
    json out = {{"id", id_}, {"object", object}, {"created", created_}, {"model", model_}};
    return out;
  }

  json chunk(size_t index, json content, json logprobs, json finish) const {
    json out = head(chat_ ? "chat.completion.chunk" : "text_completion");
    json choice = {{"index", index}};
    if (chat_) {
      choice["delta"] = std::move(content);
    } else {
      choice["text"] = std::move(content);
    }
    choice["logprobs"] = std::move(logprobs);
    choice["finish_reason"] = std::move(finish);
    out["choices"] = json::array({std::move(choice)});
    return out;
  }

  static json usage_json(const Usage& u) {
    return {{"prompt_tokens", u.prompt_tokens},
            {"completion_tokens", u.completion_tokens},
            {"total_tokens", u.prompt_tokens + u.completion_tokens}};
  }

  // One token's entry: chat's {"token", "logprob", "bytes", "top_logprobs"}, which the legacy
  // completions format is made from.
  json logprob_entry(Choice& c, const TokenLogprobs& t) const {
    auto entry = [&](int32_t id, float lp) {
      const std::string s = token_text_(id);
      std::vector<int> bytes(s.begin(), s.end());
      for (int& b : bytes) b &= 0xFF;
      // Part of a character is given as its bytes, as OpenAI's API gives it.
      std::string shown = s;
      if (!valid_utf8(s)) {
        shown = "bytes:";
        for (unsigned char ch : s) {
          char hex[8];
          std::snprintf(hex, sizeof(hex), "\\x%02x", ch);
          shown += hex;
        }
      }
      return json{{"token", shown}, {"logprob", lp}, {"bytes", bytes}};
    };
    json e = entry(t.id, t.logprob);
    json top = json::array();
    for (const auto& [id, lp] : t.top) top.push_back(entry(id, lp));
    e["top_logprobs"] = std::move(top);
    e["text_offset"] = c.text.size();
    return e;
  }

  static json legacy_logprobs(const json& entries) {
    json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
    for (const json& e : entries) {
      tokens.push_back(e["token"]);
      lps.push_back(e["logprob"]);
      json top = json::object();
      for (const json& t : e["top_logprobs"]) top[t["token"].get<std::string>()] = t["logprob"];
      tops.push_back(std::move(top));
      offsets.push_back(e["text_offset"]);
    }
    return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
  }

  bool chat_;
  std::string id_, model_;
  std::time_t created_;
  const CompletionRequest& request_;
  TokenText token_text_;
  std::vector<Choice> choices_;
};

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

}  // namespace

// ---- the server ----

struct Server::Impl {
  explicit Impl(const ServerOptions& o)
      : options(o),
        model(o.model, model_options(o)),
        name(o.name.empty() ? std::filesystem::absolute(o.model).lexically_normal().filename().string() : o.name),
        chat_template(ChatTemplate::find(o.model)),
        sessions(model, o.session_memory, o.session_dir),
        scheduler(model, sessions,
                  SchedulerOptions{o.max_batch, o.prefill_chunk, o.max_queue > 0 ? o.max_queue : o.max_batch}),
        started(std::time(nullptr)) {
    if (!model.has_text()) {
      fail(o.model.string(), ": no tokenizer.json and not byte-level: give --tokenizer");
    }
    const api::ModelConfig& c = model.config();
    if (!c.byte_level) {
      token_bytes = api::Tokenizer(o.tokenizer.empty() ? o.model / "tokenizer.json" : o.tokenizer);
    }
    limits.vocab = c.vocab_size;
    limits.max_prompt_tokens = o.max_prompt;
    limits.max_tokens = o.max_tokens;
    limits.max_choices = o.max_batch;
    codec.encode = [this](std::string_view text) { return model.encode(text); };
    codec.decode = [this](std::span<const int32_t> ids) { return model.decode(ids); };
    std::random_device rd;
    seeds.seed((uint64_t{rd()} << 32) ^ rd());
    routes();
  }

  static api::ModelOptions model_options(const ServerOptions& o) {
    api::ModelOptions m;
    m.device = o.device;
    m.dtype = o.dtype;
    m.tokenizer = o.tokenizer;
    return m;
  }

  // What a token stands for, as bytes (for log-probabilities).
  std::string token_text(int32_t id) const {
    const api::ModelConfig& c = model.config();
    if (c.byte_level) return id < 256 ? std::string(1, static_cast<char>(id)) : "<|endoftext|>";
    return token_bytes->token_bytes(id);
  }

  uint64_t random_seed() {
    std::lock_guard lock(seed_mutex);
    return seeds();
  }

  bool authorized(const httplib::Request& req) const {
    if (options.api_key.empty()) return true;
    const std::string given = req.get_header_value("Authorization");
    const std::string want = "Bearer " + options.api_key;
    // Compared in time independent of where they differ.
    unsigned diff = given.size() != want.size();
    for (size_t i = 0; i < want.size(); i++) diff |= static_cast<unsigned>(i < given.size() ? given[i] ^ want[i] : 1);
    return diff == 0;
  }

  void routes();
  void completions(const httplib::Request& req, httplib::Response& res, bool chat);
  std::string metrics_text() const;

  ServerOptions options;
  api::Model model;
  std::string name;
  std::optional<ChatTemplate> chat_template;
  std::optional<api::Tokenizer> token_bytes;
  Limits limits;
  Codec codec;
  SessionStore sessions;
  Scheduler scheduler;
  std::time_t started;
  std::mutex seed_mutex;
  std::mt19937_64 seeds;
  std::atomic<int64_t> next_id{1};
  mutable std::mutex responses_mutex;
  std::map<int, int64_t> responses;  // by HTTP status, for /metrics
  httplib::Server http;
  int port = -1;
};

void Server::Impl::completions(const httplib::Request& req, httplib::Response& res, bool chat) {
  const nlohmann::json body = parse_body(req.body);
  std::string rendered;
  if (chat) {
    if (!chat_template) {
      throw ApiError(400,
                     "this model has no chat template (" + options.model.string() +
                         " has no chat_template in tokenizer_config.json and no chat_template.jinja): a base model "
                         "continues text; use /v1/completions",
                     "messages", "no_chat_template");
    }
    rendered = chat_template->render(parse_chat_messages(body));
  }
  auto request = std::make_shared<CompletionRequest>(
      chat ? parse_chat(body, rendered, limits, codec, random_seed()) : parse_completion(body, limits, codec, random_seed()));
  const CompletionRequest& r = *request;

  Work work;
  work.prompts = r.prompts;
  work.n = r.n;
  work.sampling = r.sampling;
  work.generation = r.generation;
  work.logprobs = r.logprobs;
  bool fresh = true;  // the sequence starts from nothing: an empty prompt starts at the end-of-document token
  if (!r.session.empty()) {
    work.session_id = r.session;
    work.session = sessions.acquire(r.session);
    fresh = !work.session;
    work.session_is_new = fresh;
  }
  for (auto& p : work.prompts) {
    if (p.empty() && fresh) p.push_back(model.config().eos_token_id);
  }
  auto job = scheduler.submit(std::move(work));
  auto reply = std::make_shared<Reply>(chat, (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++), name, r,
                                       [this](int32_t id) { return token_text(id); });

  if (!r.stream) {
    ClientWatch client(req);
    std::vector<Piece> pieces;
    bool ended = false;
    while (!ended) {
      ended = job->wait(pieces, std::chrono::milliseconds(100));
      for (const Piece& p : pieces) reply->add(p);
      pieces.clear();
      if (!ended && client.gone()) job->cancel();
    }
    if (job->error()) throw *job->error();
    send_json(res, 200, reply->whole(job->usage()));
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  auto watch = std::make_shared<ClientWatch>(req);
  auto opened = std::make_shared<bool>(false);
  res.set_chunked_content_provider(
      "text/event-stream",
      [job, reply, request, watch, opened](size_t, httplib::DataSink& sink) {
        std::string out;
        if (!*opened) {
          *opened = true;
          for (const json& c : reply->opening()) out += sse(c);
        }
        std::vector<Piece> pieces;
        const bool ended = job->wait(pieces, std::chrono::milliseconds(100));
        for (const Piece& p : pieces) out += sse(reply->streamed(p));
        if (ended) {
          if (job->error()) {
            out += sse(job->error()->body());
          } else if (request->include_usage) {
            out += sse(reply->usage_chunk(job->usage()));
          }
          out += "data: [DONE]\n\n";
        }
        if (!out.empty() && !sink.write(out.data(), out.size())) {
          job->cancel();
          return false;
        }
        if (ended) {
          sink.done();
        } else if (out.empty() && watch->gone()) {
          job->cancel();
        }
        return true;
      },
      [job](bool) { job->cancel(); });  // a no-op once the job has ended
}

std::string Server::Impl::metrics_text() const {
  const SchedulerMetrics m = scheduler.metrics();
  std::ostringstream o;
  auto metric = [&](const char* metric_name, const char* type, const char* help, double value) {
    o << "# HELP mambacpp_" << metric_name << ' ' << help << "\n# TYPE mambacpp_" << metric_name << ' ' << type
      << "\nmambacpp_" << metric_name << ' ' << value << '\n';
  };
  o << "# HELP mambacpp_requests_total Completion requests ended, by outcome\n# TYPE mambacpp_requests_total counter\n"
    << "mambacpp_requests_total{outcome=\"finished\"} " << m.requests_finished << '\n'
    << "mambacpp_requests_total{outcome=\"cancelled\"} " << m.requests_cancelled << '\n'
    << "mambacpp_requests_total{outcome=\"failed\"} " << m.requests_failed << '\n';
  o << "# HELP mambacpp_http_responses_total HTTP responses, by status\n# TYPE mambacpp_http_responses_total counter\n";
  {
    std::lock_guard lock(responses_mutex);
    for (const auto& [status, count] : responses) {
      o << "mambacpp_http_responses_total{status=\"" << status << "\"} " << count << '\n';
    }
  }
  metric("prompt_tokens_total", "counter", "Prompt tokens prefilled", static_cast<double>(m.prompt_tokens));
  metric("generated_tokens_total", "counter", "Tokens generated", static_cast<double>(m.generated_tokens));
  metric("decode_steps_total", "counter", "Batched decode steps", static_cast<double>(m.decode_steps));
  metric("prefill_seconds_total", "counter", "Time spent prefilling prompts", m.prefill_seconds);
  metric("decode_seconds_total", "counter", "Time spent in decode steps", m.decode_seconds);
  metric("tokens_per_second", "gauge", "Tokens generated per second over the last 10 s", m.tokens_per_s);
  metric("batch_occupancy", "gauge", "Sequences in the decode batch", m.running);
  metric("batch_capacity", "gauge", "Sequences the batch holds at most (--max-batch)", m.max_batch);
  metric("prefill_sequences", "gauge", "Sequences admitted and still prefilling their prompts", m.prefilling);
  metric("queue_length", "gauge", "Sequences waiting for room in the batch", m.waiting);
  metric("time_to_first_token_seconds_sum", "counter", "Sum over requests of submit to first token",
         m.time_to_first_token_s);
  metric("time_to_first_token_seconds_count", "counter", "Requests that got a first token",
         static_cast<double>(m.first_tokens));
  metric("sessions_in_memory", "gauge", "Kept sessions in memory", static_cast<double>(sessions.count()));
  metric("sessions_bytes", "gauge", "Memory of the kept sessions", static_cast<double>(sessions.bytes()));
  return o.str();
}

void Server::Impl::routes() {
  const int max_queue = options.max_queue > 0 ? options.max_queue : options.max_batch;
  const int threads = options.http_threads > 0 ? options.http_threads : options.max_batch + max_queue + 8;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http.set_payload_max_length(size_t{64} << 20);
  http.set_keep_alive_max_count(1000);

  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    const bool open = req.path == "/health" || req.path == "/metrics";
    if (open || authorized(req)) return httplib::Server::HandlerResponse::Unhandled;
    const bool given = req.has_header("Authorization");
    send_error(res, ApiError(401,
                             given ? "incorrect API key: give the server's --api-key as \"Authorization: Bearer KEY\""
                                   : "no API key: this server needs \"Authorization: Bearer KEY\" (its --api-key)",
                             "", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  // Errors the routes did not write themselves (no such route, a body too large): OpenAI's shape too.
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string message = "error " + std::to_string(res.status);
    if (res.status == 404) message = "no such endpoint: " + req.method + " " + req.path;
    if (res.status == 413) message = "the request body is too large (64 MiB at most)";
    if (res.status == 400) message = "malformed HTTP request";
    send_json(res, res.status, ApiError(res.status, message).body());
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const std::exception& e) {
      send_error(res, ApiError(500, e.what()));
    } catch (...) {
      send_error(res, ApiError(500, "unknown error"));
    }
  });
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    {
      std::lock_guard lock(responses_mutex);
      responses[res.status]++;
    }
    if (options.log_requests) {
      std::fprintf(stderr, "%s:%d %s %s %d\n", req.remote_addr.c_str(), req.remote_port, req.method.c_str(),
                   req.path.c_str(), res.status);
    }
  });

  // Each route turns an ApiError (or a library Error: a bad id, a prompt that fails) into its reply.
  auto guarded = [](auto handler) {
    return [handler](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const Error& e) {
        send_error(res, ApiError(400, e.what()));
      }
    };
  };
  http.Post("/v1/completions", guarded([this](const auto& req, auto& res) { completions(req, res, false); }));
  http.Post("/v1/chat/completions", guarded([this](const auto& req, auto& res) { completions(req, res, true); }));
  http.Get("/v1/models", guarded([this](const auto&, auto& res) {
    send_json(res, 200, json{{"object", "list"}, {"data", json::array({json{{"id", name}, {"object", "model"},
                                                                         {"created", started}, {"owned_by", "mambacpp"}}})}});
  }));
  http.Get(R"(/v1/models/(.+))", guarded([this](const auto& req, auto& res) {
    if (req.matches[1] != name) throw ApiError(404, "no model \"" + std::string(req.matches[1]) + "\" here (\"" + name + "\" is)", "model", "model_not_found");
    send_json(res, 200, json{{"id", name}, {"object", "model"}, {"created", started}, {"owned_by", "mambacpp"}});
  }));
  http.Get("/health", [](const auto&, auto& res) { send_json(res, 200, json{{"status", "ok"}}); });
  http.Get("/metrics", [this](const auto&, auto& res) {
    res.set_content(metrics_text(), "text/plain; version=0.0.4");
  });
  http.Post("/tokenize", guarded([this](const auto& req, auto& res) {
    const nlohmann::json body = parse_body(req.body);
    auto it = body.find("content");
    if (it == body.end() || !it->is_string()) throw ApiError(400, "\"content\" (the text to tokenize) must be a string", "content");
    const bool pieces = body.value("with_pieces", false);
    json tokens = json::array();
    for (int32_t id : model.encode(it->get<std::string>())) {
      tokens.push_back(pieces ? json{{"id", id}, {"piece", token_text(id)}} : json(id));
    }
    send_json(res, 200, json{{"tokens", tokens}});
  }));
  http.Post("/detokenize", guarded([this](const auto& req, auto& res) {
    const nlohmann::json body = parse_body(req.body);
    auto it = body.find("tokens");
    if (it == body.end() || !it->is_array()) throw ApiError(400, "\"tokens\" must be a list of token ids", "tokens");
    std::vector<int32_t> ids;
    for (const nlohmann::json& x : *it) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= limits.vocab) {
        throw ApiError(400, "\"tokens\": " + x.dump() + " is not a token id of this model (0.." +
                                std::to_string(limits.vocab - 1) + ")", "tokens");
      }
      ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
    }
    send_json(res, 200, json{{"content", model.decode(ids)}});
  }));
  http.Get("/v1/sessions", guarded([this](const auto&, auto& res) {
    json data = json::array();
    for (const auto& s : sessions.list()) {
      data.push_back({{"id", s.id}, {"in_memory", s.in_memory}, {"in_use", s.held}});
    }
    send_json(res, 200, json{{"object", "list"}, {"data", data}});
  }));
  http.Delete(R"(/v1/sessions/(.+))", guarded([this](const auto& req, auto& res) {
    const std::string id = req.matches[1];
    if (!valid_session_id(id) || !sessions.erase(id)) throw ApiError(404, "no session \"" + id + "\"", "session");
    send_json(res, 200, json{{"id", id}, {"deleted", true}});
  }));
}

Server::Server(const ServerOptions& options) : impl_(std::make_unique<Impl>(options)) {}

Server::~Server() {
  stop();
  try {
    impl_->sessions.flush();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: saving the kept sessions: %s\n", e.what());
  }
}

int Server::bind() {
  Impl& s = *impl_;
  if (s.options.port == 0) {
    s.port = s.http.bind_to_any_port(s.options.host);
  } else {
    s.port = s.http.bind_to_port(s.options.host, s.options.port) ? s.options.port : -1;
  }
  if (s.port < 0) fail("serve: cannot listen on ", s.options.host, ":", s.options.port, " (in use, or not an address here)");
  return s.port;
}

void Server::serve() {
  if (impl_->port < 0) bind();
  impl_->http.listen_after_bind();
}

// Listening stops at once; open requests end with a 503 as the scheduler stops (a stream with its
// error and [DONE]), so that serve() returns promptly.
void Server::stop() {
  impl_->http.stop();
  impl_->scheduler.stop();
}

std::string Server::describe() const {
  const Impl& s = *impl_;
  const api::ModelConfig& c = s.model.config();
  std::ostringstream o;
  o << "model " << s.name << ": " << s.model.path().string() << ", " << c.parameters / 1e6 << " M parameters, "
    << s.model.describe() << "\n"
    << "state " << c.state_bytes / 1024.0 / 1024.0 << " MiB per sequence; batch of " << s.options.max_batch
    << ", prefill in pieces of " << s.options.prefill_chunk << " tokens; chat "
    << (s.chat_template ? "with the folder's template" : "off (no chat template)") << "; sessions up to "
    << s.options.session_memory / 1024.0 / 1024.0 << " MiB in memory"
    << (s.options.session_dir.empty() ? std::string() : ", then in " + s.options.session_dir.string());
  return o.str();
}

}  // namespace mamba::server

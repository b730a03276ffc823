// `mambacpp serve`: an HTTP server that speaks OpenAI's API (completions, chat completions when the
// model has a chat template, models) plus /health, /metrics (Prometheus), /tokenize, /detokenize and
// kept sessions, over the library API (include/mamba/mamba.h) and a continuous-batching scheduler
// (scheduler.h). HTTP is cpp-httplib's (Debian's libcpp-httplib-dev); docs/server.md is the manual.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

namespace mamba::server {

struct ServerOptions {
  std::filesystem::path model;      // the model folder
  std::filesystem::path tokenizer;  // a tokenizer.json; default: the folder's, or bytes (byte-level)
  std::string device = "cpu", dtype;
  std::string host = "127.0.0.1";
  int port = 8080;                  // 0: any free port (bind() says which)
  std::string api_key;              // when set, /v1/*, /tokenize and /detokenize need "Bearer KEY"
  std::string name;                 // the model's id in the API; default: the folder's name
  int max_batch = 64;               // sequences decoded together
  int max_queue = 0;                // sequences waiting for room (0: as many as max_batch)
  int prefill_chunk = 512;          // prompt tokens prefilled between two decode steps
  int64_t max_prompt = 1 << 20;     // tokens per prompt
  int max_tokens = 1 << 16;         // new tokens per choice
  int64_t session_memory = int64_t{1} << 30;  // bytes of kept sessions in memory
  std::filesystem::path session_dir;           // where sessions go beyond that (and at shutdown)
  int http_threads = 0;             // 0: one per sequence running or waiting, and 8 more
  bool log_requests = true;         // one line per request on stderr
};

class Server {
 public:
  explicit Server(const ServerOptions& options);  // loads the model and starts the scheduler
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int bind();    // binds host:port; returns the port (the chosen one for port 0)
  void serve();  // answers requests until stop()
  void stop();   // from any thread: ends serve(), then open requests end with a 503
  std::string describe() const;  // the model, the device and the limits, in a few lines

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace mamba::server

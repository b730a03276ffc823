#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

#include "cli/commands.h"
#if MAMBA_HAVE_SERVER
#include "server/server.h"
#endif

namespace mamba::cli {

#if MAMBA_HAVE_SERVER
void add_serve(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "serve",
      "An HTTP server that speaks OpenAI's API (completions, chat, models) with continuous batching and "
      "kept sessions; also /health, /metrics, /tokenize, /detokenize (docs/server.md)");
  static server::ServerOptions o;
  static DeviceFlags device;
  static int64_t session_mib = o.session_memory >> 20;
  static bool quiet = false;
  add_device_flags(cmd, device);
  cmd->add_option("dir", o.model, "Model folder")->required();
  cmd->add_option("--tokenizer", o.tokenizer, "A tokenizer.json (default: the folder's, or bytes for a byte-level model)");
  cmd->add_option("--host", o.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", o.port, "Port to listen on (0: any free port, printed)")->capture_default_str()
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--api-key", o.api_key, "Require \"Authorization: Bearer KEY\" on /v1/*, /tokenize and /detokenize")
      ->envname("MAMBACPP_API_KEY");
  cmd->add_option("--name", o.name, "The model's id in the API (default: the folder's name)");
  cmd->add_option("--max-batch", o.max_batch, "Sequences decoded together (a request takes one per prompt × n)")
      ->capture_default_str()->check(CLI::Range(1, 4096));
  cmd->add_option("--max-queue", o.max_queue, "Sequences that may wait for room in the batch; more get a 503 (0: --max-batch)")
      ->capture_default_str()->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--prefill-chunk", o.prefill_chunk,
                  "Prompt tokens prefilled between two decode steps: running streams wait at most this long")
      ->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--max-prompt", o.max_prompt, "Refuse prompts longer than this many tokens")
      ->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_option("--max-tokens", o.max_tokens, "Refuse requests for more new tokens than this per choice")
      ->capture_default_str()->check(CLI::Range(1, 1 << 30));
  cmd->add_option("--session-memory", session_mib, "MiB of kept sessions in memory; beyond, the least recently used leave")
      ->capture_default_str()->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  cmd->add_option("--session-dir", o.session_dir,
                  "Folder for sessions beyond --session-memory and at shutdown (state files); without it they are forgotten");
  cmd->add_option("--http-threads", o.http_threads, "HTTP threads (0: one per sequence running or waiting, and 8 more)")
      ->capture_default_str()->check(CLI::Range(0, 65536));
  cmd->add_flag("--quiet", quiet, "No line per request on stderr");
  cmd->callback([] {
    const api::ModelOptions checked = model_options(device);  // the flags' names in errors
    o.device = checked.device;
    o.dtype = checked.dtype;
    o.session_memory = session_mib << 20;
    o.log_requests = !quiet;
    std::signal(SIGPIPE, SIG_IGN);  // a client that hangs up is a failed write, not the end of the server
    const std::atomic<bool>& stop = stop_on_signals();
    server::Server server(o);
    const int port = server.bind();
    std::fprintf(stderr, "%s\n", server.describe().c_str());
    std::printf("mambacpp serve: listening on http://%s:%d\n", o.host.c_str(), port);
    std::fflush(stdout);
    std::atomic<bool> served{false};
    std::thread watcher([&] {
      while (!stop.load() && !served.load()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      server.stop();
    });
    server.serve();
    served.store(true);
    watcher.join();
    std::fprintf(stderr, "mambacpp serve: stopped\n");
  });
}

#else
// Built without cpp-httplib (CMake says so when it configures): the command is there to say why.
void add_serve(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "The HTTP server (not in this build: it needs libcpp-httplib-dev)");
  cmd->allow_extras();
  cmd->callback([] { fail("serve: this mambacpp was built without the HTTP server (cpp-httplib was not found)"); });
}
#endif

}  // namespace mamba::cli

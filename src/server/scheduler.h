// Continuous batching: one thread runs the model for every request. Each turn of its loop it
//
//   1. admits waiting jobs while the batch has room (max_batch sequences, counting those still in
//      prefill), first come first served;
//   2. prefills at most `prefill_chunk` prompt tokens (Session::feed, a piece of one prompt at a
//      time), so that a long prompt costs the running streams one chunk's delay per token, not its
//      whole prefill; a prompt whose last piece is in joins the batch (with its n − 1 copies);
//   3. takes one token for every running sequence in one batched decode step (api::Batch::step) and
//      hands each its job's stream; finished sequences leave the batch, and a job whose choices have
//      all finished ends (its session, if it names one, kept for the next request);
//   4. drops the jobs whose client has gone (Job::cancel, from the HTTP thread): their sequences
//      leave the batch at once.
//
// The HTTP threads only parse, tokenize, submit and then read their job's stream: the model is touched
// by this thread alone (and, briefly, by the session store loading a saved session).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "mamba/mamba.h"
#include "server/protocol.h"
#include "server/sessions.h"

namespace mamba::server {

// What one choice produced since the last read: its text (and, when asked, each token's
// log-probabilities), and its finish once it has finished.
struct Piece {
  int choice = 0;
  std::string text;
  std::vector<TokenLogprobs> logprobs;  // one per token taken, when the request asked for them
  api::Finish finish = api::Finish::None;
  bool finished = false;
};

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

// One request's work: its prompts, each continued n times with the request's options.
struct Work {
  std::vector<std::vector<int32_t>> prompts;
  int n = 1;
  api::SamplingOptions sampling;
  api::GenerationOptions generation;
  int logprobs = -1;
  // A kept session to continue (one prompt, n = 1): the request took it from the store, and the job
  // gives it back when it ends. A request that fails or is cancelled gives back the session as it was.
  std::string session_id;
  std::optional<api::Session> session;
  bool session_is_new = false;
};

// A submitted request: the scheduler writes its pieces, the HTTP thread reads them.
class Job {
 public:
  explicit Job(Work work) : work_(std::move(work)), submitted_(std::chrono::steady_clock::now()) {}

  // The HTTP side. cancel() asks the scheduler to drop the job (its client has gone); wait() moves the
  // pieces produced so far into `out`, waiting up to `timeout` for one, and is true once the job has
  // ended and `out` holds its last pieces.
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  bool wait(std::vector<Piece>& out, std::chrono::milliseconds timeout);
  // After the end: the error that ended it (none: it finished), and the tokens it took.
  const std::optional<ApiError>& error() const { return error_; }
  Usage usage() const;

  // The scheduler's side.
  Work& work() { return work_; }
  void push(Piece piece);
  void end(std::optional<ApiError> error = std::nullopt);
  std::chrono::steady_clock::time_point submitted() const { return submitted_; }

 private:
  Work work_;
  std::chrono::steady_clock::time_point submitted_;
  std::atomic<bool> cancelled_{false};
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::vector<Piece> pieces_;
  bool ended_ = false;
  std::optional<ApiError> error_;
  Usage usage_;
  friend class Scheduler;
};

struct SchedulerOptions {
  int max_batch = 64;        // sequences decoded together
  int prefill_chunk = 512;   // prompt tokens prefilled per turn of the loop
  int max_queue = 256;       // sequences waiting for room; a request beyond it gets a 503
};

// What /metrics reports; counters since the start, gauges now.
struct SchedulerMetrics {
  int64_t requests_finished = 0, requests_cancelled = 0, requests_failed = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0, decode_steps = 0;
  int64_t first_tokens = 0;            // requests that got a first token
  double time_to_first_token_s = 0;    // their sum of submit → first token
  double decode_seconds = 0, prefill_seconds = 0;
  int running = 0, prefilling = 0, waiting = 0, max_batch = 0;
  double tokens_per_s = 0;             // generated over the last 10 s
};

class Scheduler {
 public:
  Scheduler(api::Model model, SessionStore& sessions, SchedulerOptions options);
  ~Scheduler();  // stops the thread; jobs still open end with a 503
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request; throws ApiError 503 when the queue is full or the server is stopping.
  std::shared_ptr<Job> submit(Work work);
  SchedulerMetrics metrics() const;
  void stop();

 private:
  struct Choice;
  struct Active;
  void loop();
  void admit();
  void drop_cancelled();
  void prefill();
  void decode();
  void finish(Active& job, std::optional<ApiError> error);
  void fail_all(const ApiError& error);

  api::Model model_;
  SessionStore& sessions_;
  SchedulerOptions options_;

  mutable std::mutex mutex_;  // guards the queue, the stop flag and the counters below
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  int queued_sequences_ = 0;
  bool stopping_ = false;
  SchedulerMetrics counters_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, int>> recent_;  // (step, tokens) of the last 10 s

  // The loop thread's own.
  std::vector<std::unique_ptr<Active>> active_;  // admitted jobs, in order of admission
  api::Batch batch_;
  std::thread thread_;
};

}  // namespace mamba::server

#include "server/scheduler.h"

#include <algorithm>
#include <exception>
#include <unordered_map>

namespace mamba::server {

using Clock = std::chrono::steady_clock;

namespace {

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

constexpr auto kRateWindow = std::chrono::seconds(10);  // tokens/s in /metrics: over the last 10 s

}  // namespace

// ---- Job ----

bool Job::wait(std::vector<Piece>& out, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  ready_.wait_for(lock, timeout, [&] { return !pieces_.empty() || ended_; });
  for (Piece& p : pieces_) out.push_back(std::move(p));
  pieces_.clear();
  return ended_;
}

Usage Job::usage() const {
  std::lock_guard lock(mutex_);
  return usage_;
}

void Job::push(Piece piece) {
  {
    std::lock_guard lock(mutex_);
    pieces_.push_back(std::move(piece));
  }
  ready_.notify_all();
}

void Job::end(std::optional<ApiError> error) {
  {
    std::lock_guard lock(mutex_);
    error_ = std::move(error);
    ended_ = true;
  }
  ready_.notify_all();
}

// ---- the scheduler's bookkeeping ----

// One sequence of a request: prompt i's j-th continuation is choice i·n + j.
struct Scheduler::Choice {
  int index = 0;
  std::optional<api::Session> session;  // made when its prompt is prefilled
  bool done = false;
};

// An admitted request.
struct Scheduler::Active {
  std::shared_ptr<Job> job;
  std::vector<std::unique_ptr<Choice>> choices;  // unique_ptr: a session stays put while in the batch
  size_t prompt = 0;  // the prompt being prefilled
  size_t fed = 0;     // its tokens fed so far
  bool decoding = false, ended = false, first_token = false;
  int unfinished = 0;
  Usage usage;
  std::optional<api::Session> before;  // a kept session as it was: what a failed request gives back

  int sequences() const { return static_cast<int>(choices.size()); }
};

Scheduler::Scheduler(api::Model model, SessionStore& sessions, SchedulerOptions options)
    : model_(std::move(model)), sessions_(sessions), options_(options), batch_(model_) {
  counters_.max_batch = options_.max_batch;
  const int threads = api::threads();
  thread_ = std::thread([this, threads] {
    // OpenMP's thread count is a setting of the thread that starts the parallel regions: this one.
    api::set_threads(threads);
    loop();
  });
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<Job> Scheduler::submit(Work work) {
  const int sequences = static_cast<int>(work.prompts.size()) * work.n;
  std::unique_lock lock(mutex_);
  std::optional<ApiError> refused;
  if (stopping_) {
    refused = ApiError(503, "the server is shutting down");
  } else if (queued_sequences_ + sequences > options_.max_queue) {
    refused = ApiError(503, "the server is busy: " + std::to_string(queued_sequences_) +
                                " sequences are waiting for room in the batch (--max-queue " +
                                std::to_string(options_.max_queue) + "); try again shortly");
  }
  if (refused) {
    lock.unlock();
    // The request's kept session goes back untouched.
    if (!work.session_id.empty()) {
      if (work.session) {
        sessions_.release(work.session_id, std::move(*work.session));
      } else {
        sessions_.abandon(work.session_id);
      }
    }
    throw *refused;
  }
  auto job = std::make_shared<Job>(std::move(work));
  queue_.push_back(job);
  queued_sequences_ += sequences;
  lock.unlock();
  wake_.notify_all();
  return job;
}

SchedulerMetrics Scheduler::metrics() const {
  std::lock_guard lock(mutex_);
  SchedulerMetrics m = counters_;
  m.waiting = queued_sequences_;
  int64_t recent = 0;
  const auto now = Clock::now();
  for (const auto& [when, tokens] : recent_) {
    if (now - when <= kRateWindow) recent += tokens;
  }
  m.tokens_per_s = static_cast<double>(recent) / seconds(kRateWindow);
  return m;
}

// ---- the loop ----

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty() || !active_.empty(); });
      if (stopping_) break;
    }
    admit();
    drop_cancelled();
    prefill();
    decode();
    std::erase_if(active_, [](const std::unique_ptr<Active>& a) { return a->ended; });
    int running = 0, prefilling = 0;
    for (const auto& a : active_) (a->decoding ? running : prefilling) += a->unfinished;
    std::lock_guard lock(mutex_);
    counters_.running = running;
    counters_.prefilling = prefilling;
  }
  fail_all(ApiError(503, "the server is shutting down"));
  std::deque<std::shared_ptr<Job>> waiting;
  {
    std::lock_guard lock(mutex_);
    waiting.swap(queue_);
    queued_sequences_ = 0;
  }
  for (auto& job : waiting) {
    Active a;
    a.job = job;
    finish(a, ApiError(503, "the server is shutting down"));
  }
}

void Scheduler::admit() {
  int in_use = 0;
  for (const auto& a : active_) in_use += a->unfinished;
  std::vector<std::shared_ptr<Job>> admitted;
  {
    std::lock_guard lock(mutex_);
    while (!queue_.empty()) {
      const Work& w = queue_.front()->work();
      const int sequences = static_cast<int>(w.prompts.size()) * w.n;
      if (!queue_.front()->cancelled() && in_use + sequences > options_.max_batch) break;
      if (!queue_.front()->cancelled()) in_use += sequences;
      queued_sequences_ -= sequences;
      admitted.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
  }
  for (auto& job : admitted) {
    auto a = std::make_unique<Active>();
    a->job = job;
    Work& w = job->work();
    for (size_t i = 0; i < w.prompts.size(); i++) {
      for (int j = 0; j < w.n; j++) {
        auto c = std::make_unique<Choice>();
        c->index = static_cast<int>(i) * w.n + j;
        a->choices.push_back(std::move(c));
      }
    }
    a->unfinished = a->sequences();
    for (const auto& p : w.prompts) a->usage.prompt_tokens += static_cast<int64_t>(p.size());
    if (w.session) {
      // A kept session goes on with this request's options; a copy is kept to give back on failure.
      a->before = *w.session;
      try {
        w.session->set_options(w.sampling, w.generation);
      } catch (const std::exception& e) {
        active_.push_back(std::move(a));
        finish(*active_.back(), ApiError(400, e.what()));
        continue;
      }
      a->choices[0]->session = std::move(*w.session);
      w.session.reset();
    }
    active_.push_back(std::move(a));
  }
}

void Scheduler::drop_cancelled() {
  for (auto& a : active_) {
    if (!a->ended && a->job->cancelled()) finish(*a, ApiError(499, "the client closed the connection"));
  }
}

// Prompt tokens in pieces at fixed offsets (multiples of prefill_chunk from the prompt's start), so
// that a prompt is cut the same way whatever else is running: its state does not depend on the load.
void Scheduler::prefill() {
  int budget = options_.prefill_chunk;
  bool fed_any = false;
  for (auto& ap : active_) {
    Active& a = *ap;
    if (a.ended || a.decoding) continue;
    Work& w = a.job->work();
    try {
      while (a.prompt < w.prompts.size()) {
        const std::vector<int32_t>& p = w.prompts[a.prompt];
        Choice& first = *a.choices[a.prompt * w.n];
        if (!first.session) first.session = model_.session(w.sampling, w.generation);
        const size_t piece = std::min<size_t>(options_.prefill_chunk, p.size() - a.fed);
        if (piece > 0) {
          if (fed_any && static_cast<int>(piece) > budget) return;  // the next turn
          const auto start = Clock::now();
          first.session->feed(std::span<const int32_t>(p).subspan(a.fed, piece));
          a.fed += piece;
          budget -= static_cast<int>(piece);
          fed_any = true;
          std::lock_guard lock(mutex_);
          counters_.prompt_tokens += static_cast<int64_t>(piece);
          counters_.prefill_seconds += seconds(Clock::now() - start);
        }
        if (a.fed < p.size()) return;  // budget spent
        // The prompt is in: its other continuations start from a copy, sampling with seed + j.
        for (int j = 1; j < w.n; j++) {
          Choice& c = *a.choices[a.prompt * w.n + j];
          c.session = *first.session;
          api::SamplingOptions s = w.sampling;
          s.seed += static_cast<uint64_t>(j);
          c.session->set_options(s, w.generation);
        }
        a.prompt++;
        a.fed = 0;
      }
      for (auto& c : a.choices) batch_.add(*c->session);
      a.decoding = true;
    } catch (const std::exception& e) {
      finish(a, ApiError(500, std::string("prefill failed: ") + e.what()));
    }
  }
}

void Scheduler::decode() {
  if (batch_.size() == 0) return;
  // The running sequences by session, for the token callback.
  std::unordered_map<const api::Session*, std::pair<Active*, Choice*>> owner;
  for (auto& a : active_) {
    if (!a->decoding || a->ended) continue;
    for (auto& c : a->choices) {
      if (!c->done) owner[&*c->session] = {a.get(), c.get()};
    }
  }
  const auto start = Clock::now();
  int64_t tokens = 0;
  std::vector<api::Session*> done;
  try {
    done = batch_.step([&](api::Session& s, int32_t id, std::string_view text, std::span<const float> logits) {
      auto [a, c] = owner.at(&s);
      Piece piece;
      piece.choice = c->index;
      piece.text = text;
      if (id >= 0) {
        tokens++;
        a->usage.completion_tokens++;
        if (a->job->work().logprobs >= 0) piece.logprobs.push_back(token_logprobs(logits, id, a->job->work().logprobs));
        if (!a->first_token) {
          a->first_token = true;
          std::lock_guard lock(mutex_);
          counters_.first_tokens++;
          counters_.time_to_first_token_s += seconds(Clock::now() - a->job->submitted());
        }
      }
      if (!piece.text.empty() || !piece.logprobs.empty()) a->job->push(std::move(piece));
    });
  } catch (const std::exception& e) {
    fail_all(ApiError(500, std::string("decoding failed: ") + e.what()));
    return;
  }
  {
    std::lock_guard lock(mutex_);
    const auto now = Clock::now();
    counters_.generated_tokens += tokens;
    counters_.decode_steps++;
    counters_.decode_seconds += seconds(now - start);
    recent_.emplace_back(now, static_cast<int>(tokens));
    while (!recent_.empty() && now - recent_.front().first > kRateWindow) recent_.pop_front();
  }
  for (api::Session* s : done) {
    auto [a, c] = owner.at(s);
    c->done = true;
    Piece piece;
    piece.choice = c->index;
    piece.finish = s->finish();
    piece.finished = true;
    a->job->push(std::move(piece));
    if (--a->unfinished == 0) finish(*a, std::nullopt);
  }
}

// Ends a job: its sequences leave the batch, its kept session goes back to the store (as it was
// before the request, when the request failed), its counters are added, and its reader wakes.
void Scheduler::finish(Active& a, std::optional<ApiError> error) {
  if (a.ended) return;
  a.ended = true;
  for (auto& c : a.choices) {
    if (c->session && batch_.contains(*c->session)) batch_.remove(*c->session);
  }
  Work& w = a.job->work();
  if (!w.session_id.empty()) {
    try {
      if (!error && !a.choices.empty() && a.choices[0]->session) {
        sessions_.release(w.session_id, std::move(*a.choices[0]->session));
      } else if (a.before) {
        sessions_.release(w.session_id, std::move(*a.before));
      } else if (w.session) {  // refused before it was admitted
        sessions_.release(w.session_id, std::move(*w.session));
      } else {
        sessions_.abandon(w.session_id);
      }
    } catch (const std::exception& e) {  // a state file that could not be written
      if (!error) error = ApiError(500, std::string("keeping the session failed: ") + e.what());
    }
  }
  {
    std::lock_guard lock(mutex_);
    if (!error) {
      counters_.requests_finished++;
    } else if (error->status() == 499) {
      counters_.requests_cancelled++;
    } else {
      counters_.requests_failed++;
    }
  }
  {
    std::lock_guard lock(a.job->mutex_);
    a.job->usage_ = a.usage;
  }
  a.job->end(std::move(error));
}

// The batch failed: every running job ends with the error, and a new batch starts empty.
void Scheduler::fail_all(const ApiError& error) {
  for (auto& a : active_) finish(*a, error);
  batch_ = api::Batch(model_);
}

}  // namespace mamba::server

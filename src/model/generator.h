// Text generation over Engine + State + Sampler: prompts are prefilled over the parallel path, then
// every unfinished sequence takes one recurrent step per new token, all of them in one batched step.
// Each sequence has its own state row, sampler and streaming decoder; a sequence stops at the end-of-
// sequence token, at a stop string (matched on the decoded text) or after N new tokens, and from then
// on it is no longer stepped nor reported.
//
// The invariant of a sequence between runs: its state has consumed every token but the last one
// produced (the pending token), which the next feed() puts first. So a session can go on with more
// prompt (interactive turns) or be saved and resumed, and continuing equals an uninterrupted run.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/engine.h"
#include "model/sampler.h"
#include "model/state.h"
#include "tokenizer/tokenizer.h"

namespace mamba {

// How a model's ids map to text: its tokenizer.json, bytes (byte-level models: ids 0–255 are bytes,
// the end-of-document token is config.eos_token_id), or nothing (ids only).
class TextCodec {
 public:
  enum class Kind { Ids, Bytes, Tokenizer };

  static TextCodec ids_only() { return TextCodec(Kind::Ids, nullptr); }
  static TextCodec bytes() { return TextCodec(Kind::Bytes, nullptr); }
  static TextCodec tokenizer(Tokenizer tokenizer);
  // Bytes for a byte-level config, else DIR/tokenizer.json when present (errors in it are reported),
  // else ids only.
  static TextCodec for_model(const std::filesystem::path& dir, const Config& config);

  Kind kind() const { return kind_; }
  bool has_text() const { return kind_ != Kind::Ids; }
  std::vector<int32_t> encode(std::string_view text) const;  // throws Error for Kind::Ids

  // Decodes one sequence's ids as they come, handing back only whole UTF-8 characters.
  class Stream {
   public:
    std::string push(int32_t id);
    std::string finish();  // an unfinished character at the end becomes U+FFFD

   private:
    friend class TextCodec;
    Kind kind_ = Kind::Ids;
    std::optional<StreamDecoder> decoder_;
    std::string pending_;  // Kind::Bytes: the start of a character still being decoded
  };
  Stream stream() const;

 private:
  TextCodec(Kind kind, std::shared_ptr<const Tokenizer> tokenizer) : kind_(kind), tokenizer_(std::move(tokenizer)) {}
  Kind kind_;
  std::shared_ptr<const Tokenizer> tokenizer_;  // shared so that streams stay valid when the codec moves
};

enum class Finish { None, Eos, Stop, Length };
const char* finish_name(Finish finish);

struct GenerateOptions {
  int max_new_tokens = 200;        // per run
  std::vector<std::string> stop;   // on the decoded text; the stop string itself is not reported
  bool stop_at_eos = true;
  int32_t eos_token_id = -1;       // -1: none
  int64_t max_prompt_tokens = 1 << 20;  // per feed(); a longer prompt is an error, not a silent cut
};

class Generator {
 public:
  // `codec` must outlive the generator. Sequence i samples with seed sampling.seed + i.
  Generator(Engine& engine, const TextCodec& codec, SamplerOptions sampling, GenerateOptions options);

  int add();  // a new empty sequence; returns its index
  int size() const { return static_cast<int>(seqs_.size()); }

  // Runs tokens through sequence i's state (its pending token first) over the parallel path, keeping
  // the logits of the last position. Ids are checked; the length is checked against the limit.
  void feed(int i, std::span<const int32_t> tokens);
  void feed_text(int i, std::string_view text) { feed(i, codec_.encode(text)); }

  // (sequence, token id, the text it completes). Called once per new token of an unfinished
  // sequence, and with id −1 for text flushed when a sequence finishes (held back for a possible stop
  // string, or an unfinished character).
  using Callback = std::function<void(int seq, int32_t id, std::string_view text)>;
  // Generates up to max_new_tokens for every sequence, batched, until all have finished. A sequence
  // with neither fed tokens nor a pending token is an error.
  void run(const Callback& on_token = {}) {
    start();
    while (step(on_token)) {
    }
  }
  // run() in pieces, for callers that do other work between tokens (a streaming iterator, a cancel
  // check): start() gathers the sequences into one batch; each step() takes one token for every
  // unfinished sequence and runs them through the model together, and is false once all have finished.
  // stop() ends a run between steps: each unfinished sequence keeps the tokens it reported, its state
  // has consumed them all and its next-token logits are kept, so a later feed() or run() goes on from
  // there (text held back for a possible stop string stays held for that run).
  void start();
  bool step(const Callback& on_token = {});
  void stop();
  bool running() const { return !active_.empty(); }

  // One sequence's run in pieces, for a decode batch that mixes the sequences of several generators
  // and holds their states and logits while they run (api::Batch: continuous batching in a server);
  // start(), step() and stop() are made of the same pieces. begin(i) starts sequence i's run (its
  // pending token fed first) and returns its next-token logits. take(i, logits) samples the next token
  // from `logits` (V), as step() would, and reports it: `done` when the run ends with it. The batch
  // then gives the sequence its state (batch 1) back: finished(i, row, id) after the token that ended
  // the run (it waits to be fed, as after run()), stopped(i, row, logits) when it leaves between steps
  // (as stop() leaves it).
  std::span<const float> begin(int i);
  struct Taken {
    int32_t id = -1;
    bool done = false;
  };
  Taken take(int i, const float* logits, const Callback& on_token = {});
  void finished(int i, State row, int32_t id);
  void stopped(int i, State row, const float* logits);

  // New options for the runs from now on (between runs): each sampler restarts from the new seed
  // (sequence i from seed + i) and keeps the ids it has seen; states, pending tokens and logits stay.
  void set_options(SamplerOptions sampling, GenerateOptions options);
  const SamplerOptions& sampling() const { return sampling_; }
  const GenerateOptions& options() const { return options_; }

  // What the last run produced for sequence i.
  const std::vector<int32_t>& output(int i) const { return seqs_[i].output; }
  const std::string& text(int i) const { return seqs_[i].text; }
  Finish finish(int i) const { return seqs_[i].finish; }
  const State& state(int i) const { return seqs_[i].state; }
  // Sequence i's next-token logits (vocab) when it has them (after a feed, or a run ended by stop());
  // empty when its last token is still pending.
  std::span<const float> logits(int i) const {
    return seqs_[i].has_logits ? std::span<const float>(seqs_[i].logits) : std::span<const float>();
  }

  // Sequence i as a file: State's tensors ("conv", "ssm", as State::save writes them) and, in the
  // metadata, the pending token, the sampler's Rng state and the ids seen (for the repetition
  // penalty). load() adds it as a new sequence; `keep_rng` false reseeds instead of restoring.
  void save(int i, const std::filesystem::path& path) const;
  int load(const std::filesystem::path& path, bool keep_rng = true);

  // Totals over all feeds and runs.
  int64_t prefill_tokens() const { return prefill_tokens_; }
  int64_t decode_tokens() const { return decode_tokens_; }
  double prefill_seconds() const { return prefill_seconds_; }
  double decode_seconds() const { return decode_seconds_; }

 private:
  struct Sequence {
    State state;                 // batch 1
    Sampler sampler;
    TextCodec::Stream stream;
    std::vector<float> logits;   // (V) for the next token, when has_logits
    bool has_logits = false;
    int32_t pending = -1;        // produced but not yet run through the state
    std::vector<int32_t> output;
    std::string text;            // reported text of the last run
    std::string held;            // decoded text held back: it may be the start of a stop string
    Finish finish = Finish::None;
  };
  // Takes token `id` of sequence i: decodes, checks the stops, reports. True when the sequence ends.
  bool accept(int i, int32_t id, const Callback& on_token);
  void flush(int i, const Callback& on_token);

  Engine& engine_;
  const TextCodec& codec_;
  SamplerOptions sampling_;
  GenerateOptions options_;
  int vocab_;
  std::vector<Sequence> seqs_;
  // The batched decode: rows of the unfinished sequences, in order of active_.
  State work_;                   // (B_active)
  std::vector<float> logits_;    // (B_active, V)
  std::vector<int32_t> tokens_;  // (B_active)
  std::vector<int> active_;
  std::vector<int> keep_;      // slots of active_ still running after a step
  int64_t prefill_tokens_ = 0, decode_tokens_ = 0;
  double prefill_seconds_ = 0, decode_seconds_ = 0;
};

// Perplexity of a token sequence under the model, run through the recurrent state in chunks of
// `chunk` tokens (no window: every token sees all before it). The first token is predicted from
// `bos` (the end-of-document token) so that every token is scored.
struct PerplexityResult {
  double nll = 0;       // total negative log-likelihood, nats
  int64_t tokens = 0;   // tokens scored
  double seconds = 0;
  double perplexity() const;
};
PerplexityResult perplexity(Engine& engine, std::span<const int32_t> tokens, int32_t bos, int chunk = 512,
                            const std::function<void(int64_t done)>& progress = {});

}  // namespace mamba

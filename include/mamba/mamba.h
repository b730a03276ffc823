// mamba.cpp's library API: the one header every frontend uses (the CLI, the Python package, a server).
// It names no internal type: models, states, sessions and tokenizers are handles to the library's
// objects, and everything else is plain data. Errors are mamba::Error (mamba/error.h) with the messages
// the CLI prints.
//
//   mamba::api::Model model("runs/a");                       // config.json + model.safetensors
//   mamba::api::Session s = model.session({.temperature = 0.8, .seed = 1}, {.max_new_tokens = 200});
//   s.feed(model.encode("Fellow-Citizens"));
//   s.generate([](int, int32_t, std::string_view text) { std::cout << text; });
//
// Two levels. Sessions generate text: one sequence each, holding its recurrent state, its next-token
// logits, its sampler and its text decoder, fed in pieces, copied, saved and loaded. Below them, the
// model runs tokens through States of B sequences (forward, step), which is what a scheduler that
// batches many requests builds on: it keeps one State of the running sequences and steps them together,
// moving sequences in and out with State::row / set_row / keep_rows / concat.
//
// Threads. A Model is a shared handle (copies share the weights and the engine). Every call that runs
// the model, or reads or changes one of its sessions or states, takes the model's lock: any thread may
// use a model, its sessions and its states, one call at a time per model (a frontend that serves many
// clients batches them into one call rather than running calls side by side). Tokenizers are immutable
// and safe to share. Cancel checks and callbacks run on the calling thread with the lock held: they
// must not call into the same model.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mamba/error.h"

namespace mamba::api {

// ---- the process ----

// Threads for the math (0: every core), and subnormal floats flushed to zero in every thread that runs
// it (a trained model's decaying channels otherwise take a slow microcode path). Call once, first.
void set_threads(int threads);
int threads();
// Products of BF16 weights over many rows (prompts, scoring) with the activations rounded to bf16, on
// CPUs with AVX-512 BF16: about twice the prefill's speed, results within bf16's rounding of the exact
// path (fp32 activations, the default, on every CPU alike). Process-wide; a no-op on other CPUs.
void set_bf16_products(bool on);
bool bf16_products();
std::string version();      // "0.1.0"
std::string build_info();   // build type and CPU flags
bool cuda_available();      // built with CUDA kernels (a GPU may still be missing)

// Work whose size comes from input (a prompt, a batch, a model's config, a training run's shape) is
// refused before anything is allocated when it needs more memory than the process may use: `bytes`, or
// with 0 the machine's figure (MemAvailable, or the cgroup's limit when lower). Process-wide; it is
// `mambacpp --max-memory`.
void set_memory_limit(int64_t bytes);
int64_t memory_limit();  // the bytes this process may still allocate now (0: unknown, nothing is refused)
// Fails with mamba::Error ("WHAT: X needed, more than the Y allowed (...)") when `bytes` exceeds
// memory_limit(): for frontends that allocate sizes taken from input themselves (a batch's logits).
void check_memory(int64_t bytes, const std::string& what);

// ---- plain data ----

struct ModelConfig {
  int d_model = 0, n_layer = 0, vocab_size = 0, d_state = 0, d_conv = 0, expand = 0, dt_rank = 0;
  int d_inner = 0;
  bool byte_level = false;  // ids 0–255 are bytes, eos_token_id ends a document
  int eos_token_id = 0;
  bool tie_embeddings = true;
  std::string ssm_mode;     // "selective" or "lti"
  int64_t parameters = 0;
  int64_t state_bytes = 0;  // of one sequence's recurrent state (fp32)
};

struct ModelOptions {
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N"
  // "" (the file's), "fp32", "bf16", "fp16" or "int8". On the CPU the weights are kept in it (int8:
  // quantized on load) and the arithmetic is fp32; on a GPU weights and activations take it.
  std::string dtype;
  int64_t max_tokens = 2048;  // tokens per pass (B × chunk): bounds the activation memory
  // A tokenizer.json for text in and out; default: bytes for a byte-level model, else the folder's
  // tokenizer.json when present, else ids only.
  std::filesystem::path tokenizer;
  bool text = true;  // false: ids only, no tokenizer read (as `mambacpp generate --ids`)
};

struct SamplingOptions {
  double temperature = 0.8;         // 0: greedy
  int top_k = 0;                    // 0: the whole vocabulary
  double top_p = 1.0;               // 1: no nucleus cut
  double min_p = 0.0;               // 0: no cut
  double repetition_penalty = 1.0;  // 1: none
  uint64_t seed = 0;                // sequence i of a batch samples with seed + i
};

struct GenerationOptions {
  int max_new_tokens = 200;           // per generate()
  std::vector<std::string> stop;      // on the decoded text; the stop string is not reported
  bool stop_at_eos = true;
  int64_t max_prompt_tokens = 1 << 20;  // per feed(): a longer prompt is an error, not a silent cut
};

enum class Finish { None, Eos, Stop, Length };  // None: not finished (cancelled, or not run)
const char* finish_name(Finish finish);          // "none", "eos", "stop", "length"

struct Completion {
  std::vector<int32_t> ids;  // the new tokens (the end-of-sequence token excluded)
  std::string text;          // their text (empty for an ids-only model)
  Finish finish = Finish::None;
};

// Work done by generation: tokens run over the parallel path (prompts) and by decode steps.
struct GenerationStats {
  int64_t prefill_tokens = 0, decode_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

struct Perplexity {
  double nll = 0;      // total negative log-likelihood, nats
  int64_t tokens = 0;  // tokens scored
  double seconds = 0;
  double perplexity() const;
};

enum class Logits { All, Last, None };

// Called once per new token of an unfinished sequence with (sequence, token id, the text it completes),
// and with id −1 for text flushed when a sequence finishes. An exception thrown here stops the call
// after the current step (every session stays usable) and is then rethrown.
using TokenCallback = std::function<void(int seq, int32_t id, std::string_view text)>;
// Asked between the passes of a long prefill or scoring call and between decode steps: true stops the
// call with mamba::Cancelled. It may also throw its own exception, which is rethrown the same way.
using CancelCheck = std::function<bool()>;

// ---- the tokenizer ----

// The GPT-2 / GPT-NeoX byte-level BPE of a Hugging Face tokenizer.json (the ids HF tokenizers gives).
class Tokenizer {
 public:
  explicit Tokenizer(const std::filesystem::path& path);  // a tokenizer.json, or a folder holding one
  ~Tokenizer();
  Tokenizer(const Tokenizer&);
  Tokenizer& operator=(const Tokenizer&);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  std::vector<int32_t> encode(std::string_view text) const;  // invalid UTF-8 becomes U+FFFD first
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;
  int32_t vocab_size() const;
  int32_t token_id(std::string_view token) const;  // as written in tokenizer.json ("Ġthe"), or −1
  std::string token_bytes(int32_t id) const;       // the bytes the token stands for
  bool is_special(int32_t id) const;
  std::string path() const;

  struct Impl;
 private:
  std::shared_ptr<const Impl> impl_;  // immutable: copies share it
};

// Turns ids into text as they come, handing back only whole UTF-8 characters.
class TextDecoder {
 public:
  ~TextDecoder();
  TextDecoder(const TextDecoder&);
  TextDecoder& operator=(const TextDecoder&);
  TextDecoder(TextDecoder&&) noexcept;
  TextDecoder& operator=(TextDecoder&&) noexcept;
  std::string push(int32_t id);  // the text this id completes, maybe ""
  std::string finish();          // an unfinished character at the end becomes U+FFFD

  struct Impl;
 private:
  friend class Model;
  explicit TextDecoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Model;

// Chooses tokens from logits as a Session does (repetition penalty, temperature, top-k, top-p, min-p;
// one draw from a SplitMix64 stream per token, the same on every platform). For frontends that batch
// sequences with Model::step and sample each row with its own options.
class Sampler {
 public:
  Sampler(const SamplingOptions& options, int vocab);  // fails naming an option out of its range
  ~Sampler();
  Sampler(const Sampler&);
  Sampler& operator=(const Sampler&);
  Sampler(Sampler&&) noexcept;
  Sampler& operator=(Sampler&&) noexcept;

  int32_t sample(std::span<const float> logits);  // logits (vocab)
  void observe(int32_t id);  // a token of the sequence (prompt or output), for the repetition penalty

  struct Impl;
 private:
  std::unique_ptr<Impl> impl_;
};

// ---- the recurrent state of B sequences ----

// Per layer the convolution's tail and the SSM state h, fp32, on the model's device. Its size does not
// grow with the tokens fed: it is all a sequence carries from one token to the next.
class State {
 public:
  ~State();
  State(const State&);  // a deep copy (on the same device)
  State& operator=(const State&);
  State(State&&) noexcept;
  State& operator=(State&&) noexcept;

  int batch() const;
  int n_layer() const;
  int d_inner() const;
  int d_conv() const;
  int d_state() const;
  size_t bytes() const;

  // Host copies: conv (n_layer, B, d_conv − 1, d_inner), ssm (n_layer, B, d_inner, d_state); set() takes
  // the same shapes back.
  std::vector<float> conv() const;
  std::vector<float> ssm() const;
  void set(std::span<const float> conv, std::span<const float> ssm);
  void reset();  // zeros: the state before any token

  State row(int b) const;                     // sequence b, as a state of batch 1
  void set_row(int b, const State& one);      // the reverse
  void keep_rows(std::span<const int> rows);  // rows (ascending) become 0, 1, ...
  static State concat(std::span<const State* const> parts);  // batches stacked in order

  void save(const std::filesystem::path& path) const;  // safetensors "conv", "ssm", written atomically

  struct Impl;
 private:
  friend class Model;
  friend class Session;
  explicit State(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---- a generating sequence ----

class Session {
 public:
  ~Session();
  Session(const Session&);  // an independent copy: state, logits, sampler, text so far
  Session& operator=(const Session&);
  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;

  // Runs tokens through the state (after the last token generated, which is not yet in it) over the
  // parallel path, keeping the next-token logits. A cancelled feed leaves the session as it was.
  void feed(std::span<const int32_t> tokens, const CancelCheck& cancel = {});
  void feed_text(std::string_view text, const CancelCheck& cancel = {});

  // Generates up to max_new_tokens, until the end-of-sequence token or a stop string.
  Completion generate(const TokenCallback& on_token = {}, const CancelCheck& cancel = {});

  // The same one token at a time (a streaming iterator): the first call of a run starts it; each call
  // takes one token and reports what it produced to on_token; false once the run has finished.
  bool next(const TokenCallback& on_token = {});
  bool running() const;

  // What the last (or current) run produced (copies: another thread may be running the session's model).
  std::vector<int32_t> output() const;
  std::string text() const;
  Finish finish() const;

  // The next token's logits (vocab), after a feed or a cancelled run; empty otherwise (the last token
  // generated is then waiting to be fed, and the next feed or run puts it first).
  std::vector<float> logits() const;
  State state() const;  // a copy of the recurrent state (batch 1)
  void reset();         // back to the empty session, same options and seed

  // The session as a file: its state (State::save's tensors), and in the metadata the token waiting to
  // be fed, the sampler's random state and the ids seen; `mambacpp generate --save-state` writes the same.
  void save(const std::filesystem::path& path) const;

  const SamplingOptions& sampling() const;
  const GenerationOptions& options() const;
  // New options for the runs from now on (a chat that changes its temperature between turns, the
  // copies of one prompt that sample with different seeds): the sampler restarts from the new seed and
  // keeps the ids it has seen (the repetition penalty's); the state and what waits to be fed stay.
  void set_options(const SamplingOptions& sampling, const GenerationOptions& options);
  bool has_text() const;  // whether its model reads and writes text (Model::has_text)
  GenerationStats stats() const;  // totals over this session's feeds and runs

  struct Impl;
 private:
  friend class Model;
  friend class Batch;
  explicit Session(std::unique_ptr<Impl> impl);
  void settle() const;  // ends a streaming run left unfinished before another use (the lock held)
  std::unique_ptr<Impl> impl_;
};

// ---- sessions decoded together ----

// Called for every token a session in a Batch takes, with the logits (V) it was drawn from (before
// the repetition penalty and the temperature: the model's own distribution), and with id −1 and empty
// logits for text flushed when the session finishes. As TokenCallback otherwise.
using BatchCallback =
    std::function<void(Session& session, int32_t id, std::string_view text, std::span<const float> logits)>;

// Continuous batching: sessions that generate together, one batched decode step for all of them per
// token, joining and leaving between steps, each with its own sampling, stop strings and length. A
// session's tokens are the ones it would generate alone (its own sampler and seed; on the CPU the
// batched step computes each row as the step of one sequence does, see docs/server.md). A server keeps
// one Batch and steps it from one thread; requests' prompts go in with Session::feed, in pieces,
// between steps.
class Batch {
 public:
  explicit Batch(const Model& model);
  ~Batch();
  Batch(Batch&&) noexcept;
  Batch& operator=(Batch&&) noexcept;

  // Starts a run of `session` (as generate() would: its waiting token fed first) that joins at the
  // next step. False, and nothing done, when it has nothing to generate (max_new_tokens 0). Until it
  // leaves, the session belongs to the batch: it must stay where it is and not be used otherwise.
  bool add(Session& session);
  // Takes a session out between steps (a cancelled request): it keeps the tokens reported so far, its
  // state has consumed them, and it goes on from there like a cancelled generate().
  void remove(Session& session);
  bool contains(const Session& session) const;
  int size() const;  // sessions in the batch, joining ones included

  // One token for every session: each samples from its logits and reports to on_token, then those
  // that go on run through the model together. Returns the sessions whose run ended with this token
  // (end of sequence, stop string or length: Session::finish()); they have left the batch. An exception
  // from on_token ends nothing early: the step is completed for every session, then it is rethrown.
  std::vector<Session*> step(const BatchCallback& on_token = {});

  GenerationStats stats() const;  // decode tokens and seconds of this batch's steps

  struct Impl;
 private:
  std::unique_ptr<Impl> impl_;
};

// ---- a model ----

class Model {
 public:
  // Loads DIR (config.json, model.safetensors or shards, either config format) onto options.device.
  explicit Model(const std::filesystem::path& dir, const ModelOptions& options = {});
  ~Model();
  Model(const Model&);  // shares the loaded model
  Model& operator=(const Model&);
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;

  const ModelConfig& config() const;
  std::filesystem::path path() const;
  std::string device() const;   // "cpu", "cuda:0"
  std::string dtype() const;    // the activations' type
  std::string weight_dtype() const;
  std::string describe() const;  // the backend in one line
  int64_t weight_bytes() const;

  // Text as this model reads it: bytes for a byte-level model, else its tokenizer. has_text() is false
  // for a model with neither (ids only); encode() then fails.
  bool has_text() const;
  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(std::span<const int32_t> ids) const;
  TextDecoder text_decoder() const;

  // ---- tokens through states ----
  State new_state(int batch = 1) const;  // zeros
  State load_state(const std::filesystem::path& path) const;
  // tokens (B, L) row-major from `state` (batch B), leaving the final state there. Logits (B, L, V) for
  // Logits::All, (B, V) for Last, none for None; fp32, host memory.
  void forward(const int32_t* tokens, int B, int L, State& state, float* logits, Logits which = Logits::All,
               const CancelCheck& cancel = {}) const;
  // One token for each of the state's B sequences: logits (B, V).
  void step(const int32_t* tokens, State& state, float* logits) const;
  // Logits (B, L, V) of B sequences from the zero state: what `mambacpp score` writes. Logits that are
  // not finite (weights that overflow) are an error naming the first one's position.
  void score(const int32_t* tokens, int B, int L, float* logits, const CancelCheck& cancel = {}) const;
  // The whole sequence through the recurrent state in chunks; the first token is predicted from the
  // end-of-document token, so every token counts. `progress` gets the tokens done after each chunk.
  // Logits that are not finite are an error.
  Perplexity perplexity(std::span<const int32_t> tokens, int chunk = 512,
                        const std::function<void(int64_t done)>& progress = {}, const CancelCheck& cancel = {}) const;

  // Memory, in bytes, that work of a given size takes besides the model, for check_memory() before the
  // caller allocates: a forward of B sequences of L tokens from a new state with its logits (All: B·L
  // rows, Last: B rows, None: none), and `sequences` sequences generated together (state, logits and
  // sampler of each). score(), perplexity() and generate() check what they allocate themselves.
  int64_t forward_bytes(int64_t B, int64_t L, Logits which = Logits::All) const;
  int64_t generation_bytes(int64_t sequences) const;

  // ---- generation ----
  Session session(const SamplingOptions& sampling = {}, const GenerationOptions& options = {}) const;
  // A session saved by Session::save. keep_rng false reseeds the sampler from `sampling` instead.
  Session load_session(const std::filesystem::path& path, const SamplingOptions& sampling = {},
                       const GenerationOptions& options = {}, bool keep_rng = true) const;
  // Prompts decoded together, one batched step per token; prompt i samples with seed + i (as
  // `mambacpp generate --batch-file`). Results in the order of the prompts.
  std::vector<Completion> generate(const std::vector<std::vector<int32_t>>& prompts,
                                   const SamplingOptions& sampling = {}, const GenerationOptions& options = {},
                                   const TokenCallback& on_token = {}, const CancelCheck& cancel = {},
                                   GenerationStats* stats = nullptr) const;

  struct Impl;
 private:
  friend class Session;
  friend class Batch;
  std::shared_ptr<Impl> impl_;
};

// ---- new models ----

struct InitOptions {
  std::string preset;  // "130m", "370m", ... or "" for the dimensions below
  int d_model = 0, n_layer = 0, d_state = 16, d_conv = 4, expand = 2, dt_rank = 0;  // dt_rank 0: ⌈d_model/16⌉
  int vocab_size = 50280;  // not with a preset
  bool byte_level = false;  // 257 ids: bytes and an end-of-document token (vocab_size ignored)
  uint64_t seed = 0;
  std::string dtype = "fp32";  // stored: fp32, bf16 or fp16
};
// Writes a randomly initialised model (the official initialisation) to `out`; returns its config. A
// shape whose parameters do not fit in memory is refused first.
ModelConfig init_model(const std::filesystem::path& out, const InitOptions& options);

struct QuantizeSummary {
  ModelConfig config;
  int64_t bytes = 0;  // of the int8 matrices and their scales
};
// Writes DIR's model to `out` with its matrices in int8 (q8 blocks: 32 values of a row with one F16
// scale, GGUF's q8_0 in two planes; the other parameters F32), and DIR's tokenizer files beside it. The
// folder loads as any other; `mambacpp quantize`.
QuantizeSummary quantize_model(const std::filesystem::path& dir, const std::filesystem::path& out);

// ---- training (fp32 or mixed precision, on the CPU or a GPU) ----

struct TrainOptions {
  // Data, one of three: text files or folders (byte-level: bytes and an end-of-document token),
  // pre-tokenized token files (MAMBATOK header), or one fixed batch: an integer .npy (B, L + 1) of
  // independent rows (inputs row[:L], targets row[1:]) used at every step, which sets batch and seq_len.
  std::vector<std::filesystem::path> data, tokens;
  std::filesystem::path fixed_batch;
  int val_every = 20;  // every k-th document is validation (0: none)
  std::filesystem::path out;        // the run folder: latest model, log.jsonl, checkpoints/
  // Continue a run folder or checkpoint exactly. Its options are kept but for those named in `given`:
  // the schedule's, the optimizer's, evaluation's and checkpoints' (steps, warmup, lr, lr_min, schedule,
  // weight_decay, clip, beta1, beta2, adam_eps, scan_chunk, recompute, eval_every, eval_batches, save_every, keep)
  // take the value given here; any other must equal the run's (its data stream continues where it
  // stopped), as must the shape and the kind of data.
  std::filesystem::path resume;
  std::filesystem::path init_from;  // fine-tune this model folder instead of a new model
  // Where parameters, gradients and AdamW's moments live and the steps run: "cpu", "cuda" or "cuda:N".
  // Checkpoints are the same files on every device: a run may resume on another.
  std::string device = "cpu";
  // The precision: "fp32" (exact), "bf16" or "fp16" (mixed precision as PyTorch's autocast: fp32 master
  // weights and optimizer state, low-precision copies of the matrices and activations; fp16 with dynamic
  // loss scaling). Empty: bf16 on a GPU, fp32 on the CPU (whose bf16 and fp16 run its fp32 kernels on
  // widened values: a reference, slower than fp32). A resumed run keeps its own unless this is given.
  std::string dtype;
  // A new model's shape (InitOptions' fields; the vocabulary comes from the data).
  std::string preset;
  int d_model = 0, n_layer = 0, d_state = 16, d_conv = 4, expand = 2, dt_rank = 0;

  int batch = 8, seq_len = 256, accum = 1;
  int64_t steps = 0;  // 0: 1000 for a new run, the run's own total on resume
  int64_t warmup = 100;
  double lr = 1e-3, lr_min = -1;  // lr_min < 0: lr / 10
  std::string schedule = "cosine";  // or "constant"
  double weight_decay = 0.1, clip = 1.0, beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  uint64_t seed = 0;
  bool sequential = false;
  int scan_chunk = 256;
  // What the backward recomputes instead of keeping per layer: 0 nothing, 1 the conv's output and Δ, 2 also
  // the scan's forward (its chunk states and output), 3 also the norm's output, 4 also in_proj's output:
  // less memory for more time, the same gradients.
  int recompute = 1;
  int64_t eval_every = 100, eval_batches = 8, save_every = 0, keep = 3;
  // Writes the first step's gradients (the mean over its micro-batches, before clipping) to this
  // .safetensors file, with the parameters' names, for comparisons with other implementations.
  std::filesystem::path dump_grads;

  // Data parallel (docs/training.md): a process started as one rank of a job (by mpirun, or with RANK,
  // WORLD_SIZE and LOCAL_RANK set) joins it; false trains alone whatever the environment says. `batch` is
  // then the global batch (each rank computes batch / ranks of its rows) and `device` "cuda" means the GPU
  // of the rank's LOCAL_RANK. A collective or a step that takes longer than dist_timeout_s stops the job
  // (a rank died or hangs); without MPI, the GPUs' ranks meet through the file `rendezvous`; the gradients
  // are summed in buckets of about bucket_mb MiB while the backward runs.
  bool distributed = true;
  double dist_timeout_s = 600;
  std::filesystem::path rendezvous;
  double bucket_mb = 25;

  // The options the caller set, by field name ("lr", "batch", ...): what a resumed run changes or
  // checks (see `resume`), and, with a fixed batch, batch and seq_len that must match its shape.
  std::vector<std::string> given;
  // How messages name an option, from its field name ("lr_min"): by default the field name itself;
  // `mambacpp train` names its flags ("--lr-min").
  std::function<std::string(const std::string& field)> option_name;
};

// An option that a resumed run changed: its field name and both values, as JSON text.
struct OptionChange {
  std::string option, was, now;
};

struct TrainStep {
  int64_t step = 0, steps = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, elapsed_s = 0;
  bool evaluated = false;  // validation ran at this step:
  double val_loss = 0;     // nats per token
  double val_bits = 0;     // bits per byte (byte-level) or per token
  double loss_scale = 0;   // fp16: the step's loss scale (0 in fp32 and bf16)
  bool skipped = false;    // fp16: its gradients overflowed, the parameters were left as they were
};

struct TrainSummary {
  int64_t steps = 0;
  double loss = 0, val_loss = -1, tokens_per_s = 0, seconds = 0;
  bool interrupted = false;           // stopped early: a checkpoint was saved there
  std::filesystem::path checkpoint;   // the latest checkpoint
  bool byte_level = true;
  int64_t skipped_steps = 0;          // fp16: steps skipped for gradients that overflowed, over the whole run
};

// Called after every optimizer step; return false to stop (a checkpoint is saved, as on SIGINT). An
// exception stops the run the same way and is then rethrown.
using StepCallback = std::function<bool(const TrainStep&)>;

// A training run, prepared (data read, memory checked, model built or checkpoint loaded) and then run.
// Nothing is printed: progress goes to the callback and to OUT/log.jsonl.
class Training {
 public:
  explicit Training(const TrainOptions& options);
  ~Training();
  Training(Training&&) noexcept;
  Training& operator=(Training&&) noexcept;

  const ModelConfig& config() const;
  bool resumed() const;
  const std::vector<OptionChange>& changes() const;  // what a resumed run changed, in the options' order
  int64_t step() const;   // where the run stands
  int64_t steps() const;  // its total
  int batch() const;      // sequences per micro-batch (a fixed batch's rows)
  int seq_len() const;
  std::filesystem::path out() const;
  int64_t train_tokens() const;
  int64_t train_documents() const;
  int64_t val_tokens() const;
  int64_t val_documents() const;
  int64_t activation_bytes() const;
  std::string describe() const;  // the backend it runs on, in one line (and the data-parallel job's transport)
  std::string dtype() const;     // the precision it trains in: "fp32", "bf16" or "fp16"
  int rank() const;        // in the data-parallel job (0 alone); only rank 0 writes the log and checkpoints
  int world_size() const;  // ranks in the job (1 alone)
  bool fixed_batch() const;  // trains on one fixed batch, whose own loss is the validation loss
  // Whether validation runs on training windows, for want of validation data (too few documents for the
  // split, or a validation stream shorter than seq_len + 1 tokens); log.jsonl marks those evaluations.
  bool validates_on_training_data() const;

  // Trains to the total. `stop`, when given, is polled before each step (a signal handler sets it).
  TrainSummary run(const StepCallback& on_step = {}, const std::atomic_bool* stop = nullptr);

  struct Impl;
 private:
  std::unique_ptr<Impl> impl_;
};

// Training(options).run(on_step).
TrainSummary train(const TrainOptions& options, const StepCallback& on_step = {});

}  // namespace mamba::api

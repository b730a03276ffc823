// The library API (include/mamba/mamba.h) over the model layer: each public class holds its internal
// object behind a pointer. The rules that make calls safe to cancel live here: a call takes the model's
// lock and installs its cancel check as the engine's interrupt; callbacks' exceptions are caught and the
// work is ended at a clean point (a decode step, a training step) before they are rethrown.
#include "mamba/mamba.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <tuple>
#include <exception>
#include <mutex>
#include <optional>

#include "core/error.h"
#include "core/json.h"
#include "core/limits.h"
#include "core/runtime.h"
#include "dist/comm.h"
#include "model/config.h"
#include "model/data.h"
#include "model/engine.h"
#include "model/generator.h"
#include "model/model.h"
#include "model/sampler.h"
#include "model/state.h"
#include "model/trainer.h"
#include "model/validate.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace mamba::api {

namespace {

ModelConfig public_config(const Config& c) {
  ModelConfig p;
  p.d_model = c.d_model;
  p.n_layer = c.n_layer;
  p.vocab_size = c.vocab_size;
  p.d_state = c.d_state;
  p.d_conv = c.d_conv;
  p.expand = c.expand;
  p.dt_rank = c.dt_rank;
  p.d_inner = c.d_inner();
  p.byte_level = c.byte_level;
  p.eos_token_id = c.eos_token_id;
  p.tie_embeddings = c.tie_embeddings;
  p.ssm_mode = c.ssm_mode == SsmMode::Lti ? "lti" : "selective";
  p.parameters = c.parameter_count();
  p.state_bytes = int64_t{c.n_layer} * c.d_inner() * (c.d_conv - 1 + c.d_state) * 4;
  return p;
}

std::optional<DType> dtype_option(const std::string& text, const char* what) {
  if (text.empty()) return std::nullopt;
  DType t;
  if (!parse_dtype(text, &t)) fail(what, " \"", text, "\": expected fp32, bf16, fp16 or int8");
  return t;
}

std::string lower_dtype(DType t) {
  switch (t) {
    case DType::F32: return "fp32";
    case DType::F16: return "fp16";
    case DType::BF16: return "bf16";
    case DType::I8: return "int8";
  }
  return "?";
}

mamba::SamplerOptions sampler_options(const SamplingOptions& s) {
  mamba::SamplerOptions o;
  o.temperature = s.temperature;
  o.top_k = s.top_k;
  o.top_p = s.top_p;
  o.min_p = s.min_p;
  o.repetition_penalty = s.repetition_penalty;
  o.seed = s.seed;
  return o;
}

Finish public_finish(mamba::Finish f) {
  switch (f) {
    case mamba::Finish::None: return Finish::None;
    case mamba::Finish::Eos: return Finish::Eos;
    case mamba::Finish::Stop: return Finish::Stop;
    case mamba::Finish::Length: return Finish::Length;
  }
  return Finish::None;
}

// A new model's shape; `what` names the caller in errors.
Config shape_config(const std::string& preset, int d_model, int n_layer, int d_state, int d_conv, int expand,
                    int dt_rank, const char* what) {
  Config c;
  if (!preset.empty()) {
    if (d_model || n_layer) fail(what, ": give either a preset or d_model and n_layer, not both");
    if (!preset_config(preset, &c)) fail(what, ": unknown preset \"", preset, "\" (known: ", preset_names(), ")");
    return c;
  }
  if (d_model <= 0 || n_layer <= 0) fail(what, ": give a preset, or d_model and n_layer (both positive)");
  if (d_state < 1 || d_conv < 1 || expand < 1 || dt_rank < 0) {
    fail(what, ": d_state, d_conv and expand must be positive and dt_rank ≥ 0");
  }
  c.d_model = d_model;
  c.n_layer = n_layer;
  c.d_state = d_state;
  c.d_conv = d_conv;
  c.expand = expand;
  c.dt_rank = dt_rank ? dt_rank : (d_model + 15) / 16;
  return c;
}

}  // namespace

// ---- the process ----

void set_threads(int threads) { configure_runtime(threads); }
int threads() { return runtime_threads(); }
void set_bf16_products(bool on) { mamba::set_bf16_products(on); }
bool bf16_products() { return mamba::bf16_products(); }
std::string version() { return MAMBA_VERSION; }
std::string build_info() { return MAMBA_BUILD_FLAGS; }
bool cuda_available() {
#ifdef MAMBA_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

void set_memory_limit(int64_t bytes) {
  if (bytes < 0) fail("memory limit: ", bytes, " bytes must be ≥ 0 (0: the memory available)");
  mamba::set_memory_limit(bytes);
}
int64_t memory_limit() { return mamba::memory_limit(); }
void check_memory(int64_t bytes, const std::string& what) { mamba::check_memory(bytes, what); }

const char* finish_name(Finish finish) {
  switch (finish) {
    case Finish::None: return "none";
    case Finish::Eos: return "eos";
    case Finish::Stop: return "stop";
    case Finish::Length: return "length";
  }
  return "?";
}

double Perplexity::perplexity() const { return tokens ? std::exp(nll / static_cast<double>(tokens)) : 0.0; }

// ---- Tokenizer ----

struct Tokenizer::Impl {
  mamba::Tokenizer tokenizer;
};

Tokenizer::Tokenizer(const std::filesystem::path& path)
    : impl_(std::make_shared<const Impl>(Impl{mamba::Tokenizer::load(path.string())})) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(const Tokenizer&) = default;
Tokenizer& Tokenizer::operator=(const Tokenizer&) = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text) const { return impl_->tokenizer.encode(text); }
std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  return impl_->tokenizer.decode(ids, skip_special);
}
int32_t Tokenizer::vocab_size() const { return impl_->tokenizer.vocab_size(); }
int32_t Tokenizer::token_id(std::string_view token) const { return impl_->tokenizer.token_id(token); }
std::string Tokenizer::token_bytes(int32_t id) const { return impl_->tokenizer.token_bytes(id); }
bool Tokenizer::is_special(int32_t id) const { return impl_->tokenizer.is_special(id); }
std::string Tokenizer::path() const { return impl_->tokenizer.path(); }

// ---- Sampler ----

struct Sampler::Impl {
  mamba::Sampler sampler;
  int vocab;
};

Sampler::Sampler(const SamplingOptions& options, int vocab) {
  if (vocab < 1) fail("sampler: vocabulary ", vocab, " must be ≥ 1");
  const mamba::SamplerOptions o = sampler_options(options);
  o.validate();
  impl_ = std::make_unique<Impl>(Impl{mamba::Sampler(o, vocab), vocab});
}
Sampler::~Sampler() = default;
Sampler::Sampler(const Sampler& other) : impl_(std::make_unique<Impl>(*other.impl_)) {}
Sampler& Sampler::operator=(const Sampler& other) {
  if (this != &other) impl_ = std::make_unique<Impl>(*other.impl_);
  return *this;
}
Sampler::Sampler(Sampler&&) noexcept = default;
Sampler& Sampler::operator=(Sampler&&) noexcept = default;

int32_t Sampler::sample(std::span<const float> logits) {
  if (static_cast<int64_t>(logits.size()) != impl_->vocab) {
    fail("sampler: ", logits.size(), " logits for a vocabulary of ", impl_->vocab);
  }
  return impl_->sampler.sample(logits.data());
}

void Sampler::observe(int32_t id) {
  if (id < 0 || id >= impl_->vocab) fail("sampler: token id ", id, " is out of range [0, ", impl_->vocab, ")");
  impl_->sampler.observe(id);
}

// ---- Model ----

struct Model::Impl {
  Impl(const std::filesystem::path& dir_, const ModelOptions& o)
      : dir(dir_),
        device(Device::parse(o.device)),
        dtype(dtype_option(o.dtype, "dtype")),
        // On the CPU the weights are kept in the compute dtype; a GPU converts its device copy itself.
        model(mamba::Model::load(dir_, device.kind == Device::Kind::Cpu ? dtype : std::nullopt)),
        engine(model, EngineOptions{device, device.kind == Device::Kind::Cpu ? std::nullopt : dtype,
                                    std::max<int64_t>(1, o.max_tokens)}),
        codec(o.text ? make_codec(o.tokenizer) : TextCodec::ids_only()),
        config(public_config(model.config())),
        max_tokens(std::max<int64_t>(1, o.max_tokens)) {}

  TextCodec make_codec(const std::filesystem::path& tokenizer) const {
    if (tokenizer.empty()) return TextCodec::for_model(dir, model.config());
    mamba::Tokenizer tok = mamba::Tokenizer::load(tokenizer.string());
    if (tok.vocab_size() > model.config().vocab_size) {
      fail(tokenizer.string(), ": ", tok.vocab_size(), " tokens, more than the model's vocabulary of ",
           model.config().vocab_size);
    }
    return TextCodec::tokenizer(std::move(tok));
  }

  // The codec, for calls that need text: an ids-only model fails naming its folder.
  const TextCodec& text() const {
    if (!codec.has_text()) {
      fail(dir.string(), ": no tokenizer.json and not byte-level: give token ids, or a tokenizer (ModelOptions::tokenizer)");
    }
    return codec;
  }

  mamba::GenerateOptions generate_options(const GenerationOptions& g) const {
    mamba::GenerateOptions o;
    o.max_new_tokens = g.max_new_tokens;
    o.stop = g.stop;
    o.stop_at_eos = g.stop_at_eos;
    o.eos_token_id = model.config().eos_token_id;
    o.max_prompt_tokens = g.max_prompt_tokens;
    return o;
  }

  std::filesystem::path dir;
  Device device;
  std::optional<DType> dtype;
  mamba::Model model;
  Engine engine;  // refers to `model`: Impl never moves (it lives behind a shared_ptr)
  TextCodec codec;
  ModelConfig config;
  int64_t max_tokens;
  std::mutex mutex;  // one compute call at a time: the engine's activations are shared
};

namespace {

// One compute call: holds the model's lock, and installs the call's cancel check as the engine's
// interrupt for the duration.
class Call {
 public:
  Call(Model::Impl& m, const CancelCheck& cancel) : lock_(m.mutex), engine_(m.engine) {
    if (cancel) {
      engine_.set_interrupt([&cancel] {
        if (cancel()) throw Cancelled();
      });
    }
  }
  ~Call() { engine_.set_interrupt({}); }
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

 private:
  std::unique_lock<std::mutex> lock_;
  Engine& engine_;
};

// Steps a generator's run to its end, asking `cancel` between steps. An exception from on_token or
// cancel ends the run between two steps (Generator::stop) and is rethrown: the sequences stay usable.
void run_generation(Generator& gen, const TokenCallback& on_token, const CancelCheck& cancel, bool one_step = false) {
  std::exception_ptr error;
  const Generator::Callback report = [&](int seq, int32_t id, std::string_view text) {
    if (!on_token || error) return;
    try {
      on_token(seq, id, text);
    } catch (...) {
      error = std::current_exception();
    }
  };
  if (!gen.running()) gen.start();
  while (gen.step(report)) {
    if (!error && cancel) {
      try {
        if (cancel()) throw Cancelled();
      } catch (...) {
        error = std::current_exception();
      }
    }
    if (error || one_step) break;
  }
  if (error) {
    gen.stop();
    std::rethrow_exception(error);
  }
}

GenerationStats generation_stats(const Generator& gen) {
  return GenerationStats{gen.prefill_tokens(), gen.decode_tokens(), gen.prefill_seconds(), gen.decode_seconds()};
}

Completion completion(const Generator& gen, int i) {
  return Completion{gen.output(i), gen.text(i), public_finish(gen.finish(i))};
}

}  // namespace

Model::Model(const std::filesystem::path& dir, const ModelOptions& options)
    : impl_(std::make_shared<Impl>(dir, options)) {}
Model::~Model() = default;
Model::Model(const Model&) = default;
Model& Model::operator=(const Model&) = default;
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;

const ModelConfig& Model::config() const { return impl_->config; }
std::filesystem::path Model::path() const { return impl_->dir; }
std::string Model::device() const { return impl_->engine.backend().device().name(); }
std::string Model::dtype() const { return lower_dtype(impl_->engine.dtype()); }
std::string Model::weight_dtype() const { return lower_dtype(impl_->model.weight_dtype()); }
std::string Model::describe() const { return impl_->engine.backend().describe(); }
int64_t Model::weight_bytes() const { return impl_->engine.weight_bytes(); }

bool Model::has_text() const { return impl_->codec.has_text(); }
std::vector<int32_t> Model::encode(std::string_view text) const { return impl_->text().encode(text); }

std::string Model::decode(std::span<const int32_t> ids) const {
  const int V = impl_->config.vocab_size;
  TextCodec::Stream stream = impl_->text().stream();
  std::string text;
  for (int32_t id : ids) {
    if (id < 0 || id >= V) fail("token id ", id, " is out of range for this model (vocabulary 0..", V - 1, ")");
    text += stream.push(id);
  }
  return text + stream.finish();
}

// ---- TextDecoder ----

struct TextDecoder::Impl {
  std::shared_ptr<Model::Impl> model;  // keeps the tokenizer the stream reads alive
  TextCodec::Stream stream;
  int vocab = 0;
};

TextDecoder::TextDecoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TextDecoder::~TextDecoder() = default;
TextDecoder::TextDecoder(const TextDecoder& other) : impl_(std::make_unique<Impl>(*other.impl_)) {}
TextDecoder& TextDecoder::operator=(const TextDecoder& other) {
  if (this != &other) impl_ = std::make_unique<Impl>(*other.impl_);
  return *this;
}
TextDecoder::TextDecoder(TextDecoder&&) noexcept = default;
TextDecoder& TextDecoder::operator=(TextDecoder&&) noexcept = default;

std::string TextDecoder::push(int32_t id) {
  if (id < 0 || id >= impl_->vocab) fail("token id ", id, " is out of range (vocabulary 0..", impl_->vocab - 1, ")");
  return impl_->stream.push(id);
}
std::string TextDecoder::finish() { return impl_->stream.finish(); }

TextDecoder Model::text_decoder() const {
  impl_->text();
  return TextDecoder(std::make_unique<TextDecoder::Impl>(
      TextDecoder::Impl{impl_, impl_->codec.stream(), impl_->config.vocab_size}));
}

// ---- State ----

struct State::Impl {
  std::shared_ptr<Model::Impl> model;
  mamba::State state;
};

State::State(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
State::~State() = default;
namespace {

// The model's lock, held by every call that reads or changes a session's or a state's memory: a
// compute call on the same model may be writing it (the engine runs on the device's stream).
std::unique_lock<std::mutex> hold(Model::Impl& m) { return std::unique_lock<std::mutex>(m.mutex); }

}  // namespace

State::State(const State& other) {
  auto lock = hold(*other.impl_->model);
  impl_ = std::make_unique<Impl>(*other.impl_);
}
State& State::operator=(const State& other) {
  if (this != &other) *this = State(other);
  return *this;
}
State::State(State&&) noexcept = default;
State& State::operator=(State&&) noexcept = default;

int State::batch() const { return impl_->state.batch; }
int State::n_layer() const { return impl_->state.n_layer; }
int State::d_inner() const { return impl_->state.d_inner; }
int State::d_conv() const { return impl_->state.d_conv; }
int State::d_state() const { return impl_->state.d_state; }
size_t State::bytes() const { return impl_->state.conv_bytes() + impl_->state.ssm_bytes(); }
std::vector<float> State::conv() const {
  auto lock = hold(*impl_->model);
  return impl_->state.conv();
}
std::vector<float> State::ssm() const {
  auto lock = hold(*impl_->model);
  return impl_->state.ssm();
}

void State::set(std::span<const float> conv, std::span<const float> ssm) {
  const mamba::State& s = impl_->state;
  const size_t want_conv = s.conv_bytes() / 4, want_ssm = s.ssm_bytes() / 4;
  if (conv.size() != want_conv || ssm.size() != want_ssm) {
    fail("state: conv has ", conv.size(), " values and ssm ", ssm.size(), "; this state of ", s.batch,
         " sequences holds ", want_conv, " and ", want_ssm);
  }
  auto lock = hold(*impl_->model);
  impl_->state.set(std::vector<float>(conv.begin(), conv.end()), std::vector<float>(ssm.begin(), ssm.end()));
}

void State::reset() {
  auto lock = hold(*impl_->model);
  impl_->state.reset();
}

State State::row(int b) const {
  if (b < 0 || b >= batch()) fail("state: row ", b, " is out of range [0, ", batch(), ")");
  auto lock = hold(*impl_->model);
  return State(std::make_unique<Impl>(Impl{impl_->model, impl_->state.sequence(b)}));
}

void State::set_row(int b, const State& one) {
  if (b < 0 || b >= batch()) fail("state: row ", b, " is out of range [0, ", batch(), ")");
  if (one.batch() != 1) fail("state: set_row takes a state of one sequence, not ", one.batch());
  if (one.impl_->model->config.d_inner != impl_->model->config.d_inner ||
      one.impl_->model->config.n_layer != impl_->model->config.n_layer ||
      &one.impl_->state.backend() != &impl_->state.backend()) {
    fail("state: set_row: the row is of another model's shape or on another device");
  }
  auto lock = hold(*impl_->model);
  impl_->state.set_sequence(b, one.impl_->state);
}

void State::keep_rows(std::span<const int> rows) {
  for (size_t i = 0; i < rows.size(); i++) {
    if (rows[i] < 0 || rows[i] >= batch() || (i > 0 && rows[i] <= rows[i - 1])) {
      fail("state: keep_rows takes ascending rows in [0, ", batch(), ")");
    }
  }
  auto lock = hold(*impl_->model);
  impl_->state.keep_rows(std::vector<int>(rows.begin(), rows.end()));
}

State State::concat(std::span<const State* const> parts) {
  if (parts.empty()) fail("state: concat of no states");
  const State& first = *parts[0];
  int total = 0;
  for (const State* p : parts) {
    if (p->impl_->model != first.impl_->model) fail("state: concat of states of different models");
    total += p->batch();
  }
  auto& m = *first.impl_->model;
  auto lock = hold(m);
  mamba::State out(m.model.config(), total, m.engine.backend());
  int at = 0;
  for (const State* p : parts) {
    for (int b = 0; b < p->batch(); b++) out.set_sequence(at++, p->impl_->state.sequence(b));
  }
  return State(std::make_unique<Impl>(Impl{first.impl_->model, std::move(out)}));
}

void State::save(const std::filesystem::path& path) const {
  auto lock = hold(*impl_->model);
  impl_->state.save(path);
}

State Model::new_state(int batch) const {
  if (batch < 1) fail("state: batch ", batch, " must be ≥ 1");
  mamba::check_memory(state_bytes(impl_->model.config(), batch), "a state of " + std::to_string(batch) + " sequences");
  return State(std::make_unique<State::Impl>(State::Impl{impl_, impl_->engine.new_state(batch)}));
}

State Model::load_state(const std::filesystem::path& path) const {
  return State(std::make_unique<State::Impl>(
      State::Impl{impl_, mamba::State::load(path, impl_->model.config(), impl_->engine.backend())}));
}

void Model::forward(const int32_t* tokens, int B, int L, State& state, float* logits, Logits which,
                    const CancelCheck& cancel) const {
  if (state.impl_->model != impl_) fail("forward: the state belongs to another model");
  if (which != Logits::None && !logits) fail("forward: no memory given for the logits");
  const mamba::Logits w = which == Logits::All ? mamba::Logits::All : which == Logits::Last ? mamba::Logits::Last
                                                                                              : mamba::Logits::None;
  Call call(*impl_, cancel);
  impl_->engine.forward(tokens, B, L, state.impl_->state, logits, w);
}

void Model::step(const int32_t* tokens, State& state, float* logits) const {
  if (state.impl_->model != impl_) fail("step: the state belongs to another model");
  if (!logits) fail("step: no memory given for the logits");
  Call call(*impl_, {});
  impl_->engine.step(tokens, state.batch(), state.impl_->state, logits);
}

void Model::score(const int32_t* tokens, int B, int L, float* logits, const CancelCheck& cancel) const {
  if (B < 1 || L < 1) fail("score: batch and length must be positive (got B = ", B, ", L = ", L, ")");
  const Config& c = impl_->model.config();
  // The logits are the caller's: what this call allocates is the engine's passes, the ids and the state.
  mamba::check_memory(mamba::forward_bytes(c, B, L, 0, impl_->max_tokens),
                      "score: " + std::to_string(B) + " × " + std::to_string(L) + " tokens");
  Call call(*impl_, cancel);
  mamba::State state = impl_->engine.new_state(B);
  impl_->engine.forward(tokens, B, L, state, logits, mamba::Logits::All);
  const int64_t V = c.vocab_size;
  if (const int64_t bad = first_nonfinite(logits, int64_t{B} * L * V); bad >= 0) {
    const int64_t row = bad / V;
    fail("score: the model's logits are not finite (", logits[bad], " for token id ", bad % V, " at position ", row % L,
         " of sequence ", row / L, "): its weights overflow");
  }
}

int64_t Model::forward_bytes(int64_t B, int64_t L, Logits which) const {
  if (B < 0 || L < 0) fail("forward_bytes: B ", B, " and L ", L, " must be ≥ 0");
  const int64_t rows = which == Logits::All ? sat_mul(B, L) : which == Logits::Last ? B : 0;
  return mamba::forward_bytes(impl_->model.config(), B, L, rows, impl_->max_tokens);
}

int64_t Model::generation_bytes(int64_t sequences) const {
  if (sequences < 0) fail("generation_bytes: ", sequences, " sequences must be ≥ 0");
  // Per sequence: its state and its row of the batch's state, its logits and its row of the batch's,
  // the sampler's tables (about two floats and a flag per vocabulary entry).
  const Config& c = impl_->model.config();
  const int64_t per_sequence = sat_add(sat_mul(state_bytes(c, 1), 2), sat_mul(c.vocab_size, 4 * 4 + 1));
  return sat_mul(sequences, per_sequence);
}

Perplexity Model::perplexity(std::span<const int32_t> tokens, int chunk,
                             const std::function<void(int64_t)>& progress, const CancelCheck& cancel) const {
  if (chunk < 1) fail("perplexity: chunk ", chunk, " must be ≥ 1");
  mamba::check_memory(forward_bytes(1, chunk, Logits::All), "perplexity: chunk " + std::to_string(chunk));
  Call call(*impl_, cancel);
  const PerplexityResult r =
      mamba::perplexity(impl_->engine, tokens, impl_->model.config().eos_token_id, chunk, [&](int64_t done) {
        if (progress) progress(done);
        if (cancel && cancel()) throw Cancelled();
      });
  return Perplexity{r.nll, r.tokens, r.seconds};
}

// ---- Session ----

struct Session::Impl {
  std::shared_ptr<Model::Impl> model;
  SamplingOptions sampling;
  GenerationOptions options;
  std::unique_ptr<Generator> gen;  // one sequence, index 0
  bool in_run = false;             // next() has started a run that has not ended yet
  bool in_batch = false;           // a Batch runs it: its state is the batch's until it leaves
};

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::~Session() = default;
Session::Session(const Session& other) {
  auto lock = hold(*other.impl_->model);
  const Impl& o = *other.impl_;
  if (o.in_batch) fail("session: it is in a batch and cannot be copied until it leaves");
  impl_ = std::make_unique<Impl>(Impl{o.model, o.sampling, o.options, std::make_unique<Generator>(*o.gen), o.in_run, false});
}
Session& Session::operator=(const Session& other) {
  if (this != &other) *this = Session(other);
  return *this;
}
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;

Session Model::session(const SamplingOptions& sampling, const GenerationOptions& options) const {
  auto gen = std::make_unique<Generator>(impl_->engine, impl_->codec, sampler_options(sampling),
                                         impl_->generate_options(options));
  gen->add();
  return Session(std::make_unique<Session::Impl>(Session::Impl{impl_, sampling, options, std::move(gen), false, false}));
}

Session Model::load_session(const std::filesystem::path& path, const SamplingOptions& sampling,
                            const GenerationOptions& options, bool keep_rng) const {
  auto gen = std::make_unique<Generator>(impl_->engine, impl_->codec, sampler_options(sampling),
                                         impl_->generate_options(options));
  {
    Call call(*impl_, {});
    gen->load(path, keep_rng);
  }
  return Session(std::make_unique<Session::Impl>(Session::Impl{impl_, sampling, options, std::move(gen), false, false}));
}

// A streaming run left unfinished (an iterator dropped early) ends before any other use of the session.
// The model's lock is held.
void Session::settle() const {
  if (impl_->in_batch) fail("session: it is in a batch; remove it from the batch first");
  if (impl_->gen->running()) impl_->gen->stop();
  impl_->in_run = false;
}

void Session::feed(std::span<const int32_t> tokens, const CancelCheck& cancel) {
  Call call(*impl_->model, cancel);
  settle();
  Generator& gen = *impl_->gen;
  // A prefill longer than one pass can be interrupted between passes: keep what to go back to.
  std::optional<Generator> before;
  if (cancel && static_cast<int64_t>(tokens.size()) + 1 > impl_->model->max_tokens) before.emplace(gen);
  try {
    gen.feed(0, tokens);
  } catch (...) {
    if (before) impl_->gen = std::make_unique<Generator>(std::move(*before));
    throw;
  }
}

void Session::feed_text(std::string_view text, const CancelCheck& cancel) {
  feed(impl_->model->text().encode(text), cancel);
}

Completion Session::generate(const TokenCallback& on_token, const CancelCheck& cancel) {
  if (impl_->in_batch) fail("session: it is in a batch; remove it from the batch first");
  Call call(*impl_->model, {});
  run_generation(*impl_->gen, on_token, cancel);
  impl_->in_run = false;
  return completion(*impl_->gen, 0);
}

bool Session::next(const TokenCallback& on_token) {
  if (impl_->in_batch) fail("session: it is in a batch; remove it from the batch first");
  Call call(*impl_->model, {});
  Generator& gen = *impl_->gen;
  if (!impl_->in_run) {
    if (gen.running()) gen.stop();
    gen.start();
    impl_->in_run = true;
  }
  if (!gen.running()) {
    impl_->in_run = false;
    return false;
  }
  run_generation(gen, on_token, {}, /*one_step=*/true);
  return true;
}

bool Session::running() const {
  auto lock = hold(*impl_->model);
  return impl_->gen->running();
}
std::vector<int32_t> Session::output() const {
  auto lock = hold(*impl_->model);
  return impl_->gen->output(0);
}
std::string Session::text() const {
  auto lock = hold(*impl_->model);
  return impl_->gen->text(0);
}
Finish Session::finish() const {
  auto lock = hold(*impl_->model);
  return public_finish(impl_->gen->finish(0));
}
std::vector<float> Session::logits() const {
  auto lock = hold(*impl_->model);
  const std::span<const float> l = impl_->gen->logits(0);
  return std::vector<float>(l.begin(), l.end());
}

State Session::state() const {
  auto lock = hold(*impl_->model);
  settle();
  return State(std::make_unique<State::Impl>(State::Impl{impl_->model, impl_->gen->state(0)}));
}

void Session::reset() {
  auto lock = hold(*impl_->model);
  settle();
  const Model::Impl& m = *impl_->model;
  impl_->gen = std::make_unique<Generator>(impl_->model->engine, m.codec, sampler_options(impl_->sampling),
                                           m.generate_options(impl_->options));
  impl_->gen->add();
}

void Session::save(const std::filesystem::path& path) const {
  auto lock = hold(*impl_->model);
  settle();
  impl_->gen->save(0, path);
}

const SamplingOptions& Session::sampling() const { return impl_->sampling; }
const GenerationOptions& Session::options() const { return impl_->options; }

void Session::set_options(const SamplingOptions& sampling, const GenerationOptions& options) {
  auto lock = hold(*impl_->model);
  settle();
  impl_->gen->set_options(sampler_options(sampling), impl_->model->generate_options(options));
  impl_->sampling = sampling;
  impl_->options = options;
}
bool Session::has_text() const { return impl_->model->codec.has_text(); }
GenerationStats Session::stats() const {
  auto lock = hold(*impl_->model);
  return generation_stats(*impl_->gen);
}

std::vector<Completion> Model::generate(const std::vector<std::vector<int32_t>>& prompts,
                                        const SamplingOptions& sampling, const GenerationOptions& options,
                                        const TokenCallback& on_token, const CancelCheck& cancel,
                                        GenerationStats* stats) const {
  if (prompts.empty()) fail("generate: no prompts");
  mamba::check_memory(generation_bytes(static_cast<int64_t>(prompts.size())),
                      "generate: " + std::to_string(prompts.size()) + " prompts decoded together");
  Generator gen(impl_->engine, impl_->codec, sampler_options(sampling), impl_->generate_options(options));
  Call call(*impl_, cancel);
  for (const auto& prompt : prompts) gen.feed(gen.add(), prompt);
  run_generation(gen, on_token, cancel);
  std::vector<Completion> out;
  for (int i = 0; i < gen.size(); i++) out.push_back(completion(gen, i));
  if (stats) *stats = generation_stats(gen);
  return out;
}

// ---- Batch ----

struct Batch::Impl {
  std::shared_ptr<Model::Impl> model;
  std::vector<Session*> rows;     // the sessions stepping together: row b of `work` and `logits`
  std::vector<Session*> joining;  // added since the last step; their states are still their own
  mamba::State work;              // (rows) their states
  std::vector<float> logits;      // (rows, V) their next-token logits
  std::vector<int32_t> tokens;    // (rows) the tokens just taken
  std::vector<int> keep;          // rows still running after a step
  GenerationStats stats;

  int vocab() const { return model->config.vocab_size; }

  // The joining sessions become rows after the running ones: one new state of all of them, filled
  // layer by layer (the rows of a layer are contiguous, so the running ones move in one copy).
  void gather() {
    if (joining.empty()) return;
    const int B = static_cast<int>(rows.size()), J = static_cast<int>(joining.size()), V = vocab();
    mamba::State next = model->engine.new_state(B + J);
    Backend& backend = next.backend();
    for (int l = 0; l < next.n_layer; l++) {
      if (B > 0) {
        backend.copy(next.conv_layer(l), work.conv_layer(l), sizeof(float) * static_cast<size_t>(B * work.conv_row()));
        backend.copy(next.ssm_layer(l), work.ssm_layer(l), sizeof(float) * static_cast<size_t>(B * work.ssm_row()));
      }
    }
    logits.resize(static_cast<size_t>(B + J) * V);
    for (int j = 0; j < J; j++) {
      const Generator& gen = *joining[j]->impl_->gen;
      next.set_sequence(B + j, gen.state(0));
      const std::span<const float> row = gen.logits(0);
      std::copy(row.begin(), row.end(), logits.begin() + static_cast<int64_t>(B + j) * V);
      rows.push_back(joining[j]);
    }
    joining.clear();
    work = std::move(next);
    tokens.resize(rows.size());
  }
};

Batch::Batch(const Model& model) : impl_(std::make_unique<Impl>()) { impl_->model = model.impl_; }
Batch::~Batch() {
  if (!impl_) return;
  auto lock = hold(*impl_->model);
  // Sessions still in the batch go back to their owners as removed ones would (their last logits).
  for (Session* s : impl_->joining) s->impl_->in_batch = false;
  const int V = impl_->vocab();
  for (size_t b = 0; b < impl_->rows.size(); b++) {
    Session& s = *impl_->rows[b];
    s.impl_->gen->stopped(0, impl_->work.sequence(static_cast<int>(b)), impl_->logits.data() + b * V);
    s.impl_->in_batch = false;
  }
}
Batch::Batch(Batch&&) noexcept = default;
Batch& Batch::operator=(Batch&&) noexcept = default;

bool Batch::add(Session& session) {
  Session::Impl& s = *session.impl_;
  if (s.model != impl_->model) fail("batch: the session belongs to another model");
  Call call(*impl_->model, {});
  if (s.in_batch) fail("batch: the session is already in a batch");
  session.settle();
  if (s.gen->options().max_new_tokens == 0) return false;
  s.gen->begin(0);
  s.in_batch = true;
  impl_->joining.push_back(&session);
  return true;
}

void Batch::remove(Session& session) {
  Impl& b = *impl_;
  Call call(*b.model, {});
  auto joining = std::find(b.joining.begin(), b.joining.end(), &session);
  if (joining != b.joining.end()) {  // its state and logits are still its own
    b.joining.erase(joining);
    session.impl_->in_batch = false;
    return;
  }
  auto it = std::find(b.rows.begin(), b.rows.end(), &session);
  if (it == b.rows.end()) fail("batch: the session is not in this batch");
  const int row = static_cast<int>(it - b.rows.begin()), V = b.vocab();
  session.impl_->gen->stopped(0, b.work.sequence(row), b.logits.data() + static_cast<int64_t>(row) * V);
  session.impl_->in_batch = false;
  b.keep.clear();
  for (int r = 0; r < static_cast<int>(b.rows.size()); r++) {
    if (r != row) b.keep.push_back(r);
  }
  b.work.keep_rows(b.keep);
  for (size_t j = 0; j < b.keep.size(); j++) {
    std::copy_n(b.logits.begin() + static_cast<int64_t>(b.keep[j]) * V, V, b.logits.begin() + static_cast<int64_t>(j) * V);
  }
  b.rows.erase(it);
  b.tokens.resize(b.rows.size());
}

bool Batch::contains(const Session& session) const {
  return std::find(impl_->rows.begin(), impl_->rows.end(), &session) != impl_->rows.end() ||
         std::find(impl_->joining.begin(), impl_->joining.end(), &session) != impl_->joining.end();
}

int Batch::size() const { return static_cast<int>(impl_->rows.size() + impl_->joining.size()); }

std::vector<Session*> Batch::step(const BatchCallback& on_token) {
  Impl& b = *impl_;
  Call call(*b.model, {});
  const auto start = std::chrono::steady_clock::now();
  b.gather();
  const int n = static_cast<int>(b.rows.size()), V = b.vocab();
  std::vector<Session*> done;
  if (n == 0) return done;
  std::exception_ptr error;
  b.keep.clear();
  for (int row = 0; row < n; row++) {
    Session& session = *b.rows[row];
    const float* logits = b.logits.data() + static_cast<int64_t>(row) * V;
    const Generator::Callback report = [&](int, int32_t id, std::string_view text) {
      if (!on_token || error) return;
      try {
        on_token(session, id, text, id >= 0 ? std::span<const float>(logits, V) : std::span<const float>());
      } catch (...) {
        error = std::current_exception();
      }
    };
    Generator& gen = *session.impl_->gen;
    const Generator::Taken t = gen.take(0, logits, report);
    b.tokens[row] = t.id;
    if (t.done) {
      gen.finished(0, b.work.sequence(row), t.id);
      session.impl_->in_batch = false;
      done.push_back(&session);
    } else {
      b.keep.push_back(row);
    }
  }
  if (static_cast<int>(b.keep.size()) < n) {
    b.work.keep_rows(b.keep);
    for (size_t j = 0; j < b.keep.size(); j++) {
      b.rows[j] = b.rows[b.keep[j]];
      b.tokens[j] = b.tokens[b.keep[j]];
    }
    b.rows.resize(b.keep.size());
    b.tokens.resize(b.keep.size());
  }
  if (!b.rows.empty()) {
    const int B = static_cast<int>(b.rows.size());
    b.model->engine.step(b.tokens.data(), B, b.work, b.logits.data());
    b.stats.decode_tokens += B;
  }
  b.stats.decode_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (error) std::rethrow_exception(error);
  return done;
}

GenerationStats Batch::stats() const { return impl_->stats; }

// ---- init ----

ModelConfig init_model(const std::filesystem::path& out, const InitOptions& o) {
  Config c = shape_config(o.preset, o.d_model, o.n_layer, o.d_state, o.d_conv, o.expand, o.dt_rank, "init");
  if (o.byte_level) {
    c.vocab_size = kByteVocab;
    c.byte_level = true;
    c.eos_token_id = kByteEndOfDoc;
  } else if (o.preset.empty()) {
    c.vocab_size = o.vocab_size;
  }
  c.validate("init");
  const std::optional<DType> dtype = dtype_option(o.dtype, "init: dtype");
  mamba::check_memory(parameter_bytes(c), "init: " + std::to_string(c.parameter_count()) + " parameters");
  std::vector<ParamSpec> specs = param_specs(c);
  std::vector<float> params(static_cast<size_t>(param_layout_size(specs)), 0.0f);
  init_params(params.data(), c, specs, o.seed);
  mamba::Model model = mamba::Model::from_params(c, std::move(params));
  model.save(out, dtype.value_or(DType::F32));
  return public_config(c);
}

// ---- quantize ----

QuantizeSummary quantize_model(const std::filesystem::path& dir, const std::filesystem::path& out) {
  namespace fs = std::filesystem;
  if (fs::exists(out) && fs::exists(dir) && fs::equivalent(dir, out)) {
    fail("quantize: the output folder must differ from the model folder");
  }
  const mamba::Model model = mamba::Model::load(dir, DType::I8);
  model.save(out, DType::I8);
  // The files beside the weights that describe the vocabulary travel with them.
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && name.rfind("tokenizer", 0) == 0) {
      fs::copy_file(entry.path(), out / name, fs::copy_options::overwrite_existing);
    }
  }
  return QuantizeSummary{public_config(model.config()), model.converted_bytes()};
}

// ---- training ----

struct Training::Impl {
  std::optional<Dataset> data;     // before the trainer, which refers to it
  std::unique_ptr<Communicator> comm;  // likewise; null alone
  std::optional<Trainer> trainer;
  ModelConfig config;
  bool resumed = false;
  std::vector<OptionChange> changes;
};

namespace {

// The library's options from the API's; what the run fixes itself (byte_level, fixed_batch, val_every)
// is set by the caller.
mamba::TrainOptions trainer_options(const TrainOptions& o) {
  mamba::TrainOptions t;
  t.batch = o.batch;
  t.seq_len = o.seq_len;
  t.accum = o.accum;
  t.steps = o.steps ? o.steps : 1000;
  t.warmup = o.warmup;
  t.lr = o.lr;
  t.lr_min = o.lr_min;
  t.schedule = o.schedule;
  t.weight_decay = o.weight_decay;
  t.clip = o.clip;
  t.beta1 = o.beta1;
  t.beta2 = o.beta2;
  t.adam_eps = o.adam_eps;
  t.seed = o.seed;
  t.sequential = o.sequential;
  t.scan_chunk = o.scan_chunk;
  t.recompute = o.recompute;
  t.eval_every = o.eval_every;
  t.eval_batches = o.eval_batches;
  t.save_every = o.save_every;
  t.keep = o.keep;
  return t;
}

bool is_given(const TrainOptions& o, const std::string& field) {
  return std::find(o.given.begin(), o.given.end(), field) != o.given.end();
}

}  // namespace

Training::Training(const TrainOptions& o) : impl_(std::make_unique<Impl>()) {
  const auto name = [&](const std::string& field) { return o.option_name ? o.option_name(field) : field; };
  const int sources = !o.data.empty() + !o.tokens.empty() + !o.fixed_batch.empty();
  if (sources != 1) {
    fail("train: give one of ", name("data"), " (text files or folders), ", name("tokens"), " (token files) or ",
         name("fixed_batch"), " (a .npy batch)");
  }
  const bool byte_level = !o.data.empty(), fixed = !o.fixed_batch.empty();
  const std::vector<std::filesystem::path>& paths = byte_level ? o.data : o.tokens;
  if (o.steps < 0) fail("train: ", name("steps"), " ", o.steps, " must be positive");
  auto load_data = [&](int32_t eos, int split) {
    if (fixed) return load_fixed_batch(o.fixed_batch);
    return byte_level ? load_text_dataset(paths, split) : load_token_dataset(paths, eos, split);
  };
  const bool shape_given = !o.preset.empty() || o.d_model || o.n_layer;
  mamba::TrainOptions t = trainer_options(o);
  // A rank of a data-parallel job: "cuda" is the GPU of its local rank; the job is joined before any
  // data is read, so that every rank fails alike on bad options.
  const LaunchInfo launch = o.distributed ? detect_launch() : LaunchInfo{};
  const std::string device = !launch.launcher.empty() && o.device == "cuda" ? "cuda:" + std::to_string(launch.local_rank)
                                                                               : o.device;
  Backend& backend = Backend::get(Device::parse(device));
  // Mixed precision by default on a GPU; the CPU's bf16 and fp16 are a reference, not a speed-up.
  t.dtype = o.dtype.empty() ? (backend.host_memory() ? DType::F32 : DType::BF16)
                            : parse_precision(o.dtype, "train: " + name("dtype"));
  if (!(o.bucket_mb > 0 && o.bucket_mb < 1e6)) fail("train: ", name("bucket_mb"), " ", o.bucket_mb, " must lie in (0, 1e6)");
  const int64_t bucket_bytes = static_cast<int64_t>(o.bucket_mb * 1048576.0);
  impl_->comm = connect(backend, launch, DistOptions{o.dist_timeout_s, o.rendezvous, bucket_bytes});
  Communicator* comm = impl_->comm.get();
  const int world = comm ? comm->size() : 1;

  if (!o.resume.empty()) {
    const std::string where = "train " + name("resume");
    if (!o.init_from.empty()) fail(where, ": give ", name("resume"), " or ", name("init_from"), ", not both");
    const std::filesystem::path dir = Trainer::find_checkpoint(o.resume);
    const Config saved_config = load_config(dir);  // says how its data is tokenized
    const mamba::TrainOptions saved = Trainer::read_progress(dir).options;
    if (shape_given) {
      const Config want = shape_config(o.preset, o.d_model, o.n_layer, o.d_state, o.d_conv, o.expand, o.dt_rank, "train");
      if (want.d_model != saved_config.d_model || want.n_layer != saved_config.n_layer ||
          want.d_state != saved_config.d_state || want.d_conv != saved_config.d_conv ||
          want.expand != saved_config.expand || want.dt_rank != saved_config.dt_rank) {
        fail(where, ": the model comes from the checkpoint (d_model ", saved_config.d_model, ", ", saved_config.n_layer,
             " layers); its shape cannot change");
      }
    }
    if (saved.fixed_batch != fixed || (!fixed && saved.byte_level != byte_level)) {
      fail(where, ": ", dir.string(), " was trained on ",
           saved.fixed_batch ? "a fixed batch (" + name("fixed_batch") + ")"
           : saved.byte_level ? "text (" + name("data") + ")"
                              : "token files (" + name("tokens") + ")",
           "; give its data the same way");
    }
    // The validation split decides which documents are trained on: it must be the run's.
    int split = o.val_every;
    if (saved.val_every >= 0) {
      if (is_given(o, "val_every") && o.val_every != saved.val_every) {
        fail(where, ": ", name("val_every"), " ", o.val_every, " cannot change in a resumed run (its split is every ",
             saved.val_every, "-th document)");
      }
      split = saved.val_every;
    }
    // The options given: those a run may change are applied, the others must be the run's.
    const nlohmann::json given = t.to_json(), run = saved.to_json();
    nlohmann::json changes = nlohmann::json::object();
    for (const std::string& key : o.given) {
      // The data's kind and split are checked above; names that are no trainer option are not compared.
      if (!given.contains(key) || key == "val_every" || key == "fixed_batch" || key == "byte_level") continue;
      if (given[key] == run[key]) continue;
      if (!mamba::TrainOptions::resumable(key)) {
        fail(where, ": ", name(key), " ", json_brief(given[key]), " cannot change in a resumed run (it is ",
             json_brief(run[key]), " there): the batches continue from where the run stopped");
      }
      changes[key] = given[key];
    }
    impl_->data = load_data(saved_config.eos_token_id, split);
    impl_->trainer.emplace(Trainer::resume(o.resume, *impl_->data, changes, o.out, backend, comm, bucket_bytes));
    for (const auto& [key, change] : impl_->trainer->resume_changes().items()) {
      impl_->changes.push_back(OptionChange{key, json_brief(change[0]), json_brief(change[1])});
    }
    impl_->resumed = true;
  } else {
    if (o.out.empty()) fail("train: give ", name("out"), " (the run folder), or ", name("resume"));
    Config c;
    std::optional<mamba::Model> base;
    if (!o.init_from.empty()) {
      base.emplace(mamba::Model::load(o.init_from));
      c = base->config();
    } else {
      c = shape_config(o.preset, o.d_model, o.n_layer, o.d_state, o.d_conv, o.expand, o.dt_rank, "train");
      if (byte_level) {
        c.vocab_size = kByteVocab;
        c.byte_level = true;
        c.eos_token_id = kByteEndOfDoc;
      }
    }
    impl_->data = load_data(c.eos_token_id, o.val_every);
    const Dataset& data = *impl_->data;
    if (c.vocab_size == 0) c.vocab_size = data.max_token + 1;  // a new model on token ids: the ids it is given
    c.validate("train");
    if (fixed) {
      const int rows = static_cast<int>(data.train.rows);
      const int L = static_cast<int>(data.train.tokens.size() / data.train.rows) - 1;
      for (const auto& [field, value, want] : {std::tuple{"batch", o.batch, rows}, std::tuple{"seq_len", o.seq_len, L}}) {
        if (is_given(o, field) && value != want) {
          fail("train ", name("fixed_batch"), ": ", o.fixed_batch.string(), " holds ", rows, " rows of ", L,
               " + 1 tokens; ", name(field), " ", value, " contradicts it");
        }
      }
      t.batch = rows;
      t.seq_len = L;
    }
    t.byte_level = byte_level;
    t.fixed_batch = fixed;
    t.val_every = fixed ? -1 : o.val_every;
    t.validate("train");
    // Checked before the parameters are built: a shape that cannot fit is refused with the figure (a
    // GPU's allocations say themselves what they lack).
    if (backend.host_memory()) {
      mamba::check_memory(Trainer::bytes_needed(c, t, world), "train: " + std::to_string(c.parameter_count()) +
                                                           " parameters on batches of " + std::to_string(t.batch) +
                                                           " × " + std::to_string(t.seq_len) + " tokens");
    }
    std::vector<float> params;
    if (base) {
      params = base->params_f32();
      base.reset();
    } else {
      params.assign(static_cast<size_t>(param_layout_size(param_specs(c))), 0.0f);
      init_params(params.data(), c, param_specs(c), o.seed);
    }
    impl_->trainer.emplace(c, std::move(params), data, t, o.out, backend, comm, bucket_bytes);
  }
  if (!o.dump_grads.empty()) impl_->trainer->dump_gradients_to(o.dump_grads);
  impl_->config = public_config(impl_->trainer->config());
}

Training::~Training() = default;
Training::Training(Training&&) noexcept = default;
Training& Training::operator=(Training&&) noexcept = default;

const ModelConfig& Training::config() const { return impl_->config; }
bool Training::resumed() const { return impl_->resumed; }
const std::vector<OptionChange>& Training::changes() const { return impl_->changes; }
int64_t Training::step() const { return impl_->trainer->step(); }
int64_t Training::steps() const { return impl_->trainer->options().steps; }
int Training::batch() const { return impl_->trainer->options().batch; }
int Training::seq_len() const { return impl_->trainer->options().seq_len; }
std::filesystem::path Training::out() const { return impl_->trainer->out(); }
int64_t Training::train_tokens() const { return static_cast<int64_t>(impl_->data->train.tokens.size()); }
int64_t Training::train_documents() const { return impl_->data->train.documents; }
int64_t Training::val_tokens() const { return static_cast<int64_t>(impl_->data->val.tokens.size()); }
int64_t Training::val_documents() const { return impl_->data->val.documents; }
int64_t Training::activation_bytes() const { return impl_->trainer->activation_bytes(); }
std::string Training::describe() const {
  const std::string device = impl_->trainer->backend().describe();
  return impl_->comm ? device + "; data parallel: " + impl_->comm->describe() : device;
}
std::string Training::dtype() const { return std::string(precision_name(impl_->trainer->options().dtype)); }
int Training::rank() const { return impl_->trainer->rank(); }
int Training::world_size() const { return impl_->trainer->world(); }
bool Training::fixed_batch() const { return impl_->trainer->options().fixed_batch; }
bool Training::validates_on_training_data() const { return impl_->trainer->validates_on_training_data(); }

TrainSummary Training::run(const StepCallback& on_step, const std::atomic_bool* stop) {
  Trainer& trainer = *impl_->trainer;
  std::atomic<bool> halt{stop && stop->load()};
  std::exception_ptr error;
  trainer.set_observer([&](const nlohmann::json& line) {
    TrainStep s;
    s.step = line.value("step", int64_t{0});
    s.steps = trainer.options().steps;
    s.loss = line.value("loss", 0.0);
    s.lr = line.value("lr", 0.0);
    s.grad_norm = line.value("grad_norm", 0.0);
    s.tokens_per_s = line.value("tokens_per_s", 0.0);
    s.elapsed_s = line.value("elapsed_s", 0.0);
    s.loss_scale = line.value("loss_scale", 0.0);
    s.skipped = line.value("skipped", false);
    if (line.contains("val_loss")) {
      s.evaluated = true;
      s.val_loss = line["val_loss"].get<double>();
      s.val_bits = line.value("val_bits_per_byte", line.value("val_bits_per_token", 0.0));
    }
    bool go = true;
    if (on_step && !error) {
      try {
        go = on_step(s);
      } catch (...) {
        error = std::current_exception();
        go = false;
      }
    }
    if (!go || (stop && stop->load())) halt.store(true);
  });
  TrainResult r;
  try {
    r = trainer.run(&halt);
  } catch (...) {
    trainer.set_observer({});
    throw;
  }
  trainer.set_observer({});
  if (error) std::rethrow_exception(error);
  TrainSummary out;
  out.steps = r.steps;
  out.loss = r.loss;
  out.val_loss = r.val_loss;
  out.tokens_per_s = r.tokens_per_s;
  out.seconds = r.seconds;
  out.interrupted = r.interrupted;
  out.checkpoint = Trainer::latest_checkpoint(trainer.out());
  out.byte_level = trainer.options().byte_level;
  out.skipped_steps = r.skipped_steps;
  return out;
}

TrainSummary train(const TrainOptions& options, const StepCallback& on_step) {
  return Training(options).run(on_step);
}

}  // namespace mamba::api

#include "model/generator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <sstream>

#include "core/error.h"
#include "core/safetensors.h"
#include "model/validate.h"
#include "ops/cpu/math.h"

namespace mamba {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size(); i++) {
    if (i) out += ',';
    out += std::to_string(ids[i]);
  }
  return out;
}

}  // namespace

// ---- TextCodec ----

TextCodec TextCodec::tokenizer(Tokenizer tokenizer) {
  return TextCodec(Kind::Tokenizer, std::make_shared<const Tokenizer>(std::move(tokenizer)));
}

TextCodec TextCodec::for_model(const std::filesystem::path& dir, const Config& config) {
  if (config.byte_level) return bytes();
  const auto path = dir / "tokenizer.json";
  if (!std::filesystem::exists(path)) return ids_only();
  Tokenizer tok = Tokenizer::load(path.string());
  if (tok.vocab_size() > config.vocab_size) {
    fail(path.string(), ": ", tok.vocab_size(), " tokens, more than the model's vocabulary of ", config.vocab_size);
  }
  return tokenizer(std::move(tok));
}

std::vector<int32_t> TextCodec::encode(std::string_view text) const {
  switch (kind_) {
    case Kind::Bytes: {
      std::vector<int32_t> ids;
      for (unsigned char ch : text) ids.push_back(ch);
      return ids;
    }
    case Kind::Tokenizer: return tokenizer_->encode(text);
    case Kind::Ids: break;
  }
  fail("this model folder has no tokenizer.json and is not byte-level: give token ids (--ids)");
}

TextCodec::Stream TextCodec::stream() const {
  Stream s;
  s.kind_ = kind_;
  if (kind_ == Kind::Tokenizer) s.decoder_.emplace(*tokenizer_);
  return s;
}

std::string TextCodec::Stream::push(int32_t id) {
  if (kind_ == Kind::Tokenizer) return decoder_->push(id);
  if (kind_ != Kind::Bytes || id < 0 || id > 255) return {};
  pending_ += static_cast<char>(id);
  std::string out;
  pending_.erase(0, append_utf8_lossy(out, pending_, /*hold_tail=*/true));
  return out;
}

std::string TextCodec::Stream::finish() {
  if (kind_ == Kind::Tokenizer) return decoder_->finish();
  std::string out = utf8_lossy(pending_);
  pending_.clear();
  return out;
}

const char* finish_name(Finish finish) {
  switch (finish) {
    case Finish::None: return "none";
    case Finish::Eos: return "eos";
    case Finish::Stop: return "stop";
    case Finish::Length: return "length";
  }
  return "?";
}

// ---- Generator ----

namespace {

void check_options(const SamplerOptions& sampling, const GenerateOptions& options, const TextCodec& codec) {
  sampling.validate();
  if (options.max_new_tokens < 0) fail("tokens to generate: ", options.max_new_tokens, " must be ≥ 0");
  if (options.max_prompt_tokens < 1) fail("prompt limit: ", options.max_prompt_tokens, " must be ≥ 1");
  for (const std::string& s : options.stop) {
    if (s.empty()) fail("stop strings must not be empty");
  }
  if (!options.stop.empty() && !codec.has_text()) fail("stop strings need text: this model has no tokenizer");
}

}  // namespace

Generator::Generator(Engine& engine, const TextCodec& codec, SamplerOptions sampling, GenerateOptions options)
    : engine_(engine), codec_(codec), sampling_(sampling), options_(std::move(options)),
      vocab_(engine.model().config().vocab_size) {
  check_options(sampling_, options_, codec_);
}

void Generator::set_options(SamplerOptions sampling, GenerateOptions options) {
  if (running()) fail("generation options cannot change during a run");
  check_options(sampling, options, codec_);
  sampling_ = sampling;
  options_ = std::move(options);
  for (size_t i = 0; i < seqs_.size(); i++) {
    SamplerOptions o = sampling_;
    o.seed += i;
    Sampler fresh(o, vocab_);
    fresh.observe(seqs_[i].sampler.seen());
    seqs_[i].sampler = std::move(fresh);
  }
}

int Generator::add() {
  SamplerOptions o = sampling_;
  o.seed += seqs_.size();
  seqs_.push_back(Sequence{engine_.new_state(1), Sampler(o, vocab_), codec_.stream(), std::vector<float>(vocab_), false, -1,
                           {}, {}, {}, Finish::None});
  return size() - 1;
}

void Generator::feed(int i, std::span<const int32_t> tokens) {
  Sequence& s = seqs_.at(i);
  if (static_cast<int64_t>(tokens.size()) > options_.max_prompt_tokens) {
    fail("prompt of ", tokens.size(), " tokens is longer than the limit of ", options_.max_prompt_tokens, " tokens");
  }
  for (int32_t id : tokens) {
    if (id < 0 || id >= vocab_) fail("token id ", id, " is out of range for this model (vocabulary 0..", vocab_ - 1, ")");
  }
  std::vector<int32_t> all;
  if (s.pending >= 0) all.push_back(s.pending);
  all.insert(all.end(), tokens.begin(), tokens.end());
  if (all.empty()) {
    if (s.has_logits) return;
    fail("sequence ", i, ": empty prompt (nothing to continue from)");
  }
  s.sampler.observe(tokens);
  auto start = std::chrono::steady_clock::now();
  engine_.forward(all.data(), 1, static_cast<int>(all.size()), s.state, s.logits.data(), Logits::Last);
  prefill_seconds_ += seconds_since(start);
  prefill_tokens_ += static_cast<int64_t>(all.size());
  s.pending = -1;
  s.has_logits = true;
}

bool Generator::accept(int i, int32_t id, const Callback& on_token) {
  Sequence& s = seqs_[i];
  s.sampler.observe(id);
  if (options_.stop_at_eos && id == options_.eos_token_id) {  // not reported, not in output()
    s.finish = Finish::Eos;
    flush(i, on_token);
    return true;
  }
  s.output.push_back(id);
  std::string piece = s.stream.push(id);
  if (!options_.stop.empty()) {
    s.held += piece;
    size_t at = std::string::npos;
    for (const std::string& stop : options_.stop) at = std::min(at, s.held.find(stop));
    if (at != std::string::npos) {
      piece = s.held.substr(0, at);
      s.text += piece;
      if (on_token) on_token(i, id, piece);
      s.held.clear();
      s.stream.finish();  // bytes after the stop string are dropped with it
      s.finish = Finish::Stop;
      return true;
    }
    // Hold back the longest end of the text that could begin a stop string.
    size_t hold = 0;
    for (const std::string& stop : options_.stop) {
      for (size_t n = std::min(stop.size() - 1, s.held.size()); n > hold; n--) {
        if (s.held.compare(s.held.size() - n, n, stop, 0, n) == 0) {
          hold = n;
          break;
        }
      }
    }
    piece = s.held.substr(0, s.held.size() - hold);
    s.held.erase(0, s.held.size() - hold);
  }
  s.text += piece;
  if (on_token) on_token(i, id, piece);
  if (static_cast<int>(s.output.size()) >= options_.max_new_tokens) {
    s.finish = Finish::Length;
    flush(i, on_token);
    return true;
  }
  return false;
}

void Generator::flush(int i, const Callback& on_token) {
  Sequence& s = seqs_[i];
  std::string rest = s.held + s.stream.finish();
  s.held.clear();
  if (rest.empty()) return;
  s.text += rest;
  if (on_token) on_token(i, -1, rest);
}

std::span<const float> Generator::begin(int i) {
  Sequence& s = seqs_.at(i);
  s.output.clear();
  s.text.clear();
  s.finish = Finish::None;
  if (!s.has_logits) feed(i, {});
  return s.logits;
}

Generator::Taken Generator::take(int i, const float* logits, const Callback& on_token) {
  const int32_t id = seqs_[i].sampler.sample(logits);
  return Taken{id, accept(i, id, on_token)};
}

void Generator::finished(int i, State row, int32_t id) {
  Sequence& s = seqs_[i];
  s.state = std::move(row);
  s.pending = id;
  s.has_logits = false;
}

void Generator::stopped(int i, State row, const float* logits) {
  Sequence& s = seqs_[i];
  s.state = std::move(row);
  std::copy(logits, logits + vocab_, s.logits.begin());
  s.has_logits = true;
}

void Generator::start() {
  for (int i = 0; i < size(); i++) begin(i);
  active_.clear();
  if (options_.max_new_tokens == 0) return;

  // Gather every sequence into one batch; rows leave it as their sequences finish.
  const int B = size();
  work_ = engine_.new_state(B);
  logits_.resize(static_cast<size_t>(B) * vocab_);
  tokens_.resize(static_cast<size_t>(B));
  active_.resize(static_cast<size_t>(B));
  for (int b = 0; b < B; b++) {
    work_.set_sequence(b, seqs_[b].state);
    std::copy(seqs_[b].logits.begin(), seqs_[b].logits.end(), logits_.begin() + int64_t{b} * vocab_);
    active_[b] = b;
  }
}

bool Generator::step(const Callback& on_token) {
  if (active_.empty()) return false;
  auto start = std::chrono::steady_clock::now();
  const int n = static_cast<int>(active_.size());
  keep_.clear();
  for (int slot = 0; slot < n; slot++) {
    const int i = active_[slot];
    const Taken t = take(i, logits_.data() + int64_t{slot} * vocab_, on_token);
    tokens_[slot] = t.id;
    if (t.done) {
      finished(i, work_.sequence(slot), t.id);
    } else {
      keep_.push_back(slot);
    }
  }
  if (static_cast<int>(keep_.size()) < n) {
    work_.keep_rows(keep_);
    for (size_t j = 0; j < keep_.size(); j++) {
      tokens_[j] = tokens_[keep_[j]];
      active_[j] = active_[keep_[j]];
    }
    active_.resize(keep_.size());
  }
  if (!active_.empty()) {
    engine_.step(tokens_.data(), static_cast<int>(active_.size()), work_, logits_.data());
    decode_tokens_ += static_cast<int64_t>(active_.size());
  }
  decode_seconds_ += seconds_since(start);
  return !active_.empty();
}

void Generator::stop() {
  for (size_t slot = 0; slot < active_.size(); slot++) {
    stopped(active_[slot], work_.sequence(static_cast<int>(slot)), logits_.data() + static_cast<int64_t>(slot) * vocab_);
  }
  active_.clear();
}

void Generator::save(int i, const std::filesystem::path& path) const {
  const Sequence& s = seqs_.at(i);
  const State& st = s.state;
  const std::vector<float> conv = st.conv(), ssm = st.ssm();
  std::vector<TensorToWrite> tensors = {{"conv", {st.n_layer, st.batch, st.d_conv - 1, st.d_inner}, conv.data()},
                                        {"ssm", {st.n_layer, st.batch, st.d_inner, st.d_state}, ssm.data()}};
  // After a feed with no run since, the next token's distribution is only in the logits.
  if (s.has_logits) tensors.push_back({"logits", {1, vocab_}, s.logits.data()});
  write_safetensors(path, tensors,
                    {{"format", "mambacpp-state"},
                     {"vocab", std::to_string(vocab_)},
                     {"pending", std::to_string(s.pending)},
                     {"rng", std::to_string(s.sampler.rng_state())},
                     {"seen", join_ids(s.sampler.seen())}});
}

int Generator::load(const std::filesystem::path& path, bool keep_rng) {
  State st = State::load(path, engine_.model().config(), engine_.backend());
  if (st.batch != 1) fail(path.string(), ": holds ", st.batch, " sequences; one expected");
  SafeTensorsReader reader = SafeTensorsReader::open_file(path);
  const auto& meta = reader.metadata();
  auto field = [&](const std::string& key) -> std::string {
    auto it = meta.find(key);
    return it == meta.end() ? std::string() : it->second;
  };
  auto number = [&](const std::string& key, long long lo, long long hi) -> long long {
    const std::string text = field(key);
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != text.size() || v < lo || v > hi) {
      fail(path.string(), ": metadata \"", key, "\" = \"", text, "\" is not a number in [", lo, ", ", hi, "]");
    }
    return v;
  };
  if (!field("vocab").empty() && number("vocab", 0, INT32_MAX) != vocab_) {
    fail(path.string(), ": saved for a vocabulary of ", field("vocab"), " tokens, this model has ", vocab_);
  }
  const int i = add();
  Sequence& s = seqs_[i];
  s.state = std::move(st);
  if (!field("pending").empty()) s.pending = static_cast<int32_t>(number("pending", -1, vocab_ - 1));
  if (const TensorView* logits = reader.find("logits")) {
    if (logits->dtype != DType::F32 || logits->shape != std::vector<int64_t>{1, vocab_}) {
      fail(path.string(), ": \"logits\" must be F32 (1, ", vocab_, "), not ", logits->shape_string());
    }
    std::memcpy(s.logits.data(), logits->data, sizeof(float) * vocab_);
    s.has_logits = s.pending < 0;
  }
  std::stringstream seen(field("seen"));
  for (std::string item; std::getline(seen, item, ',');) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 0 || v >= vocab_) fail(path.string(), ": metadata \"seen\": bad id \"", item, "\"");
    s.sampler.observe(static_cast<int32_t>(v));
  }
  if (keep_rng && !field("rng").empty()) {
    const std::string text = field("rng");
    size_t used = 0;
    unsigned long long v = 0;
    try {
      v = std::stoull(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != text.size()) fail(path.string(), ": metadata \"rng\" = \"", text, "\" is not a number");
    s.sampler.set_rng_state(v);
  }
  return i;
}

// ---- perplexity ----

double PerplexityResult::perplexity() const { return tokens ? std::exp(nll / static_cast<double>(tokens)) : 0.0; }

PerplexityResult perplexity(Engine& engine, std::span<const int32_t> tokens, int32_t bos, int chunk,
                            const std::function<void(int64_t done)>& progress) {
  const Config& c = engine.model().config();
  const int V = c.vocab_size;
  if (tokens.empty()) fail("perplexity: no tokens");
  if (chunk < 1) fail("perplexity: chunk ", chunk, " must be ≥ 1");
  for (size_t t = 0; t < tokens.size(); t++) {
    if (tokens[t] < 0 || tokens[t] >= V) fail("token id ", tokens[t], " at position ", t, " is out of range [0, ", V, ")");
  }
  if (bos < 0 || bos >= V) fail("perplexity: start token ", bos, " is out of range [0, ", V, ")");
  const int64_t n = static_cast<int64_t>(tokens.size());
  State state = engine.new_state(1);
  std::vector<float> logits(static_cast<size_t>(chunk) * V);  // (chunk, V)
  std::vector<int32_t> inputs(static_cast<size_t>(chunk));
  PerplexityResult r;
  auto start = std::chrono::steady_clock::now();
  for (int64_t t0 = 0; t0 < n; t0 += chunk) {
    const int len = static_cast<int>(std::min<int64_t>(chunk, n - t0));
    // Position t predicts tokens[t] from everything before it: the inputs are shifted by one.
    for (int j = 0; j < len; j++) inputs[j] = t0 + j == 0 ? bos : tokens[t0 + j - 1];
    engine.forward(inputs.data(), 1, len, state, logits.data(), Logits::All);
    if (const int64_t bad = first_nonfinite(logits.data(), int64_t{len} * V); bad >= 0) {
      fail("perplexity: the model's logits are not finite (", logits[bad], " for token id ", bad % V, " at position ",
           t0 + bad / V, "): its weights or its state overflow");
    }
    for (int j = 0; j < len; j++) {
      const float* row = logits.data() + int64_t{j} * V;
      const float max = *std::max_element(row, row + V);
      // log-sum-exp; the vectorizing polynomial exp of ops/cpu/math.h (≈1 ulp), summed in double.
      double sum = 0;
      for (int v = 0; v < V; v++) sum += cpu::exp_approx(row[v] - max);
      r.nll += max + std::log(sum) - row[tokens[t0 + j]];
    }
    r.tokens += len;
    if (progress) progress(r.tokens);
  }
  r.seconds = seconds_since(start);
  return r;
}

}  // namespace mamba

#include "model/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "core/file.h"
#include "core/safetensors.h"
#include "model/model.h"

namespace mamba {

namespace {

using Clock = std::chrono::steady_clock;

std::string step_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
  return name;
}

void write_text_atomic(const std::filesystem::path& path, const std::string& text) {
  write_file_atomic(path, [&](std::FILE* f) { write_bytes(f, text.data(), text.size(), path); });
}

std::string format_duration(double seconds) {
  char text[32];
  const long s = static_cast<long>(seconds + 0.5);
  if (s >= 3600) {
    std::snprintf(text, sizeof(text), "%ldh%02ldm", s / 3600, (s / 60) % 60);
  } else {
    std::snprintf(text, sizeof(text), "%ldm%02lds", s / 60, s % 60);
  }
  return text;
}

}  // namespace

nlohmann::json TrainOptions::to_json() const {
  return {{"batch", batch},         {"seq_len", seq_len},       {"accum", accum},
          {"steps", steps},         {"warmup", warmup},         {"lr", lr},
          {"lr_min", lr_min},       {"schedule", schedule},     {"weight_decay", weight_decay},
          {"clip", clip},           {"beta1", beta1},           {"beta2", beta2},
          {"seed", seed},           {"sequential", sequential}, {"scan_chunk", scan_chunk},
          {"eval_every", eval_every}, {"eval_batches", eval_batches}, {"save_every", save_every},
          {"keep", keep},           {"ignore_index", ignore_index}, {"byte_level", byte_level}};
}

TrainOptions TrainOptions::from_json(const nlohmann::json& j) {
  TrainOptions o;
  try {
    o.batch = j.at("batch");
    o.seq_len = j.at("seq_len");
    o.accum = j.at("accum");
    o.steps = j.at("steps");
    o.warmup = j.at("warmup");
    o.lr = j.at("lr");
    o.lr_min = j.at("lr_min");
    o.schedule = j.at("schedule");
    o.weight_decay = j.at("weight_decay");
    o.clip = j.at("clip");
    o.beta1 = j.at("beta1");
    o.beta2 = j.at("beta2");
    o.seed = j.at("seed");
    o.sequential = j.at("sequential");
    o.scan_chunk = j.at("scan_chunk");
    o.eval_every = j.at("eval_every");
    o.eval_batches = j.at("eval_batches");
    o.save_every = j.at("save_every");
    o.keep = j.at("keep");
    o.ignore_index = j.at("ignore_index");
    o.byte_level = j.at("byte_level");
  } catch (const nlohmann::json::exception& e) {
    fail("trainer.json: options are incomplete: ", e.what());
  }
  return o;
}

Trainer::Trainer(const Config& config, std::vector<float> params, const Dataset& data, TrainOptions options,
                 std::filesystem::path out)
    : config_(config),
      specs_(param_specs(config)),
      params_(std::move(params)),
      grads_(params_.size(), 0.0f),
      data_(data),
      options_(options),
      out_(std::move(out)),
      backprop_(config, options.batch, options.seq_len, options.scan_chunk),
      adam_(specs_, static_cast<int64_t>(params_.size()),
            AdamWOptions{options.lr, options.beta1, options.beta2, 1e-8, options.weight_decay}),
      sampler_(data.train, options.batch, options.seq_len, options.sequential, options.seed),
      inputs_(static_cast<size_t>(options.batch) * options.seq_len),
      targets_(inputs_.size()) {
  if (data.max_token >= config.vocab_size) {
    fail("the data has token id ", data.max_token, " but the model's vocabulary has ", config.vocab_size, " entries");
  }
  if (options_.lr_min < 0) options_.lr_min = options_.lr / 10;
  schedule_ = Schedule{options_.schedule, options_.lr, options_.lr_min, options_.warmup, options_.steps};
  std::filesystem::create_directories(out_);
}

Trainer Trainer::resume(const std::filesystem::path& checkpoint, const Dataset& data, int64_t steps_override,
                        std::filesystem::path out) {
  const std::filesystem::path dir = find_checkpoint(checkpoint);
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(read_text_file(dir / "trainer.json"));
  } catch (const nlohmann::json::exception& e) {
    fail((dir / "trainer.json").string(), ": not valid JSON: ", e.what());
  }
  TrainOptions options = TrainOptions::from_json(state.value("options", nlohmann::json::object()));
  if (steps_override > 0) options.steps = steps_override;
  Model model = Model::load(dir);
  if (model.file_dtype() != DType::F32) fail(dir.string(), ": a training checkpoint must be F32");
  std::vector<float> params = model.params_f32();
  Trainer t(model.config(), std::move(params), data, options, out.empty() ? dir.parent_path().parent_path() : out);

  SafeTensorsReader opt = SafeTensorsReader::open_file(dir / "optimizer.safetensors");
  for (const char* name : {"m", "v"}) {
    const TensorView* v = opt.find(name);
    std::vector<float>& to = std::string(name) == "m" ? t.adam_.m() : t.adam_.v();
    if (!v || v->dtype != DType::F32 || v->numel() != static_cast<int64_t>(to.size())) {
      fail((dir / "optimizer.safetensors").string(), ": tensor ", name, " is missing or has the wrong size");
    }
    convert_to_f32(to.data(), v->data, DType::F32, to.size());
  }
  try {
    t.step_ = state.at("step");
    t.adam_.set_steps(state.at("adam_steps"));
    t.sampler_.restore(state.at("sampler_rng"), state.at("sampler_cursor"));
    t.last_val_ = state.value("val_loss", -1.0);
  } catch (const nlohmann::json::exception& e) {
    fail((dir / "trainer.json").string(), ": ", e.what());
  }
  return t;
}

std::filesystem::path Trainer::find_checkpoint(const std::filesystem::path& path) {
  if (std::filesystem::exists(path / "trainer.json")) return path;
  std::filesystem::path latest = latest_checkpoint(path);
  if (latest.empty()) fail(path.string(), ": no checkpoint here (no trainer.json, no complete checkpoints/step-*)");
  return latest;
}

std::filesystem::path Trainer::latest_checkpoint(const std::filesystem::path& run) {
  std::filesystem::path best;
  const auto dir = run / "checkpoints";
  if (!std::filesystem::is_directory(dir)) return best;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step-", 0) == 0 && std::filesystem::exists(entry.path() / "trainer.json") &&
        (best.empty() || name > best.filename().string())) {
      best = entry.path();
    }
  }
  return best;
}

void Trainer::log(const nlohmann::json& line) {
  std::ofstream(out_ / "log.jsonl", std::ios::app) << line.dump() << "\n";
}

void Trainer::train_step(double* loss, double* grad_norm, double lr) {
  std::fill(grads_.begin(), grads_.end(), 0.0f);
  double total = 0;
  for (int a = 0; a < options_.accum; a++) {
    sampler_.next(inputs_.data(), targets_.data());
    total += backprop_.step(params_.data(), grads_.data(), inputs_.data(), targets_.data(), options_.ignore_index);
  }
  if (options_.accum > 1) {  // the mean of the micro-batches' gradients
    const float f = 1.0f / static_cast<float>(options_.accum);
    for (float& g : grads_) g *= f;
  }
  *loss = total / options_.accum;
  *grad_norm = options_.clip > 0 ? clip_grad_norm(grads_.data(), static_cast<int64_t>(grads_.size()), options_.clip)
                                 : global_grad_norm(grads_.data(), static_cast<int64_t>(grads_.size()));
  if (std::isfinite(*loss) && std::isfinite(*grad_norm)) adam_.update(params_.data(), grads_.data(), lr);
}

double Trainer::evaluate() {
  const TokenStream& stream = data_.val.tokens.size() > static_cast<size_t>(options_.seq_len) ? data_.val : data_.train;
  const int64_t n = static_cast<int64_t>(stream.tokens.size());
  const int B = options_.batch, L = options_.seq_len;
  // Fixed windows spread evenly over the validation stream.
  const int64_t windows = options_.eval_batches * B;
  double total = 0;
  for (int64_t e = 0; e < options_.eval_batches; e++) {
    for (int b = 0; b < B; b++) {
      const int64_t w = e * B + b;
      const int64_t start = (n - L - 1) * w / std::max<int64_t>(1, windows - 1);
      std::memcpy(inputs_.data() + int64_t{b} * L, stream.tokens.data() + start, sizeof(int32_t) * L);
      std::memcpy(targets_.data() + int64_t{b} * L, stream.tokens.data() + start + 1, sizeof(int32_t) * L);
    }
    total += backprop_.step(params_.data(), nullptr, inputs_.data(), targets_.data(), options_.ignore_index);
  }
  return total / static_cast<double>(options_.eval_batches);
}

void Trainer::save_checkpoint() {
  const auto dir = out_ / "checkpoints";
  std::filesystem::create_directories(dir);
  const auto final_dir = dir / step_name(step_);
  std::string tmp_name = step_name(step_);
  tmp_name.insert(0, 1, '.');
  tmp_name.append(".tmp");
  const auto tmp = dir / tmp_name;
  std::filesystem::remove_all(tmp);
  Model model = Model::from_params(config_, params_);
  model.save(tmp, DType::F32);
  write_safetensors(tmp / "optimizer.safetensors",
                    {{"m", {static_cast<int64_t>(adam_.m().size())}, adam_.m().data()},
                     {"v", {static_cast<int64_t>(adam_.v().size())}, adam_.v().data()}});
  nlohmann::json state = {{"step", step_},
                          {"adam_steps", adam_.steps()},
                          {"sampler_rng", sampler_.rng_state()},
                          {"sampler_cursor", sampler_.cursor()},
                          {"val_loss", last_val_},
                          {"options", options_.to_json()}};
  write_text_atomic(tmp / "trainer.json", state.dump(2) + "\n");  // written last: marks it complete
  fsync_dir(tmp);
  std::filesystem::remove_all(final_dir);
  std::filesystem::rename(tmp, final_dir);
  fsync_dir(dir);
  // The run folder's own model is the latest one.
  model.save(out_, DType::F32);
  // Keep the last `keep` checkpoints.
  std::vector<std::filesystem::path> all;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().filename().string().rfind("step-", 0) == 0) all.push_back(entry.path());
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 0; options_.keep > 0 && i + static_cast<size_t>(options_.keep) < all.size(); i++) {
    std::filesystem::remove_all(all[i]);
  }
}

TrainResult Trainer::run(const std::atomic<bool>* stop, int64_t stop_at) {
  TrainResult result;
  const int64_t tokens_per_step = int64_t{options_.batch} * options_.seq_len * options_.accum;
  const auto start = Clock::now();
  const int64_t first = step_;
  double loss = 0, grad_norm = 0, smoothed = -1;
  auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  while (step_ < options_.steps) {
    if ((stop && stop->load()) || step_ == stop_at) {
      result.interrupted = true;
      break;
    }
    const double lr = schedule_.at(step_);
    train_step(&loss, &grad_norm, lr);
    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      const auto last = latest_checkpoint(out_);
      fail("the loss became ", loss, " (gradient norm ", grad_norm, ") at step ", step_ + 1,
           "; training stopped without saving. The last good checkpoint is ",
           last.empty() ? std::string("none") : last.string());
    }
    step_++;
    smoothed = smoothed < 0 ? loss : 0.9 * smoothed + 0.1 * loss;
    const double secs = elapsed();
    const double tps = static_cast<double>((step_ - first) * tokens_per_step) / std::max(secs, 1e-9);
    nlohmann::json line = {{"step", step_}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                           {"tokens_per_s", tps}, {"elapsed_s", secs}};
    const bool eval_now = (options_.eval_every > 0 && step_ % options_.eval_every == 0) || step_ == options_.steps;
    if (eval_now) {
      last_val_ = evaluate();
      line["val_loss"] = last_val_;
      line[options_.byte_level ? "val_bits_per_byte" : "val_bits_per_token"] = last_val_ / std::log(2.0);
    }
    log(line);
    if (observer_) {
      observer_(line);
    } else if (options_.progress) {
      const double eta = static_cast<double>(options_.steps - step_) * secs / static_cast<double>(step_ - first);
      const int width = 24, filled = static_cast<int>(width * step_ / options_.steps);
      std::fprintf(stderr, "\r\033[K%6lld/%lld [%s%s] loss %.4f lr %.2e %.0f tok/s ETA %s",
                   static_cast<long long>(step_), static_cast<long long>(options_.steps),
                   std::string(static_cast<size_t>(filled), '=').c_str(),
                   std::string(static_cast<size_t>(width - filled), ' ').c_str(), smoothed, lr, tps,
                   format_duration(eta).c_str());
      if (eval_now) std::fprintf(stderr, "  val %.4f\n", last_val_);
      std::fflush(stderr);
    } else if (eval_now) {
      std::fprintf(stderr, "step %lld/%lld  loss %.4f  val %.4f (%.3f bits)  lr %.2e  %.0f tok/s\n",
                   static_cast<long long>(step_), static_cast<long long>(options_.steps), loss, last_val_,
                   last_val_ / std::log(2.0), lr, tps);
    }
    if (options_.save_every > 0 && step_ % options_.save_every == 0 && step_ < options_.steps) save_checkpoint();
  }
  if (options_.progress && !observer_) std::fprintf(stderr, "\n");
  save_checkpoint();
  result.steps = step_;
  result.loss = loss;
  result.val_loss = last_val_;
  result.seconds = elapsed();
  result.tokens_per_s = static_cast<double>((step_ - first) * tokens_per_step) / std::max(result.seconds, 1e-9);
  return result;
}

}  // namespace mamba

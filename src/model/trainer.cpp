#include "model/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "core/file.h"
#include "core/json.h"
#include "core/limits.h"
#include "core/safetensors.h"
#include "model/model.h"
#include "model/validate.h"

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

// Fields of trainer.json, each checked for its JSON type; ranges are validate()'s.
const nlohmann::json& field(const nlohmann::json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) fail(where, ": field \"", key, "\" is missing");
  return *it;
}

int64_t get_integer(const nlohmann::json& j, const char* key, const std::string& where, int64_t lo = INT64_MIN,
                    int64_t hi = INT64_MAX) {
  const nlohmann::json& v = field(j, key, where);
  if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))) {
    fail(where, ": field \"", key, "\" must be an integer, got ", json_brief(v));
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo) fail(where, ": field \"", key, "\" is ", x, "; it must be at least ", lo);
  if (x > hi) fail(where, ": field \"", key, "\" is ", x, "; it must be at most ", hi);
  return x;
}

int get_int32(const nlohmann::json& j, const char* key, const std::string& where) {
  return static_cast<int>(get_integer(j, key, where, INT32_MIN, INT32_MAX));
}

double get_number(const nlohmann::json& j, const char* key, const std::string& where) {
  const nlohmann::json& v = field(j, key, where);
  if (!v.is_number()) fail(where, ": field \"", key, "\" must be a number, got ", json_brief(v));
  return v.get<double>();
}

bool get_flag(const nlohmann::json& j, const char* key, const std::string& where) {
  const nlohmann::json& v = field(j, key, where);
  if (!v.is_boolean()) fail(where, ": field \"", key, "\" must be true or false, got ", json_brief(v));
  return v.get<bool>();
}

}  // namespace

std::string_view precision_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "fp32";
    case DType::BF16: return "bf16";
    case DType::F16: return "fp16";
    case DType::I8: break;
  }
  return "int8";
}

DType parse_precision(std::string_view name, const std::string& where) {
  DType t = DType::F32;
  if (!parse_dtype(name, &t) || t == DType::I8) {
    fail(where, " \"", name, "\": the precision must be fp32, bf16 (mixed precision) or fp16 (mixed, with loss scaling)");
  }
  return t;
}

void TrainOptions::validate(const std::string& where) const {
  auto at_least = [&](const char* key, int64_t value, int64_t lo) {
    if (value < lo) fail(where, ": ", key, " ", value, " must be at least ", lo);
  };
  at_least("batch", batch, 1);
  at_least("seq_len", seq_len, 1);
  at_least("accum", accum, 1);
  at_least("scan_chunk", scan_chunk, 1);
  at_least("recompute", recompute, 0);
  if (recompute > Backprop::kMaxRecompute) {
    fail(where, ": recompute ", recompute, " must be 0 (keep all), 1 (the conv and Δ), 2 (also the scan), 3 (also ",
         "the norm) or 4 (also in_proj)");
  }
  at_least("steps", steps, 1);
  at_least("warmup", warmup, 0);
  at_least("eval_every", eval_every, 0);
  at_least("eval_batches", eval_batches, 1);
  at_least("save_every", save_every, 0);
  at_least("keep", keep, 1);
  at_least("val_every", val_every, -1);
  // eval_batches × batch windows are spread over the validation data; the count must be an int64.
  if (eval_batches > INT64_MAX / batch) fail(where, ": eval_batches ", eval_batches, " × batch ", batch, " is out of range");
  if (!(lr > 0 && std::isfinite(lr))) fail(where, ": lr ", lr, " must be positive");
  if (!std::isfinite(lr_min)) fail(where, ": lr_min ", lr_min, " must be finite (negative: lr / 10)");
  if (schedule != "cosine" && schedule != "constant") {
    fail(where, ": schedule ", json_brief(schedule), " must be \"cosine\" or \"constant\"");
  }
  if (!(weight_decay >= 0 && std::isfinite(weight_decay))) fail(where, ": weight_decay ", weight_decay, " must be ≥ 0");
  if (!(clip >= 0 && std::isfinite(clip))) fail(where, ": clip ", clip, " must be ≥ 0 (0: off)");
  if (!(beta1 >= 0 && beta1 < 1)) fail(where, ": beta1 ", beta1, " must lie in [0, 1)");
  if (!(beta2 >= 0 && beta2 < 1)) fail(where, ": beta2 ", beta2, " must lie in [0, 1)");
  if (!(adam_eps > 0 && std::isfinite(adam_eps))) fail(where, ": adam_eps ", adam_eps, " must be positive");
  if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16) {
    fail(where, ": dtype ", precision_name(dtype), " must be fp32, bf16 or fp16");
  }
}

nlohmann::json TrainOptions::to_json() const {
  return {{"batch", batch},         {"seq_len", seq_len},       {"accum", accum},
          {"steps", steps},         {"warmup", warmup},         {"lr", lr},
          {"lr_min", lr_min},       {"schedule", schedule},     {"weight_decay", weight_decay},
          {"clip", clip},           {"beta1", beta1},           {"beta2", beta2},
          {"adam_eps", adam_eps},   {"seed", seed},             {"sequential", sequential},
          {"scan_chunk", scan_chunk}, {"recompute", recompute}, {"eval_every", eval_every}, {"eval_batches", eval_batches},
          {"save_every", save_every}, {"keep", keep},           {"ignore_index", ignore_index},
          {"byte_level", byte_level}, {"val_every", val_every}, {"fixed_batch", fixed_batch},
          {"dtype", std::string(precision_name(dtype))}};
}

TrainOptions TrainOptions::from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) fail(where, ": the options must be a JSON object, got ", json_brief(j));
  TrainOptions o;
  o.batch = get_int32(j, "batch", where);
  o.seq_len = get_int32(j, "seq_len", where);
  o.accum = get_int32(j, "accum", where);
  o.steps = get_integer(j, "steps", where);
  o.warmup = get_integer(j, "warmup", where);
  o.lr = get_number(j, "lr", where);
  o.lr_min = get_number(j, "lr_min", where);
  const nlohmann::json& schedule = field(j, "schedule", where);
  if (!schedule.is_string()) fail(where, ": field \"schedule\" must be a string, got ", json_brief(schedule));
  o.schedule = schedule.get<std::string>();
  o.weight_decay = get_number(j, "weight_decay", where);
  o.clip = get_number(j, "clip", where);
  o.beta1 = get_number(j, "beta1", where);
  o.beta2 = get_number(j, "beta2", where);
  const nlohmann::json& seed = field(j, "seed", where);
  if (!seed.is_number_unsigned()) fail(where, ": field \"seed\" must be a non-negative integer, got ", json_brief(seed));
  o.seed = seed.get<uint64_t>();
  o.sequential = get_flag(j, "sequential", where);
  o.scan_chunk = get_int32(j, "scan_chunk", where);
  o.eval_every = get_integer(j, "eval_every", where);
  o.eval_batches = get_integer(j, "eval_batches", where);
  o.save_every = get_integer(j, "save_every", where);
  o.keep = get_integer(j, "keep", where);
  o.ignore_index = get_int32(j, "ignore_index", where);
  o.byte_level = get_flag(j, "byte_level", where);
  // Fields newer than the first checkpoints: their defaults when absent.
  if (j.contains("adam_eps")) o.adam_eps = get_number(j, "adam_eps", where);
  if (j.contains("val_every")) o.val_every = get_int32(j, "val_every", where);
  if (j.contains("fixed_batch")) o.fixed_batch = get_flag(j, "fixed_batch", where);
  if (j.contains("recompute")) o.recompute = get_int32(j, "recompute", where);
  if (j.contains("dtype")) {  // runs older than mixed precision were fp32
    const nlohmann::json& dtype = j["dtype"];
    if (!dtype.is_string()) fail(where, ": field \"dtype\" must be a string, got ", json_brief(dtype));
    o.dtype = parse_precision(dtype.get<std::string>(), where + ": field \"dtype\"");
  }
  o.validate(where);
  return o;
}

bool TrainOptions::resumable(const std::string& key) {
  static const char* keys[] = {"steps",     "warmup", "lr",    "lr_min",   "schedule",   "weight_decay",
                               "clip",      "beta1",  "beta2", "adam_eps", "scan_chunk", "recompute", "eval_every",
                               "eval_batches", "save_every", "keep", "dtype"};
  return std::find(std::begin(keys), std::end(keys), key) != std::end(keys);
}

TrainerProgress TrainerProgress::from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) fail(where, ": not a JSON object");
  TrainerProgress p;
  p.options = TrainOptions::from_json(field(j, "options", where), where + ": options");
  p.step = get_integer(j, "step", where, 0);
  p.adam_steps = get_integer(j, "adam_steps", where, 0, p.step);
  const nlohmann::json& rng = field(j, "sampler_rng", where);
  if (!rng.is_number_unsigned()) fail(where, ": field \"sampler_rng\" must be a non-negative integer, got ", json_brief(rng));
  p.sampler_rng = rng.get<uint64_t>();
  p.sampler_cursor = get_integer(j, "sampler_cursor", where, 0);
  if (j.contains("val_loss") && !j["val_loss"].is_null()) p.val_loss = get_number(j, "val_loss", where);
  if (j.contains("loss_scale")) {
    p.loss_scale = get_number(j, "loss_scale", where);
    if (!(p.loss_scale > 0 && std::isfinite(p.loss_scale))) {
      fail(where, ": field \"loss_scale\" is ", p.loss_scale, "; it must be positive");
    }
  }
  if (j.contains("loss_scale_good_steps")) p.loss_scale_good_steps = get_integer(j, "loss_scale_good_steps", where, 0);
  if (j.contains("skipped_steps")) p.skipped_steps = get_integer(j, "skipped_steps", where, 0, p.step);
  return p;
}

int64_t Trainer::bytes_needed(const Config& config, const TrainOptions& o, int world) {
  // Parameters and gradients: two copies of the flat layout; m and v: this rank's slice of it; the global
  // batch's inputs and targets (every rank draws it whole).
  world = std::max(world, 1);
  const int64_t params = parameter_bytes(config);
  int64_t bytes = sat_add(sat_mul(params, 2), sat_mul(params / world + 64, 2));
  bytes = sat_add(bytes, Backprop::bytes_needed(config, o.batch / world, o.seq_len, o.scan_chunk, o.dtype, o.recompute));
  return sat_add(bytes, sat_mul(sat_mul(o.batch, o.seq_len), 8));
}

TrainOptions Trainer::checked_options(const Config& config, TrainOptions o, const Dataset& data, bool host_memory,
                                      int world) {
  config.validate("train: the model");
  o.validate("train: options");
  if (o.batch % world != 0) {
    fail("train: data parallel over ", world, " ranks: the batch of ", o.batch,
         " sequences (the global batch, as one process would draw it) must be a multiple of ", world);
  }
  if (o.fixed_batch != (data.train.rows > 0)) {
    fail(o.fixed_batch ? "the run trains on a fixed batch (--fixed-batch) but the data given is a stream"
                       : "the data given is a fixed batch but the run trains on a stream (--data or --tokens)");
  }
  // The whole batch goes through one matrix product per layer, and BLAS counts rows in an int.
  if (int64_t{o.batch} * o.seq_len > INT32_MAX) {
    fail("train: batches of ", o.batch, " × ", o.seq_len, " tokens: more than 2^31 - 1 rows for one matrix product");
  }
  if (data.max_token >= config.vocab_size) {
    fail("the data has token id ", data.max_token, " but the model's vocabulary has ", config.vocab_size, " entries");
  }
  // On a GPU the buffers are the device's, whose allocations fail with the sizes asked for and free.
  if (host_memory) {
    check_memory(bytes_needed(config, o, world), "training " + std::to_string(config.parameter_count()) +
                                                     " parameters on " + std::to_string(o.batch / world) + " × " +
                                                     std::to_string(o.seq_len) + " tokens");
  }
  if (o.lr_min < 0) o.lr_min = o.lr / 10;
  return o;
}

Trainer::Trainer(const Config& config, std::vector<float> params, const Dataset& data, TrainOptions options,
                 std::filesystem::path out, Backend& backend, Communicator* comm, int64_t bucket_bytes)
    : config_(config),
      comm_(comm),
      options_(checked_options(config, options, data, backend.host_memory(), comm ? comm->size() : 1)),
      specs_(param_specs(config)),
      backend_(backend),
      size_(static_cast<int64_t>(params.size())),
      shard_((size_ + world() - 1) / world()),
      bucket_floats_(std::max<int64_t>(1, bucket_bytes / static_cast<int64_t>(sizeof(float)))),
      data_(data),
      out_(std::move(out)),
      backprop_(config, options_.batch / world(), options_.seq_len, options_.scan_chunk, backend, options_.dtype,
                options_.recompute),
      adam_(specs_, size_, AdamWOptions{options_.lr, options_.beta1, options_.beta2, options_.adam_eps, options_.weight_decay},
            backend, comm ? rank() * shard_ : 0, comm ? std::min(size_, (rank() + 1) * shard_) : -1),
      sampler_(data.train, options_.batch, options_.seq_len, options_.sequential, options_.seed),
      inputs_(static_cast<size_t>(options_.batch) * options_.seq_len),
      targets_(inputs_.size()) {
  if (size_ != param_layout_size(specs_)) {
    fail("train: the parameter buffer has ", size_, " floats, the model needs ", param_layout_size(specs_));
  }
  const size_t bytes = sizeof(float) * static_cast<size_t>(size_);
  // The parameters padded to world × shard floats: the all-gather moves equal slices.
  params_ = Buffer(backend, sizeof(float) * static_cast<size_t>(world() * shard_));
  grads_ = Buffer(backend, bytes);
  if (params_.bytes() > bytes) backend.fill_zero(params_.data(), params_.bytes());
  for (const ParamSpec& s : specs_) {
    if (s.name.rfind("backbone.layers.", 0) == 0 && s.name.size() > 12 &&
        s.name.compare(s.name.size() - 12, 12, ".norm.weight") == 0) {
      layer_start_.push_back(s.offset);  // a layer's first parameter
    } else if (s.name == "backbone.norm_f.weight") {
      layer_start_.push_back(s.offset);
    }
  }
  if (static_cast<int>(layer_start_.size()) != config_.n_layer + 1) fail("train: unexpected parameter layout");
  stats_ = Buffer(backend, sizeof(double) + sizeof(float) * static_cast<size_t>(options_.accum));
  backend.upload(params_.data(), params.data(), bytes);
  // evaluate() needs one window of seq_len + 1 validation tokens; without them it uses training data.
  val_on_train_ = data.train.rows > 0 || data.val.tokens.size() <= static_cast<size_t>(options_.seq_len);
  schedule_ = Schedule{options_.schedule, options_.lr, options_.lr_min, options_.warmup, options_.steps};
  std::filesystem::create_directories(out_);
}

TrainerProgress Trainer::read_progress(const std::filesystem::path& dir) {
  const std::string path = (dir / "trainer.json").string();
  return TrainerProgress::from_json(read_json_file(path), path);
}

Trainer Trainer::resume(const std::filesystem::path& checkpoint, const Dataset& data, const nlohmann::json& changes,
                        std::filesystem::path out, Backend& backend, Communicator* comm, int64_t bucket_bytes) {
  const std::filesystem::path dir = find_checkpoint(checkpoint);
  const std::string where = (dir / "trainer.json").string();
  const TrainerProgress progress = read_progress(dir);
  nlohmann::json options = progress.options.to_json();
  nlohmann::json changed = nlohmann::json::object();
  if (!changes.is_null() && !changes.is_object()) fail("resume: the changes must be a JSON object");
  for (const auto& [key, value] : changes.items()) {
    if (!options.contains(key)) fail("resume: there is no option \"", key, "\"");
    if (options[key] == value) continue;
    if (!TrainOptions::resumable(key)) {
      fail(where, ": ", key, " is ", json_brief(options[key]), " in this run and cannot change when resuming (",
           json_brief(value), " was given)");
    }
    changed[key] = {options[key], value};
    options[key] = value;
  }
  const TrainOptions merged = TrainOptions::from_json(options, "resume: options");
  Model model = Model::load(dir);
  if (model.file_dtype() != DType::F32) fail(dir.string(), ": a training checkpoint must be F32");
  std::vector<float> params = model.params_f32();
  Trainer t(model.config(), std::move(params), data, merged, out.empty() ? dir.parent_path().parent_path() : out,
            backend, comm, bucket_bytes);

  const std::filesystem::path opt_path = dir / "optimizer.safetensors";
  SafeTensorsReader opt = SafeTensorsReader::open_file(opt_path);
  std::vector<float> moment(static_cast<size_t>(t.size_));
  for (const char* name : {"m", "v"}) {
    const TensorView* v = opt.find(name);
    if (!v || v->dtype != DType::F32 || v->numel() != t.size_) {
      fail(opt_path.string(), ": tensor ", name, " is missing or has the wrong size");
    }
    convert_to_f32(moment.data(), v->data, DType::F32, moment.size());
    check_finite(moment.data(), t.size_, opt_path.string() + ": tensor " + name);
    // v is a running mean of squares: a negative entry would make √v NaN at the first update.
    if (std::string(name) == "v") {
      for (size_t i = 0; i < moment.size(); i++) {
        if (moment[i] < 0) fail(opt_path.string(), ": tensor v holds a negative value at index ", i);
      }
    }
    // This rank's slice (all of it for one process): any number of ranks resumes from the same file.
    backend.upload(std::string(name) == "m" ? t.adam_.m() : t.adam_.v(), moment.data() + t.adam_.shard_begin(),
                   sizeof(float) * static_cast<size_t>(t.adam_.shard_size()));
  }
  t.step_ = progress.step;
  t.adam_.set_steps(progress.adam_steps);
  t.sampler_.restore(progress.sampler_rng, progress.sampler_cursor);
  t.last_val_ = progress.val_loss;
  t.skipped_steps_ = progress.skipped_steps;
  if (progress.options.dtype == DType::F16) {  // the scaler goes on where it was; a run new to fp16 starts it afresh
    t.scaler_.scale = progress.loss_scale;
    t.scaler_.good_steps = progress.loss_scale_good_steps;
  }
  if (t.step_ >= t.options_.steps) {
    fail(dir.string(), ": the run has finished (step ", t.step_, " of ", t.options_.steps,
         "); give a larger total with --steps to train further");
  }
  t.resume_changes_ = changed;
  if (!changed.empty()) t.log({{"resume", t.step_}, {"changed", changed}});
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
  if (rank() != 0) return;
  std::ofstream(out_ / "log.jsonl", std::ios::app) << line.dump() << "\n";
}

int64_t Trainer::global_count() const {
  if (!comm_) return 0;
  int64_t count = 0;
  for (int32_t t : targets_) count += t != options_.ignore_index;
  return count;
}

void Trainer::shard_forward_backward(float* grads, float* loss) {
  const int64_t offset = shard_offset();
  backprop_.forward_backward(params_.as<float>(), grads, inputs_.data() + offset, targets_.data() + offset,
                             options_.ignore_index, loss, global_count(), loss_scale());
}

double Trainer::shard_loss() {
  const int64_t offset = shard_offset();
  double loss = backprop_.step(params_.as<float>(), nullptr, inputs_.data() + offset, targets_.data() + offset,
                               options_.ignore_index, global_count());
  if (comm_) comm_->all_reduce_host(&loss, 1);
  return loss;
}

bool Trainer::any(bool flag) {
  if (!comm_) return flag;
  double v = flag ? 1.0 : 0.0;
  comm_->all_reduce_host(&v, 1);
  return v > 0;
}

void Trainer::launch_bucket(int64_t lo, int64_t hi) {
  if (hi > lo) comm_->all_reduce_sum(grads_.as<float>() + lo, hi - lo);
}

// Layer l's backward is queued: the gradients from layer l's first parameter to the end of the layout are
// final (the later layers', the final norm's and an untied head's), but for the embedding's, which its own
// backward completes last (and, tied to the head, the loss fed it first). Contiguous ranges, from the end.
void Trainer::on_grads_ready(int layer) {
  if (!reduce_in_backward_) return;
  if (pending_hi_ < 0) pending_hi_ = size_;
  if (layer >= 0) {
    const int64_t lo = layer_start_[static_cast<size_t>(layer)];
    if (pending_hi_ - lo >= bucket_floats_) {
      launch_bucket(lo, pending_hi_);
      pending_hi_ = lo;
    } else {
      comm_->progress();
    }
    return;
  }
  launch_bucket(0, pending_hi_);  // the layers still pending and the embedding
  pending_hi_ = -1;
}

std::vector<float> Trainer::params() const {
  std::vector<float> host(static_cast<size_t>(size_));
  backend_.download(host.data(), params_.data(), sizeof(float) * host.size());
  return host;
}

void Trainer::train_step(double* loss, double* grad_norm, double lr, bool* skipped) {
  float* params = params_.as<float>();
  float* grads = grads_.as<float>();
  auto* norm = stats_.as<double>();
  auto* losses = reinterpret_cast<float*>(norm + 1);  // (accum)
  backend_.fill_zero(grads, grads_.bytes());
  for (int a = 0; a < options_.accum; a++) {
    sampler_.next(inputs_.data(), targets_.data());
    // Data parallel: the gradients go to the ranks' sum during the last micro-batch's backward.
    reduce_in_backward_ = a + 1 == options_.accum;
    shard_forward_backward(grads, losses + a);
  }
  if (comm_) comm_->wait();
  // The mean of the micro-batches' gradients, and fp16's loss scale (a power of two) divided out: AdamW's
  // op scales them first.
  float grad_scale = options_.accum > 1 ? 1.0f / static_cast<float>(options_.accum) : 1.0f;
  grad_scale /= loss_scale();
  if (!dump_grads_.empty()) {  // every rank takes part in the loss's sum; rank 0 writes
    std::vector<float> step_losses(static_cast<size_t>(options_.accum));
    backend_.download(step_losses.data(), losses, sizeof(float) * step_losses.size());
    double total = 0;
    for (float l : step_losses) total += l;
    if (comm_) comm_->all_reduce_host(&total, 1);
    if (rank() == 0) {
      std::vector<float> host(static_cast<size_t>(size_));
      backend_.download(host.data(), grads, sizeof(float) * host.size());
      if (grad_scale != 1.0f) {
        for (float& g : host) g *= grad_scale;
      }
      std::vector<TensorToWrite> tensors;
      for (const ParamSpec& spec : specs_) tensors.push_back({spec.name, spec.shape, host.data() + spec.offset});
      char loss_text[32];
      std::snprintf(loss_text, sizeof(loss_text), "%.17g", total / options_.accum);
      write_safetensors(dump_grads_, tensors,
                        {{"format", "mambacpp-gradients"},
                         {"step", std::to_string(step_)},
                         {"loss", loss_text},
                         {"content", "d(mean loss)/d(parameter), the mean over the micro-batches, before clipping"}});
    }
    dump_grads_.clear();
  }
  adam_.step(params, grads, lr, options_.clip, grad_scale, norm);
  if (comm_) comm_->all_gather(params, shard_);  // every rank's updated slice to every rank
  backprop_.update_weights(params);  // bf16, fp16: the matrices' copies from the updated masters
  // The step's one wait for the device: its losses and gradient norm, for the log.
  std::vector<unsigned char> stats(stats_.bytes());
  backend_.download(stats.data(), stats_.data(), stats.size());
  std::vector<double> step_losses(static_cast<size_t>(options_.accum));
  for (int a = 0; a < options_.accum; a++) {
    float l;
    std::memcpy(&l, stats.data() + sizeof(double) + sizeof(float) * a, sizeof(float));
    step_losses[static_cast<size_t>(a)] = l;
  }
  // Each rank's is its shard's part of the global mean: their sum is the step's loss.
  if (comm_) comm_->all_reduce_host(step_losses.data(), options_.accum);
  double total = 0;
  for (double l : step_losses) total += l;
  *loss = total / options_.accum;
  std::memcpy(grad_norm, stats.data(), sizeof(double));
  // fp16: gradients that overflowed left the parameters and moments as they were (the op updates nothing
  // on a norm that is not finite); the step is not counted, and the scale goes down. Every rank has the
  // same norm, so all skip together.
  *skipped = false;
  if (options_.dtype == DType::F16 && std::isfinite(*loss) && !scaler_.update(std::isfinite(*grad_norm))) {
    adam_.set_steps(adam_.steps() - 1);
    skipped_steps_++;
    *skipped = true;
  }
}

double Trainer::evaluate() {
  if (data_.train.rows > 0) {  // a fixed batch: its own loss
    sampler_.next(inputs_.data(), targets_.data());
    return shard_loss();
  }
  const TokenStream& stream = val_on_train_ ? data_.train : data_.val;
  const int64_t n = static_cast<int64_t>(stream.tokens.size());
  const int B = options_.batch, L = options_.seq_len;
  // Fixed windows spread evenly over the validation stream.
  const int64_t windows = options_.eval_batches * B;
  double total = 0;
  for (int64_t e = 0; e < options_.eval_batches; e++) {
    for (int b = 0; b < B; b++) {
      const int64_t w = e * B + b;
      // (n − L − 1)·w can pass 2^63 for long data and many windows: the product in 128 bits.
      __extension__ using int128 = __int128;
      const int64_t start = static_cast<int64_t>(int128{n - L - 1} * w / std::max<int64_t>(1, windows - 1));
      std::memcpy(inputs_.data() + int64_t{b} * L, stream.tokens.data() + start, sizeof(int32_t) * L);
      std::memcpy(targets_.data() + int64_t{b} * L, stream.tokens.data() + start + 1, sizeof(int32_t) * L);
    }
    total += shard_loss();
  }
  return total / static_cast<double>(options_.eval_batches);
}

void Trainer::save_checkpoint() {
  // The moments' slices gathered (every rank takes part), then rank 0 alone writes.
  std::vector<float> m(static_cast<size_t>(size_)), v(m.size());
  if (!comm_) {
    backend_.download(m.data(), adam_.m(), sizeof(float) * m.size());
    backend_.download(v.data(), adam_.v(), sizeof(float) * v.size());
  } else {
    Buffer full(backend_, sizeof(float) * static_cast<size_t>(world() * shard_));
    for (auto [host, slice] : {std::pair{&m, adam_.m()}, std::pair{&v, adam_.v()}}) {
      backend_.fill_zero(full.data(), full.bytes());
      if (adam_.shard_size() > 0) {
        backend_.copy(full.as<float>() + adam_.shard_begin(), slice, sizeof(float) * static_cast<size_t>(adam_.shard_size()));
      }
      comm_->all_gather(full.as<float>(), shard_);
      if (rank() == 0) backend_.download(host->data(), full.data(), sizeof(float) * host->size());
    }
  }
  if (rank() != 0) {
    double done = 0;
    comm_->all_reduce_host(&done, 1);  // waits for rank 0's files
    return;
  }
  const auto dir = out_ / "checkpoints";
  std::filesystem::create_directories(dir);
  const auto final_dir = dir / step_name(step_);
  std::string tmp_name = step_name(step_);
  tmp_name.insert(0, 1, '.');
  tmp_name.append(".tmp");
  const auto tmp = dir / tmp_name;
  std::filesystem::remove_all(tmp);
  Model model = Model::from_params(config_, params());
  model.save(tmp, DType::F32);
  write_safetensors(tmp / "optimizer.safetensors", {{"m", {size_}, m.data()}, {"v", {size_}, v.data()}});
  nlohmann::json state = {{"step", step_},
                          {"adam_steps", adam_.steps()},
                          {"sampler_rng", sampler_.rng_state()},
                          {"sampler_cursor", sampler_.cursor()},
                          {"val_loss", last_val_},
                          {"loss_scale", scaler_.scale},
                          {"loss_scale_good_steps", scaler_.good_steps},
                          {"skipped_steps", skipped_steps_},
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
  if (comm_) {
    double done = 0;
    comm_->all_reduce_host(&done, 1);
  }
}

TrainResult Trainer::run(const std::atomic<bool>* stop, int64_t stop_at) {
  TrainResult result;
  if (step_ >= options_.steps) {
    fail(out_.string(), ": the run has finished (step ", step_, " of ", options_.steps, "); nothing to train");
  }
  const int64_t tokens_per_step = int64_t{options_.batch} * options_.seq_len * options_.accum;
  // Bound here, not at construction: a Trainer moves (resume() returns one), and the hook holds `this`.
  if (comm_) backprop_.set_on_grads_ready([this](int layer) { on_grads_ready(layer); });
  const auto start = Clock::now();
  const int64_t first = step_;
  double loss = 0, grad_norm = 0;
  auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  while (step_ < options_.steps) {
    // Data parallel: every rank stops at the same step when any is asked to (a signal reaches some only).
    if (any((stop && stop->load()) || step_ == stop_at)) {
      result.interrupted = true;
      break;
    }
    // A step (with its validation and checkpoint) that never ends means another rank died or hangs.
    Watchdog::Scope watch(comm_ ? comm_->watchdog() : nullptr, "training step " + std::to_string(step_ + 1));
    const double lr = schedule_.at(step_);
    const float scale = loss_scale();
    bool skipped = false;
    train_step(&loss, &grad_norm, lr, &skipped);
    if (!std::isfinite(loss) || (!skipped && !std::isfinite(grad_norm))) {
      const auto last = latest_checkpoint(out_);
      fail("the loss became ", loss, " (gradient norm ", grad_norm, ") at step ", step_ + 1,
           "; training stopped without saving. The last good checkpoint is ",
           last.empty() ? std::string("none") : last.string());
    }
    step_++;
    const double secs = elapsed();
    const double tps = static_cast<double>((step_ - first) * tokens_per_step) / std::max(secs, 1e-9);
    nlohmann::json line = {{"step", step_}, {"loss", loss}, {"lr", lr}, {"tokens_per_s", tps}, {"elapsed_s", secs}};
    if (!skipped) line["grad_norm"] = grad_norm;
    if (options_.dtype == DType::F16) line["loss_scale"] = scale;
    if (skipped) line["skipped"] = true;
    const bool eval_now = (options_.eval_every > 0 && step_ % options_.eval_every == 0) || step_ == options_.steps;
    if (eval_now) {
      last_val_ = evaluate();
      line["val_loss"] = last_val_;
      line[options_.byte_level ? "val_bits_per_byte" : "val_bits_per_token"] = last_val_ / std::log(2.0);
      if (val_on_train_) line["val_data"] = "train";  // no validation data: the loss of training windows
    }
    log(line);
    if (observer_) observer_(line);
    if (options_.save_every > 0 && step_ % options_.save_every == 0 && step_ < options_.steps) save_checkpoint();
  }
  save_checkpoint();
  result.steps = step_;
  result.loss = loss;
  result.val_loss = last_val_;
  result.skipped_steps = skipped_steps_;
  result.seconds = elapsed();
  result.tokens_per_s = static_cast<double>((step_ - first) * tokens_per_step) / std::max(result.seconds, 1e-9);
  return result;
}

}  // namespace mamba

// The training loop: batches → forward/backward → clip → AdamW, with validation, a JSON-lines log,
// an observer of every step (progress is the caller's to show), and checkpoints that resume exactly.
//
// A run folder holds the latest model (config.json + model.safetensors, loadable by every command),
// log.jsonl, and checkpoints/step-NNNNNNNN/ folders (model, optimizer state, trainer.json with the
// step, the data sampler's state and the options). A checkpoint is written into a temporary folder
// whose files are fsynced, then renamed into place: a crash during a save leaves the previous one.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "model/backprop.h"
#include "model/data.h"
#include "model/optimizer.h"

namespace mamba {

// The precisions a run trains in, by their flag names: "fp32" (exact), "bf16" (mixed precision) and "fp16"
// (mixed precision with dynamic loss scaling), docs/training.md.
std::string_view precision_name(DType dtype);
// F32, BF16 or F16 from "fp32", "bf16" or "fp16" (or "f32", "f16"); fails naming `where` and the value.
DType parse_precision(std::string_view name, const std::string& where);

struct TrainOptions {
  int batch = 8, seq_len = 256, accum = 1;
  int64_t steps = 1000, warmup = 100;
  double lr = 1e-3, lr_min = -1;  // lr_min < 0: lr / 10
  std::string schedule = "cosine";
  double weight_decay = 0.1, clip = 1.0, beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  uint64_t seed = 0;
  bool sequential = false;  // read the data in order, no shuffling
  int scan_chunk = 256;
  // What the backward recomputes instead of keeping per layer (Backprop): 0, 1 (the default), 2, 3 or 4.
  int recompute = 1;
  int64_t eval_every = 100, eval_batches = 8, save_every = 0, keep = 3;
  int ignore_index = -100;
  bool byte_level = true; // validation reported in bits per byte
  // How the data was split and drawn, saved so that a resumed run reads it the same way: every
  // val_every-th document is validation (-1: not recorded, by checkpoints older than this field);
  // fixed_batch: the data is one batch of independent rows, used at every step.
  int val_every = -1;
  bool fixed_batch = false;
  // The activations' type (Backprop): F32, or BF16 / F16 for mixed precision with fp32 master weights. A
  // resumed run may change it: checkpoints hold the fp32 masters in every precision.
  DType dtype = DType::F32;

  // Fails naming `where` and the field when a value is out of its range (batch 0, an unknown
  // schedule, β ≥ 1, ...). The sizes' only upper limit is the memory check of the Trainer.
  void validate(const std::string& where) const;
  nlohmann::json to_json() const;
  // Every field checked for its JSON type and range (validate); `where` names the file.
  static TrainOptions from_json(const nlohmann::json& j, const std::string& where = "trainer.json");
  // Whether a resumed run may change this field (a to_json key): the schedule's length and shape, the
  // optimizer's numbers, the intervals of evaluation and checkpoints, the scan's memory trade-off, the
  // precision. The others fix the data stream (batch, seq_len, accum, seed, sequential, val_every, fixed_batch) or
  // what the losses mean (ignore_index, byte_level).
  static bool resumable(const std::string& key);
};

// What a checkpoint's trainer.json holds besides the options: where the run is, exactly.
struct TrainerProgress {
  TrainOptions options;
  int64_t step = 0, adam_steps = 0;
  uint64_t sampler_rng = 0;
  int64_t sampler_cursor = 0;
  double val_loss = -1;
  // fp16's loss scaler (LossScaler) and the steps it skipped over the whole run.
  double loss_scale = 65536.0;
  int64_t loss_scale_good_steps = 0, skipped_steps = 0;

  // Parses and checks trainer.json (types and ranges: a negative step or cursor is an Error naming
  // the field, never a crash later). `where` names the file.
  static TrainerProgress from_json(const nlohmann::json& j, const std::string& where);
};

struct TrainResult {
  int64_t steps = 0;
  double loss = 0, val_loss = -1, tokens_per_s = 0, seconds = 0;
  bool interrupted = false;
  int64_t skipped_steps = 0;  // fp16: steps whose gradients overflowed, over the whole run
};

// Data parallel (with a Communicator, dist/comm.h): every rank draws the same global batches (options.batch
// sequences, as one process would) and computes its shard of batch / size rows, each loss divided by the
// global batch's count of targets; the gradients are summed over the ranks in buckets started during the
// backward (Backprop::set_on_grads_ready); every rank computes the same norm and clip, updates its slice of
// the parameters with its slice of AdamW's moments (ZeRO-1), and the slices are gathered. Only rank 0
// writes log.jsonl and checkpoints (the moments gathered first); any number of ranks resumes from them.
class Trainer {
 public:
  // A new run in `out` from the given parameters.
  // Parameters, gradients and AdamW's moments live on `backend`'s device; checkpoints are the same files
  // on every backend. `comm`: this process's data-parallel job (null: one process); it must outlive the
  // trainer.
  Trainer(const Config& config, std::vector<float> params, const Dataset& data, TrainOptions options,
          std::filesystem::path out, Backend& backend = Backend::cpu(), Communicator* comm = nullptr,
          int64_t bucket_bytes = 25 << 20);
  // Continues the run whose checkpoint is `checkpoint` (a step folder, or a run folder: its latest).
  // `changes` holds new values of resumable options ({"lr": 2e-3, "steps": 5000}, TrainOptions' keys);
  // any other key is an Error, as is a finished run (step ≥ steps) or data that does not match how the
  // run read its data. What changed is written to log.jsonl and kept in resume_changes().
  static Trainer resume(const std::filesystem::path& checkpoint, const Dataset& data,
                        const nlohmann::json& changes, std::filesystem::path out, Backend& backend = Backend::cpu(),
                        Communicator* comm = nullptr, int64_t bucket_bytes = 25 << 20);
  // A checkpoint's trainer.json, parsed and checked.
  static TrainerProgress read_progress(const std::filesystem::path& checkpoint_dir);
  // Bytes a run of this model and these options allocates: parameters, gradients, AdamW's m and v, the
  // Backprop's buffers and the batch (not the data, which is loaded before); for one of `world` ranks, which
  // holds batch / world rows and 1 / world of the moments.
  static int64_t bytes_needed(const Config& config, const TrainOptions& options, int world = 1);

  // Trains until options.steps, or until *stop becomes true or the step count reaches stop_at (then
  // saves a checkpoint and returns, as after SIGINT).
  TrainResult run(const std::atomic<bool>* stop = nullptr, int64_t stop_at = -1);
  double evaluate();  // mean loss over fixed validation windows (the training data if none)
  void save_checkpoint();

  const Config& config() const { return config_; }
  std::vector<float> params() const;  // brought back from the device
  Backend& backend() const { return backend_; }
  int64_t step() const { return step_; }
  const TrainOptions& options() const { return options_; }
  int64_t activation_bytes() const { return backprop_.activation_bytes(); }

  const std::filesystem::path& out() const { return out_; }
  int rank() const { return comm_ ? comm_->rank() : 0; }
  int world() const { return comm_ ? comm_->size() : 1; }
  // Called with each step's log.jsonl line ({"step", "loss", "lr", "grad_norm", "tokens_per_s",
  // "elapsed_s"}, and "val_loss" with "val_bits_per_byte" or "val_bits_per_token" when it validated,
  // "val_data": "train" when that was on training data; in fp16 "loss_scale", the scale of the step, and
  // "skipped": true without "grad_norm" when its gradients overflowed). It may throw to end the run at
  // once, without a save.
  void set_observer(std::function<void(const nlohmann::json& line)> observer) { observer_ = std::move(observer); }
  // {"lr": [old, new], ...}: the options resume() changed.
  const nlohmann::json& resume_changes() const { return resume_changes_; }
  // Whether validation runs on training windows, for want of validation data (too few documents for
  // the split, or a validation stream shorter than one window). Evaluations are then marked so.
  bool validates_on_training_data() const { return val_on_train_; }
  // Writes the gradients of the next step (the mean over its micro-batches, before clipping) to `path`
  // as safetensors with the parameters' names, for comparisons with other implementations.
  void dump_gradients_to(std::filesystem::path path) { dump_grads_ = std::move(path); }

  // The latest complete checkpoint folder under a run folder, or empty.
  static std::filesystem::path latest_checkpoint(const std::filesystem::path& run);
  // `path` itself when it is a checkpoint folder, else its latest checkpoint; fails when there is none.
  static std::filesystem::path find_checkpoint(const std::filesystem::path& path);

 private:
  void log(const nlohmann::json& line);
  // One optimizer step at learning rate lr: its loss and gradient norm, and whether fp16's loss scaler
  // skipped it (its gradients overflowed; the parameters are left as they were).
  void train_step(double* loss, double* grad_norm, double lr, bool* skipped);
  // The factor of this step's gradients: fp16's loss scale, else 1.
  float loss_scale() const { return options_.dtype == DType::F16 ? static_cast<float>(scaler_.scale) : 1.0f; }
  // This rank's loss over its rows of the global batch in inputs_ / targets_ (the whole of it without a
  // communicator): forward only, or forward and backward adding into grads_.
  void shard_forward_backward(float* grads, float* loss);
  double shard_loss();
  // The divisor of a shard's loss: the global batch's count of targets (0 without a communicator).
  int64_t global_count() const;
  // Where this rank's rows start in inputs_ and targets_.
  int64_t shard_offset() const { return int64_t{rank()} * (options_.batch / world()) * options_.seq_len; }
  // Buckets of gradients handed to the communicator as the backward makes them final.
  void on_grads_ready(int layer);
  void launch_bucket(int64_t lo, int64_t hi);
  // Whether any rank asks to stop (each one's signal handler or observer), so that all stop at one step.
  bool any(bool flag);

  // Checks the config, the options and the data against each other and, when the backend's memory is the
  // host's, the memory the run needs; returns the options with their defaults resolved. Runs before any
  // member is allocated.
  static TrainOptions checked_options(const Config& config, TrainOptions options, const Dataset& data,
                                      bool host_memory, int world);

  Config config_;
  Communicator* comm_;
  TrainOptions options_;  // first: every size below comes from it, checked
  std::vector<ParamSpec> specs_;
  Backend& backend_;
  int64_t size_;         // parameters (floats in each of the buffers below)
  // Data parallel: each rank's slice of the parameters (the last ones may be shorter), and the bucket size.
  int64_t shard_, bucket_floats_;
  std::vector<int64_t> layer_start_;  // (n_layer + 1) offsets: layer l's parameters, then norm_f's
  // This step's gradients from pending_hi_ to the end are handed to the communicator (-1: none yet); the
  // final ones below it wait for a bucket's worth.
  int64_t pending_hi_ = -1;
  bool reduce_in_backward_ = false;  // this micro-batch is the step's last: its backward starts the buckets
  Buffer params_, grads_;  // (world · shard ≥ size) and (size) on the device
  // On the device, what a step brings back in one download: the gradients' global norm (a double), then
  // the loss of each micro-batch (accum floats).
  Buffer stats_;
  const Dataset& data_;
  std::filesystem::path out_;
  Backprop backprop_;
  AdamW adam_;
  LossScaler scaler_;           // fp16 only
  int64_t skipped_steps_ = 0;   // fp16: steps the scaler skipped, over the whole run
  Schedule schedule_;
  BatchSampler sampler_;
  std::vector<int32_t> inputs_, targets_;  // the global batch (batch × seq_len); this rank's rows are a slice
  int64_t step_ = 0;
  double last_val_ = -1;
  std::function<void(const nlohmann::json&)> observer_;
  bool val_on_train_ = false;
  std::filesystem::path dump_grads_;
  nlohmann::json resume_changes_ = nlohmann::json::object();
};

}  // namespace mamba

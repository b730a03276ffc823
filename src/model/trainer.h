// The training loop: batches → forward/backward → clip → AdamW, with validation, a JSON-lines log,
// a progress line, and checkpoints that resume exactly.
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

#include "model/backprop.h"
#include "model/data.h"
#include "model/optimizer.h"

namespace mamba {

struct TrainOptions {
  int batch = 8, seq_len = 256, accum = 1;
  int64_t steps = 1000, warmup = 100;
  double lr = 1e-3, lr_min = -1;  // lr_min < 0: lr / 10
  std::string schedule = "cosine";
  double weight_decay = 0.1, clip = 1.0, beta1 = 0.9, beta2 = 0.95;
  uint64_t seed = 0;
  bool sequential = false;  // read the data in order, no shuffling
  int scan_chunk = 256;
  int64_t eval_every = 100, eval_batches = 8, save_every = 0, keep = 3;
  int ignore_index = -100;
  bool progress = false;  // a live progress line on stderr
  bool byte_level = true; // validation reported in bits per byte

  nlohmann::json to_json() const;
  static TrainOptions from_json(const nlohmann::json& j);
};

struct TrainResult {
  int64_t steps = 0;
  double loss = 0, val_loss = -1, tokens_per_s = 0, seconds = 0;
  bool interrupted = false;
};

class Trainer {
 public:
  // A new run in `out` from the given parameters.
  Trainer(const Config& config, std::vector<float> params, const Dataset& data, TrainOptions options,
          std::filesystem::path out);
  // Continues the run whose checkpoint is `checkpoint` (a step folder, or a run folder: its latest).
  static Trainer resume(const std::filesystem::path& checkpoint, const Dataset& data, int64_t steps_override,
                        std::filesystem::path out);

  // Trains until options.steps, or until *stop becomes true or the step count reaches stop_at (then
  // saves a checkpoint and returns, as after SIGINT).
  TrainResult run(const std::atomic<bool>* stop = nullptr, int64_t stop_at = -1);
  double evaluate();  // mean loss over fixed validation windows (the training data if none)
  void save_checkpoint();

  const Config& config() const { return config_; }
  const std::vector<float>& params() const { return params_; }
  int64_t step() const { return step_; }
  const TrainOptions& options() const { return options_; }
  int64_t activation_bytes() const { return backprop_.activation_bytes(); }

  const std::filesystem::path& out() const { return out_; }
  void set_progress(bool on) { options_.progress = on; }
  // Called with each step's log.jsonl line ({"step", "loss", "lr", "grad_norm", "tokens_per_s",
  // "elapsed_s"}, and "val_loss" with "val_bits_per_byte" or "val_bits_per_token" when it validated);
  // while one is set the trainer prints nothing. It may throw to end the run at once, without a save.
  void set_observer(std::function<void(const nlohmann::json& line)> observer) { observer_ = std::move(observer); }

  // The latest complete checkpoint folder under a run folder, or empty.
  static std::filesystem::path latest_checkpoint(const std::filesystem::path& run);
  // `path` itself when it is a checkpoint folder, else its latest checkpoint; fails when there is none.
  static std::filesystem::path find_checkpoint(const std::filesystem::path& path);

 private:
  void log(const nlohmann::json& line);
  void train_step(double* loss, double* grad_norm, double lr);

  Config config_;
  std::vector<ParamSpec> specs_;
  std::vector<float> params_, grads_;
  const Dataset& data_;
  TrainOptions options_;
  std::filesystem::path out_;
  Backprop backprop_;
  AdamW adam_;
  Schedule schedule_;
  BatchSampler sampler_;
  std::vector<int32_t> inputs_, targets_;
  int64_t step_ = 0;
  double last_val_ = -1;
  std::function<void(const nlohmann::json&)> observer_;
};

}  // namespace mamba

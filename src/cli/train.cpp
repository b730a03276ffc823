#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "core/error.h"

namespace mamba::cli {

namespace {

std::string format_duration(double seconds) {
  char text[32];
  const long sec = static_cast<long>(seconds + 0.5);
  if (sec >= 3600) {
    std::snprintf(text, sizeof(text), "%ldh%02ldm", sec / 3600, (sec / 60) % 60);
  } else {
    std::snprintf(text, sizeof(text), "%ldm%02lds", sec / 60, sec % 60);
  }
  return text;
}

}  // namespace

void add_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a model on text, token files or a checkpoint's data (CPU, fp32)");
  struct Options {
    ShapeFlags shape;
    std::string init_from, out, resume, schedule = "cosine", progress = "auto";
    std::vector<std::string> data, tokens;
    int val_every = 20;
    api::TrainOptions train;
  };
  static Options o;
  o.train.steps = 1000;
  add_shape_flags(cmd, o.shape);
  cmd->add_option("--init-from", o.init_from, "Fine-tune this model folder instead of a new model");
  cmd->add_option("--data", o.data, "Text files or folders (byte-level tokens: 256 bytes + end of document)");
  cmd->add_option("--tokens", o.tokens, "Pre-tokenized binary token files (MAMBATOK header, uint16/uint32)");
  cmd->add_option("--val-every", o.val_every, "Every K-th document goes to validation (0: none)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--out", o.out, "Run folder: latest model, log.jsonl, checkpoints/");
  cmd->add_option("--resume", o.resume, "Continue exactly from a run folder or checkpoint (its options are kept)");
  api::TrainOptions& t = o.train;
  cmd->add_option("--seq-len", t.seq_len, "Tokens per sequence")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--batch", t.batch, "Sequences per micro-batch")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--accum", t.accum, "Micro-batches per optimizer step")->capture_default_str()->check(CLI::PositiveNumber);
  static CLI::Option* steps_flag = nullptr;
  steps_flag = cmd->add_option("--steps", t.steps, "Optimizer steps (on --resume: a new total)")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--lr", t.lr, "Peak learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--lr-min", t.lr_min, "Floor of the cosine decay (default lr/10)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--warmup", t.warmup, "Linear warmup steps")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--schedule", t.schedule, "Learning-rate schedule")->capture_default_str()
      ->check(CLI::IsMember({"cosine", "constant"}));
  cmd->add_option("--weight-decay", t.weight_decay, "AdamW weight decay (not on biases, norms, A_log, D)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--beta1", t.beta1, "AdamW β1")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--beta2", t.beta2, "AdamW β2")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--clip", t.clip, "Global gradient-norm clip (0 = off)")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", t.seed, "Seed of the initialisation and of the batches")->capture_default_str();
  cmd->add_flag("--sequential", t.sequential, "Read the data in order, without shuffling");
  cmd->add_option("--scan-chunk", t.scan_chunk, "Scan steps between saved states (memory vs recomputation)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--eval-every", t.eval_every, "Validate every N steps (0: only at the end)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--eval-batches", t.eval_batches, "Batches per validation")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--save-every", t.save_every, "Checkpoint every N steps (0: only at the end)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--keep", t.keep, "Checkpoints to keep")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--progress", o.progress, "Live progress line: auto (on a terminal), on, off")
      ->capture_default_str()->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->callback([] {
    // The flags checked with their names; the library checks the rest.
    if (o.data.empty() == o.tokens.empty()) fail("train: give --data (text) or --tokens (token files)");
    api::TrainOptions run = o.train;
    run.data.assign(o.data.begin(), o.data.end());
    run.tokens.assign(o.tokens.begin(), o.tokens.end());
    run.val_every = o.val_every;
    run.out = o.out;
    run.resume = o.resume;
    run.init_from = o.init_from;
    if (o.resume.empty()) {
      if (o.out.empty()) fail("train: give --out DIR (or --resume DIR)");
      if (o.init_from.empty()) {
        if (!o.shape.given()) fail("train: give --preset, or --d-model and --n-layer, or --init-from DIR");
        shape_config(o.shape, "train");
        run.preset = o.shape.preset;
        run.d_model = o.shape.d_model;
        run.n_layer = o.shape.n_layer;
        run.d_state = o.shape.d_state;
        run.d_conv = o.shape.d_conv;
        run.expand = o.shape.expand;
        run.dt_rank = o.shape.dt_rank;
      }
    } else if (steps_flag->count() == 0) {
      run.steps = 0;  // the run's own total
    }
    const bool progress = o.progress == "on" || (o.progress == "auto" && ::isatty(STDERR_FILENO));

    const std::atomic<bool>& stop = stop_on_signals();
    api::Training training(run);
    if (training.resumed()) {
      std::fprintf(stderr, "resuming at step %lld of %lld\n", static_cast<long long>(training.step()),
                   static_cast<long long>(training.steps()));
    } else {
      const api::ModelConfig& c = training.config();
      std::fprintf(stderr,
                   "model: %lld parameters (d_model %d, %d layers); data: %lld training tokens in %lld documents, "
                   "%lld validation tokens; activations %.1f MiB\n",
                   static_cast<long long>(c.parameters), c.d_model, c.n_layer,
                   static_cast<long long>(training.train_tokens()), static_cast<long long>(training.train_documents()),
                   static_cast<long long>(training.val_tokens()), training.activation_bytes() / 1048576.0);
    }
    const int64_t first = training.step();
    double smoothed = -1;
    const api::TrainSummary r = training.run(
        [&](const api::TrainStep& s) {
          smoothed = smoothed < 0 ? s.loss : 0.9 * smoothed + 0.1 * s.loss;
          if (progress) {
            const double eta = static_cast<double>(s.steps - s.step) * s.elapsed_s / static_cast<double>(s.step - first);
            const int width = 24, filled = static_cast<int>(width * s.step / s.steps);
            std::fprintf(stderr, "\r\033[K%6lld/%lld [%s%s] loss %.4f lr %.2e %.0f tok/s ETA %s",
                         static_cast<long long>(s.step), static_cast<long long>(s.steps),
                         std::string(static_cast<size_t>(filled), '=').c_str(),
                         std::string(static_cast<size_t>(width - filled), ' ').c_str(), smoothed, s.lr, s.tokens_per_s,
                         format_duration(eta).c_str());
            if (s.evaluated) std::fprintf(stderr, "  val %.4f\n", s.val_loss);
            std::fflush(stderr);
          } else if (s.evaluated) {
            std::fprintf(stderr, "step %lld/%lld  loss %.4f  val %.4f (%.3f bits)  lr %.2e  %.0f tok/s\n",
                         static_cast<long long>(s.step), static_cast<long long>(s.steps), s.loss, s.val_loss, s.val_bits,
                         s.lr, s.tokens_per_s);
          }
          return true;
        },
        &stop);
    if (progress) std::fprintf(stderr, "\n");
    if (r.interrupted) {
      std::fprintf(stderr, "interrupted at step %lld: checkpoint saved in %s; continue with --resume\n",
                   static_cast<long long>(r.steps), r.checkpoint.c_str());
      return;
    }
    std::fprintf(stderr, "done: %lld steps in %.1f s, %.0f tokens/s; loss %.4f, validation %.4f (%.4f bits per %s)\n",
                 static_cast<long long>(r.steps), r.seconds, r.tokens_per_s, r.loss, r.val_loss,
                 r.val_loss / std::log(2.0), r.byte_level ? "byte" : "token");
    std::fprintf(stderr, "saved: %s\n", r.checkpoint.c_str());
  });
}

}  // namespace mamba::cli

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <optional>
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "model/model.h"
#include "model/trainer.h"

namespace mamba::cli {

void add_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a model on text, token files or a checkpoint's data (CPU, fp32)");
  struct Options {
    ShapeFlags shape;
    std::string init_from, out, resume, schedule = "cosine", progress = "auto";
    std::vector<std::string> data, tokens;
    int val_every = 20;
    TrainOptions train;
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
  TrainOptions& t = o.train;
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
    if (o.data.empty() == o.tokens.empty()) fail("train: give --data (text) or --tokens (token files)");
    const bool byte_level = !o.data.empty();
    std::vector<std::filesystem::path> paths(o.data.begin(), o.data.end());
    if (!byte_level) paths.assign(o.tokens.begin(), o.tokens.end());
    const bool progress = o.progress == "on" || (o.progress == "auto" && ::isatty(STDERR_FILENO));

    const std::atomic<bool>& stop = stop_on_signals();
    std::optional<Dataset> data;
    std::optional<Trainer> trainer;
    if (!o.resume.empty()) {
      // The checkpoint's own config says how its data is tokenized.
      Config saved = load_config(Trainer::find_checkpoint(o.resume));
      data = byte_level ? load_text_dataset(paths, o.val_every) : load_token_dataset(paths, saved.eos_token_id, o.val_every);
      trainer.emplace(Trainer::resume(o.resume, *data, steps_flag->count() ? o.train.steps : 0, o.out));
      std::fprintf(stderr, "resuming at step %lld of %lld\n", static_cast<long long>(trainer->step()),
                   static_cast<long long>(trainer->options().steps));
    } else {
      if (o.out.empty()) fail("train: give --out DIR (or --resume DIR)");
      Config c;
      std::vector<float> params;
      if (!o.init_from.empty()) {
        Model base = Model::load(o.init_from);
        c = base.config();
        params = base.params_f32();
      } else {
        if (!o.shape.given()) fail("train: give --preset, or --d-model and --n-layer, or --init-from DIR");
        c = shape_config(o.shape, "train");
        if (byte_level) {
          c.vocab_size = kByteVocab;
          c.byte_level = true;
          c.eos_token_id = kByteEndOfDoc;
        }
        c.validate("train");
        auto specs = param_specs(c);
        params.assign(static_cast<size_t>(param_layout_size(specs)), 0.0f);
        init_params(params.data(), c, specs, o.train.seed);
      }
      data = byte_level ? load_text_dataset(paths, o.val_every) : load_token_dataset(paths, c.eos_token_id, o.val_every);
      o.train.byte_level = byte_level;
      trainer.emplace(c, std::move(params), *data, o.train, o.out);
      std::fprintf(stderr,
                   "model: %lld parameters (d_model %d, %d layers); data: %zu training tokens in %lld documents, "
                   "%zu validation tokens; activations %.1f MiB\n",
                   static_cast<long long>(c.parameter_count()), c.d_model, c.n_layer, data->train.tokens.size(),
                   static_cast<long long>(data->train.documents), data->val.tokens.size(),
                   trainer->activation_bytes() / 1048576.0);
    }
    trainer->set_progress(progress);
    TrainResult r = trainer->run(&stop);
    const auto where = Trainer::latest_checkpoint(trainer->out());
    if (r.interrupted) {
      std::fprintf(stderr, "interrupted at step %lld: checkpoint saved in %s; continue with --resume\n",
                   static_cast<long long>(r.steps), where.c_str());
      return;
    }
    std::fprintf(stderr, "done: %lld steps in %.1f s, %.0f tokens/s; loss %.4f, validation %.4f (%.4f bits per %s)\n",
                 static_cast<long long>(r.steps), r.seconds, r.tokens_per_s, r.loss, r.val_loss,
                 r.val_loss / std::log(2.0), trainer->options().byte_level ? "byte" : "token");
    std::fprintf(stderr, "saved: %s\n", where.c_str());
  });
}

}  // namespace mamba::cli

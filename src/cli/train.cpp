#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

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

// "lr_min" → "--lr-min": an option's field name as its flag.
std::string flag_of(const std::string& field) {
  std::string flag = "--" + field;
  for (char& c : flag) c = c == '_' ? '-' : c;
  return flag;
}

}  // namespace

void add_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train",
                                 "Train a model on text, token files or a checkpoint's data (fp32 or mixed precision, "
                                 "on the CPU or a GPU)");
  struct Options {
    ShapeFlags shape;
    std::string init_from, out, resume, fixed_batch, dump_grads, progress = "auto", device = "cpu", distributed = "auto",
        rendezvous;
    std::vector<std::string> data, tokens;
    int val_every = 20;
    api::TrainOptions train;
  };
  static Options o;
  // The flags that set an option, by its field name: the library is told which were given (on --resume,
  // those the run may change are applied, the others must equal the checkpoint's).
  static std::vector<std::pair<CLI::Option*, std::string>> option_flags;
  o.train.steps = 1000;
  add_shape_flags(cmd, o.shape);
  auto* init_from = cmd->add_option("--init-from", o.init_from, "Fine-tune this model folder instead of a new model");
  cmd->add_option("--data", o.data, "Text files or folders (byte-level tokens: 256 bytes + end of document)");
  cmd->add_option("--tokens", o.tokens, "Pre-tokenized binary token files (MAMBATOK header, uint16/uint32)");
  cmd->add_option("--fixed-batch", o.fixed_batch,
                  "Train on one fixed batch: an integer .npy (B, L + 1) of independent rows, inputs row[:L], "
                  "targets row[1:], at every step (sets --batch and --seq-len)");
  option_flags.emplace_back(
      cmd->add_option("--val-every", o.val_every, "Every K-th document goes to validation (0: none)")
          ->capture_default_str()->check(CLI::NonNegativeNumber),
      "val_every");
  cmd->add_option("--out", o.out, "Run folder: latest model, log.jsonl, checkpoints/");
  cmd->add_option("--resume", o.resume,
                  "Continue exactly from a run folder or checkpoint; of the options given with it, the schedule, "
                  "optimizer, evaluation and checkpoint ones are applied, the others must equal the run's")
      ->excludes(init_from);
  cmd->add_option("--device", o.device,
                  "Where to train: cpu, cuda or cuda:N (checkpoints are the same files, so a run may resume on "
                  "another device)")
      ->capture_default_str();
  cmd->add_option("--dump-grads", o.dump_grads,
                  "Write the first step's gradients (mean over micro-batches, before clipping) to this .safetensors");
  cmd->add_option("--distributed", o.distributed,
                  "auto: join the data-parallel job this process was started in (mpirun -np N, or RANK / WORLD_SIZE / "
                  "LOCAL_RANK set; --batch is then the global batch); off: train alone")
      ->capture_default_str()->check(CLI::IsMember({"auto", "off"}));
  cmd->add_option("--dist-timeout", o.train.dist_timeout_s,
                  "Seconds after which a step or collective that has not finished stops the job (a rank died or hangs)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--rendezvous", o.rendezvous,
                  "GPU ranks started without MPI meet through this file (new for each job, on a filesystem all reach)");
  cmd->add_option("--bucket-mb", o.train.bucket_mb, "Data parallel: MiB of gradients per all-reduce bucket")
      ->capture_default_str()->check(CLI::PositiveNumber);
  api::TrainOptions& t = o.train;
  auto flag = [&](CLI::Option* option, const char* field) {
    option_flags.emplace_back(option, field);
    return option;
  };
  flag(cmd->add_option("--dtype", t.dtype,
                       "Precision: fp32 (exact), bf16 or fp16 (mixed precision: fp32 master weights and optimizer "
                       "state, bf16/fp16 matrices and activations; fp16 with dynamic loss scaling). Default: bf16 "
                       "on a GPU, fp32 on the CPU (where bf16 and fp16 run through the fp32 kernels: a reference, "
                       "slower than fp32). On --resume: the run's own unless given"),
       "dtype")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  flag(cmd->add_option("--seq-len", t.seq_len, "Tokens per sequence"), "seq_len")->capture_default_str()->check(CLI::PositiveNumber);
  flag(cmd->add_option("--batch", t.batch, "Sequences per micro-batch"), "batch")->capture_default_str()->check(CLI::PositiveNumber);
  flag(cmd->add_option("--accum", t.accum, "Micro-batches per optimizer step"), "accum")->capture_default_str()->check(CLI::PositiveNumber);
  flag(cmd->add_option("--steps", t.steps, "Optimizer steps (on --resume: a new total)"), "steps")->capture_default_str()->check(CLI::PositiveNumber);
  flag(cmd->add_option("--lr", t.lr, "Peak learning rate"), "lr")->capture_default_str()->check(CLI::PositiveNumber);
  flag(cmd->add_option("--lr-min", t.lr_min, "Floor of the cosine decay (default lr/10)"), "lr_min")->check(CLI::NonNegativeNumber);
  flag(cmd->add_option("--warmup", t.warmup, "Linear warmup steps"), "warmup")->capture_default_str()->check(CLI::NonNegativeNumber);
  flag(cmd->add_option("--schedule", t.schedule, "Learning-rate schedule"), "schedule")->capture_default_str()
      ->check(CLI::IsMember({"cosine", "constant"}));
  flag(cmd->add_option("--weight-decay", t.weight_decay, "AdamW weight decay (not on biases, norms, A_log, D)"), "weight_decay")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  flag(cmd->add_option("--beta1", t.beta1, "AdamW β1"), "beta1")->capture_default_str()->check(CLI::Range(0.0, 0.999999));
  flag(cmd->add_option("--beta2", t.beta2, "AdamW β2"), "beta2")->capture_default_str()->check(CLI::Range(0.0, 0.999999));
  flag(cmd->add_option("--adam-eps", t.adam_eps, "AdamW's epsilon"), "adam_eps")->capture_default_str()->check(CLI::PositiveNumber);
  flag(cmd->add_option("--clip", t.clip, "Global gradient-norm clip (0 = off)"), "clip")->capture_default_str()->check(CLI::NonNegativeNumber);
  flag(cmd->add_option("--seed", t.seed, "Seed of the initialisation and of the batches"), "seed")->capture_default_str();
  flag(cmd->add_flag("--sequential", t.sequential, "Read the data in order, without shuffling"), "sequential");
  flag(cmd->add_option("--scan-chunk", t.scan_chunk, "Scan steps between saved states (memory vs recomputation)"), "scan_chunk")
      ->capture_default_str()->check(CLI::PositiveNumber);
  flag(cmd->add_option("--recompute", t.recompute,
                       "What the backward recomputes instead of keeping per layer: 0 nothing, 1 the conv and Δ, "
                       "2 also the scan, 3 also the norm, 4 also in_proj (least memory)"),
       "recompute")
      ->capture_default_str()->check(CLI::Range(0, 4));
  flag(cmd->add_option("--eval-every", t.eval_every, "Validate every N steps (0: only at the end)"), "eval_every")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  flag(cmd->add_option("--eval-batches", t.eval_batches, "Batches per validation"), "eval_batches")->capture_default_str()->check(CLI::PositiveNumber);
  flag(cmd->add_option("--save-every", t.save_every, "Checkpoint every N steps (0: only at the end)"), "save_every")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  flag(cmd->add_option("--keep", t.keep, "Checkpoints to keep"), "keep")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--progress", o.progress, "Live progress line: auto (on a terminal), on, off")
      ->capture_default_str()->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->callback([] {
    // The flags checked with their names; the library checks the rest, naming the flags too.
    api::TrainOptions run = o.train;
    run.data.assign(o.data.begin(), o.data.end());
    run.tokens.assign(o.tokens.begin(), o.tokens.end());
    run.fixed_batch = o.fixed_batch;
    run.val_every = o.val_every;
    run.out = o.out;
    run.resume = o.resume;
    run.init_from = o.init_from;
    run.dump_grads = o.dump_grads;
    run.device = o.device;
    run.distributed = o.distributed == "auto";
    run.rendezvous = o.rendezvous;
    run.option_name = flag_of;
    for (const auto& [option, field] : option_flags) {
      if (option->count() > 0) run.given.push_back(field);
    }
    if (o.shape.given()) {
      shape_config(o.shape, "train");
      o.shape.copy_to(run);
    }
    if (o.resume.empty()) {
      if (o.out.empty()) fail("train: give --out DIR (or --resume DIR)");
      if (o.init_from.empty() && !o.shape.given()) {
        fail("train: give --preset, or --d-model and --n-layer, or --init-from DIR");
      }
    }
    const std::atomic<bool>& stop = stop_on_signals();
    api::Training training(run);
    // In a data-parallel job rank 0 alone reports (and writes the log and the checkpoints).
    const bool quiet = training.rank() != 0;
    const bool progress = !quiet && (o.progress == "on" || (o.progress == "auto" && ::isatty(STDERR_FILENO)));
    auto say = [quiet](const char* format, auto... args) {
      if (!quiet) std::fprintf(stderr, format, args...);
    };
    if (training.resumed()) {
      say("resuming at step %lld of %lld (%s)\n", static_cast<long long>(training.step()),
          static_cast<long long>(training.steps()), training.dtype().c_str());
      for (const api::OptionChange& change : training.changes()) {
        say("resume: applied %s %s (was %s)\n", flag_of(change.option).c_str(), change.now.c_str(),
            change.was.c_str());
      }
    } else {
      const api::ModelConfig& c = training.config();
      say("model: %lld parameters (d_model %d, %d layers); data: %lld training tokens in %lld documents, "
          "%lld validation tokens; activations %.1f MiB; %s on %s\n",
          static_cast<long long>(c.parameters), c.d_model, c.n_layer, static_cast<long long>(training.train_tokens()),
          static_cast<long long>(training.train_documents()), static_cast<long long>(training.val_tokens()),
          training.activation_bytes() / 1048576.0, training.dtype().c_str(), training.describe().c_str());
    }
    const bool on_train = training.validates_on_training_data();
    if (training.fixed_batch()) {
      say("note: one fixed batch of %d rows; the validation loss is that batch's loss\n", training.batch());
    } else if (on_train) {
      say("note: no validation data (%lld documents set aside, %lld tokens, fewer than --seq-len + 1 = %d): "
          "validation losses are computed on training windows, marked \"val_data\": \"train\" in log.jsonl\n",
          static_cast<long long>(training.val_documents()), static_cast<long long>(training.val_tokens()),
          training.seq_len() + 1);
    }
    const int64_t first = training.step();
    double smoothed = -1;
    const api::TrainSummary r = training.run(
        [&](const api::TrainStep& s) {
          if (s.skipped) {
            say("%sstep %lld: the fp16 gradients overflowed at loss scale %g: step skipped, the scale halved\n",
                progress ? "\r\033[K" : "", static_cast<long long>(s.step), s.loss_scale);
          }
          smoothed = smoothed < 0 ? s.loss : 0.9 * smoothed + 0.1 * s.loss;
          if (progress) {
            const double eta = static_cast<double>(s.steps - s.step) * s.elapsed_s / static_cast<double>(s.step - first);
            const int width = 24, filled = static_cast<int>(width * s.step / s.steps);
            say("\r\033[K%6lld/%lld [%s%s] loss %.4f lr %.2e %.0f tok/s ETA %s",
                static_cast<long long>(s.step), static_cast<long long>(s.steps),
                std::string(static_cast<size_t>(filled), '=').c_str(),
                std::string(static_cast<size_t>(width - filled), ' ').c_str(), smoothed, s.lr, s.tokens_per_s,
                format_duration(eta).c_str());
            if (s.evaluated) say("  val %.4f%s\n", s.val_loss, on_train ? " (on training data)" : "");
            std::fflush(stderr);
          } else if (s.evaluated) {
            say("step %lld/%lld  loss %.4f  val %.4f (%.3f bits%s)  lr %.2e  %.0f tok/s\n",
                static_cast<long long>(s.step), static_cast<long long>(s.steps), s.loss, s.val_loss, s.val_bits,
                on_train ? ", on training data" : "", s.lr, s.tokens_per_s);
          }
          return true;
        },
        &stop);
    if (progress) say("%s", "\n");
    if (!o.dump_grads.empty()) say("wrote the gradients of the first step to %s\n", o.dump_grads.c_str());
    if (r.interrupted) {
      say("interrupted at step %lld: checkpoint saved in %s; continue with --resume\n",
          static_cast<long long>(r.steps), r.checkpoint.c_str());
      return;
    }
    say("done: %lld steps in %.1f s, %.0f tokens/s; loss %.4f, validation %.4f (%.4f bits per %s)\n",
        static_cast<long long>(r.steps), r.seconds, r.tokens_per_s, r.loss, r.val_loss,
        r.val_loss / std::log(2.0), r.byte_level ? "byte" : "token");
    if (r.skipped_steps > 0) {
      say("fp16: %lld steps skipped for gradients that overflowed (log.jsonl marks them \"skipped\")\n",
          static_cast<long long>(r.skipped_steps));
    }
    say("saved: %s\n", r.checkpoint.c_str());
  });
}

}  // namespace mamba::cli

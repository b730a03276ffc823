#include <unistd.h>

#include <atomic>
#include <cmath>
#include <optional>
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "core/json.h"
#include "core/limits.h"
#include "model/model.h"
#include "model/trainer.h"
#include "model/validate.h"

namespace mamba::cli {

namespace {

// "lr_min" → "--lr-min": a TrainOptions key as its flag.
std::string flag_of(const std::string& key) {
  std::string flag = "--" + key;
  for (char& c : flag) c = c == '_' ? '-' : c;
  return flag;
}

}  // namespace

void add_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a model on text, token files or a checkpoint's data (fp32, on the CPU or a GPU)");
  struct Options {
    ShapeFlags shape;
    std::string init_from, out, resume, fixed_batch, dump_grads, progress = "auto", device = "cpu";
    std::vector<std::string> data, tokens;
    int val_every = 20;
    TrainOptions train;
  };
  static Options o;
  // The flags that set a TrainOptions field, by its key: on --resume, those the run may change are
  // applied, the others must equal the checkpoint's.
  static std::vector<std::pair<CLI::Option*, std::string>> option_flags;
  o.train.steps = 1000;
  add_shape_flags(cmd, o.shape);
  auto* init_from = cmd->add_option("--init-from", o.init_from, "Fine-tune this model folder instead of a new model");
  cmd->add_option("--data", o.data, "Text files or folders (byte-level tokens: 256 bytes + end of document)");
  cmd->add_option("--tokens", o.tokens, "Pre-tokenized binary token files (MAMBATOK header, uint16/uint32)");
  cmd->add_option("--fixed-batch", o.fixed_batch,
                  "Train on one fixed batch: an integer .npy (B, L + 1) of independent rows, inputs row[:L], "
                  "targets row[1:], at every step (sets --batch and --seq-len)");
  auto* val_every = cmd->add_option("--val-every", o.val_every, "Every K-th document goes to validation (0: none)")
                        ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--out", o.out, "Run folder: latest model, log.jsonl, checkpoints/");
  cmd->add_option("--resume", o.resume,
                  "Continue exactly from a run folder or checkpoint; of the options given with it, the schedule, "
                  "optimizer, evaluation and checkpoint ones are applied, the others must equal the run's")
      ->excludes(init_from);
  cmd->add_option("--device", o.device,
                  "Where to train: cpu, cuda or cuda:N (fp32 on either; checkpoints are the same files, so a run "
                  "may resume on another device)")
      ->capture_default_str();
  cmd->add_option("--dump-grads", o.dump_grads,
                  "Write the first step's gradients (mean over micro-batches, before clipping) to this .safetensors");
  TrainOptions& t = o.train;
  auto flag = [&](CLI::Option* option, const char* key) {
    option_flags.emplace_back(option, key);
    return option;
  };
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
  flag(cmd->add_option("--eval-every", t.eval_every, "Validate every N steps (0: only at the end)"), "eval_every")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  flag(cmd->add_option("--eval-batches", t.eval_batches, "Batches per validation"), "eval_batches")->capture_default_str()->check(CLI::PositiveNumber);
  flag(cmd->add_option("--save-every", t.save_every, "Checkpoint every N steps (0: only at the end)"), "save_every")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  flag(cmd->add_option("--keep", t.keep, "Checkpoints to keep"), "keep")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--progress", o.progress, "Live progress line: auto (on a terminal), on, off")
      ->capture_default_str()->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->callback([val_every] {
    const int sources = !o.data.empty() + !o.tokens.empty() + !o.fixed_batch.empty();
    if (sources != 1) fail("train: give one of --data (text), --tokens (token files) or --fixed-batch (a .npy batch)");
    const bool byte_level = !o.data.empty(), fixed = !o.fixed_batch.empty();
    std::vector<std::filesystem::path> paths(o.data.begin(), o.data.end());
    if (!o.tokens.empty()) paths.assign(o.tokens.begin(), o.tokens.end());
    const bool progress = o.progress == "on" || (o.progress == "auto" && ::isatty(STDERR_FILENO));
    auto load_data = [&](int32_t eos, int split) {
      if (fixed) return load_fixed_batch(o.fixed_batch);
      return byte_level ? load_text_dataset(paths, split) : load_token_dataset(paths, eos, split);
    };

    Backend& backend = Backend::get(Device::parse(o.device));
    const std::atomic<bool>& stop = stop_on_signals();
    std::optional<Dataset> data;
    std::optional<Trainer> trainer;
    if (!o.resume.empty()) {
      const std::filesystem::path dir = Trainer::find_checkpoint(o.resume);
      const Config saved_config = load_config(dir);  // says how its data is tokenized
      const TrainOptions saved = Trainer::read_progress(dir).options;
      if (o.shape.given()) {
        const Config want = shape_config(o.shape, "train");
        if (want.d_model != saved_config.d_model || want.n_layer != saved_config.n_layer ||
            want.d_state != saved_config.d_state || want.d_conv != saved_config.d_conv ||
            want.expand != saved_config.expand || want.dt_rank != saved_config.dt_rank) {
          fail("train --resume: the model comes from the checkpoint (d_model ", saved_config.d_model, ", ",
               saved_config.n_layer, " layers); its shape cannot change");
        }
      }
      if (saved.fixed_batch != fixed || (!fixed && saved.byte_level != byte_level)) {
        fail("train --resume: ", dir.string(), " was trained on ",
             saved.fixed_batch ? "a fixed batch (--fixed-batch)" : saved.byte_level ? "text (--data)" : "token files (--tokens)",
             "; give its data the same way");
      }
      // The validation split decides which documents are trained on: it must be the run's.
      int split = o.val_every;
      if (saved.val_every >= 0) {
        if (val_every->count() > 0 && o.val_every != saved.val_every) {
          fail("train --resume: --val-every ", o.val_every, " cannot change in a resumed run (its split is every ",
               saved.val_every, "-th document)");
        }
        split = saved.val_every;
      }
      const nlohmann::json given = o.train.to_json(), run = saved.to_json();
      nlohmann::json changes = nlohmann::json::object();
      for (const auto& [option, key] : option_flags) {
        if (option->count() == 0 || given[key] == run[key]) continue;
        if (!TrainOptions::resumable(key)) {
          fail("train --resume: ", flag_of(key), " ", json_brief(given[key]), " cannot change in a resumed run (it is ",
               json_brief(run[key]), " there): the batches continue from where the run stopped");
        }
        changes[key] = given[key];
      }
      data = load_data(saved_config.eos_token_id, split);
      trainer.emplace(Trainer::resume(o.resume, *data, changes, o.out, backend));
      std::fprintf(stderr, "resuming at step %lld of %lld\n", static_cast<long long>(trainer->step()),
                   static_cast<long long>(trainer->options().steps));
      for (const auto& [key, change] : trainer->resume_changes().items()) {
        std::fprintf(stderr, "resume: applied %s %s (was %s)\n", flag_of(key).c_str(), json_brief(change[1]).c_str(),
                     json_brief(change[0]).c_str());
      }
    } else {
      if (o.out.empty()) fail("train: give --out DIR (or --resume DIR)");
      Config c;
      std::optional<Model> base;
      if (!o.init_from.empty()) {
        base.emplace(Model::load(o.init_from));
        c = base->config();
      } else {
        if (!o.shape.given()) fail("train: give --preset, or --d-model and --n-layer, or --init-from DIR");
        c = shape_config(o.shape, "train");
        if (byte_level) {
          c.vocab_size = kByteVocab;
          c.byte_level = true;
          c.eos_token_id = kByteEndOfDoc;
        }
      }
      data = load_data(c.eos_token_id, o.val_every);
      if (c.vocab_size == 0) c.vocab_size = data->max_token + 1;  // a new model on token ids: the ids it is given
      c.validate("train");
      if (fixed) {
        const int rows = static_cast<int>(data->train.rows);
        const int L = static_cast<int>(data->train.tokens.size() / data->train.rows) - 1;
        for (const auto& [option, key] : option_flags) {
          const int given = key == "batch" ? o.train.batch : o.train.seq_len, want = key == "batch" ? rows : L;
          if ((key == "batch" || key == "seq_len") && option->count() > 0 && given != want) {
            fail("train --fixed-batch: ", o.fixed_batch, " holds ", rows, " rows of ", L, " + 1 tokens; ",
                 flag_of(key), " ", given, " contradicts it");
          }
        }
        o.train.batch = rows;
        o.train.seq_len = L;
      }
      o.train.byte_level = byte_level;
      o.train.fixed_batch = fixed;
      o.train.val_every = fixed ? -1 : o.val_every;
      if (backend.host_memory()) {  // a GPU's allocations say themselves what they lack
        check_memory(Trainer::bytes_needed(c, o.train),
                     "train: " + std::to_string(c.parameter_count()) + " parameters on batches of " +
                         std::to_string(o.train.batch) + " × " + std::to_string(o.train.seq_len) + " tokens");
      }
      std::vector<float> params;
      if (base) {
        params = base->params_f32();
        base.reset();
      } else {
        params.assign(static_cast<size_t>(param_layout_size(param_specs(c))), 0.0f);
        init_params(params.data(), c, param_specs(c), o.train.seed);
      }
      trainer.emplace(c, std::move(params), *data, o.train, o.out, backend);
      std::fprintf(stderr,
                   "model: %lld parameters (d_model %d, %d layers); data: %zu training tokens in %lld documents, "
                   "%zu validation tokens; activations %.1f MiB; on %s\n",
                   static_cast<long long>(c.parameter_count()), c.d_model, c.n_layer, data->train.tokens.size(),
                   static_cast<long long>(data->train.documents), data->val.tokens.size(),
                   trainer->activation_bytes() / 1048576.0, backend.describe().c_str());
    }
    if (fixed) {
      std::fprintf(stderr, "note: one fixed batch of %lld rows; the validation loss is that batch's loss\n",
                   static_cast<long long>(data->train.rows));
    } else if (trainer->validates_on_training_data()) {
      std::fprintf(stderr,
                   "note: no validation data (%lld documents set aside, %zu tokens, fewer than --seq-len + 1 = %d): "
                   "validation losses are computed on training windows, marked \"val_data\": \"train\" in log.jsonl\n",
                   static_cast<long long>(data->val.documents), data->val.tokens.size(), trainer->options().seq_len + 1);
    }
    if (!o.dump_grads.empty()) trainer->dump_gradients_to(o.dump_grads);
    trainer->set_progress(progress);
    TrainResult r = trainer->run(&stop);
    const auto where = Trainer::latest_checkpoint(trainer->out());
    if (!o.dump_grads.empty()) std::fprintf(stderr, "wrote the gradients of the first step to %s\n", o.dump_grads.c_str());
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

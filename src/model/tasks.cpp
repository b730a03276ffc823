#include "model/tasks.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/limits.h"
#include "model/backprop.h"
#include "model/engine.h"
#include "model/optimizer.h"
#include "model/state.h"
#include "model/validate.h"

namespace mamba {

namespace {

// SplitMix64's finalizer: a counter-based draw, so filler token t needs no state but (seed, t).
uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int32_t induction_trigger(const TaskSpec& spec) { return spec.vocab - 1; }

int32_t filler_token(const TaskSpec& spec, uint64_t seed, int64_t t) {
  return static_cast<int32_t>(mix(seed + 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(t + 1)) %
                              static_cast<uint64_t>(spec.vocab - 1));
}

}  // namespace

const char* task_name(TaskKind kind) {
  switch (kind) {
    case TaskKind::SelectiveCopying: return "selective-copying";
    case TaskKind::InductionHeads: return "induction-heads";
    case TaskKind::Copying: return "copying";
  }
  return "?";
}

const char* task_names() { return "selective-copying, induction-heads, copying"; }

TaskKind parse_task(const std::string& name) {
  for (TaskKind k : {TaskKind::SelectiveCopying, TaskKind::InductionHeads, TaskKind::Copying}) {
    if (name == task_name(k)) return k;
  }
  fail("unknown task \"", name, "\" (known: ", task_names(), ")");
}

void TaskSpec::validate() const {
  if (vocab < 4) fail("task: a vocabulary of ", vocab, " is too small (at least 4)");
  if (kind == TaskKind::InductionHeads) {
    if (length < 4) fail("task ", task_name(kind), ": length ", length, " is too short (at least 4)");
  } else {
    if (n_data < 1) fail("task ", task_name(kind), ": needs at least one data token");
    if (length < n_data) fail("task ", task_name(kind), ": length ", length, " cannot hold ", n_data, " data tokens");
  }
}

TaskSequence make_sequence(const TaskSpec& spec, Rng& rng) {
  TaskSequence s;
  const int data_values = spec.vocab - kTaskFirstData;
  switch (spec.kind) {
    case TaskKind::InductionHeads: {
      // Trigger at p ∈ [0, L − 3], its target at p + 1, the final trigger at L − 1: the target is never
      // the last filler before the query, so the task cannot be solved by looking one step back.
      s.positions = {static_cast<int64_t>(rng.below(static_cast<uint64_t>(spec.length - 2)))};
      s.data = {static_cast<int32_t>(rng.below(static_cast<uint64_t>(spec.vocab - 1)))};
      s.filler_seed = rng.next();
      break;
    }
    case TaskKind::SelectiveCopying: {
      // n_data distinct positions, uniformly: Floyd's sampling, then sorted.
      std::vector<int64_t> chosen;
      for (int64_t j = spec.length - spec.n_data; j < spec.length; j++) {
        const int64_t t = static_cast<int64_t>(rng.below(static_cast<uint64_t>(j + 1)));
        chosen.push_back(std::find(chosen.begin(), chosen.end(), t) == chosen.end() ? t : j);
      }
      std::sort(chosen.begin(), chosen.end());
      s.positions = std::move(chosen);
      for (int i = 0; i < spec.n_data; i++) {
        s.data.push_back(kTaskFirstData + static_cast<int32_t>(rng.below(static_cast<uint64_t>(data_values))));
      }
      break;
    }
    case TaskKind::Copying: {
      for (int i = 0; i < spec.n_data; i++) {
        s.positions.push_back(i);
        s.data.push_back(kTaskFirstData + static_cast<int32_t>(rng.below(static_cast<uint64_t>(data_values))));
      }
      break;
    }
  }
  return s;
}

void sequence_tokens(const TaskSpec& spec, const TaskSequence& seq, int64_t t0, int64_t n, int32_t* out) {
  const int64_t L = spec.length;
  if (spec.kind == TaskKind::InductionHeads) {
    const int64_t p = seq.positions[0];
    for (int64_t i = 0; i < n; i++) {
      const int64_t t = t0 + i;
      if (t == p || t == L - 1) {
        out[i] = induction_trigger(spec);
      } else if (t == p + 1) {
        out[i] = seq.data[0];
      } else {
        out[i] = filler_token(spec, seq.filler_seed, t);
      }
    }
    return;
  }
  // Copying: noise, with the data at their positions, then markers for the answers.
  auto next = std::lower_bound(seq.positions.begin(), seq.positions.end(), t0);
  for (int64_t i = 0; i < n; i++) {
    const int64_t t = t0 + i;
    if (t >= L) {
      out[i] = kTaskMarker;
    } else if (next != seq.positions.end() && *next == t) {
      out[i] = seq.data[static_cast<size_t>(next - seq.positions.begin())];
      ++next;
    } else {
      out[i] = kTaskNoise;
    }
  }
}

void make_batch(const TaskSpec& spec, Rng& rng, int B, int32_t* inputs, int32_t* targets) {
  const int64_t T = spec.total_length();
  const int A = spec.answers();
  for (int b = 0; b < B; b++) {
    const TaskSequence seq = make_sequence(spec, rng);
    sequence_tokens(spec, seq, 0, T, inputs + b * T);
    std::fill(targets + b * T, targets + (b + 1) * T, kTaskIgnore);
    for (int i = 0; i < A; i++) targets[b * T + T - A + i] = seq.data[static_cast<size_t>(i)];
  }
}

std::vector<TaskSequence> test_set(const TaskSpec& spec, int count, uint64_t seed) {
  Rng rng(mix(seed ^ mix(static_cast<uint64_t>(spec.length))));
  std::vector<TaskSequence> out;
  for (int i = 0; i < count; i++) out.push_back(make_sequence(spec, rng));
  return out;
}

TaskScore evaluate_task(const Model& model, const TaskSpec& spec, const std::vector<TaskSequence>& sequences,
                        int batch, int chunk) {
  const int64_t T = spec.total_length();
  const int A = spec.answers();
  const int V = model.config().vocab_size;
  const int64_t prompt = T - A;
  // A chunk longer than the prompt is the whole prompt in one piece: clamped, the buffers fit the task.
  batch = static_cast<int>(std::clamp<int64_t>(batch, 1, std::max<int64_t>(1, static_cast<int64_t>(sequences.size()))));
  chunk = static_cast<int>(std::clamp<int64_t>(chunk, 1, std::max<int64_t>(1, prompt)));
  check_memory(forward_bytes(model.config(), batch, std::max(chunk, A), int64_t{batch} * A, int64_t{batch} * std::max(chunk, A)),
               "evaluating " + std::to_string(batch) + " sequences at a time in pieces of " + std::to_string(chunk) +
                   " tokens");
  Engine engine(model, int64_t{batch} * std::max(chunk, A));
  std::vector<int32_t> tokens(static_cast<size_t>(batch) * std::max(chunk, A));
  std::vector<float> logits(static_cast<size_t>(batch) * A * V);
  TaskScore score;
  for (size_t first = 0; first < sequences.size(); first += static_cast<size_t>(batch)) {
    const int B = static_cast<int>(std::min<size_t>(static_cast<size_t>(batch), sequences.size() - first));
    State state(model.config(), B);
    for (int64_t t0 = 0; t0 < prompt; t0 += chunk) {
      const int n = static_cast<int>(std::min<int64_t>(chunk, prompt - t0));
      for (int b = 0; b < B; b++) sequence_tokens(spec, sequences[first + b], t0, n, tokens.data() + int64_t{b} * n);
      engine.forward(tokens.data(), B, n, state, nullptr, Logits::None);
    }
    for (int b = 0; b < B; b++) sequence_tokens(spec, sequences[first + b], prompt, A, tokens.data() + int64_t{b} * A);
    engine.forward(tokens.data(), B, A, state, logits.data(), Logits::All);
    if (const int64_t bad = first_nonfinite(logits.data(), int64_t{B} * A * V); bad >= 0) {
      fail("task evaluation: the model's logits are not finite (", logits[bad], " for token id ", bad % V,
           " at an answer of sequence ", static_cast<int64_t>(first) + bad / (int64_t{A} * V),
           "): its weights or its state overflow");
    }
    for (int b = 0; b < B; b++) {
      const TaskSequence& seq = sequences[first + b];
      int wrong = 0;
      float worst = std::numeric_limits<float>::infinity();
      for (int i = 0; i < A; i++) {
        const float* row = logits.data() + (int64_t{b} * A + i) * V;
        const int32_t answer = seq.data[static_cast<size_t>(i)];
        float other = -std::numeric_limits<float>::infinity();
        for (int v = 0; v < V; v++) other = v == answer ? other : std::max(other, row[v]);
        const float margin = row[answer] - other;
        wrong += !(margin > 0);  // a tie or a NaN counts as wrong
        worst = std::min(worst, margin);
        score.margin_sum += margin;
      }
      score.margin_min = score.total == 0 ? worst : std::min<double>(score.margin_min, worst);
      score.correct += A - wrong;
      score.total += A;
      if (wrong > 0) score.misses.push_back({static_cast<int64_t>(first) + b, wrong, seq.positions.front(), worst});
    }
  }
  return score;
}

TaskTrainResult train_task(const Config& config, std::vector<float>& params, const TaskSpec& spec,
                           const TaskTrainOptions& o,
                           const std::function<void(int64_t, double, double, double)>& on_eval,
                           const std::atomic<bool>* stop, Backend& backend) {
  spec.validate();
  if (config.vocab_size < spec.vocab) fail("task: the model's vocabulary is smaller than the task's ", spec.vocab);
  const auto specs = param_specs(config);
  if (static_cast<int64_t>(params.size()) != param_layout_size(specs)) fail("train_task: parameter buffer size");
  const int T = static_cast<int>(spec.total_length());
  // Parameters, gradients, AdamW's m and v, a model copy per evaluation; the Backprop; the held-out
  // evaluation (64 sequences at a time, pieces of 4096 tokens).
  int64_t bytes = sat_mul(parameter_bytes(config), 5);
  bytes = sat_add(bytes, Backprop::bytes_needed(config, o.batch, T, 256, o.dtype));
  bytes = sat_add(bytes, forward_bytes(config, 64, std::min<int64_t>(4096, T), 64 * spec.answers(), 64 * 4096));
  check_memory(bytes, "task training of batch " + std::to_string(o.batch) + " × " + std::to_string(T) + " tokens");
  Backprop backprop(config, o.batch, T, 256, backend, o.dtype);
  LossScaler scaler;  // fp16
  AdamW adam(specs, static_cast<int64_t>(params.size()), AdamWOptions{o.lr, 0.9, 0.95, o.adam_eps, o.weight_decay},
             backend);
  Schedule schedule{"cosine", o.lr, o.lr_floor(), o.warmup, o.steps};
  // Parameters and gradients on the backend's device; after each step its loss (a float) and the
  // gradients' norm (a double) come back in one download.
  const size_t param_bytes = sizeof(float) * params.size();
  Buffer d_params(backend, param_bytes), d_grads(backend, param_bytes), d_stats(backend, sizeof(double) + sizeof(float));
  backend.upload(d_params.data(), params.data(), param_bytes);
  auto* d_norm = d_stats.as<double>();
  auto* d_loss = reinterpret_cast<float*>(d_norm + 1);
  auto fetch_params = [&] { backend.download(params.data(), d_params.data(), param_bytes); };
  std::vector<int32_t> inputs(static_cast<size_t>(o.batch) * T), targets(inputs.size());
  Rng rng(o.seed);
  const auto held_out = test_set(spec, o.eval_sequences, o.seed + 1);
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };

  TaskTrainResult r;
  double smoothed = -1;
  while (r.steps < o.steps) {
    make_batch(spec, rng, o.batch, inputs.data(), targets.data());
    backend.fill_zero(d_grads.data(), param_bytes);
    const float scale = o.dtype == DType::F16 ? static_cast<float>(scaler.scale) : 1.0f;
    backprop.forward_backward(d_params.as<float>(), d_grads.as<float>(), inputs.data(), targets.data(), kTaskIgnore,
                              d_loss, 0, scale);
    adam.step(d_params.as<float>(), d_grads.as<float>(), schedule.at(r.steps), o.clip, 1.0f / scale, d_norm);
    backprop.update_weights(d_params.as<float>());
    unsigned char stats[sizeof(double) + sizeof(float)];
    backend.download(stats, d_stats.data(), sizeof(stats));
    double norm;
    float loss;
    std::memcpy(&norm, stats, sizeof(double));
    std::memcpy(&loss, stats + sizeof(double), sizeof(float));
    // fp16: gradients that overflowed updated nothing; the step is not counted by AdamW and the scale halves.
    const bool skipped = o.dtype == DType::F16 && std::isfinite(loss) && !scaler.update(std::isfinite(norm));
    if (skipped) {
      adam.set_steps(adam.steps() - 1);
      r.skipped_steps++;
    }
    if (!std::isfinite(loss) || (!skipped && !std::isfinite(norm))) fail("task training diverged at step ", r.steps + 1);
    r.steps++;
    smoothed = smoothed < 0 ? loss : 0.95 * smoothed + 0.05 * loss;
    r.loss = smoothed;
    r.interrupted = stop && stop->load();
    if ((o.eval_every > 0 && r.steps % o.eval_every == 0) || r.steps == o.steps || r.interrupted) {
      fetch_params();
      Model model = Model::from_params(config, params);
      r.accuracy = evaluate_task(model, spec, held_out, 64, 4096).accuracy();
      if (on_eval) on_eval(r.steps, smoothed, r.accuracy, seconds());
      if (r.accuracy >= o.stop_accuracy || r.interrupted) break;
    }
  }
  fetch_params();
  r.seconds = seconds();
  return r;
}

Config task_config(int d_model, int n_layer, SsmMode mode) {
  Config c;
  c.d_model = d_model;
  c.n_layer = n_layer;
  c.vocab_size = 16;
  c.dt_rank = (d_model + 15) / 16;
  c.ssm_mode = mode;
  c.eos_token_id = 0;
  c.validate("task model");
  return c;
}

}  // namespace mamba

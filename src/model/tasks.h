// The paper's synthetic tasks (Gu & Dao 2023, §4.1): selective copying, induction heads, and plain
// copying as a control. Sequences are generated from a seed; their tokens can be produced a piece at a
// time (a sequence of 2^20 tokens never exists in memory), and a model is scored on them through the
// Engine with its recurrent State carried from piece to piece, so evaluation memory is constant in the
// length.
//
// Every task's answers are its LAST tokens, read as next-token predictions: the input at an answer
// position is a marker (copying) or the trigger (induction heads) and the target is the answer. Every
// other position has target ignore_index, so only answers count in the loss and in the accuracy.
//
// Vocabulary (16 tokens, the paper's setting):
//   copying tasks: 0 = noise, 1 = marker, 2..15 = data (14 values);
//   induction heads: 15 = the trigger, 0..14 = filler and targets.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/config.h"
#include "model/model.h"
#include "ops/backend.h"

namespace mamba {

enum class TaskKind { SelectiveCopying, InductionHeads, Copying };

struct TaskSpec {
  TaskKind kind = TaskKind::InductionHeads;
  int64_t length = 256;  // L: tokens before the answers (copying) or in all (induction heads)
  int n_data = 16;       // copying tasks: tokens to remember and reproduce
  int vocab = 16;

  // Tokens of one sequence: L + n_data for the copying tasks, L for induction heads.
  int64_t total_length() const { return kind == TaskKind::InductionHeads ? length : length + n_data; }
  // Answer positions at the end of the sequence: n_data, or 1 for induction heads.
  int answers() const { return kind == TaskKind::InductionHeads ? 1 : n_data; }
  void validate() const;  // fails with a message when the length cannot hold the task
};

constexpr int kTaskNoise = 0, kTaskMarker = 1, kTaskFirstData = 2;
constexpr int32_t kTaskIgnore = -100;

const char* task_name(TaskKind kind);  // "selective-copying", "induction-heads", "copying"
TaskKind parse_task(const std::string& name);  // fails on an unknown name
const char* task_names();

// One sequence, described by O(n_data) numbers: where the data tokens sit and what they are.
struct TaskSequence {
  std::vector<int64_t> positions;  // increasing; the induction trigger's position for induction heads
  std::vector<int32_t> data;       // the tokens to reproduce, in order (= the answers)
  uint64_t filler_seed = 0;        // induction heads: the random filler is a function of (seed, t)
};

TaskSequence make_sequence(const TaskSpec& spec, Rng& rng);
// Input tokens [t0, t0 + n) of the sequence (answers' inputs included: markers or the trigger).
void sequence_tokens(const TaskSpec& spec, const TaskSequence& seq, int64_t t0, int64_t n, int32_t* out);

// A training batch: inputs and targets (B, total_length), targets kTaskIgnore except at the answers.
void make_batch(const TaskSpec& spec, Rng& rng, int B, int32_t* inputs, int32_t* targets);

// The fixed test set of a length: `count` sequences drawn from a seed derived from (seed, length).
std::vector<TaskSequence> test_set(const TaskSpec& spec, int count, uint64_t seed);

// A test sequence with at least one wrong answer.
struct TaskMiss {
  int64_t sequence = 0;        // index in the test set
  int wrong = 0;               // its wrong answers
  int64_t first_position = 0;  // positions[0]: the trigger (induction heads) or the first data token
  float margin = 0;            // its smallest answer margin (negative: wrong)
};

// An answer's margin: its logit minus the largest other logit, positive when the greedy answer is right.
// The smallest over a test set says how close a length is to its first failure.
struct TaskScore {
  int64_t correct = 0, total = 0;  // answer tokens
  std::vector<TaskMiss> misses;    // every sequence with a wrong answer, in test-set order
  double margin_min = 0, margin_sum = 0;  // over the answer tokens
  double accuracy() const { return total ? static_cast<double>(correct) / static_cast<double>(total) : 0.0; }
  double margin_mean() const { return total ? margin_sum / static_cast<double>(total) : 0.0; }
};

// Greedy per-token accuracy over the answers: `batch` sequences at a time, the prompt fed in pieces of
// `chunk` tokens with the State carried and no logits (Logits::None), then the answers' positions with
// their logits. Memory: the Engine's buffers for batch × chunk tokens, whatever the length.
TaskScore evaluate_task(const Model& model, const TaskSpec& spec, const std::vector<TaskSequence>& sequences,
                        int batch = 16, int chunk = 4096);

// Training on freshly generated batches with the model's own Backprop and AdamW, warmup then cosine
// to lr_min (lr_min < 0: constant lr after the warmup), global-norm clipping; every `eval_every` steps
// the greedy accuracy on `eval_sequences` held-out sequences (seed + 1), stopping early once it reaches
// `stop_accuracy` (> 1: never). The defaults are the paper's recipe for these tasks (its appendix
// E.1): batch 8, constant learning rate 1e-3, no weight decay. `dtype`: fp32, or bf16 / fp16 mixed
// precision as the trainer runs it (fp16 with dynamic loss scaling, its skipped steps counted).
struct TaskTrainOptions {
  int batch = 8;
  int64_t steps = 10000, warmup = 100;
  double lr = 1e-3, lr_min = -1, weight_decay = 0, clip = 1.0;
  double adam_eps = 1e-8;  // AdamW's ε; smaller keeps the steps full-sized once the loss nears zero
  uint64_t seed = 0;
  int64_t eval_every = 100;
  int eval_sequences = 256;
  double stop_accuracy = 2.0;
  DType dtype = DType::F32;
  double lr_floor() const { return lr_min < 0 ? lr : lr_min; }  // where the cosine ends
};

struct TaskTrainResult {
  int64_t steps = 0;
  bool interrupted = false;  // *stop was set: ended after the step in progress, with an evaluation
  double loss = 0, accuracy = 0, seconds = 0;
  int64_t skipped_steps = 0;  // fp16: steps whose gradients overflowed
};

// Trains `params` (laid out by param_specs(config)) in place, on `backend` (parameters, gradients and
// moments on its device; `params` is brought up to date before each evaluation and at the end).
// `on_eval(step, loss, accuracy, seconds)` is called after each evaluation, for progress and logs.
// Training stops early, after an evaluation, once `stop` (if given) is set.
TaskTrainResult train_task(const Config& config, std::vector<float>& params, const TaskSpec& spec,
                           const TaskTrainOptions& options,
                           const std::function<void(int64_t, double, double, double)>& on_eval = {},
                           const std::atomic<bool>* stop = nullptr, Backend& backend = Backend::cpu());

// The paper's model for these tasks: 2 layers, d_model 64, vocabulary 16, other fields default.
Config task_config(int d_model = 64, int n_layer = 2, SsmMode mode = SsmMode::Selective);

}  // namespace mamba

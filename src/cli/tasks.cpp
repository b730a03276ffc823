// mambacpp tasks train|eval: the paper's synthetic tasks (§4.1; model/tasks.h).
// A trained task model is a model folder (config.json, model.safetensors) plus task.json (the task,
// its training length, the run's options, steps, wall time and held-out accuracy).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/file.h"
#include "core/runtime.h"
#include "core/json.h"
#include "core/limits.h"
#include "model/tasks.h"
#include "model/trainer.h"

namespace mamba::cli {

namespace {

using nlohmann::json;

void write_text(const std::filesystem::path& path, const std::string& text) {
  write_file_atomic(path, [&](std::FILE* f) { write_bytes(f, text.data(), text.size(), path); });
}

// "64..1048576": the powers of two in between; "64,100,4096": a list; or a mix of both.
std::vector<int64_t> parse_lengths(const std::string& text) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = text.find(',', pos);
    const std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    auto number = [&](const std::string& s) {
      char* end = nullptr;
      const long long v = std::strtoll(s.c_str(), &end, 10);
      if (s.empty() || *end != '\0' || v < 4 || v > (int64_t{1} << 30)) {
        fail("--lengths: \"", s, "\" is not a length in 4..2^30 (give e.g. 64..1048576 or 64,256,4096)");
      }
      return static_cast<int64_t>(v);
    };
    const size_t dots = item.find("..");
    if (dots == std::string::npos) {
      out.push_back(number(item));
    } else {
      const int64_t lo = number(item.substr(0, dots)), hi = number(item.substr(dots + 2));
      if (lo > hi) fail("--lengths: the range \"", item, "\" is empty (", lo, " > ", hi, "); give LO..HI with LO ≤ HI");
      for (int64_t n = lo; n <= hi; n *= 2) out.push_back(n);
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

// Accuracy (0..1) against log2(length): one line with a point per length, the training length marked.
std::string accuracy_svg(const std::string& title, const std::vector<int64_t>& lengths,
                         const std::vector<double>& accuracy, int64_t train_length) {
  const double W = 640, H = 360, left = 60, right = 20, top = 40, bottom = 50;
  double lo = std::log2(static_cast<double>(lengths.front())), hi = std::log2(static_cast<double>(lengths.back()));
  if (hi <= lo) hi = lo + 1;
  auto X = [&](double lg) { return left + (lg - lo) / (hi - lo) * (W - left - right); };
  auto Y = [&](double a) { return top + (1.0 - a) * (H - top - bottom); };
  std::string s;
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
                "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
                "<text x=\"%.0f\" y=\"22\" font-size=\"14\">%s</text>\n",
                W, H, left, title.c_str());
  s += buf;
  for (int k = 0; k <= 4; k++) {  // accuracy grid
    const double a = k / 4.0;
    std::snprintf(buf, sizeof(buf),
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.0f%%</text>\n",
                  left, Y(a), W - right, Y(a), left - 6, Y(a) + 4, a * 100);
    s += buf;
  }
  for (int lg = static_cast<int>(std::ceil(lo)); lg <= static_cast<int>(std::floor(hi)); lg++) {
    std::snprintf(buf, sizeof(buf), "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", X(lg),
                  H - bottom + 18, lg);
    s += buf;
  }
  std::snprintf(buf, sizeof(buf), "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">log2(sequence length)</text>\n",
                (left + W - right) / 2, H - 10);
  s += buf;
  if (train_length > 0) {
    const double x = X(std::log2(static_cast<double>(train_length)));
    std::snprintf(buf, sizeof(buf),
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#c33\" stroke-dasharray=\"4 3\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" fill=\"#c33\">trained at %lld</text>\n",
                  x, top, x, H - bottom, x + 4, top + 12, static_cast<long long>(train_length));
    s += buf;
  }
  std::string points;
  for (size_t i = 0; i < lengths.size(); i++) {
    std::snprintf(buf, sizeof(buf), "%.1f,%.1f ", X(std::log2(static_cast<double>(lengths[i]))), Y(accuracy[i]));
    points += buf;
  }
  s += "<polyline fill=\"none\" stroke=\"#2563eb\" stroke-width=\"2\" points=\"" + points + "\"/>\n";
  for (size_t i = 0; i < lengths.size(); i++) {
    std::snprintf(buf, sizeof(buf), "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"#2563eb\"/>\n",
                  X(std::log2(static_cast<double>(lengths[i]))), Y(accuracy[i]));
    s += buf;
  }
  s += "</svg>\n";
  return s;
}

}  // namespace

void add_tasks(CLI::App& app) {
  auto* cmd = app.add_subcommand("tasks", "The paper's synthetic tasks: selective copying, induction heads, copying");
  cmd->require_subcommand(1);

  // ---- tasks train ----
  auto* train = cmd->add_subcommand(
      "train", "Train a small Mamba on a synthetic task (fp32 or mixed precision, on the CPU or a GPU)");
  struct TrainFlags {
    std::string task, out, ssm = "selective", init_from, device = "cpu", dtype;
    int64_t length = 256;
    int n_data = 16, d_model = 64, n_layer = 2;
    int64_t save_every = 0;
    TaskTrainOptions opt;
  };
  static TrainFlags t;
  train->add_option("task", t.task, std::string("Task: ") + task_names())->required();
  train->add_option("--out", t.out, "Model folder to write (config.json, model.safetensors, task.json)")->required();
  train->add_option("--length", t.length, "Training length (tokens before the answers)")->capture_default_str()
      ->check(CLI::Range(int64_t{4}, int64_t{1} << 20));
  train->add_option("--n-data", t.n_data, "Copying tasks: data tokens to reproduce")->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--ssm", t.ssm, "SSM: selective (S6) or lti (the Table 1 ablation)")->capture_default_str()
      ->check(CLI::IsMember({"selective", "lti"}));
  train->add_option("--device", t.device,
                    "Where to train: cpu, cuda or cuda:N (the held-out evaluations run on the CPU)")
      ->capture_default_str();
  train->add_option("--dtype", t.dtype,
                    "Precision: fp32, or bf16 / fp16 mixed precision (fp16 with dynamic loss scaling); default bf16 "
                    "on a GPU, fp32 on the CPU")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  train->add_option("--init-from", t.init_from, "Continue from this task model (e.g. trained at a shorter length)");
  train->add_option("--d-model", t.d_model, "Model width")->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--n-layer", t.n_layer, "Layers")->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--steps", t.opt.steps, "Optimizer steps (at most)")->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--batch", t.opt.batch, "Sequences per step")->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--lr", t.opt.lr, "Peak learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--lr-min", t.opt.lr_min, "Floor of the cosine decay (default: none, a constant --lr)")->check(CLI::NonNegativeNumber);
  train->add_option("--warmup", t.opt.warmup, "Linear warmup steps")->capture_default_str()->check(CLI::NonNegativeNumber);
  train->add_option("--weight-decay", t.opt.weight_decay, "AdamW weight decay")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  train->add_option("--adam-eps", t.opt.adam_eps, "AdamW's epsilon")->capture_default_str()->check(CLI::PositiveNumber);
  train->add_option("--clip", t.opt.clip, "Global gradient-norm clip")->capture_default_str()->check(CLI::NonNegativeNumber);
  train->add_option("--seed", t.opt.seed, "Seed of the initialisation and of the batches")->capture_default_str();
  train->add_option("--eval-every", t.opt.eval_every, "Held-out accuracy every N steps")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  train->add_option("--eval-sequences", t.opt.eval_sequences, "Held-out sequences")->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--stop-at", t.opt.stop_accuracy, "Stop once held-out accuracy reaches this (e.g. 1.0)")
      ->check(CLI::Range(0.0, 2.0));
  train->add_option("--save-every", t.save_every,
                    "Also save the model every N steps, to OUT/step-N (N a multiple of --eval-every)")
      ->check(CLI::NonNegativeNumber);
  train->callback([] {
    if (t.save_every > 0 && (t.opt.eval_every <= 0 || t.save_every % t.opt.eval_every != 0)) {
      throw Error("tasks train: --save-every " + std::to_string(t.save_every) + " must be a multiple of --eval-every " +
                  std::to_string(t.opt.eval_every) + " (models are saved at the held-out evaluations)");
    }
    Backend& backend = Backend::get(Device::parse(t.device));
    t.opt.dtype = t.dtype.empty() ? (backend.host_memory() ? DType::F32 : DType::BF16)
                                  : parse_precision(t.dtype, "tasks train --dtype");
    TaskSpec spec;
    spec.kind = parse_task(t.task);
    spec.length = t.length;
    spec.n_data = t.n_data;
    spec.validate();
    Config c = task_config(t.d_model, t.n_layer, t.ssm == "lti" ? SsmMode::Lti : SsmMode::Selective);
    std::vector<float> params;
    if (!t.init_from.empty()) {  // its own shape and SSM mode; --d-model, --n-layer and --ssm are ignored
      Model base = Model::load(t.init_from);
      c = base.config();
      params = base.params_f32();
      t.ssm = c.ssm_mode == SsmMode::Lti ? "lti" : "selective";
    } else {
      auto specs = param_specs(c);
      params.assign(static_cast<size_t>(param_layout_size(specs)), 0.0f);
      init_params(params.data(), c, specs, t.opt.seed);
    }
    std::fprintf(stderr, "%s at length %lld, %s SSM: %lld parameters, batch %d, up to %lld steps, %s\n",
                 task_name(spec.kind), static_cast<long long>(spec.length), t.ssm.c_str(),
                 static_cast<long long>(c.parameter_count()), t.opt.batch, static_cast<long long>(t.opt.steps),
                 std::string(precision_name(t.opt.dtype)).c_str());
    std::filesystem::create_directories(t.out);
    std::ofstream log(std::filesystem::path(t.out) / "log.jsonl");
    // The model (from a copy of the parameters, or the parameters themselves once training is over) and
    // task.json, what `tasks eval` reads, in dir.
    auto save = [&](const std::filesystem::path& dir, std::vector<float> weights, const TaskTrainResult& r) {
      Model::from_params(c, std::move(weights)).save(dir, DType::F32);
      json info = {{"task", task_name(spec.kind)},
                   {"length", spec.length},
                   {"n_data", spec.n_data},
                   {"vocab", spec.vocab},
                   {"ssm_mode", t.ssm},
                   {"init_from", t.init_from},
                   {"steps", r.steps},
                   {"interrupted", r.interrupted},
                   {"seconds", r.seconds},
                   {"loss", r.loss},
                   {"held_out_accuracy", r.accuracy},
                   {"options",
                    {{"batch", t.opt.batch}, {"max_steps", t.opt.steps}, {"lr", t.opt.lr}, {"lr_min", t.opt.lr_floor()},
                     {"warmup", t.opt.warmup}, {"weight_decay", t.opt.weight_decay}, {"adam_eps", t.opt.adam_eps}, {"clip", t.opt.clip},
                     {"seed", t.opt.seed}, {"eval_sequences", t.opt.eval_sequences}, {"threads", runtime_threads()},
                     {"dtype", std::string(precision_name(t.opt.dtype))}, {"skipped_steps", r.skipped_steps}}}};
      write_text(dir / "task.json", info.dump(2) + "\n");
    };
    TaskTrainResult r = train_task(c, params, spec, t.opt, [&](int64_t step, double loss, double acc, double secs) {
      std::fprintf(stderr, "step %6lld  loss %.4f  held-out accuracy %6.2f%%  %.1f s\n", static_cast<long long>(step),
                   loss, 100 * acc, secs);
      log << json{{"step", step}, {"loss", loss}, {"accuracy", acc}, {"elapsed_s", secs}}.dump() << "\n" << std::flush;
      if (t.save_every > 0 && step % t.save_every == 0) {
        TaskTrainResult now;
        now.steps = step, now.seconds = secs, now.loss = loss, now.accuracy = acc;
        save(std::filesystem::path(t.out) / ("step-" + std::to_string(step)), params, now);
      }
    }, &stop_on_signals(), backend);
    if (r.interrupted) std::fprintf(stderr, "interrupted at step %lld; saving\n", static_cast<long long>(r.steps));
    if (r.skipped_steps > 0) {
      std::fprintf(stderr, "fp16: %lld steps skipped for gradients that overflowed\n",
                   static_cast<long long>(r.skipped_steps));
    }
    save(t.out, std::move(params), r);
    std::fprintf(stderr, "done: %lld steps in %.1f s; held-out accuracy %.2f%% at length %lld; saved %s\n",
                 static_cast<long long>(r.steps), r.seconds, 100 * r.accuracy, static_cast<long long>(spec.length),
                 t.out.c_str());
  });

  // ---- tasks eval ----
  auto* eval = cmd->add_subcommand("eval", "Accuracy of a task model per test length (fixed, seeded test sets)");
  struct EvalFlags {
    std::string dir, lengths = "64..4096", json_path, svg_path, task;
    int sequences = 256, long_sequences = 16, batch = 16, chunk = 4096;
    int64_t long_from = 65536;
    uint64_t seed = 1234;
  };
  static EvalFlags e;
  eval->add_option("dir", e.dir, "Model folder written by `tasks train`")->required();
  eval->add_option("--lengths", e.lengths, "Test lengths: LO..HI (powers of two) and/or a comma list")->capture_default_str();
  eval->add_option("--sequences", e.sequences, "Test sequences per length below --long-from")->capture_default_str()
      ->check(CLI::PositiveNumber);
  eval->add_option("--long-sequences", e.long_sequences, "Test sequences per length from --long-from on")
      ->capture_default_str()->check(CLI::PositiveNumber);
  eval->add_option("--long-from", e.long_from, "Lengths from here on use --long-sequences")->capture_default_str();
  eval->add_option("--batch", e.batch, "Sequences run together")->capture_default_str()->check(CLI::PositiveNumber);
  eval->add_option("--chunk", e.chunk, "Tokens per forward piece (memory: batch × chunk activations)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  eval->add_option("--seed", e.seed, "Seed of the test sets")->capture_default_str();
  eval->add_option("--task", e.task, "Task (default: from task.json)");
  eval->add_option("--json", e.json_path, "Write the results as JSON here (default: DIR/eval.json)");
  eval->add_option("--svg", e.svg_path, "Write the accuracy plot here (default: DIR/eval.svg)");
  eval->callback([] {
    const std::filesystem::path dir = e.dir;
    json info = json::object();
    const std::string info_path = (dir / "task.json").string();
    if (std::filesystem::exists(dir / "task.json")) info = read_json_file(info_path);
    if (!info.is_object()) fail(info_path, ": not a JSON object");
    TaskSpec base;
    if (!e.task.empty()) {
      base.kind = parse_task(e.task);
    } else if (info.contains("task") && info["task"].is_string()) {
      base.kind = parse_task(info["task"].get<std::string>());
    } else {
      fail((dir / "task.json").string(), ": no task named there; give --task");
    }
    if (info.contains("n_data")) {
      const json& n = info["n_data"];
      if (!n.is_number_integer() || n.get<int64_t>() < 1 || n.get<int64_t>() > (int64_t{1} << 30)) {
        fail(info_path, ": field \"n_data\" must be a positive integer, got ", json_brief(n));
      }
      base.n_data = static_cast<int>(n.get<int64_t>());
    }
    int64_t train_length = 0;  // only shown and plotted
    if (info.contains("length") && info["length"].is_number_integer() && info["length"].get<int64_t>() > 0) {
      train_length = info["length"].get<int64_t>();
    }
    Model model = Model::load(dir);
    const auto lengths = parse_lengths(e.lengths);
    // A test set is held whole: per sequence its positions and data tokens.
    const int64_t per_sequence = static_cast<int64_t>(sizeof(TaskSequence)) + int64_t{base.n_data} * 12;
    check_memory(sat_mul(std::max(e.sequences, e.long_sequences), per_sequence),
                 "tasks eval: test sets of " + std::to_string(std::max(e.sequences, e.long_sequences)) + " sequences");
    std::printf("%s, %s SSM, trained at length %lld: greedy accuracy over the answer tokens\n", task_name(base.kind),
                model.config().ssm_mode == SsmMode::Lti ? "LTI" : "selective", static_cast<long long>(train_length));
    std::printf("%10s %6s %10s %10s %11s %10s\n", "length", "log2", "sequences", "accuracy", "min margin", "seconds");
    json rows = json::array();
    std::vector<double> accuracy;
    for (int64_t L : lengths) {
      TaskSpec spec = base;
      spec.length = L;
      spec.validate();
      const int count = L >= e.long_from ? e.long_sequences : e.sequences;
      const auto start = std::chrono::steady_clock::now();
      const TaskScore s = evaluate_task(model, spec, test_set(spec, count, e.seed), e.batch, e.chunk);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("%10lld %6.1f %10d %9.2f%% %11.3f %10.2f\n", static_cast<long long>(L),
                  std::log2(static_cast<double>(L)), count, 100 * s.accuracy(), s.margin_min, secs);
      std::fflush(stdout);
      // The missed sequences, for looking into the failures (the first 64 of them).
      json misses = json::array();
      for (size_t i = 0; i < std::min<size_t>(s.misses.size(), 64); i++) {
        misses.push_back({{"sequence", s.misses[i].sequence},
                          {"wrong", s.misses[i].wrong},
                          {"first_position", s.misses[i].first_position},
                          {"margin", s.misses[i].margin}});
      }
      rows.push_back({{"length", L}, {"sequences", count}, {"correct", s.correct}, {"total", s.total},
                      {"accuracy", s.accuracy()}, {"margin_min", s.margin_min}, {"margin_mean", s.margin_mean()},
                      {"seconds", secs},
                      {"missed_sequences", static_cast<int64_t>(s.misses.size())}, {"misses", misses}});
      accuracy.push_back(s.accuracy());
    }
    json out = {{"model", dir.string()}, {"task", task_name(base.kind)}, {"train_length", train_length},
                {"ssm_mode", model.config().ssm_mode == SsmMode::Lti ? "lti" : "selective"},
                {"seed", e.seed}, {"batch", e.batch}, {"chunk", e.chunk}, {"threads", runtime_threads()}, {"results", rows}};
    const std::filesystem::path json_path = e.json_path.empty() ? dir / "eval.json" : std::filesystem::path(e.json_path);
    const std::filesystem::path svg_path = e.svg_path.empty() ? dir / "eval.svg" : std::filesystem::path(e.svg_path);
    write_text(json_path, out.dump(2) + "\n");
    const std::string title = std::string(task_name(base.kind)) + ": accuracy vs length (" +
                              (model.config().ssm_mode == SsmMode::Lti ? "LTI" : "selective") + " SSM)";
    write_text(svg_path, accuracy_svg(title, lengths, accuracy, train_length));
    std::printf("wrote %s and %s\n", json_path.c_str(), svg_path.c_str());
  });
}

}  // namespace mamba::cli

// mambacpp bench-train: the training step's speed and memory on a backend (JSON lines on stdout), for a
// model of a given shape with random weights on random tokens: forward, backward, clipping and AdamW (and in
// bf16 and fp16 the matrices' low-precision copies made after it), with the step's one wait for the device
// (its loss and norm) inside the timing, as the trainer runs it. fp16 runs at a fixed loss scale of 2^16.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/limits.h"
#include "core/rng.h"
#include "core/runtime.h"
#include "model/backprop.h"
#include "model/optimizer.h"
#include "model/trainer.h"
#include "model/validate.h"
#include "model/weights.h"

namespace mamba::cli {

void add_bench_train(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bench-train", "Measure the training step (forward, backward, clipping, AdamW) on random tokens (JSON lines)");
  struct Options {
    ShapeFlags shape;
    std::string device = "cpu", dtype;
    int batch = 8, seq_len = 2048, steps = 10, warmup = 2, scan_chunk = 256, vocab = 0, recompute = 1;
    double peak_tflops = 0;
  };
  static Options o;
  add_shape_flags(cmd, o.shape);
  cmd->add_option("--device", o.device, "Where to run: cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--dtype", o.dtype,
                  "Training precision: fp32, or bf16 / fp16 mixed precision (default: bf16 on a GPU, fp32 on the CPU)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  cmd->add_option("--vocab", o.vocab, "Vocabulary size (default: the preset's, else 50280)")->check(CLI::PositiveNumber);
  cmd->add_option("--batch", o.batch, "Sequences per step")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", o.seq_len, "Tokens per sequence")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--steps", o.steps, "Timed steps (the median is reported)")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", o.warmup, "Untimed steps first")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--scan-chunk", o.scan_chunk, "Scan steps between saved states")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--recompute", o.recompute,
                  "What the backward recomputes instead of keeping per layer: 0 nothing, 1 the conv and Δ, 2 also the "
                  "scan, 3 also the norm, 4 also in_proj")
      ->capture_default_str()->check(CLI::Range(0, 4));
  cmd->add_option("--peak-tflops", o.peak_tflops,
                  "The device's peak rate for this precision, for model FLOPs utilization (0: not reported)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([] {
    if (!o.shape.given()) fail("bench-train: give --preset, or --d-model and --n-layer");
    Config c = shape_config(o.shape, "bench-train");
    if (o.vocab > 0) {
      c.vocab_size = o.vocab;
    } else if (c.vocab_size == 0) {
      c.vocab_size = 50280;  // the presets' GPT-NeoX vocabulary, padded to a multiple of 8
    }
    c.validate("bench-train");
    Backend& backend = Backend::get(Device::parse(o.device));
    const DType dtype = o.dtype.empty() ? (backend.host_memory() ? DType::F32 : DType::BF16)
                                        : parse_precision(o.dtype, "bench-train --dtype");
    const int64_t tokens = int64_t{o.batch} * o.seq_len;
    if (backend.host_memory()) {
      check_memory(sat_add(sat_mul(parameter_bytes(c), 4),
                           Backprop::bytes_needed(c, o.batch, o.seq_len, o.scan_chunk, dtype, o.recompute)),
                   "bench-train: " + std::to_string(tokens) + " tokens a step");
    }

    const auto specs = param_specs(c);
    const int64_t n = param_layout_size(specs);
    std::vector<float> host(static_cast<size_t>(n));
    init_params(host.data(), c, specs, 1);
    backend.reset_peak();
    const size_t bytes = sizeof(float) * host.size();
    Buffer params(backend, bytes), grads(backend, bytes), stats(backend, sizeof(double) + sizeof(float));
    backend.upload(params.data(), host.data(), bytes);
    host = {};
    Backprop backprop(c, o.batch, o.seq_len, o.scan_chunk, backend, dtype, o.recompute);
    const float loss_scale = dtype == DType::F16 ? 65536.0f : 1.0f;
    AdamW adam(specs, n, AdamWOptions{}, backend);
    Rng rng(2);
    std::vector<int32_t> inputs(static_cast<size_t>(tokens)), targets(inputs.size());
    auto* norm = stats.as<double>();
    auto* loss = reinterpret_cast<float*>(norm + 1);

    std::vector<double> times;
    double last_loss = 0;
    for (int s = 0; s < o.warmup + o.steps; s++) {
      for (size_t i = 0; i < inputs.size(); i++) {
        inputs[i] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size)));
        targets[i] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size)));
      }
      backend.synchronize();
      const auto start = std::chrono::steady_clock::now();
      backend.fill_zero(grads.data(), bytes);
      backprop.forward_backward(params.as<float>(), grads.as<float>(), inputs.data(), targets.data(), -100, loss, 0,
                                loss_scale);
      adam.step(params.as<float>(), grads.as<float>(), 1e-4, 1.0, 1.0f / loss_scale, norm);
      backprop.update_weights(params.as<float>());
      unsigned char out[sizeof(double) + sizeof(float)];
      backend.download(out, stats.data(), sizeof(out));  // the step's one wait, as in the trainer
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      float l;
      std::memcpy(&l, out + sizeof(double), sizeof(float));
      last_loss = l;
      if (s >= o.warmup) times.push_back(secs);
    }
    std::sort(times.begin(), times.end());
    const double t = times[times.size() / 2];
    // Model FLOPs: 6 per parameter per token (forward 2, backward 4) for the matrix products, which hold
    // nearly all the parameters; the scan's and the elementwise work is not counted.
    const double flops = 6.0 * static_cast<double>(c.parameter_count()) * static_cast<double>(tokens);
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    nlohmann::json line = {{"bench", "train"},
                           {"params", c.parameter_count()},
                           {"d_model", c.d_model},
                           {"n_layer", c.n_layer},
                           {"vocab", c.vocab_size},
                           {"batch", o.batch},
                           {"seq_len", o.seq_len},
                           {"dtype", std::string(precision_name(dtype))},
                           {"recompute", o.recompute},
                           {"device", backend.device().name()},
                           {"backend", backend.describe()},
                           {"steps", o.steps},
                           {"step_ms", 1000.0 * t},
                           {"step_ms_min", 1000.0 * times.front()},
                           {"tokens_per_s", static_cast<double>(tokens) / t},
                           {"model_tflops", flops / t / 1e12},
                           {"loss", last_loss},
                           {"activation_bytes", backprop.activation_bytes()},
                           {"weight_copy_bytes", backprop.weight_copy_bytes()},
                           {"peak_allocated_bytes", backend.peak_allocated()},
                           {"max_rss_bytes", int64_t{usage.ru_maxrss} * 1024},
                           {"threads", runtime_threads()}};
    if (o.peak_tflops > 0) line["mfu"] = flops / t / 1e12 / o.peak_tflops;
    std::printf("%s\n", line.dump().c_str());
  });
}

}  // namespace mamba::cli

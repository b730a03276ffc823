// The subcommands of `mambacpp`. Each file adds one to the app: its flags (declared once, with
// defaults and help) and what it runs.
#pragma once

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "mamba/mamba.h"
#include "model/config.h"
#include "model/engine.h"

namespace mamba::cli {

void add_info(CLI::App& app);
void add_init(CLI::App& app);
void add_score(CLI::App& app);
void add_bench(CLI::App& app);
void add_bench_train(CLI::App& app);
void add_quantize(CLI::App& app);
void add_train(CLI::App& app);
void add_generate(CLI::App& app);
void add_perplexity(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_tasks(CLI::App& app);
void add_serve(CLI::App& app);

// Token ids separated by commas and/or whitespace, optionally in brackets: "1,2,3", "1 2 3", "[1, 2, 3]".
// `where` names the source in errors.
std::vector<int32_t> parse_ids(const std::string& text, const std::string& where);

// Token ids from a non-empty 1-D (L) or 2-D (B, L) integer .npy file, row-major, each checked to fit an
// int32 id; `shape` receives the file's shape. Errors name the file.
std::vector<int32_t> read_ids_npy(const std::string& path, std::vector<int64_t>& shape);

// A model's shape from the command line: --preset NAME, or --d-model and --n-layer with the other
// dimensions at their defaults. Shared by `init` and `train`.
struct ShapeFlags {
  std::string preset;
  int d_model = 0, n_layer = 0, d_state = 16, d_conv = 4, expand = 2, dt_rank = 0;
  bool given() const { return !preset.empty() || d_model || n_layer; }
  // Into the library API's options of the same names (api::InitOptions, api::TrainOptions).
  template <class Options>
  void copy_to(Options& to) const {
    to.preset = preset;
    to.d_model = d_model;
    to.n_layer = n_layer;
    to.d_state = d_state;
    to.d_conv = d_conv;
    to.expand = expand;
    to.dt_rank = dt_rank;
  }
};
void add_shape_flags(CLI::App* cmd, ShapeFlags& flags);
// The Config they describe (vocabulary and the rest at Config's defaults); fails naming `command` when
// they are incomplete, contradictory or invalid.
Config shape_config(const ShapeFlags& flags, const char* command);

// --device and --dtype, for the commands that run a model (score, generate, perplexity, bench).
struct DeviceFlags {
  std::string device = "cpu", dtype;
};
void add_device_flags(CLI::App* cmd, DeviceFlags& flags);
// The model folder loaded as the flags ask: on the CPU the weights are kept in --dtype (default: the
// file's); for a GPU they stay as the file has them until the engine converts its device copy.
Model load_model(const std::string& dir, const DeviceFlags& flags);
EngineOptions engine_options(const DeviceFlags& flags, int64_t max_tokens = 2048);
// The same flags for the library API (include/mamba/mamba.h), checked with the flags' names in errors.
api::ModelOptions model_options(const DeviceFlags& flags, int64_t max_tokens = 2048);

// From now on SIGINT and SIGTERM set the returned flag instead of ending the process: long commands
// check it, save their work and stop cleanly.
const std::atomic<bool>& stop_on_signals();

}  // namespace mamba::cli

#include <cblas.h>
#include <omp.h>

#include <csignal>

#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"

namespace mamba::cli {

namespace {
std::atomic<bool> g_stop{false};
extern "C" void on_stop_signal(int) { g_stop.store(true); }
}  // namespace

const std::atomic<bool>& stop_on_signals() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  return g_stop;
}

void add_shape_flags(CLI::App* cmd, ShapeFlags& f) {
  cmd->add_option("--preset", f.preset, std::string("Shape of a published checkpoint: ") + preset_names());
  cmd->add_option("--d-model", f.d_model, "Model width (instead of --preset)")->check(CLI::PositiveNumber);
  cmd->add_option("--n-layer", f.n_layer, "Number of layers (with --d-model)")->check(CLI::PositiveNumber);
  cmd->add_option("--d-state", f.d_state, "SSM state size N")->capture_default_str()->check(CLI::Range(1, 256));
  cmd->add_option("--d-conv", f.d_conv, "Convolution width")->capture_default_str()->check(CLI::Range(1, 64));
  cmd->add_option("--expand", f.expand, "d_inner / d_model")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--dt-rank", f.dt_rank, "Rank of the Δ projection (0 = ceil(d_model/16))")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
}

Config shape_config(const ShapeFlags& f, const char* command) {
  Config c;
  if (!f.preset.empty()) {
    if (f.d_model || f.n_layer) fail(command, ": give either --preset or --d-model and --n-layer, not both");
    if (!preset_config(f.preset, &c)) fail(command, ": unknown preset \"", f.preset, "\" (known: ", preset_names(), ")");
    return c;
  }
  if (!f.d_model || !f.n_layer) fail(command, ": give --preset NAME, or --d-model and --n-layer");
  c.d_model = f.d_model;
  c.n_layer = f.n_layer;
  c.d_state = f.d_state;
  c.d_conv = f.d_conv;
  c.expand = f.expand;
  c.dt_rank = f.dt_rank ? f.dt_rank : (f.d_model + 15) / 16;
  return c;
}

// Token ids separated by commas and/or whitespace: "1,2,3", "1 2 3", "[1, 2, 3]".
std::vector<int32_t> parse_ids(const std::string& text, const std::string& where) {
  std::vector<int32_t> ids;
  std::string item;
  auto flush = [&] {
    if (item.empty()) return;
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < 0 || v > INT32_MAX) fail(where, ": \"", item, "\" is not a token id");
    ids.push_back(static_cast<int32_t>(v));
    item.clear();
  };
  for (char c : text) {
    if (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '[' || c == ']') {
      flush();
    } else {
      item += c;
    }
  }
  flush();
  return ids;
}

void set_threads(int threads) {
  if (threads <= 0) threads = omp_get_num_procs();
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
}

int thread_count() { return omp_get_max_threads(); }

}  // namespace mamba::cli

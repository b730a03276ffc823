#include <csignal>

#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/npy.h"

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

void add_device_flags(CLI::App* cmd, DeviceFlags& f) {
  cmd->add_option("--device", f.device, "Where to run: cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--dtype", f.dtype,
                  "Weight type: fp32, bf16, fp16 or int8 (default: the file's). On the CPU the weights are kept in "
                  "it (int8: quantized on load) and the arithmetic is fp32 (bf16 products with --bf16-products); "
                  "on a GPU weights and activations take it");
}

namespace {

std::optional<DType> flag_dtype(const DeviceFlags& f) {
  if (f.dtype.empty()) return std::nullopt;
  DType t;
  if (!parse_dtype(f.dtype, &t)) fail("--dtype \"", f.dtype, "\": expected fp32, bf16, fp16 or int8");
  return t;
}

}  // namespace

Model load_model(const std::string& dir, const DeviceFlags& f) {
  const Device device = Device::parse(f.device);
  const std::optional<DType> dtype = flag_dtype(f);
  return Model::load(dir, device.kind == Device::Kind::Cpu ? dtype : std::nullopt);
}

EngineOptions engine_options(const DeviceFlags& f, int64_t max_tokens) {
  EngineOptions o;
  o.device = Device::parse(f.device);
  if (o.device.kind != Device::Kind::Cpu) o.dtype = flag_dtype(f);
  o.max_tokens = max_tokens;
  return o;
}

api::ModelOptions model_options(const DeviceFlags& f, int64_t max_tokens) {
  Device::parse(f.device);
  flag_dtype(f);
  api::ModelOptions o;
  o.device = f.device;
  o.dtype = f.dtype;
  o.max_tokens = max_tokens;
  return o;
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

std::vector<int32_t> read_ids_npy(const std::string& path, std::vector<int64_t>& shape) {
  NpyArray array = read_npy(path);
  if (array.shape.empty() || array.shape.size() > 2 || array.numel() == 0) {
    fail(path, ": token ids must be a non-empty 1-D or 2-D array");
  }
  std::vector<int64_t> values;
  try {
    values = array.as_i64();
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  std::vector<int32_t> ids;
  ids.reserve(values.size());
  for (int64_t v : values) {
    if (v < 0 || v > INT32_MAX) fail(path, ": token id ", v, " is out of range");
    ids.push_back(static_cast<int32_t>(v));
  }
  shape = array.shape;
  return ids;
}

}  // namespace mamba::cli

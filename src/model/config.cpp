#include "model/config.h"

#include <cfloat>
#include <cmath>

#include "core/error.h"
#include "core/json.h"
#include "core/file.h"
#include "ops/scan.h"

namespace mamba {

namespace {

using nlohmann::json;

int get_int(const json& j, const char* key, const std::string& where, int fallback, bool required) {
  if (!j.contains(key) || j[key].is_null()) {
    if (required) fail(where, ": missing field \"", key, "\"");
    return fallback;
  }
  const json& v = j[key];
  if (!v.is_number_integer()) fail(where, ": field \"", key, "\" must be an integer, got ", json_brief(v));
  // Dimensions are held in ints; 2^30 keeps sums of two of them (dt_rank + 2N, 2·d_inner) in range too.
  if (v.is_number_unsigned() && v.get<uint64_t>() > (uint64_t{1} << 30)) {
    fail(where, ": field \"", key, "\" must be positive and at most 2^30, got ", json_brief(v));
  }
  int64_t x = v.get<int64_t>();
  if (x <= 0 || x > (int64_t{1} << 30)) fail(where, ": field \"", key, "\" must be positive and at most 2^30, got ", x);
  return static_cast<int>(x);
}

bool get_bool(const json& j, const char* key, const std::string& where, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) fail(where, ": field \"", key, "\" must be true or false, got ", json_brief(j[key]));
  return j[key].get<bool>();
}

// dt_rank / time_step_rank: an integer or "auto" = ceil(d_model / 16).
int get_rank(const json& j, const char* key, const std::string& where, int d_model) {
  if (!j.contains(key) || j[key].is_null() || (j[key].is_string() && j[key].get<std::string>() == "auto")) {
    return (d_model + 15) / 16;
  }
  return get_int(j, key, where, 0, true);
}

}  // namespace

namespace {

// Parameters of one layer. With the bounds validate() checks first (d_inner ≤ 2^24, N ≤ 256,
// d_conv ≤ 64, dt_rank < 2^31) every term is below 2^55, so this cannot overflow.
int64_t layer_parameters(const Config& c) {
  const int64_t d = c.d_model, di = c.d_inner(), n = c.d_state, r = c.dt_rank;
  const bool lti = c.ssm_mode == SsmMode::Lti;
  return d                                             // norm
         + 2 * di * d + (c.use_bias ? 2 * di : 0)      // in_proj
         + di * c.d_conv + (c.use_conv_bias ? di : 0)  // conv1d
         + (lti ? 2 * di * n : (r + 2 * n) * di)       // x_proj, or the LTI mode's B and C
         + (lti ? 0 : di * r) + di                     // dt_proj
         + di * n + di                                 // A_log, D
         + d * di + (c.use_bias ? d : 0);              // out_proj
}

}  // namespace

int64_t Config::parameter_count() const {
  return int64_t{vocab_size} * d_model * (tie_embeddings ? 1 : 2) + n_layer * layer_parameters(*this) + d_model;
}

void Config::validate(const std::string& where) const {
  if (d_model < 1 || n_layer < 1 || vocab_size < 1 || d_state < 1 || expand < 1 || dt_rank < 1) {
    fail(where, ": dimensions must be positive (d_model ", d_model, ", n_layer ", n_layer, ", vocab_size ", vocab_size,
         ", d_state ", d_state, ", expand ", expand, ", dt_rank ", dt_rank, ")");
  }
  if (d_state > kMaxState) fail(where, ": d_state ", d_state, " is larger than the supported ", kMaxState);
  if (d_conv < 1 || d_conv > 64) fail(where, ": d_conv ", d_conv, " is outside 1..64");
  if (int64_t{expand} * d_model > (int64_t{1} << 24)) {
    fail(where, ": d_inner = expand × d_model = ", int64_t{expand} * d_model, " is larger than the supported 2^24");
  }
  if (!std::isfinite(norm_eps) || norm_eps <= 0) fail(where, ": norm epsilon must be positive");
  if (eos_token_id < 0 || eos_token_id >= vocab_size) {
    fail(where, ": eos_token_id ", eos_token_id, " is not a token of the vocabulary of ", vocab_size);
  }
  // Every size the program computes from the config is at most the parameter count times a small
  // factor, in int64: a config whose fp32 parameters could not even be counted in bytes is refused here,
  // and the memory checks (core/limits.h) refuse what does not fit this machine.
  const double params = static_cast<double>(vocab_size) * d_model * (tie_embeddings ? 1 : 2) +
                        static_cast<double>(n_layer) * static_cast<double>(layer_parameters(*this)) + d_model;
  if (!(params * 4 < 0x1p62)) {
    fail(where, ": ", n_layer, " layers of d_model ", d_model, " and a vocabulary of ", vocab_size,
         " make about ", params, " parameters, too many to address");
  }
}

Config config_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where, ": config is not a JSON object");
  Config c;
  if (j.contains("d_model")) {  // the official mamba_ssm format
    c.d_model = get_int(j, "d_model", where, 0, true);
    c.n_layer = get_int(j, "n_layer", where, 0, true);
    int vocab = get_int(j, "vocab_size", where, 0, true);
    int pad = get_int(j, "pad_vocab_size_multiple", where, 8, false);
    c.vocab_size = (vocab + pad - 1) / pad * pad;
    json ssm = j.value("ssm_cfg", json::object());
    if (!ssm.is_object()) fail(where, ": field \"ssm_cfg\" must be an object");
    const std::string ssm_where = where + ": ssm_cfg";
    if (ssm.contains("layer") && ssm["layer"] != "Mamba1") {
      fail(ssm_where, ": layer ", json_brief(ssm["layer"]), " is not supported (only Mamba1)");
    }
    c.d_state = get_int(ssm, "d_state", ssm_where, 16, false);
    c.d_conv = get_int(ssm, "d_conv", ssm_where, 4, false);
    c.expand = get_int(ssm, "expand", ssm_where, 2, false);
    c.dt_rank = get_rank(ssm, "dt_rank", ssm_where, c.d_model);
    c.use_bias = get_bool(ssm, "bias", ssm_where, false);
    c.use_conv_bias = get_bool(ssm, "conv_bias", ssm_where, true);
    c.tie_embeddings = get_bool(j, "tie_embeddings", where, true);
    if (!get_bool(j, "rms_norm", where, true)) fail(where, ": rms_norm = false (LayerNorm) is not supported");
  } else if (j.contains("hidden_size")) {  // Hugging Face transformers' MambaConfig
    c.d_model = get_int(j, "hidden_size", where, 0, true);
    c.n_layer = get_int(j, "num_hidden_layers", where, 0, true);
    c.vocab_size = get_int(j, "vocab_size", where, 0, true);
    c.d_state = get_int(j, "state_size", where, 16, false);
    c.d_conv = get_int(j, "conv_kernel", where, 4, false);
    c.expand = get_int(j, "expand", where, 2, false);
    c.dt_rank = get_rank(j, "time_step_rank", where, c.d_model);
    c.use_bias = get_bool(j, "use_bias", where, false);
    c.use_conv_bias = get_bool(j, "use_conv_bias", where, true);
    c.tie_embeddings = get_bool(j, "tie_word_embeddings", where, true);
    if (j.contains("layer_norm_epsilon")) {
      if (!j["layer_norm_epsilon"].is_number()) fail(where, ": field \"layer_norm_epsilon\" must be a number");
      const double eps = j["layer_norm_epsilon"].get<double>();
      if (!(eps > 0 && eps <= FLT_MAX)) fail(where, ": field \"layer_norm_epsilon\" must be a positive float, got ", eps);
      c.norm_eps = static_cast<float>(eps);
    }
    if (j.contains("intermediate_size") && j["intermediate_size"].is_number_integer() &&
        j["intermediate_size"].get<int64_t>() != int64_t{c.expand} * c.d_model) {
      fail(where, ": intermediate_size ", json_brief(j["intermediate_size"]), " is not expand × hidden_size = ",
           int64_t{c.expand} * c.d_model);
    }
  } else {
    fail(where, ": neither a Hugging Face MambaConfig (hidden_size, ...) nor an official mamba_ssm config "
                "(d_model, ...)");
  }
  c.byte_level = get_bool(j, "byte_level", where, false);
  if (j.contains("ssm_mode") && !j["ssm_mode"].is_null()) {
    const json& mode = j["ssm_mode"];
    if (mode == "selective") {
      c.ssm_mode = SsmMode::Selective;
    } else if (mode == "lti") {
      c.ssm_mode = SsmMode::Lti;
    } else {
      fail(where, ": field \"ssm_mode\" must be \"selective\" or \"lti\", got ", json_brief(mode));
    }
  }
  if (j.contains("eos_token_id") && j["eos_token_id"].is_number_integer()) {
    const int64_t eos = j["eos_token_id"].get<int64_t>();  // validate() checks it against the vocabulary
    c.eos_token_id = eos < 0 || eos > INT32_MAX ? -1 : static_cast<int>(eos);
  }
  c.validate(where);
  return c;
}

Config load_config(const std::filesystem::path& dir) {
  std::filesystem::path path = dir / "config.json";
  if (!std::filesystem::exists(path)) fail(path.string(), ": not found (a model folder has config.json)");
  return config_from_json(read_json_file(path.string()), path.string());
}

json config_to_json(const Config& c) {
  json j = {
      {"architectures", {"MambaForCausalLM"}},
      {"model_type", "mamba"},
      {"hidden_size", c.d_model},
      {"num_hidden_layers", c.n_layer},
      {"vocab_size", c.vocab_size},
      {"state_size", c.d_state},
      {"conv_kernel", c.d_conv},
      {"expand", c.expand},
      {"intermediate_size", c.d_inner()},
      {"time_step_rank", c.dt_rank},
      {"time_step_scale", 1.0},
      {"time_step_min", 0.001},
      {"time_step_max", 0.1},
      {"time_step_init_scheme", "random"},
      {"time_step_floor", 1e-4},
      {"use_bias", c.use_bias},
      {"use_conv_bias", c.use_conv_bias},
      {"layer_norm_epsilon", c.norm_eps},
      {"hidden_act", "silu"},
      {"initializer_range", 0.1},
      {"residual_in_fp32", true},
      {"rescale_prenorm_residual", false},
      {"tie_word_embeddings", c.tie_embeddings},
      {"use_cache", true},
      {"bos_token_id", c.eos_token_id},
      {"eos_token_id", c.eos_token_id},
      {"pad_token_id", c.eos_token_id},
  };
  if (c.byte_level) j["byte_level"] = true;
  if (c.ssm_mode == SsmMode::Lti) j["ssm_mode"] = "lti";  // absent: selective, as every published model
  return j;
}

bool preset_config(const std::string& name, Config* out) {
  struct Preset {
    const char* name;
    int d_model, n_layer;
  };
  static const Preset presets[] = {
      {"130m", 768, 24}, {"370m", 1024, 48}, {"790m", 1536, 48}, {"1.4b", 2048, 48}, {"2.8b", 2560, 64}};
  for (const Preset& p : presets) {
    if (name == p.name) {
      Config c;
      c.d_model = p.d_model;
      c.n_layer = p.n_layer;
      c.vocab_size = 50280;  // GPT-NeoX-20B's 50277 tokens padded to a multiple of 8
      c.dt_rank = (p.d_model + 15) / 16;
      *out = c;
      return true;
    }
  }
  return false;
}

const char* preset_names() { return "130m, 370m, 790m, 1.4b, 2.8b"; }

}  // namespace mamba

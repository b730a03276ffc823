// Model configuration, read from config.json in either format people have:
//  - Hugging Face transformers' MambaConfig (hidden_size, num_hidden_layers, state_size, ...), and
//  - the official mamba_ssm MambaConfig (d_model, n_layer, ssm_cfg{...}, pad_vocab_size_multiple).
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace mamba {

// The SSM inside each block: the paper's selective S6 (Δ, B, C functions of the input), or the
// linear time-invariant ablation of Table 1 (an S4D-style diagonal SSM: Δ, B, C learned parameters).
enum class SsmMode { Selective, Lti };

struct Config {
  int d_model = 0;     // hidden size
  int n_layer = 0;
  int vocab_size = 0;  // rows of the embedding: the official vocab_size rounded up to pad_vocab_size_multiple
  int d_state = 16;    // N
  int d_conv = 4;      // width of the causal depthwise convolution
  int expand = 2;      // E: d_inner = E · d_model
  int dt_rank = 0;     // R: width of the low-rank Δ projection
  bool use_bias = false;       // biases on in_proj and out_proj
  bool use_conv_bias = true;
  bool tie_embeddings = true;  // the LM head is the embedding
  float norm_eps = 1e-5f;
  // Tokenizer facts carried in config.json. `byte_level` models (trained here) use bytes 0–255 plus an
  // end-of-document token; others use tokenizer.json beside the weights.
  bool byte_level = false;
  int eos_token_id = 0;
  // "ssm_mode" in config.json ("selective" when absent). In LTI mode x_proj and dt_proj.weight are
  // absent and each layer has B, C (d_inner, N) per channel and Δ = softplus(dt_proj.bias).
  SsmMode ssm_mode = SsmMode::Selective;

  int d_inner() const { return expand * d_model; }
  int64_t parameter_count() const;
  void validate(const std::string& where) const;
};

// Parses either format; `where` names the source in error messages.
Config config_from_json(const nlohmann::json& j, const std::string& where);
Config load_config(const std::filesystem::path& dir);
// The Hugging Face form, as transformers' MambaForCausalLM.from_pretrained reads it.
nlohmann::json config_to_json(const Config& config);

// Shapes of the published checkpoints: 130m, 370m, 790m, 1.4b, 2.8b (GPT-NeoX vocabulary, padded).
bool preset_config(const std::string& name, Config* out);
const char* preset_names();

}  // namespace mamba

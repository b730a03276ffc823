// The model's parameters: their names and shapes (Hugging Face naming, the order of the forward
// pass), one flat fp32 layout for them (training), and named views of them in their types (inference).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "ops/weight.h"

namespace mamba {

struct ParamSpec {
  std::string name;            // e.g. "backbone.layers.3.mixer.A_log"
  std::vector<int64_t> shape;  // as stored in model.safetensors
  int64_t offset = 0;          // into the flat parameter layout, in floats
  int64_t numel = 0;
  bool weight_decay = true;  // false for biases, norm weights, A_log and D (as the official code marks them)
  // The embedding and the projections: kept in the weight dtype a model is loaded with (F32, BF16, F16).
  // Every other parameter (norms, biases, conv, A_log, D, LTI B and C) is fp32 on every backend.
  bool matrix = false;
};

// Every parameter of a model with this config, in forward order; offsets give one flat layout.
std::vector<ParamSpec> param_specs(const Config& config);
int64_t param_layout_size(const std::vector<ParamSpec>& specs);

// One layer's parameters: the projections in their type (WeightView), the rest fp32.
struct LayerWeights {
  const float* norm;       // (d_model)
  WeightView in_proj_w;    // (2·d_inner, d_model): rows [0, d_inner) give x, [d_inner, 2·d_inner) give z
  const float* in_proj_b;  // (2·d_inner) or null
  const float* conv_w;     // (d_inner, 1, d_conv)
  const float* conv_b;     // (d_inner) or null
  WeightView x_proj_w;     // (dt_rank + 2N, d_inner): rows give δ, B, C; null in LTI mode
  WeightView dt_proj_w;    // (d_inner, dt_rank); null in LTI mode
  const float* dt_proj_b;  // (d_inner); in LTI mode Δ = softplus(dt_proj_b), the same at every step
  const float* A_log;      // (d_inner, N)
  const float* D;          // (d_inner)
  WeightView out_proj_w;   // (d_model, d_inner)
  const float* out_proj_b;  // (d_model) or null
  const float* lti_B;       // (d_inner, N) "mixer.B" in LTI mode, else null
  const float* lti_C;       // (d_inner, N) "mixer.C" in LTI mode, else null
};

struct Weights {
  WeightView embedding;  // (V, d_model)
  std::vector<LayerWeights> layers;
  const float* norm_f;  // (d_model)
  WeightView lm_head;   // (V, d_model); the embedding when tied
};

// Views for every spec, from `lookup` (the data of one spec, on whatever device the views are for).
// Parameters that are not matrices must be F32.
Weights bind_weights(const Config& config, const std::vector<ParamSpec>& specs,
                     const std::function<WeightView(const ParamSpec&)>& lookup);
// The same over one flat fp32 buffer laid out by `specs` (parameters or their gradients, in training).
Weights bind_weights(const Config& config, const std::vector<ParamSpec>& specs, const float* flat);

// The official initialisation (mamba_ssm's Mamba.__init__ and _init_weights), seeded:
// A_log = log(1..N), D = 1, in LTI mode B = 1 and C ~ N(0, 1) (S4D's initialisation of B and C), dt bias = softplus⁻¹(Δ) with Δ log-uniform in [1e-3, 0.1] floored at 1e-4,
// dt_proj weight U(±R^−½), embedding N(0, 0.02), out_proj scaled by 1/√n_layer, biases 0, norms 1.
void init_params(float* params, const Config& config, const std::vector<ParamSpec>& specs, uint64_t seed);

}  // namespace mamba

#include "model/weights.h"

#include <cmath>
#include <map>

#include "core/error.h"
#include "core/rng.h"

namespace mamba {

std::vector<ParamSpec> param_specs(const Config& c) {
  const int64_t d = c.d_model, di = c.d_inner(), n = c.d_state, r = c.dt_rank, v = c.vocab_size;
  std::vector<ParamSpec> specs;
  auto add = [&](std::string name, std::vector<int64_t> shape, bool decay, bool matrix = false) {
    ParamSpec s{std::move(name), std::move(shape), 0, 1, decay, matrix};
    for (int64_t x : s.shape) s.numel *= x;
    specs.push_back(std::move(s));
  };
  add("backbone.embeddings.weight", {v, d}, true, true);
  for (int i = 0; i < c.n_layer; i++) {
    const std::string p = "backbone.layers." + std::to_string(i) + ".";
    add(p + "norm.weight", {d}, false);
    add(p + "mixer.in_proj.weight", {2 * di, d}, true, true);
    if (c.use_bias) add(p + "mixer.in_proj.bias", {2 * di}, false);
    add(p + "mixer.conv1d.weight", {di, 1, c.d_conv}, true);
    if (c.use_conv_bias) add(p + "mixer.conv1d.bias", {di}, false);
    if (c.ssm_mode == SsmMode::Lti) {  // B and C are parameters; Δ is its bias alone
      add(p + "mixer.B", {di, n}, false);
      add(p + "mixer.C", {di, n}, false);
    } else {
      add(p + "mixer.x_proj.weight", {r + 2 * n, di}, true, true);
      add(p + "mixer.dt_proj.weight", {di, r}, true, true);
    }
    add(p + "mixer.dt_proj.bias", {di}, false);
    add(p + "mixer.A_log", {di, n}, false);
    add(p + "mixer.D", {di}, false);
    add(p + "mixer.out_proj.weight", {d, di}, true, true);
    if (c.use_bias) add(p + "mixer.out_proj.bias", {d}, false);
  }
  add("backbone.norm_f.weight", {d}, false);
  if (!c.tie_embeddings) add("lm_head.weight", {v, d}, true, true);
  int64_t offset = 0;
  for (ParamSpec& s : specs) {
    s.offset = offset;
    offset += (s.numel + 15) / 16 * 16;  // 64-byte aligned views
  }
  return specs;
}

int64_t param_layout_size(const std::vector<ParamSpec>& specs) {
  if (specs.empty()) return 0;
  return specs.back().offset + (specs.back().numel + 15) / 16 * 16;
}

Weights bind_weights(const Config& c, const std::vector<ParamSpec>& specs,
                     const std::function<WeightView(const ParamSpec&)>& lookup) {
  std::map<std::string, WeightView> by_name;
  for (const ParamSpec& s : specs) by_name[s.name] = lookup(s);
  auto matrix = [&](const std::string& name) -> WeightView {
    auto it = by_name.find(name);
    return it == by_name.end() ? WeightView{} : it->second;
  };
  auto f32 = [&](const std::string& name) { return matrix(name).f32(); };
  Weights w;
  w.embedding = matrix("backbone.embeddings.weight");
  for (int i = 0; i < c.n_layer; i++) {
    const std::string p = "backbone.layers." + std::to_string(i) + ".";
    w.layers.push_back(LayerWeights{
        f32(p + "norm.weight"), matrix(p + "mixer.in_proj.weight"), f32(p + "mixer.in_proj.bias"),
        f32(p + "mixer.conv1d.weight"), f32(p + "mixer.conv1d.bias"), matrix(p + "mixer.x_proj.weight"),
        matrix(p + "mixer.dt_proj.weight"), f32(p + "mixer.dt_proj.bias"), f32(p + "mixer.A_log"),
        f32(p + "mixer.D"), matrix(p + "mixer.out_proj.weight"), f32(p + "mixer.out_proj.bias"), f32(p + "mixer.B"),
        f32(p + "mixer.C")});
  }
  w.norm_f = f32("backbone.norm_f.weight");
  w.lm_head = c.tie_embeddings ? w.embedding : matrix("lm_head.weight");
  return w;
}

Weights bind_weights(const Config& c, const std::vector<ParamSpec>& specs, const float* flat) {
  return bind_weights(c, specs, [&](const ParamSpec& s) { return WeightView{flat + s.offset, DType::F32}; });
}

void init_params(float* params, const Config& c, const std::vector<ParamSpec>& specs, uint64_t seed) {
  Rng rng(seed);
  const double dt_min = 1e-3, dt_max = 0.1, dt_floor = 1e-4;
  auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (const ParamSpec& s : specs) {
    float* p = params + s.offset;
    const int64_t fan_in = s.shape.size() >= 2 ? s.numel / s.shape[0] : 1;
    // nn.Linear / nn.Conv1d default: kaiming_uniform(a=√5) = U(±1/√fan_in).
    const double kaiming = 1.0 / std::sqrt(static_cast<double>(fan_in));
    if (ends_with(s.name, "embeddings.weight") || s.name == "lm_head.weight") {
      for (int64_t i = 0; i < s.numel; i++) p[i] = static_cast<float>(0.02 * rng.normal());
    } else if (ends_with(s.name, "norm.weight") || ends_with(s.name, "norm_f.weight") || ends_with(s.name, ".D")) {
      for (int64_t i = 0; i < s.numel; i++) p[i] = 1.0f;
    } else if (ends_with(s.name, "A_log")) {
      for (int64_t i = 0; i < s.numel; i++) p[i] = static_cast<float>(std::log(static_cast<double>(i % c.d_state + 1)));
    } else if (ends_with(s.name, "dt_proj.weight")) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(c.dt_rank));
      for (int64_t i = 0; i < s.numel; i++) p[i] = static_cast<float>(rng.uniform(-bound, bound));
    } else if (ends_with(s.name, "dt_proj.bias")) {
      for (int64_t i = 0; i < s.numel; i++) {
        double dt = std::exp(rng.uniform() * (std::log(dt_max) - std::log(dt_min)) + std::log(dt_min));
        dt = std::max(dt, dt_floor);
        p[i] = static_cast<float>(dt + std::log(-std::expm1(-dt)));  // softplus⁻¹(dt)
      }
    } else if (ends_with(s.name, "conv1d.bias")) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(c.d_conv));
      for (int64_t i = 0; i < s.numel; i++) p[i] = static_cast<float>(rng.uniform(-bound, bound));
    } else if (ends_with(s.name, "mixer.B")) {
      for (int64_t i = 0; i < s.numel; i++) p[i] = 1.0f;
    } else if (ends_with(s.name, "mixer.C")) {
      for (int64_t i = 0; i < s.numel; i++) p[i] = static_cast<float>(rng.normal());
    } else if (ends_with(s.name, ".bias")) {
      for (int64_t i = 0; i < s.numel; i++) p[i] = 0.0f;
    } else {
      // in_proj, conv1d, x_proj, out_proj weights; out_proj rescaled by 1/√n_layer (one residual per layer).
      const double scale = ends_with(s.name, "out_proj.weight") ? 1.0 / std::sqrt(static_cast<double>(c.n_layer)) : 1.0;
      for (int64_t i = 0; i < s.numel; i++) p[i] = static_cast<float>(scale * rng.uniform(-kaiming, kaiming));
    }
  }
}

}  // namespace mamba

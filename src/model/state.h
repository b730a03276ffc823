// The recurrent state of B sequences: per layer, the conv tail (the last d_conv − 1 inputs of the
// causal convolution) and the SSM state h. Always fp32, whatever the weights' dtype. Constant in size:
// it is all that generation needs to carry from one token to the next.
#pragma once

#include <filesystem>
#include <vector>

#include "model/config.h"

namespace mamba {

struct State {
  int n_layer = 0, batch = 0, d_inner = 0, d_conv = 0, d_state = 0;
  std::vector<float> conv;  // (n_layer, B, d_conv − 1, d_inner), oldest input first
  std::vector<float> ssm;   // (n_layer, B, d_inner, N)

  State() = default;
  State(const Config& config, int batch);

  void reset();  // zeros: the state before any token
  float* conv_layer(int layer) { return conv.data() + static_cast<int64_t>(layer) * batch * (d_conv - 1) * d_inner; }
  float* ssm_layer(int layer) { return ssm.data() + static_cast<int64_t>(layer) * batch * d_inner * d_state; }

  // Sequence b of this state as a state of batch 1, and the reverse.
  State sequence(int b) const;
  void set_sequence(int b, const State& one);

  // A safetensors file with tensors "conv" and "ssm", written atomically.
  void save(const std::filesystem::path& path) const;
  // Loads a state saved by save(); fails if its shapes do not fit `config`.
  static State load(const std::filesystem::path& path, const Config& config);
};

}  // namespace mamba

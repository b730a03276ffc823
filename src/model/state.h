// The recurrent state of B sequences: per layer, the conv tail (the last d_conv − 1 inputs of the
// causal convolution) and the SSM state h. Always fp32, whatever the weights' dtype. Constant in size:
// it is all that generation needs to carry from one token to the next. It lives on a backend's device
// (the engine that runs it must use the same one); conv() and ssm() copy it to the host.
#pragma once

#include <filesystem>
#include <vector>

#include "model/config.h"
#include "ops/backend.h"

namespace mamba {

class State {
 public:
  int n_layer = 0, batch = 0, d_inner = 0, d_conv = 0, d_state = 0;

  State() = default;
  // Zeros: the state before any token.
  State(const Config& config, int batch, Backend& backend = Backend::cpu());
  State(State&&) = default;
  State& operator=(State&&) = default;
  State(const State& other);
  State& operator=(const State& other);

  Backend& backend() const { return *backend_; }
  void reset();

  // Device pointers to one layer's part: (B, d_conv − 1, d_inner), oldest input first; (B, d_inner, N).
  float* conv_layer(int layer) const { return conv_.as<float>() + static_cast<int64_t>(layer) * batch * conv_row(); }
  float* ssm_layer(int layer) const { return ssm_.as<float>() + static_cast<int64_t>(layer) * batch * ssm_row(); }
  int64_t conv_row() const { return static_cast<int64_t>(d_conv - 1) * d_inner; }  // floats per sequence and layer
  int64_t ssm_row() const { return static_cast<int64_t>(d_inner) * d_state; }
  size_t conv_bytes() const { return sizeof(float) * static_cast<size_t>(n_layer * batch * conv_row()); }
  size_t ssm_bytes() const { return sizeof(float) * static_cast<size_t>(n_layer * batch * ssm_row()); }

  // Host copies: (n_layer, B, d_conv − 1, d_inner) and (n_layer, B, d_inner, N); and the reverse.
  std::vector<float> conv() const;
  std::vector<float> ssm() const;
  void set(const std::vector<float>& conv, const std::vector<float>& ssm);

  // Sequence b of this state as a state of batch 1 (on the same device), and the reverse.
  State sequence(int b) const;
  void set_sequence(int b, const State& one);
  // Keeps the sequences `keep` (ascending), in that order, as sequences 0, 1, ...: batch becomes keep.size().
  void keep_rows(const std::vector<int>& keep);

  // A safetensors file with tensors "conv" and "ssm", written atomically.
  void save(const std::filesystem::path& path) const;
  // Loads a state saved by save() onto `backend`; fails if its shapes do not fit `config`.
  static State load(const std::filesystem::path& path, const Config& config, Backend& backend = Backend::cpu());

 private:
  Backend* backend_ = nullptr;
  Buffer conv_, ssm_;
};

}  // namespace mamba

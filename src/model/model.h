// A Mamba language model's configuration and parameters, loaded from a Hugging Face model folder
// (config.json + model.safetensors, or shards) or built in memory (init, training).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

namespace mamba {

class Model {
 public:
  // Reads DIR/config.json and the weights. F32 tensors are used in place from the memory map; F16 and
  // BF16 are converted to fp32 once. Errors name the file and the tensor or field.
  static Model load(const std::filesystem::path& dir);
  // Takes parameters laid out by param_specs(config).
  static Model from_params(const Config& config, std::vector<float> params);

  Model(Model&&) = default;
  Model& operator=(Model&&) = default;

  const Config& config() const { return config_; }
  const Weights& weights() const { return weights_; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const float* A(int layer) const { return A_.data() + static_cast<int64_t>(layer) * config_.d_inner() * config_.d_state; }
  const float* param(const ParamSpec& spec) const { return param_views_[&spec - specs_.data()]; }

  DType file_dtype() const { return file_dtype_; }
  int64_t mapped_bytes() const { return mapped_bytes_; }      // used in place from the file
  int64_t converted_bytes() const { return converted_bytes_; }  // held as converted fp32

  // Recomputes what is derived from the parameters (A = −exp(A_log)); call after changing them.
  void refresh_derived();

  // Writes DIR/config.json and DIR/model.safetensors (Hugging Face names), each atomically.
  void save(const std::filesystem::path& dir, DType dtype) const;

 private:
  Model() = default;
  void bind();

  Config config_;
  std::vector<ParamSpec> specs_;
  std::vector<const float*> param_views_;  // one per spec
  SafeTensorsReader reader_;               // keeps the memory maps alive
  std::vector<float> owned_;               // converted or in-memory parameters
  std::vector<float> A_;                   // (n_layer, d_inner, N)
  Weights weights_;
  DType file_dtype_ = DType::F32;
  int64_t mapped_bytes_ = 0, converted_bytes_ = 0;
};

}  // namespace mamba

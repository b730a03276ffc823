// A Mamba language model's configuration and parameters, loaded from a Hugging Face model folder
// (config.json + model.safetensors, or shards) or built in memory (init, training).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

namespace mamba {

// Copies a (rows, cols) weight into dst's type (and, for I8, its scales), dst's memory already sized:
// any of F32, F16, BF16 and I8 to any other, quantizing or dequantizing row by row.
void convert_weight(const WeightView& dst, const WeightView& src, int64_t rows, int64_t cols);

class Model {
 public:
  // Reads DIR/config.json and the weights. The matrices (ParamSpec::matrix: the embedding and the
  // projections) are kept in `weight_dtype`, by default the file's (I8: quantized on load, or read as
  // `save(dir, DType::I8)` wrote them); every other parameter in fp32. A tensor already in its type is
  // used in place from the memory map; the others are converted once.
  // Errors name the file and the tensor or field.
  static Model load(const std::filesystem::path& dir, std::optional<DType> weight_dtype = std::nullopt);
  // Takes fp32 parameters laid out by param_specs(config).
  static Model from_params(const Config& config, std::vector<float> params);

  Model(Model&&) = default;
  Model& operator=(Model&&) = default;

  const Config& config() const { return config_; }
  const Weights& weights() const { return weights_; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const float* A(int layer) const { return A_.data() + static_cast<int64_t>(layer) * config_.d_inner() * config_.d_state; }
  WeightView param(const ParamSpec& spec) const { return param_views_[&spec - specs_.data()]; }
  // Every parameter as fp32, laid out by param_specs (training starts from this).
  std::vector<float> params_f32() const;

  DType file_dtype() const { return file_dtype_; }
  DType weight_dtype() const { return weight_dtype_; }  // of the matrices
  int64_t mapped_bytes() const { return mapped_bytes_; }        // used in place from the file
  int64_t converted_bytes() const { return converted_bytes_; }  // held converted (or built in memory)

  // Recomputes what is derived from the parameters (A = −exp(A_log)); call after changing them.
  void refresh_derived();

  // Writes DIR/config.json and DIR/model.safetensors (Hugging Face names) with every tensor in `dtype`,
  // each file atomically. With DType::I8 the matrices are quantized (core/dtype.h's q8 blocks), each
  // with an F16 tensor "<name>_scale" (rows, ceil(cols / 32)), and every other parameter is F32.
  void save(const std::filesystem::path& dir, DType dtype) const;

 private:
  Model() = default;
  void bind();

  Config config_;
  std::vector<ParamSpec> specs_;
  std::vector<WeightView> param_views_;  // one per spec
  SafeTensorsReader reader_;             // keeps the memory maps alive
  std::vector<float> owned_;             // converted or in-memory parameters (typed bytes, 64-byte aligned views)
  std::vector<float> A_;                   // (n_layer, d_inner, N)
  Weights weights_;
  DType file_dtype_ = DType::F32, weight_dtype_ = DType::F32;
  int64_t mapped_bytes_ = 0, converted_bytes_ = 0;
};

}  // namespace mamba

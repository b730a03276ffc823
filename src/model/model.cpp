#include "model/model.h"

#include <cmath>

#include "core/error.h"
#include "core/limits.h"
#include "model/validate.h"

namespace mamba {

Model Model::load(const std::filesystem::path& dir) {
  Model m;
  m.config_ = load_config(dir);
  m.reader_ = SafeTensorsReader::open_dir(dir);
  check_config_fits_files(m.config_, m.reader_, (dir / "config.json").string());
  m.specs_ = param_specs(m.config_);
  const std::string files = m.reader_.describe();

  // Find each tensor and check its shape; F32 tensors aligned to 4 bytes are used from the map.
  std::vector<const TensorView*> found;
  int64_t to_convert = 0;
  for (const ParamSpec& s : m.specs_) {
    const TensorView* t = m.reader_.find(s.name);
    if (!t && s.name == "backbone.embeddings.weight") t = m.reader_.find("backbone.embedding.weight");
    if (!t) fail(files, ": missing tensor ", s.name);
    if (t->shape != s.shape) {
      TensorView expected;
      expected.shape = s.shape;
      fail(files, ": tensor ", t->name, " has shape ", t->shape_string(), " but config.json implies ",
           expected.shape_string());
    }
    const bool in_place = t->dtype == DType::F32 && reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0;
    if (!in_place) to_convert += s.numel;
    found.push_back(t);
  }
  m.file_dtype_ = found.front()->dtype;
  const int64_t derived = int64_t{m.config_.n_layer} * m.config_.d_inner() * m.config_.d_state;  // A
  check_memory(sat_mul(sat_add(to_convert, derived), 4), files + ": the weights as fp32");
  m.owned_.resize(static_cast<size_t>(to_convert));
  int64_t next = 0;
  for (const TensorView* t : found) {
    if (t->dtype == DType::F32 && reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0) {
      m.param_views_.push_back(reinterpret_cast<const float*>(t->data));
      m.mapped_bytes_ += static_cast<int64_t>(t->nbytes);
    } else {
      convert_to_f32(m.owned_.data() + next, t->data, t->dtype, static_cast<size_t>(t->numel()));
      m.param_views_.push_back(m.owned_.data() + next);
      next += t->numel();
    }
    check_finite(m.param_views_.back(), t->numel(), files + ": tensor " + t->name);
  }
  m.converted_bytes_ = to_convert * 4;
  m.bind();
  return m;
}

Model Model::from_params(const Config& config, std::vector<float> params) {
  Model m;
  m.config_ = config;
  m.specs_ = param_specs(config);
  if (static_cast<int64_t>(params.size()) != param_layout_size(m.specs_)) {
    fail("parameter buffer has ", params.size(), " floats, the config needs ", param_layout_size(m.specs_));
  }
  m.owned_ = std::move(params);
  for (const ParamSpec& s : m.specs_) m.param_views_.push_back(m.owned_.data() + s.offset);
  m.converted_bytes_ = static_cast<int64_t>(m.owned_.size()) * 4;
  m.bind();
  return m;
}

void Model::bind() {
  weights_ = bind_weights(config_, specs_, [&](const ParamSpec& s) { return param(s); });
  refresh_derived();
}

void Model::refresh_derived() {
  const int64_t per_layer = static_cast<int64_t>(config_.d_inner()) * config_.d_state;
  A_.resize(static_cast<size_t>(per_layer * config_.n_layer));
  for (int l = 0; l < config_.n_layer; l++) {
    const float* a_log = weights_.layers[l].A_log;
    for (int64_t i = 0; i < per_layer; i++) A_[l * per_layer + i] = -std::exp(a_log[i]);
  }
}

void Model::save(const std::filesystem::path& dir, DType dtype) const {
  std::filesystem::create_directories(dir);
  std::vector<TensorToWrite> tensors;
  for (const ParamSpec& s : specs_) tensors.push_back({s.name, s.shape, param(s), dtype});
  write_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}});
  const std::string text = config_to_json(config_).dump(2) + "\n";
  write_file_atomic(dir / "config.json", [&](std::FILE* f) { write_bytes(f, text.data(), text.size(), dir / "config.json"); });
}

}  // namespace mamba

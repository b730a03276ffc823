#include "model/model.h"

#include <cmath>

#include "core/error.h"

namespace mamba {

Model Model::load(const std::filesystem::path& dir, std::optional<DType> weight_dtype) {
  Model m;
  m.config_ = load_config(dir);
  m.specs_ = param_specs(m.config_);
  m.reader_ = SafeTensorsReader::open_dir(dir);
  const std::string files = m.reader_.describe();

  // Find each tensor and check its shape.
  std::vector<const TensorView*> found;
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
    found.push_back(t);
  }
  m.file_dtype_ = found.front()->dtype;
  m.weight_dtype_ = weight_dtype.value_or(m.file_dtype_);

  // A tensor already in its type, aligned for it, is used from the map; the others are converted into
  // one buffer, each view 64-byte aligned.
  auto wanted = [&](const ParamSpec& s) { return s.matrix ? m.weight_dtype_ : DType::F32; };
  auto in_place = [&](const ParamSpec& s, const TensorView* t) {
    return t->dtype == wanted(s) && reinterpret_cast<uintptr_t>(t->data) % dtype_size(t->dtype) == 0;
  };
  auto padded_floats = [](int64_t bytes) { return (bytes + 63) / 64 * 16; };
  int64_t owned_floats = 0;
  for (size_t i = 0; i < found.size(); i++) {
    const ParamSpec& s = m.specs_[i];
    if (!in_place(s, found[i])) owned_floats += padded_floats(s.numel * static_cast<int64_t>(dtype_size(wanted(s))));
  }
  m.owned_.resize(static_cast<size_t>(owned_floats));
  int64_t next = 0;
  for (size_t i = 0; i < found.size(); i++) {
    const ParamSpec& s = m.specs_[i];
    const TensorView* t = found[i];
    if (in_place(s, t)) {
      m.param_views_.push_back(WeightView{t->data, t->dtype});
      m.mapped_bytes_ += static_cast<int64_t>(t->nbytes);
    } else {
      float* dst = m.owned_.data() + next;
      convert(dst, wanted(s), t->data, t->dtype, static_cast<size_t>(s.numel));
      m.param_views_.push_back(WeightView{dst, wanted(s)});
      const int64_t bytes = s.numel * static_cast<int64_t>(dtype_size(wanted(s)));
      m.converted_bytes_ += bytes;
      next += padded_floats(bytes);
    }
  }
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
  for (const ParamSpec& s : m.specs_) m.param_views_.push_back(WeightView{m.owned_.data() + s.offset, DType::F32});
  m.converted_bytes_ = static_cast<int64_t>(m.owned_.size()) * 4;
  m.bind();
  return m;
}

std::vector<float> Model::params_f32() const {
  std::vector<float> params(static_cast<size_t>(param_layout_size(specs_)), 0.0f);
  for (const ParamSpec& s : specs_) {
    const WeightView v = param(s);
    convert_to_f32(params.data() + s.offset, v.data, v.dtype, static_cast<size_t>(s.numel));
  }
  return params;
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
  // The writer takes fp32: typed parameters are widened first.
  std::vector<std::vector<float>> widened;
  std::vector<TensorToWrite> tensors;
  for (const ParamSpec& s : specs_) {
    const WeightView v = param(s);
    const float* data = static_cast<const float*>(v.data);
    if (v.dtype != DType::F32) {
      widened.emplace_back(static_cast<size_t>(s.numel));
      convert_to_f32(widened.back().data(), v.data, v.dtype, static_cast<size_t>(s.numel));
      data = widened.back().data();
    }
    tensors.push_back({s.name, s.shape, data, dtype});
  }
  write_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}});
  const std::string text = config_to_json(config_).dump(2) + "\n";
  write_file_atomic(dir / "config.json", [&](std::FILE* f) { write_bytes(f, text.data(), text.size(), dir / "config.json"); });
}

}  // namespace mamba

#include "model/model.h"

#include <cmath>
#include <map>

#include "core/error.h"
#include "core/limits.h"
#include "model/validate.h"

namespace mamba {

namespace {

// Row r of a (rows, cols) weight as fp32.
void widen_row(float* out, const WeightView& v, int64_t r, int64_t cols) {
  if (v.dtype == DType::I8) {
    dequantize_q8(out, static_cast<const int8_t*>(v.data) + r * cols, v.scales + r * q8_blocks(cols), 1, cols);
  } else {
    convert_to_f32(out, static_cast<const uint8_t*>(v.data) + r * cols * static_cast<int64_t>(dtype_size(v.dtype)),
                   v.dtype, static_cast<size_t>(cols));
  }
}

}  // namespace

void convert_weight(const WeightView& dst, const WeightView& src, int64_t rows, int64_t cols) {
  if (dst.dtype != DType::I8 && src.dtype != DType::I8) {
    convert(const_cast<void*>(dst.data), dst.dtype, src.data, src.dtype, static_cast<size_t>(rows * cols));
    return;
  }
  // Row by row through fp32: quantizing or dequantizing needs a row's blocks together.
#pragma omp parallel if (rows * cols > (1 << 20))
  {
    std::vector<float> row(static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      widen_row(row.data(), src, r, cols);
      if (dst.dtype == DType::I8) {
        quantize_q8(static_cast<int8_t*>(const_cast<void*>(dst.data)) + r * cols,
                    const_cast<uint16_t*>(dst.scales) + r * q8_blocks(cols), row.data(), 1, cols);
      } else {
        convert_from_f32(static_cast<uint8_t*>(const_cast<void*>(dst.data)) + r * cols * static_cast<int64_t>(dtype_size(dst.dtype)),
                         row.data(), dst.dtype, static_cast<size_t>(cols));
      }
    }
  }
}

Model Model::load(const std::filesystem::path& dir, std::optional<DType> weight_dtype) {
  Model m;
  m.config_ = load_config(dir);
  m.reader_ = SafeTensorsReader::open_dir(dir);
  check_config_fits_files(m.config_, m.reader_, (dir / "config.json").string());
  m.specs_ = param_specs(m.config_);
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
  // An I8 matrix (a file `mambacpp quantize` wrote) comes with its F16 scales, "<name>_scale".
  std::vector<WeightView> sources;
  for (size_t i = 0; i < found.size(); i++) {
    const ParamSpec& s = m.specs_[i];
    const TensorView* t = found[i];
    WeightView v{t->data, t->dtype};
    if (t->dtype == DType::I8) {
      if (!s.matrix) fail(files, ": tensor ", t->name, " is I8, but only the matrices may be quantized");
      const TensorView* sc = m.reader_.find(t->name + "_scale");
      const std::vector<int64_t> shape{s.shape[0], q8_blocks(s.numel / s.shape[0])};
      if (!sc) fail(files, ": I8 tensor ", t->name, " has no scales (", t->name, "_scale)");
      if (sc->dtype != DType::F16 || sc->shape != shape) {
        TensorView expected;
        expected.shape = shape;
        fail(files, ": tensor ", sc->name, " should be F16 of shape ", expected.shape_string(), " (one scale per ",
             kQ8Block, " values of a row), not ", dtype_name(sc->dtype), " ", sc->shape_string());
      }
      v.scales = reinterpret_cast<const uint16_t*>(sc->data);
    }
    sources.push_back(v);
  }
  m.file_dtype_ = found.front()->dtype;
  m.weight_dtype_ = weight_dtype.value_or(m.file_dtype_);

  // A tensor already in its type, aligned for it, is used from the map; the others are converted into
  // one buffer, each view 64-byte aligned.
  auto wanted = [&](const ParamSpec& s) { return s.matrix ? m.weight_dtype_ : DType::F32; };
  auto aligned = [](const void* p, size_t size) { return reinterpret_cast<uintptr_t>(p) % size == 0; };
  auto in_place = [&](const ParamSpec& s, const WeightView& v) {
    return v.dtype == wanted(s) && aligned(v.data, dtype_size(v.dtype)) && (!v.scales || aligned(v.scales, 2));
  };
  auto padded_floats = [](int64_t bytes) { return (bytes + 63) / 64 * 16; };
  auto scale_bytes = [](const ParamSpec& s, DType t) {
    return t == DType::I8 ? s.shape[0] * q8_blocks(s.numel / s.shape[0]) * 2 : int64_t{0};
  };
  int64_t owned_floats = 0;
  for (size_t i = 0; i < found.size(); i++) {
    const ParamSpec& s = m.specs_[i];
    if (in_place(s, sources[i])) continue;
    owned_floats += padded_floats(s.numel * static_cast<int64_t>(dtype_size(wanted(s)))) +
                    padded_floats(scale_bytes(s, wanted(s)));
  }
  const int64_t derived = int64_t{m.config_.n_layer} * m.config_.d_inner() * m.config_.d_state;  // A
  check_memory(sat_mul(sat_add(owned_floats, derived), 4), files + ": the weights in " + std::string(dtype_name(m.weight_dtype_)));
  m.owned_.resize(static_cast<size_t>(owned_floats));
  int64_t next = 0;
  for (size_t i = 0; i < found.size(); i++) {
    const ParamSpec& s = m.specs_[i];
    const WeightView& src = sources[i];
    const int64_t bytes = s.numel * static_cast<int64_t>(dtype_size(wanted(s))), sbytes = scale_bytes(s, wanted(s));
    if (in_place(s, src)) {
      m.param_views_.push_back(src);
      m.mapped_bytes_ += static_cast<int64_t>(found[i]->nbytes) + scale_bytes(s, src.dtype);
      continue;
    }
    WeightView dst{m.owned_.data() + next, wanted(s)};
    next += padded_floats(bytes);
    if (sbytes) {
      dst.scales = reinterpret_cast<const uint16_t*>(m.owned_.data() + next);
      next += padded_floats(sbytes);
    }
    convert_weight(dst, src, s.matrix ? s.shape[0] : 1, s.matrix ? s.numel / s.shape[0] : s.numel);
    m.param_views_.push_back(dst);
    m.converted_bytes_ += bytes + sbytes;
  }
  // Checked in the file's values: a NaN is named with its tensor and index, not turned into NaN logits.
  for (size_t i = 0; i < found.size(); i++) {
    const ParamSpec& s = m.specs_[i];
    check_finite(sources[i], s.matrix ? s.shape[0] : 1, s.matrix ? s.numel / s.shape[0] : s.numel,
                 files + ": tensor " + found[i]->name);
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
    const int64_t rows = s.matrix ? s.shape[0] : 1;
    convert_weight(WeightView{params.data() + s.offset, DType::F32}, param(s), rows, s.numel / rows);
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
  // The writer takes fp32 or bytes already in the file's type. With I8 the matrices are written
  // quantized, each with its scales as "<name>_scale", and every other parameter in F32.
  std::vector<std::vector<float>> widened;
  std::vector<std::vector<uint8_t>> quantized;
  std::vector<TensorToWrite> tensors;
  for (const ParamSpec& s : specs_) {
    const WeightView v = param(s);
    const int64_t rows = s.matrix ? s.shape[0] : 1, cols = s.numel / rows;
    if (dtype == DType::I8 && s.matrix) {
      WeightView q = v;
      if (v.dtype != DType::I8) {
        const int64_t at = (s.numel + 1) / 2 * 2;  // the scales 2-byte aligned after the values
        quantized.emplace_back(static_cast<size_t>(at + 2 * rows * q8_blocks(cols)));
        uint8_t* base = quantized.back().data();
        q = WeightView{base, DType::I8, reinterpret_cast<const uint16_t*>(base + at)};
        convert_weight(q, v, rows, cols);
      }
      tensors.push_back({s.name, s.shape, nullptr, DType::I8, q.data});
      tensors.push_back({s.name + "_scale", {rows, q8_blocks(cols)}, nullptr, DType::F16, q.scales});
      continue;
    }
    const float* data = static_cast<const float*>(v.data);
    if (v.dtype != DType::F32) {
      widened.emplace_back(static_cast<size_t>(s.numel));
      convert_weight(WeightView{widened.back().data(), DType::F32}, v, rows, cols);
      data = widened.back().data();
    }
    tensors.push_back({s.name, s.shape, data, dtype == DType::I8 ? DType::F32 : dtype});
  }
  std::map<std::string, std::string> metadata{{"format", "pt"}};
  if (dtype == DType::I8) {
    metadata["quantization"] = "mambacpp q8: the matrices as int8 in blocks of 32 along each row, one F16 scale per "
                               "block in <name>_scale (GGUF q8_0's values and scales in two planes); the rest F32";
  }
  write_safetensors(dir / "model.safetensors", tensors, metadata);
  const std::string text = config_to_json(config_).dump(2) + "\n";
  write_file_atomic(dir / "config.json", [&](std::FILE* f) { write_bytes(f, text.data(), text.size(), dir / "config.json"); });
}

}  // namespace mamba

#include "model/state.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/safetensors.h"
#include "model/validate.h"

namespace mamba {

State::State(const Config& c, int b, Backend& backend)
    : n_layer(c.n_layer), batch(b), d_inner(c.d_inner()), d_conv(c.d_conv), d_state(c.d_state), backend_(&backend) {
  conv_ = Buffer(backend, conv_bytes());
  ssm_ = Buffer(backend, ssm_bytes());
  reset();
}

State::State(const State& other) { *this = other; }

State& State::operator=(const State& other) {
  if (this == &other) return *this;
  n_layer = other.n_layer, batch = other.batch, d_inner = other.d_inner, d_conv = other.d_conv, d_state = other.d_state;
  backend_ = other.backend_;
  conv_ = backend_ ? Buffer(*backend_, conv_bytes()) : Buffer();
  ssm_ = backend_ ? Buffer(*backend_, ssm_bytes()) : Buffer();
  if (conv_bytes()) backend_->copy(conv_.data(), other.conv_.data(), conv_bytes());
  if (ssm_bytes()) backend_->copy(ssm_.data(), other.ssm_.data(), ssm_bytes());
  return *this;
}

void State::reset() {
  if (conv_bytes()) backend_->fill_zero(conv_.data(), conv_bytes());
  if (ssm_bytes()) backend_->fill_zero(ssm_.data(), ssm_bytes());
}

std::vector<float> State::conv() const {
  std::vector<float> out(conv_bytes() / sizeof(float));
  if (!out.empty()) backend_->download(out.data(), conv_.data(), conv_bytes());
  return out;
}

std::vector<float> State::ssm() const {
  std::vector<float> out(ssm_bytes() / sizeof(float));
  if (!out.empty()) backend_->download(out.data(), ssm_.data(), ssm_bytes());
  return out;
}

void State::set(const std::vector<float>& conv, const std::vector<float>& ssm) {
  if (conv.size() * sizeof(float) != conv_bytes() || ssm.size() * sizeof(float) != ssm_bytes()) {
    fail("state: ", conv.size(), " + ", ssm.size(), " values do not fit a state of ", batch, " sequences");
  }
  if (!conv.empty()) backend_->upload(conv_.data(), conv.data(), conv_bytes());
  if (!ssm.empty()) backend_->upload(ssm_.data(), ssm.data(), ssm_bytes());
}

State State::sequence(int b) const {
  State one;
  one.n_layer = n_layer, one.batch = 1, one.d_inner = d_inner, one.d_conv = d_conv, one.d_state = d_state;
  one.backend_ = backend_;
  one.conv_ = Buffer(*backend_, one.conv_bytes());
  one.ssm_ = Buffer(*backend_, one.ssm_bytes());
  for (int l = 0; l < n_layer; l++) {
    backend_->copy(one.conv_layer(l), conv_layer(l) + b * conv_row(), sizeof(float) * conv_row());
    backend_->copy(one.ssm_layer(l), ssm_layer(l) + b * ssm_row(), sizeof(float) * ssm_row());
  }
  return one;
}

void State::set_sequence(int b, const State& one) {
  if (one.batch != 1 || one.n_layer != n_layer || one.conv_row() != conv_row() || one.ssm_row() != ssm_row()) {
    fail("state: a sequence of a different shape cannot be set into this state");
  }
  for (int l = 0; l < n_layer; l++) {
    if (one.backend_ == backend_) {
      backend_->copy(conv_layer(l) + b * conv_row(), one.conv_layer(l), sizeof(float) * conv_row());
      backend_->copy(ssm_layer(l) + b * ssm_row(), one.ssm_layer(l), sizeof(float) * ssm_row());
    } else {  // across devices, through the host
      std::vector<float> tmp(static_cast<size_t>(std::max(conv_row(), ssm_row())));
      one.backend_->download(tmp.data(), one.conv_layer(l), sizeof(float) * conv_row());
      backend_->upload(conv_layer(l) + b * conv_row(), tmp.data(), sizeof(float) * conv_row());
      one.backend_->download(tmp.data(), one.ssm_layer(l), sizeof(float) * ssm_row());
      backend_->upload(ssm_layer(l) + b * ssm_row(), tmp.data(), sizeof(float) * ssm_row());
    }
  }
}

void State::keep_rows(const std::vector<int>& keep) {
  const int K = static_cast<int>(keep.size());
  // Row j of the new layout is row keep[j] ≥ j of the old: moving forward in this order never overwrites a
  // row still to be read, and the layers pack down in order too (layer l starts at l·K ≤ l·B rows).
  for (int l = 0; l < n_layer; l++) {
    for (int j = 0; j < K; j++) {
      if (keep[j] < j || keep[j] >= batch) fail("state: keep_rows takes ascending rows of the batch");
      const int64_t from = int64_t{l} * batch + keep[j], to = int64_t{l} * K + j;
      if (from == to) continue;
      backend_->copy(conv_.as<float>() + to * conv_row(), conv_.as<float>() + from * conv_row(), sizeof(float) * conv_row());
      backend_->copy(ssm_.as<float>() + to * ssm_row(), ssm_.as<float>() + from * ssm_row(), sizeof(float) * ssm_row());
    }
  }
  batch = K;  // the buffers keep their size; only the first K rows of each layer are used
}

void State::save(const std::filesystem::path& path) const {
  const std::vector<float> c = conv(), s = ssm();
  write_safetensors(path,
                    {{"conv", {n_layer, batch, d_conv - 1, d_inner}, c.data()},
                     {"ssm", {n_layer, batch, d_inner, d_state}, s.data()}},
                    {{"format", "mambacpp-state"}});
}

State State::load(const std::filesystem::path& path, const Config& config, Backend& backend) {
  SafeTensorsReader reader = SafeTensorsReader::open_file(path);
  const TensorView* conv = reader.find("conv");
  const TensorView* ssm = reader.find("ssm");
  if (!conv || !ssm) fail(path.string(), ": not a saved state (tensors \"conv\" and \"ssm\" expected)");
  if (conv->dtype != DType::F32 || ssm->dtype != DType::F32 || conv->shape.size() != 4 || ssm->shape.size() != 4) {
    fail(path.string(), ": state tensors must be 4-D F32");
  }
  // The shapes are checked before the state is allocated: its batch comes from the file.
  const int64_t batch = conv->shape[1];
  const int64_t di = config.d_inner();
  const std::vector<int64_t> want_conv{config.n_layer, batch, config.d_conv - 1, di};
  const std::vector<int64_t> want_ssm{config.n_layer, batch, di, config.d_state};
  if (batch < 1 || batch > INT32_MAX || conv->shape != want_conv || ssm->shape != want_ssm) {
    fail(path.string(), ": state shapes conv ", conv->shape_string(), " and ssm ", ssm->shape_string(),
         " do not fit this model");
  }
  std::vector<float> c(static_cast<size_t>(conv->numel())), h(static_cast<size_t>(ssm->numel()));
  convert_to_f32(c.data(), conv->data, DType::F32, c.size());
  convert_to_f32(h.data(), ssm->data, DType::F32, h.size());
  check_finite(c.data(), static_cast<int64_t>(c.size()), path.string() + ": tensor conv");
  check_finite(h.data(), static_cast<int64_t>(h.size()), path.string() + ": tensor ssm");
  State s(config, static_cast<int>(batch), backend);
  s.set(c, h);
  return s;
}

}  // namespace mamba

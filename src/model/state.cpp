#include "model/state.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/safetensors.h"

namespace mamba {

State::State(const Config& c, int b)
    : n_layer(c.n_layer), batch(b), d_inner(c.d_inner()), d_conv(c.d_conv), d_state(c.d_state) {
  conv.assign(static_cast<size_t>(n_layer) * batch * (d_conv - 1) * d_inner, 0.0f);
  ssm.assign(static_cast<size_t>(n_layer) * batch * d_inner * d_state, 0.0f);
}

void State::reset() {
  std::fill(conv.begin(), conv.end(), 0.0f);
  std::fill(ssm.begin(), ssm.end(), 0.0f);
}

State State::sequence(int b) const {
  State one = *this;
  one.batch = 1;
  const int64_t nc = static_cast<int64_t>(d_conv - 1) * d_inner, ns = static_cast<int64_t>(d_inner) * d_state;
  one.conv.resize(static_cast<size_t>(n_layer * nc));
  one.ssm.resize(static_cast<size_t>(n_layer * ns));
  for (int l = 0; l < n_layer; l++) {
    std::memcpy(one.conv.data() + l * nc, conv.data() + (l * batch + b) * nc, sizeof(float) * nc);
    std::memcpy(one.ssm.data() + l * ns, ssm.data() + (l * batch + b) * ns, sizeof(float) * ns);
  }
  return one;
}

void State::set_sequence(int b, const State& one) {
  const int64_t nc = static_cast<int64_t>(d_conv - 1) * d_inner, ns = static_cast<int64_t>(d_inner) * d_state;
  for (int l = 0; l < n_layer; l++) {
    std::memcpy(conv.data() + (l * batch + b) * nc, one.conv.data() + l * nc, sizeof(float) * nc);
    std::memcpy(ssm.data() + (l * batch + b) * ns, one.ssm.data() + l * ns, sizeof(float) * ns);
  }
}

void State::save(const std::filesystem::path& path) const {
  write_safetensors(path,
                    {{"conv", {n_layer, batch, d_conv - 1, d_inner}, conv.data()},
                     {"ssm", {n_layer, batch, d_inner, d_state}, ssm.data()}},
                    {{"format", "mambacpp-state"}});
}

State State::load(const std::filesystem::path& path, const Config& config) {
  SafeTensorsReader reader = SafeTensorsReader::open_file(path);
  const TensorView* conv = reader.find("conv");
  const TensorView* ssm = reader.find("ssm");
  if (!conv || !ssm) fail(path.string(), ": not a saved state (tensors \"conv\" and \"ssm\" expected)");
  if (conv->dtype != DType::F32 || ssm->dtype != DType::F32 || conv->shape.size() != 4 || ssm->shape.size() != 4) {
    fail(path.string(), ": state tensors must be 4-D F32");
  }
  const int batch = static_cast<int>(conv->shape[1]);
  State s(config, batch);
  const std::vector<int64_t> want_conv{s.n_layer, batch, s.d_conv - 1, s.d_inner};
  const std::vector<int64_t> want_ssm{s.n_layer, batch, s.d_inner, s.d_state};
  if (conv->shape != want_conv || ssm->shape != want_ssm) {
    fail(path.string(), ": state shapes conv ", conv->shape_string(), " and ssm ", ssm->shape_string(),
         " do not fit this model");
  }
  convert_to_f32(s.conv.data(), conv->data, DType::F32, s.conv.size());
  convert_to_f32(s.ssm.data(), ssm->data, DType::F32, s.ssm.size());
  return s;
}

}  // namespace mamba

#include "model/state.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/safetensors.h"
#include "model/validate.h"

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
  // The shapes are checked before the state is allocated: its batch comes from the file.
  const int64_t batch = conv->shape[1];
  const int64_t di = config.d_inner();
  const std::vector<int64_t> want_conv{config.n_layer, batch, config.d_conv - 1, di};
  const std::vector<int64_t> want_ssm{config.n_layer, batch, di, config.d_state};
  if (batch < 1 || batch > INT32_MAX || conv->shape != want_conv || ssm->shape != want_ssm) {
    fail(path.string(), ": state shapes conv ", conv->shape_string(), " and ssm ", ssm->shape_string(),
         " do not fit this model");
  }
  State s(config, static_cast<int>(batch));
  convert_to_f32(s.conv.data(), conv->data, DType::F32, s.conv.size());
  convert_to_f32(s.ssm.data(), ssm->data, DType::F32, s.ssm.size());
  check_finite(s.conv.data(), static_cast<int64_t>(s.conv.size()), path.string() + ": tensor conv");
  check_finite(s.ssm.data(), static_cast<int64_t>(s.ssm.size()), path.string() + ": tensor ssm");
  return s;
}

}  // namespace mamba

#include "model/validate.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/limits.h"
#include "model/mixer.h"
#include "model/weights.h"

namespace mamba {

void check_config_fits_files(const Config& c, const SafeTensorsReader& reader, const std::string& config_where) {
  // The names param_specs() would list: per layer norm, in_proj, conv1d, x_proj and dt_proj (or B and C),
  // dt bias, A_log, D, out_proj, with the optional biases; the embedding, norm_f and an untied head.
  const int64_t per_layer = 9 + (c.use_bias ? 2 : 0) + (c.use_conv_bias ? 1 : 0);
  const int64_t tensors = sat_add(sat_mul(c.n_layer, per_layer), c.tie_embeddings ? 2 : 3);
  const int64_t held = static_cast<int64_t>(reader.tensors().size());
  if (tensors > held) {
    // Some tensor is missing. It is among the first `held` + 1 names, those of a model cut to at most
    // `held` layers, so the list built to name it is no longer than the file's own.
    Config cut = c;
    cut.n_layer = static_cast<int>(std::min<int64_t>(c.n_layer, held));
    for (const ParamSpec& s : param_specs(cut)) {
      if (!reader.find(s.name) && !(s.name == "backbone.embeddings.weight" && reader.find("backbone.embedding.weight"))) {
        fail(reader.describe(), ": missing tensor ", s.name, " (", config_where, " describes ", c.n_layer, " layers, ",
             tensors, " tensors; the file holds ", held, ")");
      }
    }
  }
  int64_t stored = 0;
  bool quantized = false;  // int8 matrices: 1 byte per parameter (and their scales)
  for (const auto& [name, t] : reader.tensors()) {
    stored = sat_add(stored, static_cast<int64_t>(t.nbytes));
    quantized |= t.dtype == DType::I8;
  }
  const int64_t needed = sat_mul(c.parameter_count(), quantized ? 1 : 2);  // validate() keeps the count in range
  if (needed > stored) {
    fail(config_where, ": describes ", c.parameter_count(), " parameters, at least ", format_bytes(needed),
         " of weights, but ", reader.describe(), " holds ", format_bytes(stored));
  }
}

int64_t first_nonfinite(const float* data, int64_t n) {
  // A branch-free pass that vectorizes (|x| ≤ FLT_MAX is false for NaN and ±Inf), then a search only
  // when it found something: a model's weights are read once at load, at memory speed.
  constexpr int64_t kBlock = 4096;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    bool bad = false;
    for (int64_t i = start; i < end; i++) bad |= !(std::fabs(data[i]) <= FLT_MAX);
    if (bad) {
      for (int64_t i = start; i < end; i++) {
        if (!std::isfinite(data[i])) return i;
      }
    }
  }
  return -1;
}

void check_finite(const float* data, int64_t n, const std::string& what) {
  const int64_t i = first_nonfinite(data, n);
  if (i >= 0) fail(what, " holds a non-finite value (", data[i], ") at index ", i, " of ", n);
}

void check_finite(const WeightView& w, int64_t rows, int64_t cols, const std::string& what) {
  const int64_t n = rows * cols;
  // A file's tensor may start at any byte (after an int8 tensor of odd length): values are read through
  // memcpy, into an aligned block for fp32, never through a misaligned pointer.
  const auto* bytes = static_cast<const char*>(w.data);
  if (w.dtype == DType::F32) {
    if (reinterpret_cast<uintptr_t>(bytes) % alignof(float) == 0) {
      return check_finite(static_cast<const float*>(w.data), n, what);
    }
    constexpr int64_t kBlock = 4096;
    std::vector<float> block(static_cast<size_t>(std::min(n, kBlock)));
    for (int64_t start = 0; start < n; start += kBlock) {
      const int64_t count = std::min(kBlock, n - start);
      std::memcpy(block.data(), bytes + start * 4, static_cast<size_t>(count) * 4);
      if (const int64_t i = first_nonfinite(block.data(), count); i >= 0) {
        fail(what, " holds a non-finite value (", block[i], ") at index ", start + i, " of ", n);
      }
    }
    return;
  }
  // 16-bit floats: Inf and NaN are the values whose exponent bits are all ones.
  auto first_bad = [](const void* h, int64_t count, uint16_t exponent) {
    const auto* p = static_cast<const char*>(h);
    for (int64_t i = 0; i < count; i++) {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      if ((v & exponent) == exponent) return i;
    }
    return int64_t{-1};
  };
  auto value_at = [](const void* h, int64_t i) {
    uint16_t v;
    std::memcpy(&v, static_cast<const char*>(h) + 2 * i, 2);
    return v;
  };
  if (w.dtype == DType::I8) {
    const int64_t blocks = rows * q8_blocks(cols), i = first_bad(w.scales, blocks, 0x7c00);
    if (i >= 0) {
      fail(what, " has a non-finite scale (", f16_to_f32(value_at(w.scales, i)), ") for row ", i / q8_blocks(cols),
           ", values ", i % q8_blocks(cols) * kQ8Block, " on");
    }
    return;
  }
  const bool bf16 = w.dtype == DType::BF16;
  const int64_t i = first_bad(w.data, n, bf16 ? 0x7f80 : 0x7c00);
  if (i >= 0) {
    const uint16_t v = value_at(w.data, i);
    fail(what, " holds a non-finite value (", bf16 ? bf16_to_f32(v) : f16_to_f32(v), ") at index ", i, " of ", n);
  }
}

int64_t parameter_bytes(const Config& c) {
  // Each tensor is padded to 16 floats in the flat layout; a ParamSpec with its name is about 128 bytes.
  const int64_t tensors = sat_add(sat_mul(c.n_layer, 12), 3);
  return sat_add(sat_mul(sat_add(c.parameter_count(), sat_mul(tensors, 16)), 4), sat_mul(tensors, 128));
}

int64_t state_bytes(const Config& c, int64_t batch) {
  const int64_t per_sequence = int64_t{c.n_layer} * c.d_inner() * (c.d_conv - 1 + c.d_state);
  return sat_mul(sat_mul(batch, per_sequence), 4);
}

int64_t engine_bytes(const Config& c, int64_t rows) {
  // hidden, residual, normed, last (d each), xz (2·Di), xc, delta, y (Di each), xdbl (R + 2N): fp32 at
  // most; the token ids of a pass twice; the ops' workspace (the scan's chunk states), for the pass's rows
  // as one sequence or as many; 256 bytes of padding per view (Engine::reserve lays out 13).
  if (rows > INT32_MAX) return INT64_MAX;
  const int64_t per_row = 4 * int64_t{c.d_model} + 5 * int64_t{c.d_inner()} + c.dt_rank + 2 * c.d_state;
  const int r = static_cast<int>(std::max<int64_t>(rows, 1));
  const auto workspace = static_cast<int64_t>(std::max(mixer_workspace(Backend::cpu(), c, DType::F32, 1, r),
                                                       mixer_workspace(Backend::cpu(), c, DType::F32, r, 1)));
  return sat_add(sat_add(sat_mul(sat_mul(rows, per_row), 4), sat_mul(rows, 8)), sat_add(13 * 256, workspace));
}

int64_t forward_bytes(const Config& c, int64_t B, int64_t L, int64_t logit_rows, int64_t max_tokens) {
  const int64_t tokens = sat_mul(B, L);
  int64_t bytes = engine_bytes(c, std::min(tokens, std::max(max_tokens, B)));
  bytes = sat_add(bytes, sat_mul(tokens, 4));
  bytes = sat_add(bytes, state_bytes(c, B));
  return sat_add(bytes, sat_mul(sat_mul(logit_rows, c.vocab_size), 4));
}

}  // namespace mamba

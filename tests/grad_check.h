// The whole model's parameter gradient against central finite differences of its loss: a few entries
// of every tensor of a small model built from `config`, perturbed from the official initialisation.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/rng.h"
#include "model/backprop.h"

namespace mamba::test {

inline void expect_model_gradient_matches_finite_differences(const Config& c) {
  auto specs = param_specs(c);
  std::vector<float> params(static_cast<size_t>(param_layout_size(specs)));
  init_params(params.data(), c, specs, 5);
  Rng rng(9);
  for (float& p : params) p += static_cast<float>(0.1 * rng.normal());
  const int B = 2, L = 6;
  std::vector<int32_t> ids(B * L), targets(B * L);
  for (int i = 0; i < B * L; i++) {
    ids[i] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size)));
    targets[i] = i % 5 == 0 ? -100 : static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size)));
  }
  Backprop bp(c, B, L, 4);
  std::vector<float> grads(params.size(), 0.0f);
  bp.step(params.data(), grads.data(), ids.data(), targets.data(), -100);
  for (const ParamSpec& s : specs) {
    for (int64_t i : {int64_t{0}, s.numel / 2, s.numel - 1}) {
      float& p = params[s.offset + i];
      const float saved = p, h = 1e-2f * std::max(1.0f, std::abs(saved));
      p = saved + h;
      const double up = bp.step(params.data(), nullptr, ids.data(), targets.data(), -100);
      p = saved - h;
      const double down = bp.step(params.data(), nullptr, ids.data(), targets.data(), -100);
      p = saved;
      const double fd = (up - down) / (2.0 * static_cast<double>(h));
      EXPECT_NEAR(grads[s.offset + i], fd, 2e-3 + 2e-2 * std::abs(fd)) << s.name << "[" << i << "]";
    }
  }
}

}  // namespace mamba::test

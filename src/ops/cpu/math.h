// Elementwise functions written so that the compiler vectorizes loops over them (no branches, no
// libm calls). exp and log follow Cephes' single-precision polynomials (≈1 ulp on their range).
#pragma once

#include <bit>
#include <cstdint>

#include "core/runtime.h"

namespace mamba::cpu {

inline float exp_approx(float x) {
  x = x < -87.33654f ? -87.33654f : x;
  x = x > 88.72283f ? 88.72283f : x;
  // n = round(x / ln 2) by the 1.5·2²³ trick: vectorizes, where floorf does not.
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // Cody–Waite: ln 2 split in two so that x − n·ln2 is exact.
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // A NaN input stays NaN through p; converting it to an integer would be undefined, so n is 0 there.
  int32_t bits = (static_cast<int32_t>(n == n ? n : 0.0f) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

// Natural log for x > 0 (normal numbers).
inline float log_approx(float x) {
  int32_t bits = std::bit_cast<int32_t>(x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  float y = p * m * z;
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  return m + y + e * 0.693359375f;
}

// log(1 + y) for y ≥ 0, accurate for small y too: log(u)·y/(u − 1) with u = 1 + y cancels the
// rounding of u (Goldberg, "What every computer scientist should know", Theorem 4).
inline float log1p_approx(float y) {
  float u = 1.0f + y;
  float d = u - 1.0f;
  return d == 0.0f ? y : log_approx(u) * (y / d);
}

// softplus(x) = log(1 + eˣ) = max(x, 0) + log1p(e^−|x|); like torch, x itself above 20.
inline float softplus(float x) {
  float ax = x < 0.0f ? -x : x;
  float s = (x > 0.0f ? x : 0.0f) + log1p_approx(exp_approx(-ax));
  return x > 20.0f ? x : s;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float silu(float x) { return x * sigmoid(x); }

// Defined in core/runtime.h with the rest of the process setup; the scans use it in their threads.
using mamba::FlushSubnormals;

}  // namespace mamba::cpu

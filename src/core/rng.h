// A small seeded random generator (SplitMix64) whose whole state is one integer, so that runs are
// reproducible across platforms and the state can be saved in a checkpoint. Normal draws use
// Box–Muller rather than std::normal_distribution, whose output is implementation-defined.
#pragma once

#include <cmath>
#include <cstdint>

namespace mamba {

struct Rng {
  uint64_t state;

  explicit Rng(uint64_t seed = 0) : state(seed) {}

  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  double normal() {
    double u1 = 1.0 - uniform();  // (0, 1]
    double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  uint64_t below(uint64_t n) { return next() % n; }
};

}  // namespace mamba

// Decode's weight reads alone: the CPU's GEMV kernels (cpu::matmul_rows) over the projections of a
// 24-layer 130m model (in_proj 3072 × 768, x_proj 80 × 1536, dt_proj 1536 × 48, out_proj 768 × 1536) and
// its LM head (50280 × 768), in every weight type, with `rows` activation rows. A pass calls them in the
// model's order over 24 distinct copies, so the weights come from memory as in a decode step; the time
// beside `mambacpp bench`'s step is what the rest of a step (scan, conv, norms, threads) costs. Prints
// one JSON line per weight type: ms per pass, GB/s of weights read, the mean ms of each kind of matrix.
//
//   cpu_gemv [--threads N] [--rows M] [--repeats R] [--layers 24] [--dtype F32|BF16|F16|I8]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "core/runtime.h"
#include "model/model.h"
#include "ops/cpu/simd.h"

namespace {

using namespace mamba;
using Clock = std::chrono::steady_clock;

struct Shape {
  const char* name;
  int N, K;
};

// One (N, K) weight in `dtype`, from normal values.
struct Matrix {
  std::vector<uint8_t> bytes;
  WeightView view;
  int64_t weight_bytes = 0;
};

Matrix make(DType dtype, int N, int K, Rng& rng) {
  std::vector<float> w(static_cast<size_t>(N) * K);
  for (float& x : w) x = static_cast<float>(rng.normal() * 0.05);
  Matrix m;
  const int64_t values = int64_t{N} * K * static_cast<int64_t>(dtype_size(dtype));
  const int64_t scales = dtype == DType::I8 ? 2 * N * q8_blocks(K) : 0;
  m.bytes.resize(static_cast<size_t>(values + scales + 64));
  m.view = WeightView{m.bytes.data(), dtype, dtype == DType::I8 ? reinterpret_cast<uint16_t*>(m.bytes.data() + values) : nullptr};
  convert_weight(m.view, WeightView{w.data(), DType::F32}, N, K);
  m.weight_bytes = values + scales;
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  relaunch_with_passive_wait(argv);  // as mambacpp runs: idle threads sleep
  int threads = 2, rows = 1, repeats = 20, layers = 24;
  std::string only;  // one weight type's name (F32, BF16, F16, I8), or all
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--dtype")) only = argv[i + 1];
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--rows")) rows = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--repeats")) repeats = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--layers")) layers = std::atoi(argv[i + 1]);
  }
  if (rows < 1 || rows > cpu::kGemvMaxRows || threads < 1 || repeats < 1 || layers < 1) {
    std::fprintf(stderr, "cpu_gemv: --rows 1..%lld, --threads, --repeats, --layers ≥ 1\n",
                 static_cast<long long>(cpu::kGemvMaxRows));
    return 2;
  }
  configure_runtime(threads);
  const Shape layer_shapes[] = {{"in_proj", 3072, 768}, {"x_proj", 80, 1536}, {"dt_proj", 1536, 48}, {"out_proj", 768, 1536}};
  const Shape head{"head", 50280, 768};
  std::vector<float> x(static_cast<size_t>(rows) * 3072), out(static_cast<size_t>(rows) * 50280);
  Rng rng(7);
  for (float& v : x) v = static_cast<float>(rng.normal());

  for (DType dtype : {DType::F32, DType::BF16, DType::F16, DType::I8}) {
    if (!only.empty() && only != dtype_name(dtype)) continue;
    std::vector<Matrix> mats;
    std::vector<Shape> order;
    int64_t bytes = 0;
    for (int l = 0; l < layers; l++) {
      for (const Shape& s : layer_shapes) {
        mats.push_back(make(dtype, s.N, s.K, rng));
        order.push_back(s);
      }
    }
    mats.push_back(make(dtype, head.N, head.K, rng));
    order.push_back(head);
    for (const Matrix& m : mats) bytes += m.weight_bytes;

    std::map<std::string, double> by_matrix;  // seconds over all timed passes
    auto pass = [&](bool timed) {
      for (size_t i = 0; i < mats.size(); i++) {
        MatmulParams p;
        p.out = out.data(), p.ldo = order[i].N, p.inp = x.data(), p.ldi = order[i].K;
        p.weight = mats[i].view, p.M = rows, p.K = order[i].K, p.N = order[i].N;
        const auto start = Clock::now();
        cpu::matmul_rows(p);
        if (timed) by_matrix[order[i].name] += std::chrono::duration<double>(Clock::now() - start).count();
      }
    };
    pass(false);  // warm: first touch, page faults
    std::vector<double> times;
    for (int r = 0; r < repeats; r++) {
      const auto start = Clock::now();
      pass(true);
      times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    }
    nlohmann::json shares;
    for (const auto& [name, seconds] : by_matrix) shares[name] = seconds / repeats * 1e3;
    std::sort(times.begin(), times.end());
    const double median = times[times.size() / 2];
    nlohmann::json line = {{"dtype", dtype_name(dtype)},   {"threads", threads},
                           {"rows", rows},                 {"layers", layers},
                           {"kernels", cpu::simd_target()}, {"weight_bytes", bytes},
                           {"ms_per_pass", median * 1e3},   {"best_ms", times.front() * 1e3},
                           {"gb_per_s", static_cast<double>(bytes) / median / 1e9}, {"mean_ms_by_matrix", shares}};
    std::printf("%s\n", line.dump().c_str());
  }
  return 0;
}

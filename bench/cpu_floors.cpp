// The CPU's two limits that bound inference, measured on this machine with the threads given: the read
// bandwidth (a vectorized sum over a buffer far larger than the caches: what decode needs, since a token
// reads every weight once) and the GEMM rate on prefill's shape (512 × 3072 × 768, the 130m in_proj):
// fp32 through the library's sgemm (oneDNN or OpenBLAS, ops/cpu/blas.h), OpenBLAS's own beside it (its
// kernels follow OPENBLAS_CORETYPE), and bf16 products where the CPU has them. Prints one JSON line;
// bench/cpu_vs_llamacpp.sh turns them into floors.
//
//   cpu_floors [--threads N] [--mib 512]
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "ops/cpu/blas.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Best of `repeats` passes: the machine may be shared, the best pass is the closest to the limit.
template <class F>
double best_seconds(int repeats, F&& f) {
  double best = 1e30;
  for (int r = 0; r < repeats; r++) {
    auto start = Clock::now();
    f();
    best = std::min(best, seconds_since(start));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  size_t mib = 512;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--mib")) mib = static_cast<size_t>(std::atoll(argv[i + 1]));
  }
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);

  // Read bandwidth: each thread sums its half; 8 independent sums keep the loads in flight.
  const size_t n = mib * 1024 * 1024 / sizeof(float);
  std::vector<float> buffer(n);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) buffer[i] = static_cast<float>(i % 7);  // first touch by the reading thread
  volatile float sink = 0;
  const double read_s = best_seconds(5, [&] {
    float total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (size_t i = 0; i < n; i += 64) {
      float s[8] = {};
      for (int j = 0; j < 64; j += 8) {
#pragma omp simd
        for (int k = 0; k < 8; k++) s[k] += buffer[i + j + k];
      }
      for (float v : s) total += v;
    }
    sink = total;
  });
  const double read_gbs = static_cast<double>(n * sizeof(float)) / read_s / 1e9;

  // sgemm: out (512, 3072) = x (512, 768) · w (3072, 768)ᵀ, as the model calls it.
  const int M = 512, N = 3072, K = 768;
  std::vector<float> x(static_cast<size_t>(M) * K, 0.5f), w(static_cast<size_t>(N) * K, 0.25f), out(static_cast<size_t>(M) * N);
  const double flops = 2.0 * M * N * K;
  const double gflops = flops / best_seconds(10, [&] {
    mamba::cpu::sgemm(false, true, M, N, K, 1.0f, x.data(), K, w.data(), K, 0.0f, out.data(), N);
  }) / 1e9;
  const double openblas_gflops = flops / best_seconds(10, [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x.data(), K, w.data(), K, 0.0f, out.data(), N);
  }) / 1e9;

  nlohmann::json line = {{"threads", threads},          {"read_bytes", n * sizeof(float)}, {"read_gb_per_s", read_gbs},
                         {"sgemm_shape", "512x3072x768"}, {"sgemm_gflop_per_s", gflops},  {"gemm", mamba::cpu::gemm_describe()},
                         {"openblas_sgemm_gflop_per_s", openblas_gflops}, {"blas", openblas_get_config()}};
  if (mamba::cpu::bf16_gemm_available()) {
    const std::vector<uint16_t> xb(x.size(), mamba::f32_to_bf16(0.5f)), wb(w.size(), mamba::f32_to_bf16(0.25f));
    line["bf16_gemm_gflop_per_s"] = flops / best_seconds(10, [&] {
      mamba::cpu::gemm_bf16(out.data(), N, xb.data(), K, wb.data(), M, K, N);
    }) / 1e9;
  }
  std::printf("%s\n", line.dump().c_str());
  (void)sink;
  return 0;
}

// The prefill's matrix products through the GEMM libraries Debian packages, on this machine: the four
// projections of a 130m (or 1.4b) layer over 512 tokens, C (M, N) = A (M, K) · Wᵀ with W stored (N, K) as the
// model stores its weights, fp32, the threads of OMP_NUM_THREADS. Built once per library (dev/gemm/run.sh),
// since each of them exports cblas_sgemm; prints one JSON line per shape: GFLOP/s, the median of 7 runs.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#if defined(USE_DNNL)
#include <dnnl.h>
#else
#include <cblas.h>
#endif

namespace {

void gemm(int M, int N, int K, const float* a, const float* w, float* c) {
#if defined(USE_DNNL)
  // oneDNN's row-major sgemm: C = A · Wᵀ.
  dnnl_sgemm('N', 'T', M, N, K, 1.0f, a, K, w, K, 0.0f, c, N);
#else
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, w, K, 0.0f, c, N);
#endif
}

struct Shape {
  const char* name;
  int N, K;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string model = argc > 1 ? argv[1] : "130m";
  const int M = argc > 2 ? std::atoi(argv[2]) : 512;
  const int d = model == "1.4b" ? 2048 : 768, di = 2 * d, r = (d + 15) / 16;
  const Shape shapes[] = {{"in_proj", 2 * di, d}, {"x_proj", r + 32, di}, {"dt_proj", di, r}, {"out_proj", d, di}};
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  double layer_flops = 0, layer_seconds = 0;
  for (const Shape& s : shapes) {
    std::vector<float> a(static_cast<size_t>(M) * s.K), w(static_cast<size_t>(s.N) * s.K), c(static_cast<size_t>(M) * s.N);
    for (float& x : a) x = normal(rng);
    for (float& x : w) x = normal(rng) * 0.02f;
    gemm(M, s.N, s.K, a.data(), w.data(), c.data());  // warm: threads started, pages touched
    std::vector<double> times;
    for (int rep = 0; rep < 7; rep++) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 5; i++) gemm(M, s.N, s.K, a.data(), w.data(), c.data());
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 5);
    }
    std::sort(times.begin(), times.end());
    const double t = times[times.size() / 2], flops = 2.0 * M * s.N * s.K;
    layer_flops += flops;
    layer_seconds += t;
    std::printf("{\"lib\": \"%s\", \"model\": \"%s\", \"op\": \"%s\", \"M\": %d, \"N\": %d, \"K\": %d, \"ms\": %.4f, "
                "\"GFLOPs\": %.1f}\n",
                LIB_NAME, model.c_str(), s.name, M, s.N, s.K, t * 1e3, flops / t / 1e9);
  }
  std::printf("{\"lib\": \"%s\", \"model\": \"%s\", \"op\": \"layer\", \"M\": %d, \"ms\": %.4f, \"GFLOPs\": %.1f}\n",
              LIB_NAME, model.c_str(), M, layer_seconds * 1e3, layer_flops / layer_seconds / 1e9);
  return 0;
}

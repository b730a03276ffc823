// The prefill's matrix products through the GEMM libraries Debian packages, on this machine: the four
// projections of a 130m (or 1.4b) layer over 512 tokens, C (M, N) = A (M, K) · Wᵀ with W stored (N, K) as the
// model stores its weights, fp32, the threads of OMP_NUM_THREADS. Built once per library (dev/gemm/run.sh),
// since each of them exports cblas_sgemm; prints one JSON line per shape: GFLOP/s, the median of 7 runs.
// USE_DNNL_BF16: oneDNN's matmul on bf16 activations and weights with fp32 sums and output (the
// --bf16-products path of src/ops/cpu/blas.cpp), the weights read in place as (N, K).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#if defined(USE_DNNL_BF16)
#include <cstring>
#include <dnnl.hpp>
#elif defined(USE_DNNL)
#include <dnnl.h>
#else
#include <cblas.h>
#endif

namespace {

#if defined(USE_DNNL_BF16)
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// The operands rounded once (outside the timing), the primitive made once per shape.
void gemm(int M, int N, int K, const float* a, const float* w, float* c) {
  using dt = dnnl::memory::data_type;
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  static dnnl::stream stream(engine);
  struct Prepared {
    const float* a = nullptr;
    int M = 0, N = 0, K = 0;
    std::vector<uint16_t> a16, w16;
    dnnl::matmul primitive;
  };
  static Prepared p;
  if (p.a != a || p.M != M || p.N != N || p.K != K) {  // a new shape (its buffers may reuse the old address)
    p.a = a, p.M = M, p.N = N, p.K = K;
    p.a16.resize(static_cast<size_t>(M) * K);
    p.w16.resize(static_cast<size_t>(N) * K);
    for (size_t i = 0; i < p.a16.size(); i++) p.a16[i] = to_bf16(a[i]);
    for (size_t i = 0; i < p.w16.size(); i++) p.w16[i] = to_bf16(w[i]);
    const dnnl::memory::desc src({M, K}, dt::bf16, {K, 1}), weights({K, N}, dt::bf16, {1, K}), dst({M, N}, dt::f32, {N, 1});
    p.primitive = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, weights, dst), engine));
  }
  dnnl::memory src({{M, K}, dt::bf16, {K, 1}}, engine, p.a16.data());
  dnnl::memory weights({{K, N}, dt::bf16, {1, K}}, engine, p.w16.data());
  dnnl::memory dst({{M, N}, dt::f32, {N, 1}}, engine, c);
  p.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
  stream.wait();
}
#else
void gemm(int M, int N, int K, const float* a, const float* w, float* c) {
#if defined(USE_DNNL)
  // oneDNN's row-major sgemm: C = A · Wᵀ.
  dnnl_sgemm('N', 'T', M, N, K, 1.0f, a, K, w, K, 0.0f, c, N);
#else
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, w, K, 0.0f, c, N);
#endif
}
#endif

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

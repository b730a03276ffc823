#include "ops/cpu/blas.h"

#include <map>
#include <mutex>
#include <tuple>

#include "core/error.h"
#include "core/runtime.h"
#include "ops/cpu/simd.h"

#if defined(MAMBA_ONEDNN)
#include <dnnl.hpp>
#else
#include <cblas.h>
#endif

namespace mamba::cpu {

#if defined(MAMBA_ONEDNN)

std::string gemm_describe() {
  const dnnl_version_t* v = dnnl_version();
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
         " GEMMs" + (!bf16_gemm_available() ? "" : bf16_products() ? ", bf16 products" : ", bf16 products off");
}

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const dnnl_status_t status = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb,
                                          beta, C, ldc);
  if (status != dnnl_success) fail("sgemm: oneDNN refused an (", M, ", ", K, ") x (", K, ", ", N, ") product (status ", status, ")");
}

bool bf16_gemm_available() {
  static const bool cpu_has = __builtin_cpu_supports("avx512bf16");
  return cpu_has && simd_target().rfind("AVX3", 0) == 0;
}

namespace {

// One matmul primitive per shape and output stride, made once: making one (choosing among oneDNN's
// implementations, generating its code) costs far more than a small product.
struct Bf16Gemm {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::mutex mutex;
  std::map<std::tuple<int64_t, int64_t, int, int, int64_t>, dnnl::matmul> primitives;

  dnnl::matmul get(int64_t M, int64_t ldi, int K, int N, int64_t ldo) {
    using dt = dnnl::memory::data_type;
    std::lock_guard<std::mutex> lock(mutex);
    const auto key = std::make_tuple(M, ldi, K, N, ldo);
    auto it = primitives.find(key);
    if (it != primitives.end()) return it->second;
    if (primitives.size() >= 256) primitives.clear();  // prompts of many lengths: keep it bounded
    const dnnl::memory::desc src({M, K}, dt::bf16, {ldi, 1});
    const dnnl::memory::desc weights({K, N}, dt::bf16, {1, K});  // stored (N, K): the transpose in place
    const dnnl::memory::desc dst({M, N}, dt::f32, {ldo, 1});
    dnnl::matmul primitive(dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, weights, dst), engine));
    return primitives.emplace(key, primitive).first->second;
  }
};

Bf16Gemm& bf16_gemms() {
  static Bf16Gemm g;
  return g;
}

}  // namespace

void gemm_bf16(float* out, int64_t ldo, const uint16_t* inp, int64_t ldi, const uint16_t* weight, int64_t M, int K,
               int N) {
  if (!bf16_gemm_available()) fail("gemm_bf16: this CPU (or the SIMD target it is held to) has no bf16 products");
  if (M <= 0 || N <= 0) return;
  using dt = dnnl::memory::data_type;
  try {
    Bf16Gemm& g = bf16_gemms();
    dnnl::matmul primitive = g.get(M, ldi, K, N, ldo);
    // The memory objects only describe the caller's buffers (nothing is copied).
    dnnl::memory src(dnnl::memory::desc({M, K}, dt::bf16, {ldi, 1}), g.engine, const_cast<uint16_t*>(inp));
    dnnl::memory weights(dnnl::memory::desc({K, N}, dt::bf16, {1, K}), g.engine, const_cast<uint16_t*>(weight));
    dnnl::memory dst(dnnl::memory::desc({M, N}, dt::f32, {ldo, 1}), g.engine, out);
    thread_local dnnl::stream stream(g.engine);  // a stream serves one thread at a time
    primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
    stream.wait();
  } catch (const dnnl::error& e) {
    fail("gemm_bf16: oneDNN failed on an (", M, ", ", K, ") x (", K, ", ", N, ") product: ", e.what());
  }
}

#else

std::string gemm_describe() { return openblas_get_config(); }

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda), B,
              static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

bool bf16_gemm_available() { return false; }

void gemm_bf16(float*, int64_t, const uint16_t*, int64_t, const uint16_t*, int64_t, int, int) {
  fail("gemm_bf16: this build has no oneDNN (install libdnnl-dev and configure again)");
}

#endif

}  // namespace mamba::cpu

#include "ops/cpu/backend.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "core/error.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/ops.h"
#include "ops/cpu/simd.h"

namespace mamba::cpu {

namespace {

constexpr std::align_val_t kAlign{64};  // a cache line, and the widest vector register

const char* simd_name() {
#if defined(__AVX512F__)
  return "AVX-512";
#elif defined(__AVX2__)
  return "AVX2";
#elif defined(__AVX__)
  return "AVX";
#elif defined(__SSE2__)
  return "SSE2";
#else
  return "scalar";
#endif
}

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device{}; }
  std::string describe() const override {
    return std::string("CPU (") + simd_name() + " build, " + simd_target() + " kernels, " +
           std::to_string(omp_get_max_threads()) + " threads, " + openblas_get_config() + ")";
  }
  bool host_memory() const override { return true; }

  void* allocate(size_t bytes) override {
    try {
      return ::operator new(bytes, kAlign);
    } catch (const std::bad_alloc&) {
      fail("out of memory: cannot allocate ", bytes / (1 << 20), " MiB on the CPU");
    }
  }
  void release(void* ptr) noexcept override { ::operator delete(ptr, kAlign); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { std::memmove(dst, src, bytes); }
  void fill_zero(void* dst, size_t bytes) override { std::memset(dst, 0, bytes); }
  void synchronize() override {}

  std::string unsupported(const OpQuery& q) const override {
    if (q.op != Op::Argmax && q.dtype != DType::F32) {
      return "the CPU computes in fp32 (bf16 and fp16 weights are read in their own type): activations of " +
             std::string(dtype_name(q.dtype)) + " are not supported";
    }
    if ((q.op == Op::Matmul || q.op == Op::Embedding) && !matmul_supports(q.weight)) {
      return "no CPU kernel reads " + std::string(dtype_name(q.weight)) + " weights";
    }
    if (q.op == Op::Scan && (q.dstate < 1 || q.dstate > kMaxState)) {
      return "the CPU scan holds 1 to " + std::to_string(kMaxState) + " states per channel, not " + std::to_string(q.dstate);
    }
    if (q.op == Op::Conv1d && q.width < 1) return "the convolution needs a width of at least 1";
    return {};
  }

  void embedding(const EmbeddingParams& p) override {
    cpu::embedding(static_cast<float*>(p.out), p.tokens, p.table, p.M, p.C);
  }
  void rmsnorm(const RmsNormParams& p) override {
    residual_rmsnorm_forward(static_cast<float*>(p.out), p.residual, static_cast<const float*>(p.inp), p.weight, p.first,
                             p.M, p.C, p.eps);
  }
  void matmul(const MatmulParams& p) override { cpu::matmul(p); }

  // The CPU conv updates its tail in place: a tail of its own in the workspace when the caller keeps none.
  size_t conv1d_workspace(const Conv1dParams& p) const override {
    return p.tail_out ? 0 : sizeof(float) * static_cast<size_t>(p.batch) * (p.width - 1) * p.dim;
  }
  void conv1d(const Conv1dParams& p, void* workspace) override {
    const size_t tail_floats = static_cast<size_t>(p.batch) * (p.width - 1) * p.dim;
    float* tail = p.tail_out ? p.tail_out : static_cast<float*>(workspace);
    if (p.tail_in != tail) {
      if (p.tail_in) {
        std::memcpy(tail, p.tail_in, sizeof(float) * tail_floats);
      } else {
        std::memset(tail, 0, sizeof(float) * tail_floats);
      }
    }
    conv1d_silu_forward(static_cast<float*>(p.out), p.out_stride, tail, static_cast<const float*>(p.x), p.x_stride,
                        p.weight, p.bias, p.batch, p.seqlen, p.dim, p.width);
  }

  size_t scan_workspace(const ScanParams&) const override { return 0; }
  void scan(const ScanParams& p, void*) override { selective_scan_forward(p); }

  void argmax(int32_t* ids, const float* x, int64_t M, int N) override {
    for (int64_t m = 0; m < M; m++) {
      const float* row = x + m * N;
      ids[m] = static_cast<int32_t>(std::max_element(row, row + N) - row);
    }
  }
};

}  // namespace

std::unique_ptr<Backend> make_backend() {
  // MAMBA_CPU_TARGET names the one SIMD target the kernels use (simd.h), to measure or test a lower one.
  if (const char* target = std::getenv("MAMBA_CPU_TARGET"); target && *target) {
    if (!restrict_simd(target)) {
      std::string known;
      for (const SimdTarget& t : simd_targets()) {
        if (t.supported) known += (known.empty() ? "" : ", ") + t.name;
      }
      fail("MAMBA_CPU_TARGET=", target, ": not a SIMD target of this build and CPU (these are: ", known, ")");
    }
  }
  return std::make_unique<CpuBackend>();
}

}  // namespace mamba::cpu

#include "ops/cpu/backend.h"

#include <cmath>

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "core/error.h"
#include "ops/cpu/backward.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/half.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/ops.h"
#include "ops/cpu/optimizer.h"
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
           std::to_string(omp_get_max_threads()) + " threads, " + gemm_describe() + ")";
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
    if (q.op != Op::Argmax && q.op != Op::SsmA && !float_type(q.dtype)) {
      return "CPU activations are F32, BF16 or F16, not " + std::string(dtype_name(q.dtype));
    }
    if ((q.op == Op::Matmul || q.op == Op::Embedding) && !matmul_supports(q.weight)) {
      return "no CPU kernel reads " + std::string(dtype_name(q.weight)) + " weights";
    }
    if (q.op == Op::Embedding && q.weight == DType::I8 && q.dtype != DType::F32) {
      return "the CPU reads int8 tables into fp32 activations, not " + std::string(dtype_name(q.dtype));
    }
    if ((q.op == Op::MatmulBwd || q.op == Op::Xent) && !float_type(q.weight)) {
      return "training on the CPU reads F32, BF16 or F16 weights, not " + std::string(dtype_name(q.weight));
    }
    if (q.op == Op::Scan && (q.dstate < 1 || q.dstate > kMaxState)) {
      return "the CPU scan holds 1 to " + std::to_string(kMaxState) + " states per channel, not " + std::to_string(q.dstate);
    }
    if (q.op == Op::Conv1d && q.width < 1) return "the convolution needs a width of at least 1";
    return {};
  }

  // Activations in bf16 or fp16 go through half.h: widened to fp32, the fp32 kernel, the outputs rounded.
  void embedding(const EmbeddingParams& p) override {
    if (p.dtype != DType::F32) return half::embedding(p);
    cpu::embedding(static_cast<float*>(p.out), p.tokens, p.table, p.M, p.C);
  }
  size_t rmsnorm_workspace(const RmsNormParams& p) const override {
    return p.dtype == DType::F32 ? 0 : half::rmsnorm_workspace(p);
  }
  void rmsnorm(const RmsNormParams& p, void* workspace) override {
    if (p.dtype != DType::F32) return half::rmsnorm(p, workspace);
    residual_rmsnorm_forward(static_cast<float*>(p.out), p.residual, static_cast<const float*>(p.inp), p.weight, p.first,
                             p.M, p.C, p.eps);
  }
  size_t matmul_workspace(const MatmulParams& p) const override {
    return p.dtype == DType::F32 && p.out_dtype == DType::F32 ? 0 : half::matmul_workspace(p);
  }
  void matmul(const MatmulParams& p, void* workspace) override {
    if (p.dtype != DType::F32 || p.out_dtype != DType::F32) return half::matmul(p, workspace);
    cpu::matmul(p);
  }

  // The CPU conv updates its tail in place: a tail of its own in the workspace when the caller keeps none
  // (first), then what a bf16 or fp16 conv stages.
  size_t conv1d_workspace(const Conv1dParams& p) const override {
    return conv_tail_bytes(p) + (p.dtype == DType::F32 ? 0 : half::conv1d_workspace(p));
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
    if (p.dtype != DType::F32) return half::conv1d(p, tail, static_cast<char*>(workspace) + conv_tail_bytes(p));
    conv1d_silu_forward(static_cast<float*>(p.out), p.out_stride, tail, static_cast<const float*>(p.x), p.x_stride,
                        p.weight, p.bias, p.batch, p.seqlen, p.dim, p.width);
  }

  // A low-rank Δ (delta_proj): the product first, then the scan over it, sharing the rest of the workspace.
  size_t scan_workspace(const ScanParams& p) const override {
    if (p.delta_proj) {
      void* any = reinterpret_cast<void*>(uintptr_t{256});  // the sizes depend on shapes, not addresses
      return delta_product_bytes(p) + std::max(matmul_workspace(delta_product(p, any)),
                                               scan_workspace(over_delta_product(p, any)));
    }
    return p.dtype == DType::F32 ? 0 : half::scan_workspace(p);
  }
  void scan(const ScanParams& p, void* workspace) override {
    if (p.delta_proj) {
      void* rest = static_cast<char*>(workspace) + delta_product_bytes(p);
      matmul(delta_product(p, workspace), rest);
      return scan(over_delta_product(p, workspace), rest);
    }
    if (p.dtype != DType::F32) return half::scan(p, workspace);
    selective_scan_forward(p);
  }

  void argmax(int32_t* ids, const float* x, int64_t M, int N) override {
    for (int64_t m = 0; m < M; m++) {
      const float* row = x + m * N;
      ids[m] = static_cast<int32_t>(std::max_element(row, row + N) - row);
    }
  }

  // The backward: the kernels of backward.h accumulate into every output, so the outputs this contract
  // writes are zeroed first (as the training loop did before calling them: the results are the same bits).
  size_t embedding_bwd_workspace(const EmbeddingBwdParams& p) const override {
    return p.dtype == DType::F32 ? 0 : half::embedding_bwd_workspace(p);
  }
  void embedding_bwd(const EmbeddingBwdParams& p, void* workspace) override {
    if (p.dtype != DType::F32) return half::embedding_bwd(p, workspace);
    embedding_backward(p.dtable, static_cast<const float*>(p.dout), p.tokens, p.M, p.C);
  }
  size_t rmsnorm_bwd_workspace(const RmsNormBwdParams& p) const override {
    return p.dtype == DType::F32 ? 0 : half::rmsnorm_bwd_workspace(p);
  }
  void rmsnorm_bwd(const RmsNormBwdParams& p, void* workspace) override {
    if (p.dtype != DType::F32) return half::rmsnorm_bwd(p, workspace);
    residual_rmsnorm_backward(p.dresidual, p.dweight, static_cast<const float*>(p.dout), p.residual, p.weight, p.M, p.C,
                              p.eps);
  }
  size_t matmul_bwd_workspace(const MatmulBwdParams& p) const override {
    return p.dtype == DType::F32 && p.weight.dtype == DType::F32 ? 0 : half::matmul_bwd_workspace(p);
  }
  void matmul_bwd(const MatmulBwdParams& p, void* workspace) override {
    if (p.dtype != DType::F32 || p.weight.dtype != DType::F32) return half::matmul_bwd(p, workspace);
    auto* dinp = static_cast<float*>(p.dinp);
    if (dinp && !p.accumulate) zero_rows(dinp, p.lddi, p.M, p.K);
    matmul_backward(dinp, p.lddi, p.dweight, p.dbias, static_cast<const float*>(p.dout), p.ldo,
                    static_cast<const float*>(p.inp), p.ldi, p.weight.f32(), p.M, p.K, p.N);
  }
  // A strided dout is packed first: the CPU kernel reads it dense.
  size_t conv1d_bwd_workspace(const Conv1dBwdParams& p) const override {
    const Conv1dParams& f = p.fwd;
    if (f.dtype != DType::F32) return half::conv1d_bwd_workspace(p);
    return p.dout_stride == f.dim ? 0 : sizeof(float) * static_cast<size_t>(f.batch) * f.seqlen * f.dim;
  }
  void conv1d_bwd(const Conv1dBwdParams& p, void* workspace) override {
    const Conv1dParams& f = p.fwd;
    if (p.dtail_in) std::memset(p.dtail_in, 0, sizeof(float) * static_cast<size_t>(f.batch) * (f.width - 1) * f.dim);
    if (f.dtype != DType::F32) return half::conv1d_bwd(p, workspace);
    const int64_t rows = int64_t{f.batch} * f.seqlen;
    const auto* dout = static_cast<const float*>(p.dout);
    if (p.dout_stride != f.dim) {
      auto* packed = static_cast<float*>(workspace);
      for (int64_t r = 0; r < rows; r++) std::memcpy(packed + r * f.dim, dout + r * p.dout_stride, sizeof(float) * f.dim);
      dout = packed;
    }
    zero_rows(static_cast<float*>(p.dx), p.dx_stride, rows, f.dim);
    conv1d_silu_backward(static_cast<float*>(p.dx), p.dx_stride, p.dtail_in, p.dweight, p.dbias, dout,
                         static_cast<const float*>(f.x), f.x_stride, f.tail_in, f.weight, f.bias, f.batch, f.seqlen,
                         f.dim, f.width);
  }
  size_t scan_bwd_workspace(const ScanBwdParams& p) const override {
    return p.fwd.dtype == DType::F32 ? 0 : half::scan_bwd_workspace(p);
  }
  void scan_bwd(const ScanBwdParams& p, void* workspace) override {
    const ScanParams& f = p.fwd;
    if (f.delta_proj) fail("scan backward: Δ as a product (delta_proj) is for the forward only");
    if (p.dstate_in) std::memset(p.dstate_in, 0, sizeof(float) * static_cast<size_t>(f.batch) * f.dim * f.dstate);
    if (f.dtype != DType::F32) return half::scan_bwd(p, workspace);
    const int64_t rows = int64_t{f.batch} * f.seqlen;
    ScanGrads g;
    g.dy = static_cast<const float*>(p.dy), g.dy_stride = p.dy_stride;
    g.dstate_out = p.dstate_out;
    g.du = static_cast<float*>(p.du), g.du_stride = p.du_stride;
    g.ddelta = static_cast<float*>(p.ddelta), g.ddelta_stride = p.ddelta_stride;
    g.dA = p.dA;
    g.dB = static_cast<float*>(p.dB), g.dC = static_cast<float*>(p.dC);
    if (p.dB_stride != p.dC_stride && !f.bc_per_channel) fail("scan backward on the CPU: dB and dC need one row stride");
    g.dbc_stride = p.dB_stride;
    g.dD = p.dD;
    g.dz = static_cast<float*>(p.dz), g.dz_stride = p.dz_stride;
    g.ddelta_bias = p.ddelta_bias;
    g.dstate_in = p.dstate_in;
    zero_rows(g.du, g.du_stride, rows, f.dim);
    zero_rows(g.ddelta, g.ddelta_stride, rows, f.dim);
    if (f.z && g.dz) zero_rows(g.dz, g.dz_stride, rows, f.dim);
    if (!f.bc_per_channel) {  // activations here; parameters (which accumulate) in the LTI form
      zero_rows(g.dB, g.dbc_stride, rows, f.dstate);
      zero_rows(g.dC, g.dbc_stride, rows, f.dstate);
    }
    selective_scan_backward(g, f);
  }
  // A few rows of logits at a time; and the head's gradient of a loss-only call, which is dropped.
  size_t xent_workspace(const XentParams& p) const override {
    if (p.dtype != DType::F32 || p.weight.dtype != DType::F32) return half::xent_workspace(p);
    return sizeof(float) * static_cast<size_t>(xent_rows(p) * p.V + (p.dweight ? 0 : int64_t{p.V} * p.C));
  }
  void xent(const XentParams& p, void* workspace) override {
    if (p.dtype != DType::F32 || p.weight.dtype != DType::F32) return half::xent(p, workspace);
    auto* scratch = static_cast<float*>(workspace);
    float* dweight = p.dweight ? p.dweight : scratch + xent_rows(p) * p.V;
    *p.loss = lm_head_cross_entropy(static_cast<float*>(p.dhidden), dweight, static_cast<const float*>(p.hidden),
                                    p.weight.f32(), p.targets, p.M, p.C, p.V, p.ignore_index, scratch, xent_rows(p),
                                    p.divisor, p.scale);
  }
  void ssm_A(float* A, const float* A_log, int64_t n) override {
    for (int64_t i = 0; i < n; i++) A[i] = -std::exp(A_log[i]);
  }
  void ssm_dA_log(float* dA_log, const float* dA, const float* A, int64_t n) override {
    for (int64_t i = 0; i < n; i++) dA_log[i] += dA[i] * A[i];
  }
  size_t adamw_workspace(const AdamWParams&) const override { return 0; }
  void adamw(const AdamWParams& p, void*) override { cpu::adamw(p); }

  void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n) override {
    if (!float_type(dst_dtype) || !float_type(src_dtype)) fail("convert: F32, BF16 or F16 only");
    constexpr int64_t kPiece = 1 << 16;  // values per task
    const size_t de = dtype_size(dst_dtype), se = dtype_size(src_dtype);
#pragma omp parallel for schedule(static) if (n > kPiece)
    for (int64_t i = 0; i < n; i += kPiece) {
      mamba::convert(static_cast<char*>(dst) + i * de, dst_dtype, static_cast<const char*>(src) + i * se, src_dtype,
                     static_cast<size_t>(std::min(kPiece, n - i)));
    }
  }

 private:
  static bool float_type(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }
  static size_t conv_tail_bytes(const Conv1dParams& p) {
    return p.tail_out ? 0 : (sizeof(float) * static_cast<size_t>(p.batch) * (p.width - 1) * p.dim + 63) / 64 * 64;
  }
  static int64_t xent_rows(const XentParams& p) { return std::max<int64_t>(1, std::min<int64_t>(p.M, 256)); }
  static void zero_rows(float* p, int64_t stride, int64_t rows, int cols) {
    if (!p) return;
    if (stride == cols) {
      std::memset(p, 0, sizeof(float) * static_cast<size_t>(rows * cols));
      return;
    }
    for (int64_t r = 0; r < rows; r++) std::memset(p + r * stride, 0, sizeof(float) * static_cast<size_t>(cols));
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

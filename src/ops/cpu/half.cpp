#include "ops/cpu/half.h"

#include <algorithm>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "ops/cpu/backward.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/ops.h"

namespace mamba::cpu::half {

namespace {

// Carves a workspace into fp32 arrays on 64-byte boundaries. Without a base it only counts the bytes, so
// that one layout function gives both an op's workspace size and its arrays.
class Staging {
 public:
  explicit Staging(void* base = nullptr) : base_(static_cast<char*>(base)) {}
  float* take(int64_t n) {
    float* p = base_ ? reinterpret_cast<float*>(base_ + used_) : nullptr;
    used_ += (static_cast<size_t>(n) * sizeof(float) + 63) / 64 * 64;
    return p;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

// Element i of an array of `dtype`.
const void* at(const void* p, int64_t i, DType dtype) {
  return static_cast<const char*>(p) + i * static_cast<int64_t>(dtype_size(dtype));
}
void* at(void* p, int64_t i, DType dtype) { return static_cast<char*>(p) + i * static_cast<int64_t>(dtype_size(dtype)); }

// rows × cols values of `dtype` (rows src_stride elements apart) into fp32 rows dst_stride apart: exact.
void widen(float* dst, int64_t dst_stride, const void* src, DType dtype, int64_t src_stride, int64_t rows,
           int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; r++) {
    convert_to_f32(dst + r * dst_stride, at(src, r * src_stride, dtype), dtype, static_cast<size_t>(cols));
  }
}

// fp32 rows (src_stride apart) rounded to nearest even into rows × cols values of `dtype`.
void narrow(void* dst, DType dtype, int64_t dst_stride, const float* src, int64_t src_stride, int64_t rows,
            int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; r++) {
    convert_from_f32(at(dst, r * dst_stride, dtype), src + r * src_stride, dtype, static_cast<size_t>(cols));
  }
}

void zero(float* p, int64_t n) { std::memset(p, 0, sizeof(float) * static_cast<size_t>(n)); }

// The weight of a product as fp32: itself, or widened into `staged` (N, K).
const float* weight_f32(const WeightView& w, float* staged, int64_t rows, int64_t cols) {
  if (w.dtype == DType::F32) return w.f32();
  if (w.dtype == DType::I8) fail("internal: an int8 weight in a CPU training op");
  widen(staged, cols, w.data, w.dtype, cols, rows, cols);
  return staged;
}

int64_t block_rows(int64_t M) { return std::min(M, kHalfRows); }

// ---- layouts: the fp32 copies each op keeps in its workspace ----

struct RmsNormSpace {
  float *inp = nullptr, *out = nullptr;
};

RmsNormSpace rmsnorm_space(const RmsNormParams& p, Staging& s) {
  const int64_t R = block_rows(p.M);
  RmsNormSpace a;
  a.inp = s.take(R * p.C);
  a.out = s.take(R * p.C);
  return a;
}

struct MatmulSpace {
  float *inp = nullptr, *out = nullptr;
};

MatmulSpace matmul_space(const MatmulParams& p, Staging& s) {
  const int64_t R = block_rows(p.M);
  MatmulSpace a;
  if (p.dtype != DType::F32) a.inp = s.take(R * p.K);
  if (p.out_dtype != DType::F32) a.out = s.take(R * p.N);
  return a;
}

struct MatmulBwdSpace {
  float *weight = nullptr, *dout = nullptr, *inp = nullptr, *dinp = nullptr;
};

MatmulBwdSpace matmul_bwd_space(const MatmulBwdParams& p, Staging& s) {
  const int64_t R = block_rows(p.M);
  MatmulBwdSpace a;
  if (p.weight.dtype != DType::F32) a.weight = s.take(int64_t{p.N} * p.K);
  a.dout = s.take(R * p.N);
  a.inp = s.take(R * p.K);
  if (p.dinp) a.dinp = s.take(R * p.K);
  return a;
}

struct ConvSpace {
  float *x = nullptr, *out = nullptr, *dx = nullptr;  // out: the forward's output, or the backward's dout
};

ConvSpace conv_space(const Conv1dParams& f, bool backward, Staging& s) {
  const int64_t M = int64_t{f.batch} * f.seqlen;
  ConvSpace a;
  a.x = s.take(M * f.dim);
  a.out = s.take(M * f.dim);
  if (backward) a.dx = s.take(M * f.dim);
  return a;
}

struct ScanSpace {
  float *u = nullptr, *delta = nullptr, *B = nullptr, *C = nullptr, *z = nullptr, *y = nullptr;
};

ScanSpace scan_space(const ScanParams& p, bool with_y, Staging& s) {
  const int64_t M = int64_t{p.batch} * p.seqlen, D = p.dim, N = p.dstate;
  ScanSpace a;
  a.u = s.take(M * D);
  a.delta = s.take((p.delta_stride == 0 ? 1 : M) * D);  // a time-invariant Δ is one row
  if (!p.bc_per_channel) {
    a.B = s.take(M * N);
    a.C = s.take(M * N);
  }
  if (p.z) a.z = s.take(M * D);
  if (with_y) a.y = s.take(M * D);
  return a;
}

// The scan's inputs widened into `a`, and its params over them (fp32, dense rows).
ScanParams widen_scan_inputs(const ScanParams& p, const ScanSpace& a) {
  const int64_t M = int64_t{p.batch} * p.seqlen, D = p.dim, N = p.dstate;
  ScanParams q = p;
  q.dtype = DType::F32;
  widen(a.u, D, p.u, p.dtype, p.u_stride, M, D);
  q.u = a.u, q.u_stride = D;
  widen(a.delta, D, p.delta, p.dtype, p.delta_stride, p.delta_stride == 0 ? 1 : M, D);
  q.delta = a.delta, q.delta_stride = p.delta_stride == 0 ? 0 : D;
  if (!p.bc_per_channel) {
    widen(a.B, N, p.Bm, p.dtype, p.B_stride, M, N);
    widen(a.C, N, p.Cm, p.dtype, p.C_stride, M, N);
    q.Bm = a.B, q.Cm = a.C, q.B_stride = q.C_stride = N;
  }
  if (p.z) {
    widen(a.z, D, p.z, p.dtype, p.z_stride, M, D);
    q.z = a.z, q.z_stride = D;
  }
  q.y = a.y, q.y_stride = D;
  return q;
}

struct ScanBwdSpace {
  ScanSpace fwd;
  float *dy = nullptr, *du = nullptr, *ddelta = nullptr, *dz = nullptr, *dBC = nullptr;
};

ScanBwdSpace scan_bwd_space(const ScanBwdParams& p, Staging& s) {
  const ScanParams& f = p.fwd;
  const int64_t M = int64_t{f.batch} * f.seqlen, D = f.dim, N = f.dstate;
  ScanBwdSpace a;
  a.fwd = scan_space(f, false, s);
  a.dy = s.take(M * D);
  a.du = s.take(M * D);
  a.ddelta = s.take(M * D);
  if (f.z && p.dz) a.dz = s.take(M * D);
  if (!f.bc_per_channel) a.dBC = s.take(M * 2 * N);  // dB | dC per row: the CPU kernel's one stride for both
  return a;
}

struct XentSpace {
  float *hidden = nullptr, *dhidden = nullptr, *weight = nullptr, *logits = nullptr, *dweight = nullptr;
};

int64_t xent_rows(const XentParams& p) { return std::max<int64_t>(1, std::min<int64_t>(p.M, kHalfRows)); }

XentSpace xent_space(const XentParams& p, Staging& s) {
  XentSpace a;
  if (p.dtype != DType::F32) {
    a.hidden = s.take(p.M * p.C);
    a.dhidden = s.take(p.M * p.C);
  }
  if (p.weight.dtype != DType::F32) a.weight = s.take(int64_t{p.V} * p.C);
  a.logits = s.take(xent_rows(p) * p.V);
  if (!p.dweight) a.dweight = s.take(int64_t{p.V} * p.C);  // the head's gradient of a loss-only call: dropped
  return a;
}

// One block of rows of C floats: the staged dout of the norm's and the embedding's backward.
size_t block_bytes(int64_t M, int C) {
  Staging s;
  s.take(block_rows(M) * C);
  return s.used();
}

}  // namespace

void embedding(const EmbeddingParams& p) {
  if (p.table.dtype == DType::I8) fail("internal: an int8 table read into ", dtype_name(p.dtype), " activations");
  for (int64_t m = 0; m < p.M; m++) {
    convert(at(p.out, m * p.C, p.dtype), p.dtype, at(p.table.data, int64_t{p.tokens[m]} * p.C, p.table.dtype),
            p.table.dtype, static_cast<size_t>(p.C));
  }
}

size_t rmsnorm_workspace(const RmsNormParams& p) {
  Staging s;
  rmsnorm_space(p, s);
  return s.used();
}

void rmsnorm(const RmsNormParams& p, void* workspace) {
  Staging s(workspace);
  const RmsNormSpace a = rmsnorm_space(p, s);
  for (int64_t m0 = 0; m0 < p.M; m0 += kHalfRows) {
    const int64_t rows = std::min(kHalfRows, p.M - m0);
    if (p.inp) widen(a.inp, p.C, at(p.inp, m0 * p.C, p.dtype), p.dtype, p.C, rows, p.C);
    residual_rmsnorm_forward(a.out, p.residual + m0 * p.C, p.inp ? a.inp : nullptr, p.weight, p.first, rows, p.C,
                             p.eps);
    narrow(at(p.out, m0 * p.C, p.dtype), p.dtype, p.C, a.out, p.C, rows, p.C);
  }
}

size_t matmul_workspace(const MatmulParams& p) {
  Staging s;
  matmul_space(p, s);
  return s.used();
}

void matmul(const MatmulParams& p, void* workspace) {
  Staging s(workspace);
  const MatmulSpace a = matmul_space(p, s);
  for (int64_t m0 = 0; m0 < p.M; m0 += kHalfRows) {
    const int64_t rows = std::min(kHalfRows, p.M - m0);
    MatmulParams q = p;
    q.M = rows;
    q.dtype = q.out_dtype = DType::F32;
    if (p.dtype != DType::F32) {
      widen(a.inp, p.K, at(p.inp, m0 * p.ldi, p.dtype), p.dtype, p.ldi, rows, p.K);
      q.inp = a.inp, q.ldi = p.K;
    } else {
      q.inp = static_cast<const float*>(p.inp) + m0 * p.ldi;
    }
    if (p.out_dtype != DType::F32) {
      q.out = a.out, q.ldo = p.N;
    } else {
      q.out = static_cast<float*>(p.out) + m0 * p.ldo;
    }
    cpu::matmul(q);
    if (p.out_dtype != DType::F32) narrow(at(p.out, m0 * p.ldo, p.out_dtype), p.out_dtype, p.ldo, a.out, p.N, rows, p.N);
  }
}

size_t conv1d_workspace(const Conv1dParams& p) {
  Staging s;
  conv_space(p, false, s);
  return s.used();
}

void conv1d(const Conv1dParams& p, float* tail, void* workspace) {
  Staging s(workspace);
  const ConvSpace a = conv_space(p, false, s);
  const int64_t M = int64_t{p.batch} * p.seqlen;
  widen(a.x, p.dim, p.x, p.dtype, p.x_stride, M, p.dim);
  conv1d_silu_forward(a.out, p.dim, tail, a.x, p.dim, p.weight, p.bias, p.batch, p.seqlen, p.dim, p.width);
  narrow(p.out, p.dtype, p.out_stride, a.out, p.dim, M, p.dim);
}

size_t scan_workspace(const ScanParams& p) {
  Staging s;
  scan_space(p, true, s);
  return s.used();
}

void scan(const ScanParams& p, void* workspace) {
  Staging s(workspace);
  const ScanSpace a = scan_space(p, true, s);
  selective_scan_forward(widen_scan_inputs(p, a));
  narrow(p.y, p.dtype, p.y_stride, a.y, p.dim, int64_t{p.batch} * p.seqlen, p.dim);
}

size_t embedding_bwd_workspace(const EmbeddingBwdParams& p) { return block_bytes(p.M, p.C); }

void embedding_bwd(const EmbeddingBwdParams& p, void* workspace) {
  auto* dout = static_cast<float*>(workspace);
  // Blocks of rows in order: each column's additions run in row order, as in one call.
  for (int64_t m0 = 0; m0 < p.M; m0 += kHalfRows) {
    const int64_t rows = std::min(kHalfRows, p.M - m0);
    widen(dout, p.C, at(p.dout, m0 * p.C, p.dtype), p.dtype, p.C, rows, p.C);
    embedding_backward(p.dtable, dout, p.tokens + m0, rows, p.C);
  }
}

size_t rmsnorm_bwd_workspace(const RmsNormBwdParams& p) { return block_bytes(p.M, p.C); }

void rmsnorm_bwd(const RmsNormBwdParams& p, void* workspace) {
  auto* dout = static_cast<float*>(workspace);
  for (int64_t m0 = 0; m0 < p.M; m0 += kHalfRows) {
    const int64_t rows = std::min(kHalfRows, p.M - m0);
    widen(dout, p.C, at(p.dout, m0 * p.C, p.dtype), p.dtype, p.C, rows, p.C);
    residual_rmsnorm_backward(p.dresidual + m0 * p.C, p.dweight, dout, p.residual + m0 * p.C, p.weight, rows, p.C,
                              p.eps);
  }
}

size_t matmul_bwd_workspace(const MatmulBwdParams& p) {
  Staging s;
  matmul_bwd_space(p, s);
  return s.used();
}

void matmul_bwd(const MatmulBwdParams& p, void* workspace) {
  Staging s(workspace);
  const MatmulBwdSpace a = matmul_bwd_space(p, s);
  const float* weight = weight_f32(p.weight, a.weight, p.N, p.K);
  for (int64_t m0 = 0; m0 < p.M; m0 += kHalfRows) {
    const int64_t rows = std::min(kHalfRows, p.M - m0);
    widen(a.dout, p.N, at(p.dout, m0 * p.ldo, p.dtype), p.dtype, p.ldo, rows, p.N);
    widen(a.inp, p.K, at(p.inp, m0 * p.ldi, p.dtype), p.dtype, p.ldi, rows, p.K);
    if (p.dinp) {
      if (p.accumulate) {
        widen(a.dinp, p.K, at(p.dinp, m0 * p.lddi, p.dtype), p.dtype, p.lddi, rows, p.K);
      } else {
        zero(a.dinp, rows * p.K);
      }
    }
    matmul_backward(a.dinp, p.K, p.dweight, p.dbias, a.dout, p.N, a.inp, p.K, weight, rows, p.K, p.N);
    if (p.dinp) narrow(at(p.dinp, m0 * p.lddi, p.dtype), p.dtype, p.lddi, a.dinp, p.K, rows, p.K);
  }
}

size_t conv1d_bwd_workspace(const Conv1dBwdParams& p) {
  Staging s;
  conv_space(p.fwd, true, s);
  return s.used();
}

void conv1d_bwd(const Conv1dBwdParams& p, void* workspace) {
  const Conv1dParams& f = p.fwd;
  Staging s(workspace);
  const ConvSpace a = conv_space(f, true, s);
  const int64_t M = int64_t{f.batch} * f.seqlen;
  widen(a.x, f.dim, f.x, f.dtype, f.x_stride, M, f.dim);
  widen(a.out, f.dim, p.dout, f.dtype, p.dout_stride, M, f.dim);
  zero(a.dx, M * f.dim);
  conv1d_silu_backward(a.dx, f.dim, p.dtail_in, p.dweight, p.dbias, a.out, a.x, f.dim, f.tail_in, f.weight, f.bias,
                       f.batch, f.seqlen, f.dim, f.width);
  narrow(p.dx, f.dtype, p.dx_stride, a.dx, f.dim, M, f.dim);
}

size_t scan_bwd_workspace(const ScanBwdParams& p) {
  Staging s;
  scan_bwd_space(p, s);
  return s.used();
}

void scan_bwd(const ScanBwdParams& p, void* workspace) {
  const ScanParams& f = p.fwd;
  const int64_t M = int64_t{f.batch} * f.seqlen, D = f.dim, N = f.dstate;
  const DType t = f.dtype;
  Staging s(workspace);
  const ScanBwdSpace a = scan_bwd_space(p, s);
  const ScanParams q = widen_scan_inputs(f, a.fwd);
  widen(a.dy, D, p.dy, t, p.dy_stride, M, D);
  ScanGrads g;
  g.dy = a.dy, g.dy_stride = D;
  g.dstate_out = p.dstate_out;
  zero(a.du, M * D);
  zero(a.ddelta, M * D);
  g.du = a.du, g.du_stride = D;
  g.ddelta = a.ddelta, g.ddelta_stride = D;
  g.dA = p.dA;
  if (f.bc_per_channel) {  // parameters: fp32, accumulated in place
    g.dB = static_cast<float*>(p.dB), g.dC = static_cast<float*>(p.dC);
  } else {
    zero(a.dBC, M * 2 * N);
    g.dB = a.dBC, g.dC = a.dBC + N, g.dbc_stride = 2 * N;
  }
  g.dD = p.dD;
  if (a.dz) {
    zero(a.dz, M * D);
    g.dz = a.dz, g.dz_stride = D;
  }
  g.ddelta_bias = p.ddelta_bias;
  g.dstate_in = p.dstate_in;
  selective_scan_backward(g, q);
  narrow(p.du, t, p.du_stride, a.du, D, M, D);
  narrow(p.ddelta, t, p.ddelta_stride, a.ddelta, D, M, D);
  if (a.dz) narrow(p.dz, t, p.dz_stride, a.dz, D, M, D);
  if (!f.bc_per_channel) {
    narrow(p.dB, t, p.dB_stride, a.dBC, 2 * N, M, N);
    narrow(p.dC, t, p.dC_stride, a.dBC + N, 2 * N, M, N);
  }
}

size_t xent_workspace(const XentParams& p) {
  Staging s;
  xent_space(p, s);
  return s.used();
}

void xent(const XentParams& p, void* workspace) {
  Staging s(workspace);
  const XentSpace a = xent_space(p, s);
  const float* hidden = static_cast<const float*>(p.hidden);
  float* dhidden = static_cast<float*>(p.dhidden);
  if (p.dtype != DType::F32) {
    widen(a.hidden, p.C, p.hidden, p.dtype, p.C, p.M, p.C);
    hidden = a.hidden, dhidden = a.dhidden;
  }
  const float* weight = weight_f32(p.weight, a.weight, p.V, p.C);
  *p.loss = lm_head_cross_entropy(dhidden, p.dweight ? p.dweight : a.dweight, hidden, weight, p.targets, p.M, p.C,
                                  p.V, p.ignore_index, a.logits, xent_rows(p), p.divisor, p.scale, p.dtype);
  if (p.dtype != DType::F32) narrow(p.dhidden, p.dtype, p.C, dhidden, p.C, p.M, p.C);
}

}  // namespace mamba::cpu::half

#include "model/mixer.h"

#include <algorithm>

namespace mamba {

namespace {

// p + n elements of `dtype`.
inline void* offset(void* p, int64_t n, DType dtype) { return static_cast<char*>(p) + n * static_cast<int64_t>(dtype_size(dtype)); }

Conv1dParams conv_params(const MixerBuffers& buf, const LayerWeights& lw, const Config& c, int B, int L,
                         float* tail) {
  const int Di = c.d_inner();
  Conv1dParams p;
  p.batch = B, p.seqlen = L, p.dim = Di, p.width = c.d_conv, p.dtype = buf.dtype;
  p.out = buf.xc, p.out_stride = Di;
  p.x = buf.xz, p.x_stride = 2 * Di;
  p.weight = lw.conv_w, p.bias = lw.conv_b;
  p.tail_in = tail, p.tail_out = tail;
  return p;
}

MatmulParams matmul_params(void* out, int64_t ldo, const void* inp, int64_t ldi, DType dtype, WeightView w,
                           const float* bias, int64_t M, int K, int N) {
  MatmulParams p;
  p.out = out, p.ldo = ldo, p.out_dtype = dtype;
  p.inp = inp, p.ldi = ldi, p.dtype = dtype;
  p.weight = w, p.bias = bias;
  p.M = M, p.K = K, p.N = N;
  return p;
}

// Inference of one token (a state carried in and out, nothing kept for a backward, which reads Δ) hands
// Δ to the scan low-rank, as x_proj's first R columns and dt_proj's weight: the scan's step kernel
// computes the product, one launch fewer a layer (ops/scan.h).
bool low_rank_delta(const Config& c, int L, const MixerCarry& carry) {
  return L == 1 && c.ssm_mode != SsmMode::Lti && carry.ssm_out && !carry.checkpoints;
}

void use_low_rank_delta(ScanParams& p, const MixerBuffers& buf, const LayerWeights& lw, const Config& c) {
  p.delta = buf.xdbl;
  p.delta_stride = c.dt_rank + 2 * c.d_state;
  p.delta_proj = lw.dt_proj_w;
  p.delta_rank = c.dt_rank;
}

}  // namespace

ScanParams mixer_scan_params(const MixerBuffers& buf, const LayerWeights& lw, const float* A, const Config& c,
                             int B, int L) {
  const int Di = c.d_inner(), N = c.d_state, R = c.dt_rank;
  ScanParams p;
  p.batch = B;
  p.seqlen = L;
  p.dim = Di;
  p.dstate = N;
  p.dtype = buf.dtype;
  p.y = buf.y;
  p.y_stride = Di;
  p.u = buf.xc;
  p.u_stride = Di;
  p.delta = buf.delta;
  p.delta_stride = Di;
  p.A = A;
  p.Bm = offset(buf.xdbl, R, buf.dtype);
  p.Cm = offset(buf.xdbl, R + N, buf.dtype);
  p.B_stride = p.C_stride = R + 2 * N;
  p.D = lw.D;
  p.z = offset(buf.xz, Di, buf.dtype);
  p.z_stride = 2 * Di;
  p.delta_bias = lw.dt_proj_b;
  p.delta_softplus = true;
  if (c.ssm_mode == SsmMode::Lti) {
    // Time-invariant: every step reads delta's first row (zeros, so Δ = softplus(dt_proj.bias)) and
    // the per-channel parameters B, C (D, N).
    p.delta_stride = 0;
    p.Bm = lw.lti_B;
    p.Cm = lw.lti_C;
    p.B_stride = p.C_stride = 0;
    p.bc_per_channel = true;
  }
  return p;
}

size_t mixer_workspace(Backend& backend, const Config& c, DType dtype, int B, int L) {
  // Sizes depend on the shapes and on which optional pointers are set, not on the addresses: a
  // placeholder stands for every buffer.
  void* any = reinterpret_cast<void*>(uintptr_t{256});
  const MixerBuffers buf{any, any, any, any, any, dtype};
  LayerWeights lw{};
  lw.D = lw.dt_proj_b = lw.lti_B = lw.lti_C = static_cast<const float*>(any);
  ScanParams scan = mixer_scan_params(buf, lw, static_cast<const float*>(any), c, B, L);
  scan.state_in = scan.state_out = static_cast<float*>(any);
  size_t low_rank = 0;
  if (low_rank_delta(c, L, MixerCarry{nullptr, nullptr, static_cast<float*>(any)})) {
    ScanParams q = scan;
    lw.dt_proj_w = WeightView{any, dtype};
    use_low_rank_delta(q, buf, lw, c);
    low_rank = backend.scan_workspace(q);
  }
  const int d = c.d_model, Di = c.d_inner(), R = c.dt_rank, xw = R + 2 * c.d_state;
  const int64_t M = int64_t{B} * L;
  const WeightView w{any, dtype};  // the sizes depend on the activations' type, not the weights'
  const float* bias = c.use_bias ? static_cast<const float*>(any) : nullptr;  // in_proj's and out_proj's
  return std::max({backend.conv1d_workspace(conv_params(buf, lw, c, B, L, static_cast<float*>(any))),
                   backend.scan_workspace(scan), low_rank,
                   backend.matmul_workspace(matmul_params(any, 2 * Di, any, d, dtype, w, bias, M, d, 2 * Di)),
                   backend.matmul_workspace(matmul_params(any, xw, any, Di, dtype, w, nullptr, M, Di, xw)),
                   backend.matmul_workspace(matmul_params(any, Di, any, xw, dtype, w, nullptr, M, R, Di)),
                   backend.matmul_workspace(matmul_params(any, d, any, Di, dtype, w, bias, M, Di, d))});
}

std::string mixer_unsupported(const Backend& backend, const Config& c, DType dtype, DType weight) {
  const OpQuery queries[] = {
      {Op::Matmul, dtype, weight},
      {Op::Conv1d, dtype, weight, false, 0, c.d_conv},
      {Op::Scan, dtype, weight, c.ssm_mode == SsmMode::Lti, c.d_state, 0},
  };
  for (const OpQuery& q : queries) {
    if (std::string why = backend.unsupported(q); !why.empty()) return why;
  }
  return {};
}

void mixer_in_proj(Backend& backend, const MixerBuffers& buf, const void* normed, const LayerWeights& lw,
                   const Config& c, int B, int L, void* workspace) {
  const int d = c.d_model, Di = c.d_inner();
  backend.matmul(matmul_params(buf.xz, 2 * Di, normed, d, buf.dtype, lw.in_proj_w, lw.in_proj_b, int64_t{B} * L, d,
                               2 * Di),
                 workspace);
}

void mixer_conv(Backend& backend, const MixerBuffers& buf, const LayerWeights& lw, const Config& c, int B, int L,
                float* tail, void* workspace) {
  backend.conv1d(conv_params(buf, lw, c, B, L, tail), workspace);
}

void mixer_delta(Backend& backend, const MixerBuffers& buf, const LayerWeights& lw, const Config& c, int B, int L,
                 void* workspace) {
  const DType t = buf.dtype;
  if (c.ssm_mode == SsmMode::Lti) {
    backend.fill_zero(buf.delta, static_cast<size_t>(c.d_inner()) * dtype_size(t));  // the one row of delta the LTI scan reads
    return;
  }
  const int Di = c.d_inner(), R = c.dt_rank, xw = R + 2 * c.d_state;
  backend.matmul(matmul_params(buf.delta, Di, buf.xdbl, xw, t, lw.dt_proj_w, nullptr, int64_t{B} * L, R, Di), workspace);
}

void mixer_scan(Backend& backend, const MixerBuffers& buf, const LayerWeights& lw, const float* A, const Config& c,
                int B, int L, const MixerCarry& carry, void* workspace) {
  ScanParams scan = mixer_scan_params(buf, lw, A, c, B, L);
  scan.state_in = carry.ssm_in;
  scan.state_out = carry.ssm_out;
  scan.chunk_states = carry.checkpoints;
  scan.state_chunk = carry.chunk;
  if (low_rank_delta(c, L, carry)) use_low_rank_delta(scan, buf, lw, c);
  backend.scan(scan, workspace);
}

void mixer_forward(Backend& backend, void* out, const MixerBuffers& buf, const void* normed, const LayerWeights& lw,
                   const float* A, const Config& c, int B, int L, const MixerCarry& carry, void* workspace) {
  const int d = c.d_model, Di = c.d_inner(), R = c.dt_rank, xw = R + 2 * c.d_state;
  const int64_t M = int64_t{B} * L;
  const DType t = buf.dtype;
  mixer_in_proj(backend, buf, normed, lw, c, B, L, workspace);
  mixer_conv(backend, buf, lw, c, B, L, carry.conv_tail, workspace);
  if (c.ssm_mode != SsmMode::Lti) {
    backend.matmul(matmul_params(buf.xdbl, xw, buf.xc, Di, t, lw.x_proj_w, nullptr, M, Di, xw), workspace);
  }
  if (!low_rank_delta(c, L, carry)) mixer_delta(backend, buf, lw, c, B, L, workspace);  // else the scan's
  mixer_scan(backend, buf, lw, A, c, B, L, carry, workspace);
  backend.matmul(matmul_params(out, d, buf.y, Di, t, lw.out_proj_w, lw.out_proj_b, M, Di, d), workspace);
}

}  // namespace mamba

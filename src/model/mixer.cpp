#include "model/mixer.h"

#include <algorithm>

#include "ops/cpu/ops.h"

namespace mamba {

ScanParams mixer_scan_params(const MixerBuffers& buf, const LayerWeights& lw, const float* A, const Config& c,
                             int B, int L) {
  const int Di = c.d_inner(), N = c.d_state, R = c.dt_rank;
  ScanParams p;
  p.batch = B;
  p.seqlen = L;
  p.dim = Di;
  p.dstate = N;
  p.y = buf.y;
  p.y_stride = Di;
  p.u = buf.xc;
  p.u_stride = Di;
  p.delta = buf.delta;
  p.delta_stride = Di;
  p.A = A;
  p.Bm = buf.xdbl + R;
  p.Cm = buf.xdbl + R + N;
  p.bc_stride = R + 2 * N;
  p.D = lw.D;
  p.z = buf.xz + Di;
  p.z_stride = 2 * Di;
  p.delta_bias = lw.dt_proj_b;
  p.delta_softplus = true;
  if (c.ssm_mode == SsmMode::Lti) {
    // Time-invariant: every step reads delta's first row (zeros, so Δ = softplus(dt_proj.bias)) and
    // the per-channel parameters B, C (D, N).
    p.delta_stride = 0;
    p.Bm = lw.lti_B;
    p.Cm = lw.lti_C;
    p.bc_stride = 0;
    p.bc_per_channel = true;
  }
  return p;
}

void mixer_forward(float* out, const MixerBuffers& buf, const float* normed, const LayerWeights& lw, const float* A,
                   const Config& c, int B, int L, const MixerCarry& carry) {
  const int d = c.d_model, Di = c.d_inner(), R = c.dt_rank, xw = R + 2 * c.d_state;
  const int64_t M = int64_t{B} * L;
  cpu::matmul_forward(buf.xz, 2 * Di, normed, d, lw.in_proj_w, lw.in_proj_b, M, d, 2 * Di);
  cpu::conv1d_silu_forward(buf.xc, carry.conv_tail, buf.xz, 2 * Di, lw.conv_w, lw.conv_b, B, L, Di, c.d_conv);
  if (c.ssm_mode == SsmMode::Lti) {
    std::fill_n(buf.delta, Di, 0.0f);  // the one row of delta the LTI scan reads
  } else {
    cpu::matmul_forward(buf.xdbl, xw, buf.xc, Di, lw.x_proj_w, nullptr, M, Di, xw);
    cpu::matmul_forward(buf.delta, Di, buf.xdbl, xw, lw.dt_proj_w, nullptr, M, R, Di);
  }
  ScanParams scan = mixer_scan_params(buf, lw, A, c, B, L);
  scan.state_in = carry.ssm_in;
  scan.state_out = carry.ssm_out;
  if (carry.checkpoints) {
    cpu::selective_scan_forward_checkpointed(scan, carry.checkpoints, carry.chunk);
  } else {
    cpu::selective_scan_forward(scan);
  }
  cpu::matmul_forward(out, d, buf.y, Di, lw.out_proj_w, lw.out_proj_b, M, Di, d);
}

}  // namespace mamba

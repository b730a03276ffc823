// Selective scan backward: params → traits → kernel → launcher; the dispatcher is scan_bwd.cu.
//
// The forward kept h at every kStateChunk-th step (ScanParams::chunk_states). A block takes a tile of
// channels of one segment of a sequence and walks its kT = kStateChunk-step sub-tiles from the last to
// the first, carrying the adjoint dh in registers (the same thread ↔ (channel, kG states) split as the
// forward). Per sub-tile, with its inputs loaded into registers while the sub-tile after it was worked:
// stage Δ, u, B, C and the gate's dout = dy·SiLU(z); rescan from the saved state keeping every h_t;
// dz and the dC sums; the adjoint recurrence backwards over it; the dB sums, du and ddelta. Four barriers
// per sub-tile. The exponentials are computed twice (rescan and adjoint); nothing of size L·N is
// stored. When B·D is small (long sequences), L is cut into segments as in the forward:
// the adjoint's recurrence dh_{t−1} = e_t ⊙ (dh_t + C_t dout_t) does not involve h, so a first pass
// (scan_bwd_carry_kernel) runs it over each segment from zero, a chain links the segments, and the
// main pass starts each segment from its true carry. Sums over channels (dB, dC) go through per-tile
// partials, sums over the batch and segments (dA, dD, dΔ bias) through per-block partials, all reduced
// afterwards in a fixed order: deterministic.
//
// Gradients (h_t = e_t ⊙ h_{t−1} + Δ_t B_t u_t, e_t = exp(Δ_t A), y_t = (C_t·h_t + D u_t)·SiLU(z_t)):
//   ∂y→ dout_t = dy_t·SiLU(z_t),  dz_t = dy_t·(C_t·h_t + D u_t)·SiLU′(z_t)
//   dh_t = C_t dout_t + e_{t+1} ⊙ dh_{t+1}
//   dΔ_t = Σ_n dh_tn (A_n e_tn h_{t−1,n} + B_tn u_t),  dA_n = Σ_t dh_tn Δ_t e_tn h_{t−1,n}
//   du_t = D dout_t + Δ_t Σ_n dh_tn B_tn,  dB_tn = Σ_d dh_tn Δ_t u_t,  dC_tn = Σ_d dout_t h_tn
//   dD = Σ dout_t u_t,  and through the softplus, ddelta = dΔ·σ(delta + bias).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/scan.h"

namespace mamba::cuda {

struct ScanBwdKernelParams {
  ScanBwdParams p;
  int tiles = 0;                 // channel tiles per sequence
  int segments = 1;              // S
  int64_t seg_len = 0;           // a multiple of kStateChunk
  float* carry = nullptr;        // (B, S, D, N) carry pass: each segment's dh from zero; then its true carry
  float* seg_dsum = nullptr;     // (B, S, D) ΣΔ over each segment
  float* dB_part = nullptr;      // (B·L, tiles, N) each tile's Σ over its channels
  float* dC_part = nullptr;      // (B·L, tiles, N)
  float* dA_part = nullptr;      // (B, S, D, N) each segment's Σ over time
  float* dD_part = nullptr;      // (B, S, D)
  float* dbias_part = nullptr;   // (B, S, D)
};

template <typename input_t_, int kNSplit_>
struct ScanBwdTraits {
  using input_t = input_t_;
  static constexpr int kG = 4;                           // states per thread: one float4
  static constexpr int kNSplit = kNSplit_;               // threads per channel: N ≤ 4·kNSplit
  static constexpr int kThreads = 128;
  static constexpr int kChannels = kThreads / kNSplit;
  static constexpr int kRowStride = kThreads / kChannels;  // staging: threads per step of a sub-tile
  static constexpr int kNPad = kG * kNSplit;
  // Steps per sub-tile, all their h_t kept: one saved forward state per sub-tile, so no rescan between.
  static constexpr int kT = kStateChunk;
  static constexpr int kXPer = (kT * kChannels + kThreads - 1) / kThreads;  // a thread's share of a (kT, channels) tile
  static constexpr int kBCRows = kThreads / kNPad;                          // rows of a (kT, kNPad) tile loaded at once
  static constexpr int kBCPer = (kT * kNPad + kThreads - 1) / kThreads;    // a thread's share of it
  static constexpr int kQuads = kT * kNPad / 4;  // (step, 4 states) items of the dB, dC sums
  static constexpr int kSumSplit = kThreads > kQuads ? kThreads / kQuads : 1;  // threads per item
  static_assert(kThreads % kNPad == 0 && kT % kRowStride == 0, "a thread's rows must tile the sub-tile");
  static_assert(kSumSplit == 1 || kQuads * kSumSplit == kThreads, "every thread takes one item when items are shared");
  static_assert(kChannels % kSumSplit == 0 && 32 % kSumSplit == 0, "an item's threads sit in one warp");

  // h_t of one sub-tile (then its dB terms); (Δ, u); four (kT, channels) arrays; B, C.
  static constexpr size_t kSmemFloats = kT * kG * kThreads + 2 * kT * kChannels + 4 * kT * kChannels + 2 * kT * kNPad;
  static constexpr size_t smem_bytes() { return kSmemFloats * sizeof(float); }
  // Blocks per SM that the shared memory allows (227 KB, 1 KB reserved per block), at most 4: registers
  // are capped to match (128 per thread at 4).
  static constexpr int kMinBlocks = std::min<int>(4, 227 * 1024 / (smem_bytes() + 1024));
  // The carry pass: 12 blocks per SM (40 registers), as many as it had before its loads went one
  // sub-tile ahead; the dispatcher sizes its grid for that (~12 blocks per SM).
  static constexpr int kCarryMinBlocks = std::min<int>(12, 227 * 1024 / ((4 * kT * kChannels + 2 * kT * kNPad) * 4 + 1024));
};

// Σ over the kNSplit adjacent lanes that share a channel.
template <int kNSplit>
__device__ __forceinline__ float sum_split(float x) {
#pragma unroll
  for (int o = 1; o < kNSplit; o *= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Four partial sums for states n0..n0+3 of one row, those below N.
__device__ __forceinline__ void store_partial(float* row, int n0, int N, bool ok, float4 v) {
  if (!ok) return;
  const float a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int k = 0; k < 4; k++) {
    if (n0 + k < N) row[n0 + k] = a[k];
  }
}

__device__ __forceinline__ float4 as_float4(const float (&v)[4]) { return make_float4(v[0], v[1], v[2], v[3]); }
__device__ __forceinline__ void from_float4(float (&v)[4], float4 f) { v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w; }

// The carry pass for segments > 1: the adjoint alone over each segment, from zero, and ΣΔ. As the main
// pass: Δ, z, dy and C of the next sub-tile loaded into registers while this one runs (running pointers,
// no per-step test but in the segment's last sub-tile); the shared tiles double-buffered, so one barrier
// per sub-tile.
template <class Kt>
__global__ void __launch_bounds__(Kt::kThreads, Kt::kCarryMinBlocks) scan_bwd_carry_kernel(ScanBwdKernelParams kp) {
  using input_t = typename Kt::input_t;
  constexpr int kG = Kt::kG, kT = Kt::kT, kThreads = Kt::kThreads, kChannels = Kt::kChannels;
  constexpr int kNPad = Kt::kNPad, kNSplit = Kt::kNSplit, kXPer = Kt::kXPer, kBCPer = Kt::kBCPer;
  constexpr int kRowStride = Kt::kRowStride, kBCRows = Kt::kBCRows;
  const ScanBwdParams& q = kp.p;
  const ScanParams& p = q.fwd;
  const int N = p.dstate, D = p.dim;
  const int64_t L = p.seqlen;
  const int b = blockIdx.z, seg = blockIdx.y, d0 = blockIdx.x * kChannels;
  const int c = threadIdx.x / kNSplit, n0 = (threadIdx.x % kNSplit) * kG, d = d0 + c;
  const int tc = threadIdx.x % kChannels, tr = threadIdx.x / kChannels, td = d0 + tc;
  const bool d_ok = d < D, td_ok = td < D;
  const float bias = td_ok && p.delta_bias ? p.delta_bias[td] : 0.0f;
  const bool gated = p.z != nullptr, use_softplus = p.delta_softplus;

  __shared__ float s_dt[2][kT * kChannels], s_dout[2][kT * kChannels];
  __shared__ __align__(16) float s_C[2][kT * kNPad];
  float A2[kG], dh[kG] = {};
#pragma unroll
  for (int g = 0; g < kG; g++) A2[g] = d_ok && n0 + g < N ? p.A[static_cast<int64_t>(d) * N + n0 + g] * kLog2e : 0.0f;
  float dsum = 0.0f;
  const int64_t row0 = static_cast<int64_t>(b) * L;
  const int64_t t_begin = seg * kp.seg_len, t_end = L < t_begin + kp.seg_len ? L : t_begin + kp.seg_len;
  const int64_t first = t_begin / kT, last = (t_end - 1) / kT;
  const int nt_last = static_cast<int>(t_end - last * kT);

  // Pointers at the last sub-tile; threads past the last channel read the last one (zeroed at staging).
  const int64_t row = row0 + last * kT + tr;
  const int tdl = td_ok ? td : D - 1;
  const input_t* delta = static_cast<const input_t*>(p.delta) + row * p.delta_stride + tdl;
  const input_t* dy = static_cast<const input_t*>(q.dy) + row * q.dy_stride + tdl;
  // Without a gate, z points at Δ (loaded, then ignored).
  const input_t* z = gated ? static_cast<const input_t*>(p.z) + row * p.z_stride + tdl : delta;
  const int64_t s_delta = kRowStride * p.delta_stride, s_dy = kRowStride * q.dy_stride;
  const int64_t s_z = gated ? kRowStride * p.z_stride : s_delta;
  const int bn = threadIdx.x % kNPad, tb = threadIdx.x / kNPad;
  const bool bc_ok = bn < N;
  const input_t* Cm = static_cast<const input_t*>(p.Cm) + (row0 + last * kT + tb) * p.C_stride + bn;
  const int64_t s_C_rows = kBCRows * p.C_stride;

  input_t r_delta[kXPer], r_z[kXPer], r_dy[kXPer], r_C[kBCPer];
  auto load = [&](auto full, int lim) {
    constexpr bool kFull = decltype(full)::value;
#pragma unroll
    for (int j = 0; j < kXPer; j++) {
      const bool ok = (kFull && kXPer * kRowStride <= kT) || tr + j * kRowStride < lim;
      r_delta[j] = ok ? __ldg(delta + j * s_delta) : input_t(0.0f);
      r_z[j] = ok ? __ldg(z + j * s_z) : input_t(0.0f);
      r_dy[j] = ok ? __ldg(dy + j * s_dy) : input_t(0.0f);
    }
#pragma unroll
    for (int j = 0; j < kBCPer; j++) {
      const bool ok = ((kFull && kBCPer * kBCRows <= kT) || tb + j * kBCRows < lim) && bc_ok;
      r_C[j] = ok ? __ldg(Cm + j * s_C_rows) : input_t(0.0f);
    }
  };
  if (nt_last == kT) load(std::true_type{}, kT);
  else load(std::false_type{}, nt_last);

  int buf = 0;
  for (int64_t k = last; k >= first; k--, buf ^= 1) {
    const int nt = k == last ? nt_last : kT;
    // No barrier before: buffer buf was last read in the sub-tile before the previous barrier.
#pragma unroll
    for (int j = 0; j < kXPer; j++) {
      const int t = tr + j * kRowStride;
      const bool ok = t < nt && td_ok;
      const float pre = to_float(r_delta[j]) + bias;
      const float sp = unconditional(softplus(pre));
      const float dt = ok ? (use_softplus ? sp : pre) : 0.0f;
      const float g_y = ok ? to_float(r_dy[j]) : 0.0f;
      const float gate = unconditional(silu(to_float(r_z[j])));
      s_dt[buf][t * kChannels + tc] = dt;
      s_dout[buf][t * kChannels + tc] = gated ? g_y * gate : g_y;
    }
#pragma unroll
    for (int j = 0; j < kBCPer; j++) {
      const int i = threadIdx.x + j * kThreads;
      if (kBCPer * kBCRows <= kT || i < kT * kNPad) s_C[buf][i] = to_float(r_C[j]);
    }
    __syncthreads();
    if (k > first) {  // the sub-tile before, in flight during this one's adjoint
      delta -= kXPer * s_delta, z -= kXPer * s_z, dy -= kXPer * s_dy, Cm -= kT * p.C_stride;
      load(std::true_type{}, kT);
    }
    // Unrolled: the exponentials do not depend on dh, so they leave the dh chain.
#pragma unroll
    for (int t = kT - 1; t >= 0; t--) {
      const float dt = s_dt[buf][t * kChannels + c], dout = s_dout[buf][t * kChannels + c];
      const float4 C4 = *reinterpret_cast<const float4*>(&s_C[buf][t * kNPad + n0]);
      const float Cv[4] = {C4.x, C4.y, C4.z, C4.w};
#pragma unroll
      for (int g = 0; g < kG; g++) dh[g] = (dh[g] + dout * Cv[g]) * exp2f(dt * A2[g]);
      dsum += dt;
    }
  }
  if (!d_ok) return;
  const int64_t bsd = (static_cast<int64_t>(b) * kp.segments + seg) * D + d;
#pragma unroll
  for (int g = 0; g < kG; g++) {
    if (n0 + g < N) kp.carry[bsd * N + n0 + g] = dh[g];
  }
  if (n0 == 0) kp.seg_dsum[bsd] = dsum;
}

// A sub-tile's raw inputs and its start state, loaded into registers one sub-tile ahead of their use so
// that the loads' latency hides behind the work on the sub-tile after it (the walk goes backwards in
// time). A thread's places in the (kT, channels) tiles of u, Δ, z, dy (and du, ddelta, dz) are the same
// in every sub-tile: channel tc, steps tr, tr + kRowStride, ...; so the values that the gate and the
// outputs need stay in registers between staging and the stores. In the (kT, kNPad) tiles of B and C a
// thread holds state threadIdx.x % kNPad of steps threadIdx.x / kNPad + j·kBCRows.
template <class Kt>
struct BwdTileRegs {
  using input_t = typename Kt::input_t;
  input_t u[Kt::kXPer], delta[Kt::kXPer], z[Kt::kXPer], dy[Kt::kXPer], B[Kt::kBCPer], C[Kt::kBCPer];
  float h0[Kt::kG];  // the saved h before the sub-tile, this thread's kG states
};

// Pointers to this thread's first element of one sub-tile, moved back a sub-tile at a time, and the
// distances between a thread's elements: one 64-bit add per element instead of a multiply.
template <class Kt>
struct BwdTilePtrs {
  using input_t = typename Kt::input_t;
  const input_t *u, *delta, *z, *dy, *B, *C;
  const float* h0;  // (b, chunk, d, n0) of chunk_states
  input_t *du, *ddelta, *dz;
};
struct BwdSteps {
  int64_t u, delta, z, dy, du, ddelta, dz;  // kRowStride rows
  int64_t B, C;                             // kBCRows rows
};

// Loads the sub-tile at x with nt valid steps; kFull: nt = kT, so no step needs a test. Threads past the
// last channel load the last channel's u, Δ, z, dy (their pointers are clamped there), which staging
// zeroes; B, C of states ≥ N and the steps past nt load as 0.
template <class Kt, bool kFull>
__device__ __forceinline__ void load_bwd_tile(BwdTileRegs<Kt>& r, const BwdTilePtrs<Kt>& x, const BwdSteps& st,
                                              int nt, int tr, bool bc_ok, int ng) {
  using input_t = typename Kt::input_t;
  constexpr int kT = Kt::kT, kRowStride = Kt::kRowStride, kBCRows = Kt::kBCRows;
  const int lim = kFull ? kT : nt;
  const input_t *u = x.u, *delta = x.delta, *z = x.z, *dy = x.dy;
#pragma unroll
  for (int j = 0; j < Kt::kXPer; j++) {
    const bool ok = (kFull && Kt::kXPer * kRowStride <= kT) || tr + j * kRowStride < lim;
    r.u[j] = ok ? __ldg(u) : input_t(0.0f);
    r.delta[j] = ok ? __ldg(delta) : input_t(0.0f);
    r.z[j] = ok ? __ldg(z) : input_t(0.0f);
    r.dy[j] = ok ? __ldg(dy) : input_t(0.0f);
    u += st.u, delta += st.delta, z += st.z, dy += st.dy;
  }
  const int tb = threadIdx.x / Kt::kNPad;
  const input_t *Bm = x.B, *Cm = x.C;
#pragma unroll
  for (int j = 0; j < Kt::kBCPer; j++) {
    const bool ok = ((kFull && Kt::kBCPer * kBCRows <= kT) || tb + j * kBCRows < lim) && bc_ok;
    r.B[j] = ok ? __ldg(Bm) : input_t(0.0f);
    r.C[j] = ok ? __ldg(Cm) : input_t(0.0f);
    Bm += st.B, Cm += st.C;
  }
#pragma unroll
  for (int g = 0; g < Kt::kG; g++) r.h0[g] = g < ng ? __ldg(x.h0 + g) : 0.0f;
}

// Σ over the kSumSplit adjacent lanes that share one (step, 4 states) item of the dB, dC sums.
template <int kLanes>
__device__ __forceinline__ float4 sum_lanes(float4 v) {
#pragma unroll
  for (int o = 1; o < kLanes; o *= 2) {
    v.x += __shfl_xor_sync(0xffffffffu, v.x, o);
    v.y += __shfl_xor_sync(0xffffffffu, v.y, o);
    v.z += __shfl_xor_sync(0xffffffffu, v.z, o);
    v.w += __shfl_xor_sync(0xffffffffu, v.w, o);
  }
  return v;
}

// Four partial sums for states n0..n0+3 of one row, those below N; one 16-byte store when N is a
// multiple of 4 and the partial buffers are 16-byte aligned (vec).
__device__ __forceinline__ void store_partial4(float* row, int n0, int N, bool vec, float4 v) {
  if (vec) {
    if (n0 < N) *reinterpret_cast<float4*>(row + n0) = v;
    return;
  }
  store_partial(row, n0, N, true, v);
}

template <class Kt>
__global__ void __launch_bounds__(Kt::kThreads, Kt::kMinBlocks) scan_bwd_kernel(ScanBwdKernelParams kp) {
  using input_t = typename Kt::input_t;
  constexpr int kG = Kt::kG, kT = Kt::kT, kThreads = Kt::kThreads, kChannels = Kt::kChannels;
  constexpr int kNPad = Kt::kNPad, kNSplit = Kt::kNSplit, kXPer = Kt::kXPer, kBCPer = Kt::kBCPer;
  constexpr int kRowStride = Kt::kRowStride, kBCRows = Kt::kBCRows;
  static_assert(kG == 4, "the shared-memory layouts below move one float4 of states per thread");
  const ScanBwdParams& q = kp.p;
  const ScanParams& p = q.fwd;
  const int N = p.dstate, D = p.dim;
  const int64_t L = p.seqlen;
  const int b = blockIdx.z, seg = blockIdx.y, tile = blockIdx.x, d0 = tile * kChannels;
  // The scans: this thread's channel and first state.
  const int c = threadIdx.x / kNSplit, s = threadIdx.x % kNSplit, n0 = s * kG;
  const int d = d0 + c;
  const bool d_ok = d < D;
  // Staging, the gate and the outputs: this thread's channel and first step in every sub-tile.
  const int tc = threadIdx.x % kChannels, tr = threadIdx.x / kChannels;
  const int td = d0 + tc;
  const bool td_ok = td < D;
  const float bias = td_ok && p.delta_bias ? p.delta_bias[td] : 0.0f;
  const float skip = td_ok && p.D ? p.D[td] : 0.0f;
  const bool gated = p.z != nullptr, use_softplus = p.delta_softplus;

  extern __shared__ float4 smem4[];
  float4* s_h = smem4;                                              // (kT, kThreads) h_t, then the dB terms dh_t Δ_t u_t
  float2* s_dx = reinterpret_cast<float2*>(s_h + kT * kThreads);   // (kT, channels) (Δ, u)
  float* s_out = reinterpret_cast<float*>(s_dx + kT * kChannels);  // (kT, channels) C·h
  float* s_dout = s_out + kT * kChannels;                           // (kT, channels) ∂loss/∂(C·h + D u)
  float* s_ddt = s_dout + kT * kChannels;                           // (kT, channels) dΔ
  float* s_du = s_ddt + kT * kChannels;                             // (kT, channels) Δ Σ_n dh B
  float* s_B = s_du + kT * kChannels;                               // (kT, kNPad)
  float* s_C = s_B + kT * kNPad;                                    // (kT, kNPad)

  float A[kG], A2[kG], dh[kG], dA[kG];
  const int64_t bdn = (static_cast<int64_t>(b) * D + d) * N;
  const int64_t bsd = (static_cast<int64_t>(b) * kp.segments + seg) * D;  // (b, seg, 0) of a (B, S, D) array
#pragma unroll
  for (int g = 0; g < kG; g++) {
    const int n = n0 + g;
    const bool ok = d_ok && n < N;
    A[g] = ok ? p.A[static_cast<int64_t>(d) * N + n] : 0.0f;
    A2[g] = A[g] * kLog2e;
    float carry = 0.0f;
    if (ok) {
      if (kp.segments > 1) carry = kp.carry[(bsd + d) * N + n];
      else if (q.dstate_out) carry = q.dstate_out[bdn + n];
    }
    dh[g] = carry;
    dA[g] = 0.0f;
  }
  float dD_acc = 0.0f, dbias_acc = 0.0f;

  const int64_t row0 = static_cast<int64_t>(b) * L;
  const int64_t t_begin = seg * kp.seg_len, t_end = L < t_begin + kp.seg_len ? L : t_begin + kp.seg_len;
  const int64_t first = t_begin / kT, last = (t_end - 1) / kT;  // the segment's sub-tiles (= saved states)
  const int nt_last = static_cast<int>(t_end - last * kT);

  // Pointers at the last sub-tile, which is walked first.
  BwdTilePtrs<Kt> x;
  BwdSteps st;
  const int bn = threadIdx.x % kNPad;
  const bool bc_ok = bn < N;  // this thread's state in the B, C tiles
  const int ng = d_ok ? (N - n0 < kG ? N - n0 : kG) : 0;  // its states below N in the scans
  {
    const int64_t row = row0 + last * kT + tr;
    const int tdl = td_ok ? td : D - 1;  // loads of threads past the last channel read the last one
    const int64_t z_stride = gated ? p.z_stride : p.u_stride;
    x.u = static_cast<const input_t*>(p.u) + row * p.u_stride + tdl;
    x.delta = static_cast<const input_t*>(p.delta) + row * p.delta_stride + tdl;
    // Without a gate, z points at u (loaded, then ignored) so that its loads need no test of their own.
    x.z = gated ? static_cast<const input_t*>(p.z) + row * z_stride + tdl : x.u;
    x.dy = static_cast<const input_t*>(q.dy) + row * q.dy_stride + tdl;
    x.du = static_cast<input_t*>(q.du) + row * q.du_stride + td;
    x.ddelta = static_cast<input_t*>(q.ddelta) + row * q.ddelta_stride + td;
    x.dz = gated ? static_cast<input_t*>(q.dz) + row * q.dz_stride + td : x.du;  // not stored to without a gate
    const int64_t bc_row = row0 + last * kT + threadIdx.x / kNPad;
    x.B = static_cast<const input_t*>(p.Bm) + bc_row * p.B_stride + bn;
    x.C = static_cast<const input_t*>(p.Cm) + bc_row * p.C_stride + bn;
    const int64_t chunks = (L + kStateChunk - 1) / kStateChunk;
    x.h0 = p.chunk_states + ((static_cast<int64_t>(b) * chunks + last) * D + (d_ok ? d : 0)) * N + n0;
    st.u = kRowStride * p.u_stride, st.delta = kRowStride * p.delta_stride, st.z = kRowStride * z_stride;
    st.dy = kRowStride * q.dy_stride, st.du = kRowStride * q.du_stride, st.ddelta = kRowStride * q.ddelta_stride;
    st.dz = gated ? kRowStride * q.dz_stride : st.du;
    st.B = kBCRows * p.B_stride, st.C = kBCRows * p.C_stride;
  }
  // One sub-tile back: kXPer · kRowStride = kT rows.
  auto back = [&](BwdTilePtrs<Kt>& xp) {
    xp.u -= kXPer * st.u, xp.delta -= kXPer * st.delta, xp.z -= kXPer * st.z, xp.dy -= kXPer * st.dy;
    xp.du -= kXPer * st.du, xp.ddelta -= kXPer * st.ddelta, xp.dz -= kXPer * st.dz;
    xp.B -= kT * p.B_stride, xp.C -= kT * p.C_stride;
    xp.h0 -= static_cast<int64_t>(D) * N;
  };
  // Partial dB, dC rows as float4 where N allows.
  const bool vec_part = N % 4 == 0 && (reinterpret_cast<uintptr_t>(kp.dB_part) & 15) == 0 &&
                        (reinterpret_cast<uintptr_t>(kp.dC_part) & 15) == 0;

  BwdTileRegs<Kt> next;
  if (nt_last == kT) load_bwd_tile<Kt, true>(next, x, st, kT, tr, bc_ok, ng);
  else load_bwd_tile<Kt, false>(next, x, st, nt_last, tr, bc_ok, ng);

  // From staging to the gate's and the outputs' loops: dout, dz/(C·h + D u), softplus′ and D·u of this
  // thread's elements.
  float dout_r[kXPer], dzf[kXPer], dsp[kXPer], su[kXPer];
  for (int64_t k = last; k >= first; k--) {
    const int64_t t0 = k * kT;
    const int nt = k == last ? nt_last : kT;
    float hs[kG];  // h before the sub-tile
#pragma unroll
    for (int g = 0; g < kG; g++) hs[g] = next.h0[g];

    // Stage Δ (bias, softplus) and u, and the gate: dout = dy·SiLU(z) does not depend on h. Steps past
    // nt get Δ = 0, B = 0 (h unchanged) and dout = 0. Branch-free, so that the elements' SFU work
    // overlaps. No barrier before: the previous sub-tile's last readers of these arrays (the adjoint)
    // are behind its last barrier.
#pragma unroll
    for (int j = 0; j < kXPer; j++) {
      const int t = tr + j * kRowStride;
      const bool ok = t < nt && td_ok;
      const float uu = ok ? to_float(next.u[j]) : 0.0f;
      const float pre = to_float(next.delta[j]) + bias;
      const float sp = unconditional(softplus(pre));
      const float sg = unconditional(sigmoid(pre));  // softplus′
      const float dt = ok ? (use_softplus ? sp : pre) : 0.0f;
      const float g_y = ok ? to_float(next.dy[j]) : 0.0f;
      const float zz = to_float(next.z[j]);
      const float sig = unconditional(sigmoid(zz));
      const float dout = gated ? g_y * zz * sig : g_y;
      s_dx[t * kChannels + tc] = make_float2(dt, uu);
      s_dout[t * kChannels + tc] = dout;
      dout_r[j] = dout;
      dzf[j] = g_y * sig * (1.0f + zz * (1.0f - sig));  // dy·SiLU′(z), SiLU′(z) = σ(z)·(1 + z·(1 − σ(z)))
      dsp[j] = use_softplus ? sg : 1.0f;
      su[j] = skip * uu;
      dD_acc += dout * uu;
    }
#pragma unroll
    for (int j = 0; j < kBCPer; j++) {
      const int i = threadIdx.x + j * kThreads;
      if (kBCPer * kBCRows <= kT || i < kT * kNPad) {
        s_B[i] = to_float(next.B[j]);
        s_C[i] = to_float(next.C[j]);
      }
    }
    __syncthreads();

    // In flight from here to the next sub-tile's staging: its inputs (the walk goes backwards).
    if (k > first) {
      BwdTilePtrs<Kt> xp = x;
      back(xp);
      load_bwd_tile<Kt, true>(next, xp, st, kT, tr, bc_ok, ng);
    }

    // Rescan from the saved state, keeping h_t; C_t·h_t summed over the channel's threads.
    {
      float h[kG];
#pragma unroll
      for (int g = 0; g < kG; g++) h[g] = hs[g];
#pragma unroll
      for (int t = 0; t < kT; t++) {
        const float2 dx = s_dx[t * kChannels + c];
        const float dtu = dx.x * dx.y;
        float Bv[kG], Cv[kG];
        from_float4(Bv, *reinterpret_cast<const float4*>(s_B + t * kNPad + n0));
        from_float4(Cv, *reinterpret_cast<const float4*>(s_C + t * kNPad + n0));
        float acc = 0.0f;
#pragma unroll
        for (int g = 0; g < kG; g++) {
          h[g] = exp2f(dx.x * A2[g]) * h[g] + dtu * Bv[g];
          acc += Cv[g] * h[g];
        }
        s_h[t * kThreads + threadIdx.x] = as_float4(h);
        acc = sum_split<kNSplit>(acc);
        if (s == 0) s_out[t * kChannels + c] = acc;
      }
    }
    __syncthreads();

    // dz = dy·SiLU′(z)·(C·h + D u).
    if (gated) {
      input_t* dz = x.dz;
#pragma unroll
      for (int j = 0; j < kXPer; j++) {
        const int t = tr + j * kRowStride;
        if (t < nt && td_ok) *dz = from_float<input_t>(dzf[j] * (s_out[t * kChannels + tc] + su[j]));
        dz += st.dz;
      }
    }
    // dC_tn = Σ_d dout_t h_tn over the tile's channels, four states at a time; kSumSplit threads per
    // item, each over every kSumSplit-th channel, then added across the lanes: a fixed order.
    constexpr int kQ4 = kNPad / 4, kQuads = Kt::kQuads, kCS = Kt::kSumSplit, kCPer = kChannels / kCS;
    constexpr int kItemsAtOnce = kThreads / kCS;  // items summed at once by the block
    const int part = threadIdx.x % kCS;
#pragma unroll
    for (int i = threadIdx.x / kCS; i < kQuads; i += kItemsAtOnce) {
      const int t = i / kQ4, q4 = i % kQ4;
      float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
      for (int m = 0; m < kCPer; m++) {
        const int cc = m * kCS + part;
        const float w = s_dout[t * kChannels + cc];
        const float4 v = s_h[(t * kChannels + cc) * kQ4 + q4];
        acc.x += w * v.x, acc.y += w * v.y, acc.z += w * v.z, acc.w += w * v.w;
      }
      acc = sum_lanes<kCS>(acc);
      if (part == 0 && t < nt) store_partial4(kp.dC_part + ((row0 + t0 + t) * kp.tiles + tile) * N, q4 * 4, N, vec_part, acc);
    }
    __syncthreads();

    // The adjoint recurrence, backwards over the sub-tile. Each thread reads h_{t−1} from its own slot
    // (h_0 of the sub-tile from registers) and overwrites slot t, which only it reads, with its dB terms.
#pragma unroll
    for (int t = kT - 1; t >= 0; t--) {
      const float2 dx = s_dx[t * kChannels + c];
      const float dt = dx.x, xu = dx.y, dout = s_dout[t * kChannels + c];
      float hprev[kG], Bv[kG], Cv[kG], dBt[kG];
      if (t > 0) from_float4(hprev, s_h[(t - 1) * kThreads + threadIdx.x]);
      else {
#pragma unroll
        for (int g = 0; g < kG; g++) hprev[g] = hs[g];
      }
      from_float4(Bv, *reinterpret_cast<const float4*>(s_B + t * kNPad + n0));
      from_float4(Cv, *reinterpret_cast<const float4*>(s_C + t * kNPad + n0));
      // dh·e serves both w = dh_t e_t h_{t−1} (the Δ and A terms) and the carry to step t − 1; the
      // B u term of dΔ is u·Σ_n dh B, added once after the loop.
      const float dtx = dt * xu;
      float wA = 0.0f, dBsum = 0.0f;
#pragma unroll
      for (int g = 0; g < kG; g++) {
        dh[g] += dout * Cv[g];
        const float dhB = dh[g] * Bv[g];
        dBsum += dhB;
        dBt[g] = dh[g] * dtx;
        dh[g] *= exp2f(dt * A2[g]);
        const float w = dh[g] * hprev[g];
        wA += w * A[g];
        dA[g] += w * dt;
      }
      float ddt = wA + xu * dBsum;
      s_h[t * kThreads + threadIdx.x] = as_float4(dBt);
      ddt = sum_split<kNSplit>(ddt);
      dBsum = sum_split<kNSplit>(dBsum);
      if (s == 0) {
        s_ddt[t * kChannels + c] = ddt;
        s_du[t * kChannels + c] = dBsum * dt;
      }
    }
    __syncthreads();

    // dB_tn = Σ_d dh_tn Δ_t u_t over the tile's channels, as dC.
#pragma unroll
    for (int i = threadIdx.x / kCS; i < kQuads; i += kItemsAtOnce) {
      const int t = i / kQ4, q4 = i % kQ4;
      float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
      for (int m = 0; m < kCPer; m++) {
        const float4 v = s_h[(t * kChannels + m * kCS + part) * kQ4 + q4];
        acc.x += v.x, acc.y += v.y, acc.z += v.z, acc.w += v.w;
      }
      acc = sum_lanes<kCS>(acc);
      if (part == 0 && t < nt) store_partial4(kp.dB_part + ((row0 + t0 + t) * kp.tiles + tile) * N, q4 * 4, N, vec_part, acc);
    }
    // du, ddelta out; the Δ bias summed over time. No barrier after: the next sub-tile's staging writes
    // only s_dx, s_dout, s_B, s_C, and its rescan writes s_h, s_out only after its first barrier.
    {
      input_t *du = x.du, *ddelta = x.ddelta;
#pragma unroll
      for (int j = 0; j < kXPer; j++) {
        const int t = tr + j * kRowStride;
        const bool ok = t < nt && td_ok;
        const float g_u = s_du[t * kChannels + tc] + skip * dout_r[j];
        const float dd = s_ddt[t * kChannels + tc] * dsp[j];
        if (ok) {
          *du = from_float<input_t>(g_u);
          *ddelta = from_float<input_t>(dd);
        }
        dbias_acc += ok ? dd : 0.0f;
        du += st.du, ddelta += st.ddelta;
      }
    }
    back(x);
  }

  if (d_ok) {
#pragma unroll
    for (int g = 0; g < kG; g++) {
      if (n0 + g < N) {
        kp.dA_part[(bsd + d) * N + n0 + g] = dA[g];
        if (q.dstate_in && kp.segments == 1) q.dstate_in[bdn + n0 + g] = dh[g];
      }
    }
  }
  // A channel's dD and Δ-bias sums are spread over the kThreads / kChannels threads with its tc: add
  // them in a fixed order. s_dx was last read by the last adjoint, before the last barrier.
  float* s_red = reinterpret_cast<float*>(s_dx);  // (2, kThreads / kChannels, channels)
  s_red[tr * kChannels + tc] = dD_acc;
  s_red[(kThreads / kChannels + tr) * kChannels + tc] = dbias_acc;
  __syncthreads();
  if (tr == 0 && td_ok) {
    float sD = 0.0f, sb = 0.0f;
    for (int r = 0; r < kThreads / kChannels; r++) {
      sD += s_red[r * kChannels + tc];
      sb += s_red[(kThreads / kChannels + r) * kChannels + tc];
    }
    kp.dD_part[bsd + td] = sD;
    kp.dbias_part[bsd + td] = sb;
  }
}

// Links the segments between the carry pass and the main pass (scan_bwd.cu).
void launch_scan_bwd_chain(const ScanBwdKernelParams& kp, cudaStream_t stream);

template <class Kt>
void launch_scan_bwd(const ScanBwdKernelParams& kp, cudaStream_t stream) {
  const dim3 grid(kp.tiles, kp.segments, kp.p.fwd.batch);
  if (kp.segments > 1) {
    scan_bwd_carry_kernel<Kt><<<grid, Kt::kThreads, 0, stream>>>(kp);
    MAMBA_CUDA_CHECK_LAUNCH();
    launch_scan_bwd_chain(kp, stream);
  }
  constexpr size_t smem = Kt::smem_bytes();
  MAMBA_CUDA_CHECK(cudaFuncSetAttribute(scan_bwd_kernel<Kt>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  scan_bwd_kernel<Kt><<<grid, Kt::kThreads, smem, stream>>>(kp);
  MAMBA_CUDA_CHECK_LAUNCH();
}

// Threads per channel → traits. Instantiated once per dtype (scan_bwd_f32.cu, scan_bwd_bf16.cu, scan_bwd_f16.cu).
template <typename input_t>
void launch_scan_bwd_dtype(const ScanBwdKernelParams& kp, int nsplit, cudaStream_t stream) {
  switch (nsplit) {
    case 1: launch_scan_bwd<ScanBwdTraits<input_t, 1>>(kp, stream); break;
    case 4: launch_scan_bwd<ScanBwdTraits<input_t, 4>>(kp, stream); break;
    case 16: launch_scan_bwd<ScanBwdTraits<input_t, 16>>(kp, stream); break;
    default: throw std::invalid_argument("selective_scan_bwd: no compiled split");
  }
}
extern template void launch_scan_bwd_dtype<float>(const ScanBwdKernelParams&, int, cudaStream_t);
extern template void launch_scan_bwd_dtype<__nv_bfloat16>(const ScanBwdKernelParams&, int, cudaStream_t);
extern template void launch_scan_bwd_dtype<__half>(const ScanBwdKernelParams&, int, cudaStream_t);

}  // namespace mamba::cuda

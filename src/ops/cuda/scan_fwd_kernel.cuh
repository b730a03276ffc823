// Selective scan forward: params → traits → kernel → launcher. The dispatcher (scan_fwd.cu) picks the
// traits and the split; scan_fwd_{f32,bf16,f16}.cu instantiate the launcher once per dtype.
//
// The work split. In the token-major layout the channels of one time step are contiguous, so a block
// takes a tile of channels and walks along time: each thread holds kG of one channel's N states in
// registers (kNSplit = N / kG threads per channel), and every step costs kG exponentials, 2·kG FMAs and a
// few shared-memory reads. That is the paper's fused scan (§3.3): Δ·A, Δ·B·u, the states h and C·h never
// leave the chip. B_t and C_t are shared by the whole tile, so they are read from memory once per tile
// rather than once per channel as in the official (batch, channel)-per-block kernel.
//
// Time goes through shared memory kT steps at a time: all threads stage u, Δ (bias and softplus applied
// once per element, not once per state), B and C for the tile, having loaded them into registers while
// the previous tile was scanned; then each scans its states over the kT steps, writing its partial C·h
// per step; last, the partial sums are added, D·u and the gate applied, and y stored with the channels
// contiguous across threads. dev/notes/scan.md has each version's measurements.
//
// When B·D is too small to fill the GPU (long single sequences), L is cut into `segments` run in
// parallel: pass 1 (kStateOnly) scans each segment from zero and keeps only its final state and ΣΔ, a
// small kernel chains them (h_end = exp(A·ΣΔ) ⊙ h_start + h_local), and pass 2 rescans every segment
// from its true start state. This costs the exponentials twice, so the dispatcher uses it only when too
// few threads would run otherwise.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/scan.h"

namespace mamba::cuda {

// The kernel's arguments: the user's params plus the split the dispatcher chose.
struct ScanFwdKernelParams {
  ScanFwdParams p;
  int segments = 1;              // S
  int64_t seg_len = 0;           // steps per segment, a multiple of kStateChunk (the last one shorter)
  float* seg_state = nullptr;    // (B, S, D, N) pass 1: each segment's h from zero; then its start state
  float* seg_dsum = nullptr;     // (B, S, D) pass 1: ΣΔ over each segment
};

template <typename input_t_, int kG_, int kNSplit_>
struct ScanFwdTraits {
  using input_t = input_t_;
  static constexpr int kG = kG_;                       // states per thread, in registers
  static constexpr int kNSplit = kNSplit_;             // threads per channel: N ≤ kG · kNSplit
  static constexpr int kThreads = 128;
  static constexpr int kChannels = kThreads / kNSplit;  // channels per block
  static constexpr int kNPad = kG * kNSplit;           // states per channel, padded
  // Steps per tile: each thread holds its share of the next tile's u, Δ, B, C (and this tile's z) in
  // registers while it scans, so the tile is cut to keep that share at 8 values of each.
  static constexpr int kT = std::min({32, 8 * kNSplit, 8 * kThreads / kNPad});
  static constexpr int kXPer = (kT * kChannels + kThreads - 1) / kThreads;  // a thread's share of a (kT, channels) tile
  static constexpr int kBCPer = (kT * kNPad + kThreads - 1) / kThreads;  // and of a (kT, N) tile
  // Steps whose loads and exponentials the scan issues together (see the scan loop): ~16 exponentials.
  static constexpr int kUnroll = kG >= 16 ? 1 : 16 / kG < kT ? 16 / kG : kT;
  // At least 4 blocks (16 warps) per SM: caps registers at 128 per thread.
  static constexpr int kMinBlocks = 4;
  static_assert(kStateChunk % kUnroll == 0 && (kT % kStateChunk == 0 || kStateChunk % kT == 0),
                "state chunks must start at a step group");
};

// kG consecutive fp32 values from shared memory, 16 bytes at a time where kG allows.
template <int kG>
__device__ __forceinline__ void load_smem(float (&out)[kG], const float* src) {
  if constexpr (kG % 4 == 0) {
#pragma unroll
    for (int q = 0; q < kG / 4; q++) {
      const float4 v = reinterpret_cast<const float4*>(src)[q];
      out[4 * q] = v.x, out[4 * q + 1] = v.y, out[4 * q + 2] = v.z, out[4 * q + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int g = 0; g < kG; g++) out[g] = src[g];
  }
}

// A tile's raw inputs, loaded into registers one tile ahead of their use so that the loads' latency
// hides behind the scan of the previous tile.
//
// A thread's place in the (kT, channels) tiles of u, Δ, z and y is the same in every tile: channel tc
// and steps tr, tr + kNSplit, tr + 2·kNSplit, ... (kThreads / kChannels = kNSplit threads share a step).
// Staging and the epilogue use the same place, so D·u and z never go through shared memory. In the
// (kT, kNPad) tiles of B and C, element j of a thread is element threadIdx.x + j·kThreads.
template <class Kt>
struct TileRegs {
  typename Kt::input_t u[Kt::kXPer], delta[Kt::kXPer], B[Kt::kBCPer], C[Kt::kBCPer];
};

// The tile whose first step is row t0_row (= b·L + t0), nt steps of it valid.
template <class Kt, bool kStateOnly>
__device__ __forceinline__ void load_tile(TileRegs<Kt>& r, const ScanFwdParams& p, int64_t t0_row, int nt, int tr,
                                          int td, bool td_ok) {
  using input_t = typename Kt::input_t;
  const auto* u = static_cast<const input_t*>(p.u) + (t0_row + tr) * p.u_stride + td;
  const auto* delta = static_cast<const input_t*>(p.delta) + (t0_row + tr) * p.delta_stride + td;
  // __ldg: read-only loads, which the compiler may issue all at once, ahead of shared-memory stores.
#pragma unroll
  for (int j = 0; j < Kt::kXPer; j++) {
    const int t = tr + j * Kt::kNSplit;
    const bool ok = t < nt && td_ok;
    r.u[j] = ok ? __ldg(u + j * Kt::kNSplit * p.u_stride) : input_t(0.0f);
    r.delta[j] = ok ? __ldg(delta + j * Kt::kNSplit * p.delta_stride) : input_t(0.0f);
  }
  const auto* Bm = static_cast<const input_t*>(p.Bm);
  const auto* Cm = static_cast<const input_t*>(p.Cm);
#pragma unroll
  for (int j = 0; j < Kt::kBCPer; j++) {
    const int i = threadIdx.x + j * Kt::kThreads, t = i / Kt::kNPad, n = i % Kt::kNPad;
    const bool ok = t < nt && n < p.dstate;
    r.B[j] = ok ? __ldg(Bm + (t0_row + t) * p.B_stride + n) : input_t(0.0f);
    if (!kStateOnly) r.C[j] = ok ? __ldg(Cm + (t0_row + t) * p.C_stride + n) : input_t(0.0f);
  }
}

template <class Kt, bool kStateOnly>
__global__ void __launch_bounds__(Kt::kThreads, Kt::kMinBlocks) scan_fwd_kernel(ScanFwdKernelParams kp) {
  using input_t = typename Kt::input_t;
  constexpr int kG = Kt::kG, kT = Kt::kT, kThreads = Kt::kThreads, kChannels = Kt::kChannels;
  constexpr int kNPad = Kt::kNPad, kNSplit = Kt::kNSplit, kXPer = Kt::kXPer, kBCPer = Kt::kBCPer;
  const ScanFwdParams& p = kp.p;
  const int N = p.dstate, D = p.dim;
  const int b = blockIdx.z, seg = blockIdx.y, d0 = blockIdx.x * kChannels;
  // The scan: this thread's channel and first state.
  const int c = threadIdx.x / kNSplit, n0 = (threadIdx.x % kNSplit) * kG;
  const int d = d0 + c;
  const bool d_ok = d < D;
  // Staging and epilogue: this thread's channel and first step in every tile.
  const int tc = threadIdx.x % kChannels, tr = threadIdx.x / kChannels;
  const int td = d0 + tc;
  const bool td_ok = td < D;
  const float bias = td_ok && p.delta_bias ? p.delta_bias[td] : 0.0f;
  const float skip = td_ok && p.D ? p.D[td] : 0.0f;

  __shared__ float2 s_dtu[kT * kChannels];            // (kT, channels) Δ after bias and softplus, and Δ·u
  __shared__ __align__(16) float s_y[kT * kThreads];  // (kT, kThreads) each thread's Σ_{its n} C·h
  __shared__ __align__(16) float s_B[kT * kNPad];     // (kT, kNPad)
  __shared__ __align__(16) float s_C[kT * kNPad];     // (kT, kNPad)

  // exp(Δ·A) = exp2(Δ·A·log2 e): A pre-scaled so each step needs one multiply and one ex2.
  float A2[kG], h[kG];
  const int64_t bdn = (static_cast<int64_t>(b) * D + d) * N;  // (b, d, 0) of a (B, D, N) array
  const int64_t seg_bdn = ((static_cast<int64_t>(b) * kp.segments + seg) * D + d) * N;
#pragma unroll
  for (int g = 0; g < kG; g++) {
    const int n = n0 + g;
    const bool ok = d_ok && n < N;
    A2[g] = ok ? p.A[static_cast<int64_t>(d) * N + n] * kLog2e : 0.0f;
    float h0 = 0.0f;
    if (ok && !kStateOnly) {
      if (kp.segments > 1) h0 = kp.seg_state[seg_bdn + n];
      else if (p.state_in) h0 = p.state_in[bdn + n];
    }
    h[g] = h0;
  }
  float dsum = 0.0f;

  const int64_t L = p.seqlen;
  const int64_t t_begin = seg * kp.seg_len, t_end = L < t_begin + kp.seg_len ? L : t_begin + kp.seg_len;
  const int64_t row0 = static_cast<int64_t>(b) * L;  // row of (b, t = 0)
  auto steps = [&](int64_t t0) { return t_end - t0 < kT ? static_cast<int>(t_end - t0) : kT; };

  TileRegs<Kt> next;
  load_tile<Kt, kStateOnly>(next, p, row0 + t_begin, steps(t_begin), tr, td, td_ok);
  for (int64_t t0 = t_begin; t0 < t_end; t0 += kT) {
    const int nt = steps(t0);
    // Stage the tile in fp32, Δ's bias and softplus applied once per element. Steps past the end get
    // Δ = 0 and B = 0: exp(0·A) = 1 and no input, so the scan runs all kT steps and those keep h.
    // Branch-free: a branch around each element's softplus would serialize their SFU latencies.
    float du[kXPer];  // D·u, for the epilogue
#pragma unroll
    for (int j = 0; j < kXPer; j++) {
      const int t = tr + j * kNSplit;
      if (Kt::kXPer * kThreads > kT * kChannels && t >= kT) break;  // only when the tile has fewer elements than threads
      const float uu = to_float(next.u[j]);
      const float pre = to_float(next.delta[j]) + bias;
      const float sp = unconditional(softplus(pre));
      const float dt = t < nt && td_ok ? (p.delta_softplus ? sp : pre) : 0.0f;
      s_dtu[t * kChannels + tc] = make_float2(dt, dt * uu);
      du[j] = skip * uu;
    }
#pragma unroll
    for (int j = 0; j < kBCPer; j++) {
      const int i = threadIdx.x + j * kThreads;
      if (i < kT * kNPad) {
        s_B[i] = to_float(next.B[j]);
        if (!kStateOnly) s_C[i] = to_float(next.C[j]);
      }
    }
    __syncthreads();

    // In flight during the scan: the next tile, and this tile's gate.
    if (t0 + kT < t_end) load_tile<Kt, kStateOnly>(next, p, row0 + t0 + kT, steps(t0 + kT), tr, td, td_ok);
    input_t zr[kXPer];
    const auto* z = static_cast<const input_t*>(p.z) + (row0 + t0 + tr) * p.z_stride + td;
#pragma unroll
    for (int j = 0; j < kXPer; j++) {
      zr[j] = !kStateOnly && p.z && tr + j * kNSplit < nt && td_ok ? __ldg(z + j * kNSplit * p.z_stride) : input_t(0.0f);
    }

    // The recurrence (paper eq. 2a, 2b with the ZOH-discretized Ā = exp(ΔA) and the Euler B̄ = ΔB):
    // h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t, and this thread's share of C_t·h_t. kU steps at a time,
    // written as loads, then exponentials, then the h chain: the exponentials do not depend on h, so
    // all kU·kG of them are in flight together and only the FMAs into h wait on one another.
    constexpr int kU = Kt::kUnroll;
    // The chunk states (every kStateChunk steps) are written between pieces of kPiece steps, outside
    // the inner loop: a branch inside it cost 4–8% (measured).
    constexpr int kPiece = kT < kStateChunk ? kT : kStateChunk;
#pragma unroll 1
    for (int p0 = 0; p0 < kT; p0 += kPiece) {
      if (!kStateOnly && p.chunk_states && (t0 + p0) % kStateChunk == 0 && t0 + p0 < t_end && d_ok) {
        const int64_t chunk = static_cast<int64_t>(b) * ((L + kStateChunk - 1) / kStateChunk) + (t0 + p0) / kStateChunk;
        float* cs = p.chunk_states + (chunk * D + d) * N;
#pragma unroll
        for (int g = 0; g < kG; g++) {
          if (n0 + g < N) cs[n0 + g] = h[g];
        }
      }
#pragma unroll 1
      for (int t0s = p0; t0s < p0 + kPiece; t0s += kU) {
        float2 v[kU];  // (Δ, Δ·u)
        float Bt[kU][kG], Ct[kU][kG], e[kU][kG];
#pragma unroll
        for (int k = 0; k < kU; k++) {
          v[k] = s_dtu[(t0s + k) * kChannels + c];
          load_smem<kG>(Bt[k], s_B + (t0s + k) * kNPad + n0);
          if (!kStateOnly) load_smem<kG>(Ct[k], s_C + (t0s + k) * kNPad + n0);
        }
#pragma unroll
        for (int k = 0; k < kU; k++) {
#pragma unroll
          for (int g = 0; g < kG; g++) e[k][g] = exp2f(v[k].x * A2[g]);
        }
#pragma unroll
        for (int k = 0; k < kU; k++) {
          float acc = 0.0f;
#pragma unroll
          for (int g = 0; g < kG; g++) {
            h[g] = e[k][g] * h[g] + v[k].y * Bt[k][g];
            if (!kStateOnly) acc += Ct[k][g] * h[g];
          }
          if (kStateOnly) dsum += v[k].x;
          else s_y[(t0s + k) * kThreads + threadIdx.x] = acc;
        }
      }
    }
    __syncthreads();

    if (!kStateOnly) {
      // y_t = (C_t·h_t + D u_t) · SiLU(z_t); the kNSplit partial sums of a channel sit side by side.
      auto* y = static_cast<input_t*>(p.y) + (row0 + t0 + tr) * p.y_stride + td;
#pragma unroll
      for (int j = 0; j < kXPer; j++) {
        const int t = tr + j * kNSplit;
        if (Kt::kXPer * kThreads > kT * kChannels && t >= kT) break;
        float part[kNSplit];
        load_smem<kNSplit>(part, s_y + t * kThreads + tc * kNSplit);
        float out = du[j];
#pragma unroll
        for (int k = 0; k < kNSplit; k++) out += part[k];
        const float gate = unconditional(silu(to_float(zr[j])));
        out *= p.z ? gate : 1.0f;
        if (t < nt && td_ok) y[j * kNSplit * p.y_stride] = from_float<input_t>(out);
      }
    }
    __syncthreads();  // before the next tile overwrites shared memory
  }

  if (!d_ok) return;
  if (kStateOnly) {
#pragma unroll
    for (int g = 0; g < kG; g++) {
      if (n0 + g < N) kp.seg_state[seg_bdn + n0 + g] = h[g];
    }
    if (n0 == 0) kp.seg_dsum[(static_cast<int64_t>(b) * kp.segments + seg) * D + d] = dsum;
  } else if (p.state_out && seg == kp.segments - 1) {
#pragma unroll
    for (int g = 0; g < kG; g++) {
      if (n0 + g < N) p.state_out[bdn + n0 + g] = h[g];
    }
  }
}

template <class Kt, bool kStateOnly>
void launch_scan_fwd_pass(const ScanFwdKernelParams& kp, cudaStream_t stream) {
  const dim3 grid((kp.p.dim + Kt::kChannels - 1) / Kt::kChannels, kp.segments, kp.p.batch);
  scan_fwd_kernel<Kt, kStateOnly><<<grid, Kt::kThreads, 0, stream>>>(kp);
  MAMBA_CUDA_CHECK_LAUNCH();
}

// Between the passes: replaces each segment's from-zero end state by its true start state (scan_fwd.cu).
void launch_scan_fwd_chain(const ScanFwdKernelParams& kp, cudaStream_t stream);

// One pass, or the two passes and the chain between them.
template <class Kt>
void launch_scan_fwd(const ScanFwdKernelParams& kp, cudaStream_t stream) {
  if (kp.segments > 1) {
    launch_scan_fwd_pass<Kt, true>(kp, stream);
    launch_scan_fwd_chain(kp, stream);
  }
  launch_scan_fwd_pass<Kt, false>(kp, stream);
}

// The compiled splits, (states per thread, threads per channel); the dispatcher picks one. Instantiated
// once per dtype, in scan_fwd_f32.cu, scan_fwd_bf16.cu and scan_fwd_f16.cu, so they compile in parallel.
template <typename input_t>
void launch_scan_fwd_dtype(const ScanFwdKernelParams& kp, int kG, int nsplit, cudaStream_t stream) {
  switch (kG * 100 + nsplit) {
    case 101: launch_scan_fwd<ScanFwdTraits<input_t, 1, 1>>(kp, stream); break;
    case 401: launch_scan_fwd<ScanFwdTraits<input_t, 4, 1>>(kp, stream); break;
    case 404: launch_scan_fwd<ScanFwdTraits<input_t, 4, 4>>(kp, stream); break;
    case 416: launch_scan_fwd<ScanFwdTraits<input_t, 4, 16>>(kp, stream); break;
    case 116: launch_scan_fwd<ScanFwdTraits<input_t, 1, 16>>(kp, stream); break;
    case 208: launch_scan_fwd<ScanFwdTraits<input_t, 2, 8>>(kp, stream); break;
    case 802: launch_scan_fwd<ScanFwdTraits<input_t, 8, 2>>(kp, stream); break;
    case 1601: launch_scan_fwd<ScanFwdTraits<input_t, 16, 1>>(kp, stream); break;
    case 1604: launch_scan_fwd<ScanFwdTraits<input_t, 16, 4>>(kp, stream); break;
    case 1616: launch_scan_fwd<ScanFwdTraits<input_t, 16, 16>>(kp, stream); break;
    default: throw std::invalid_argument("selective_scan_fwd: no compiled split for this states_per_thread and N");
  }
}
extern template void launch_scan_fwd_dtype<float>(const ScanFwdKernelParams&, int, int, cudaStream_t);
extern template void launch_scan_fwd_dtype<__nv_bfloat16>(const ScanFwdKernelParams&, int, int, cudaStream_t);
extern template void launch_scan_fwd_dtype<__half>(const ScanFwdKernelParams&, int, int, cudaStream_t);

}  // namespace mamba::cuda

// Selective scan forward, one state per lane: the single-pass kernel for very few channels (B·D·N/32
// warps at most 1.25 per SM) of long sequences, at N = 16.
//
// The split. A warp holds two channels, one of their 16 states in each lane, and walks along the whole of
// L: every step is one exponential and three FMAs per lane, and no exponential is computed twice, where
// the blocked kernel (scan_fwd_kernel.cuh) would cut L into segments and compute each of them twice.
// With so few warps each one is held by latency, not by a pipe, so this wins only where the blocked
// kernel's segments are many and short: at 1 × 64 channels × 65536 steps 1.59 ms against 6.88, at 1 ×
// 256 1.59 against 2.07, at 1 × 320 1.67 against 1.81; from 384 channels on the blocked kernel is faster
// (1 × 1536: 2.45 against 1.16 ms; dev/notes/scan.md, v12).
//
// Per tile of kT = 32 steps: the block (4 warps, 8 channels) stages B_t and C_t once for its warps,
// transposed in shared memory so that a lane reads its state's values four steps at a time; each warp
// stages its own channels' Δ (bias and softplus applied) and Δ·u the same way, a lane computing two of
// the 64 elements. The scan keeps each lane's C_t,n·h_t,n in registers and then stores them, and the lane
// that staged element (c, t) sums the 16 states' terms for it, adds D·u, applies the gate and stores y.
// One block barrier per tile (B and C are double-buffered). Where the rows are 16-byte aligned the
// inputs come kStages tiles ahead by cp.async; otherwise each thread loads its own one tile ahead.
//
// One split only, so its constants stand in for a traits struct, and the three dtypes' six small
// instances share this file (they compile in seconds) rather than one file each as the blocked kernel's.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/scan.h"

namespace mamba::cuda {

namespace {

constexpr int kN = 16;                   // states per channel: lanes per channel
constexpr int kCW = 32 / kN;             // channels per warp
constexpr int kWarps = 4;                // per block
constexpr int kChannels = kWarps * kCW;  // per block
constexpr int kThreads = 32 * kWarps;
constexpr int kT = 32;                   // steps per tile: two elements of each channel per lane
constexpr int kPitch = kT + 4;           // B, C transposed: a state's row, 16-byte aligned; reads are conflict-free
constexpr int kYRow = kN + 4;            // a step's 16 partial sums, padded so that the epilogue's reads spread over the banks
constexpr int kYChan = kT * kYRow + 16;  // a channel's partial sums; the 16 puts the two channels' stores on different banks
static_assert(kT == 2 * kN && kT % kStateChunk == 0, "two staged elements per lane; chunk states at tile starts");

struct LanesSmem {
  __align__(16) float B[2][kN][kPitch];  // (buffer, n, t)
  __align__(16) float C[2][kN][kPitch];
  __align__(16) float dt[kWarps][kCW][kT];  // Δ after bias and softplus
  __align__(16) float du[kWarps][kCW][kT];  // Δ·u
  __align__(16) float y[kWarps][kCW * kYChan];
};

// cp.async: 16 bytes from global to shared memory without passing through registers (sm_80 and later).
__device__ __forceinline__ void copy_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

// The aligned path's raw tiles, kStages of them in flight: a tile's rows of the block's 8 channels of u,
// Δ, z and all 16 states of B and C, as stored (dynamic shared memory).
constexpr int kStages = 4;
template <typename input_t>
struct RawTile {
  input_t u[kT][kChannels], delta[kT][kChannels], z[kT][kChannels], B[kT][kN], C[kT][kN];
};

// One tile's inputs as this thread stages them: its two elements of u, Δ, z and four values of B and C.
struct StageIn {
  float u[2], delta[2], z[2], B[4], C[4];
};

// kAsync: the block's rows are 16-byte aligned (D a multiple of 8, aligned strides and pointers), and
// kStages tiles are copied ahead with cp.async; otherwise each thread loads its own values into
// registers one tile ahead, which leaves each warp waiting on memory latency (a fallback).
template <typename input_t, bool kAsync>
__global__ void __launch_bounds__(kThreads) scan_fwd_lanes_kernel(ScanParams p) {
  __shared__ LanesSmem sm;
  extern __shared__ __align__(16) unsigned char raw_bytes[];
  RawTile<input_t>* raw = reinterpret_cast<RawTile<input_t>*>(raw_bytes);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wc = lane / kN, n = lane % kN;  // the lane's channel in the warp and its state
  const int b = blockIdx.y, D = p.dim;
  const int64_t L = p.seqlen, row0 = static_cast<int64_t>(b) * L;
  const int64_t chunks = (L + kStateChunk - 1) / kStateChunk;  // per sequence in chunk_states
  const int d0 = blockIdx.x * kChannels, bc = warp * kCW + wc;  // the block's first channel; the lane's in the block
  const int d = d0 + bc;
  const bool d_ok = d < D;
  const int dl = d_ok ? d : D - 1;  // lanes past the last channel compute on its values and store nothing
  // Staging of B and C: step tb of the tile, states nb .. nb + 3.
  const int tb = threadIdx.x / 4, nb = threadIdx.x % 4 * 4;

  const float A2 = p.A[static_cast<int64_t>(dl) * kN + n] * kLog2e;  // exp(Δ·A) = exp2(Δ·A·log2 e)
  const float bias = p.delta_bias ? p.delta_bias[dl] : 0.0f;
  const float skip = p.D ? p.D[dl] : 0.0f;
  const int64_t bdn = (static_cast<int64_t>(b) * D + dl) * kN + n;  // (b, d, n) of a (B, D, N) array
  float h = p.state_in ? p.state_in[bdn] : 0.0f;

  const input_t* u = static_cast<const input_t*>(p.u);
  const input_t* delta = static_cast<const input_t*>(p.delta);
  const input_t* z = static_cast<const input_t*>(p.z);
  const input_t* Bm = static_cast<const input_t*>(p.Bm);
  const input_t* Cm = static_cast<const input_t*>(p.Cm);
  input_t* y = static_cast<input_t*>(p.y);

  // The aligned path: tile i's rows into raw[i % kStages], 16 bytes per copy, rows past L skipped. Each
  // warp copies one array, a row per lane: u, Δ, z, then B and C.
  static_assert(kWarps == 4 && kT == 32, "a warp per array, a lane per row");
  const input_t* copy_src = warp == 0 ? u + d0 : warp == 1 ? delta + d0 : warp == 2 && z ? z + d0 : Bm;
  const int64_t copy_stride = warp == 0 ? p.u_stride : warp == 1 ? p.delta_stride : warp == 2 ? p.z_stride : p.B_stride;
  auto copy_tile = [&](int64_t t0) {
    constexpr int kE = 16 / sizeof(input_t);  // elements per copy
    RawTile<input_t>& r = raw[(t0 / kT) % kStages];
    const int64_t row = row0 + t0 + lane;
    if (t0 + lane >= L) return;
    if (warp < 3) {
      if (warp == 2 && !z) return;
      input_t* dst = warp == 0 ? r.u[lane] : warp == 1 ? r.delta[lane] : r.z[lane];
#pragma unroll
      for (int part = 0; part < kChannels / kE; part++) copy_async16(dst + part * kE, copy_src + row * copy_stride + part * kE);
    } else {
#pragma unroll
      for (int part = 0; part < kN / kE; part++) {
        copy_async16(r.B[lane] + part * kE, Bm + row * p.B_stride + part * kE);
        copy_async16(r.C[lane] + part * kE, Cm + row * p.C_stride + part * kE);
      }
    }
  };
  // The fallback: this thread's values straight from global memory.
  auto load = [&](StageIn& in, int64_t t0) {
#pragma unroll
    for (int e = 0; e < 2; e++) {
      const int64_t t = t0 + n + e * kN;
      const bool ok = t < L;
      const int64_t row = row0 + t;
      in.u[e] = ok ? to_float(__ldg(u + row * p.u_stride + dl)) : 0.0f;
      in.delta[e] = ok ? to_float(__ldg(delta + row * p.delta_stride + dl)) : 0.0f;
      in.z[e] = ok && z ? to_float(__ldg(z + row * p.z_stride + dl)) : 0.0f;
    }
    const bool ok = t0 + tb < L;
    const int64_t row = row0 + t0 + tb;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      in.B[i] = ok ? to_float(__ldg(Bm + row * p.B_stride + nb + i)) : 0.0f;
      in.C[i] = ok ? to_float(__ldg(Cm + row * p.C_stride + nb + i)) : 0.0f;
    }
  };
  // The aligned path: the same values from the tile's raw copy (zeros past L, where nothing was copied).
  auto read_raw = [&](StageIn& in, int64_t t0) {
    const RawTile<input_t>& r = raw[(t0 / kT) % kStages];
#pragma unroll
    for (int e = 0; e < 2; e++) {
      const int t = n + e * kN;
      const bool ok = t0 + t < L;
      in.u[e] = ok ? to_float(r.u[t][bc]) : 0.0f;
      in.delta[e] = ok ? to_float(r.delta[t][bc]) : 0.0f;
      in.z[e] = ok && z ? to_float(r.z[t][bc]) : 0.0f;
    }
    const bool ok = t0 + tb < L;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      in.B[i] = ok ? to_float(r.B[tb][nb + i]) : 0.0f;
      in.C[i] = ok ? to_float(r.C[tb][nb + i]) : 0.0f;
    }
  };

  StageIn in;
  if constexpr (kAsync) {
    for (int k = 0; k < kStages - 1; k++) {
      if (static_cast<int64_t>(k) * kT < L) copy_tile(static_cast<int64_t>(k) * kT);
      copy_async_commit();  // one group per tile, empty past the end, so that the waits below count tiles
    }
  } else {
    load(in, 0);
  }
  float* ys = sm.y[warp] + wc * kYChan;
  int buf = 0;
  for (int64_t t0 = 0; t0 < L; t0 += kT, buf ^= 1) {
    if constexpr (kAsync) {
      copy_async_wait<kStages - 2>();  // this thread's copies of this tile have landed
      __syncthreads();                 // and everyone's; all are past staging the tile kStages − 1 back
      if (t0 + (kStages - 1) * kT < L) copy_tile(t0 + (kStages - 1) * kT);
      copy_async_commit();
      read_raw(in, t0);
    }
    // Stage: B and C transposed; this lane's two elements of its channel. Steps past the end get Δ = 0
    // and B = 0, so that exp(0·A) = 1 and h is kept.
#pragma unroll
    for (int i = 0; i < 4; i++) sm.B[buf][nb + i][tb] = in.B[i], sm.C[buf][nb + i][tb] = in.C[i];
    float du_skip[2], gate[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
      const int t = n + e * kN;
      const bool ok = t0 + t < L;
      const float pre = in.delta[e] + bias;
      const float sp = unconditional(softplus(pre));
      const float dt = ok ? (p.delta_softplus ? sp : pre) : 0.0f;
      sm.dt[warp][wc][t] = dt;
      sm.du[warp][wc][t] = dt * in.u[e];
      const float g = unconditional(silu(in.z[e]));
      du_skip[e] = skip * in.u[e], gate[e] = z ? g : 1.0f;
    }
    __syncthreads();
    if (!kAsync && t0 + kT < L) load(in, t0 + kT);

    // The recurrence, h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t u_t, and this lane's C_t·h_t, four steps per
    // shared-memory read of each input. The terms C_t·h_t stay in registers until every read of the tile
    // is issued: a store to shared memory between them would keep the compiler from hoisting the next
    // steps' reads (it cannot tell them apart), and each step would wait out a read's latency. The chunk
    // states (h before every kStateChunk-th step) for the backward are written where a chunk starts.
    const float* sdt = sm.dt[warp][wc];
    const float* sdu = sm.du[warp][wc];
    const float* sB = sm.B[buf][n];
    const float* sC = sm.C[buf][n];
    float ch[kT], h_chunk[kT / kStateChunk];
#pragma unroll
    for (int q = 0; q < kT; q += 4) {
      if (q % kStateChunk == 0) h_chunk[q / kStateChunk] = h;
      const float4 dt4 = *reinterpret_cast<const float4*>(sdt + q);
      const float4 du4 = *reinterpret_cast<const float4*>(sdu + q);
      const float4 B4 = *reinterpret_cast<const float4*>(sB + q);
      const float4 C4 = *reinterpret_cast<const float4*>(sC + q);
      const float e0 = exp2f(dt4.x * A2), e1 = exp2f(dt4.y * A2), e2 = exp2f(dt4.z * A2), e3 = exp2f(dt4.w * A2);
      h = e0 * h + du4.x * B4.x;
      ch[q] = C4.x * h;
      h = e1 * h + du4.y * B4.y;
      ch[q + 1] = C4.y * h;
      h = e2 * h + du4.z * B4.z;
      ch[q + 2] = C4.z * h;
      h = e3 * h + du4.w * B4.w;
      ch[q + 3] = C4.w * h;
    }
#pragma unroll
    for (int t = 0; t < kT; t++) ys[t * kYRow + n] = ch[t];
    if (p.chunk_states && d_ok) {
#pragma unroll
      for (int k = 0; k < kT / kStateChunk; k++) {
        if (t0 + k * kStateChunk < L) {
          const int64_t chunk = static_cast<int64_t>(b) * chunks + (t0 + k * kStateChunk) / kStateChunk;
          p.chunk_states[(chunk * D + d) * kN + n] = h_chunk[k];
        }
      }
    }
    __syncwarp();

    // y_t = (Σ_n C_t,n h_t,n + D u_t) · SiLU(z_t) for this lane's two elements. The next writes to ys
    // come after the next tile's barrier.
#pragma unroll
    for (int e = 0; e < 2; e++) {
      const int t = n + e * kN;
      const float* row = ys + t * kYRow;
      // A tree of sums: four levels of latency rather than sixteen.
      static_assert(kN == 16, "four float4 reads");
      const float4 v0 = *reinterpret_cast<const float4*>(row), v1 = *reinterpret_cast<const float4*>(row + 4);
      const float4 v2 = *reinterpret_cast<const float4*>(row + 8), v3 = *reinterpret_cast<const float4*>(row + 12);
      const float sx = (v0.x + v1.x) + (v2.x + v3.x), sy = (v0.y + v1.y) + (v2.y + v3.y);
      const float sz = (v0.z + v1.z) + (v2.z + v3.z), sw = (v0.w + v1.w) + (v2.w + v3.w);
      const float s = ((sx + sy) + (sz + sw)) + du_skip[e];
      if (t0 + t < L && d_ok) y[(row0 + t0 + t) * p.y_stride + d] = from_float<input_t>(s * gate[e]);
    }
  }
  if constexpr (kAsync) copy_async_wait<0>();  // no copy may still be landing when the block exits
  if (p.state_out && d_ok) p.state_out[bdn] = h;
}

}  // namespace

// Whether every row the aligned path copies starts on a 16-byte boundary: D a multiple of the block's
// channels, each pointer and stride a multiple of 16 bytes.
bool scan_fwd_lanes_aligned(const ScanParams& p) {
  const int64_t esize = p.dtype == DType::F32 ? 4 : 2;
  auto ok = [&](const void* ptr, int64_t stride) { return rows_aligned16(ptr, stride, esize); };
  return p.dim % kChannels == 0 && ok(p.u, p.u_stride) && ok(p.delta, p.delta_stride) &&
         (!p.z || ok(p.z, p.z_stride)) && ok(p.Bm, p.B_stride) && ok(p.Cm, p.C_stride);
}

template <typename input_t>
void launch_scan_fwd_lanes(const ScanParams& p, cudaStream_t stream) {
  const dim3 grid((p.dim + kChannels - 1) / kChannels, p.batch);
  if (scan_fwd_lanes_aligned(p)) {
    constexpr size_t kRaw = kStages * sizeof(RawTile<input_t>);
    static const bool configured = [] {
      MAMBA_CUDA_CHECK(cudaFuncSetAttribute(scan_fwd_lanes_kernel<input_t, true>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kRaw)));
      return true;
    }();
    (void)configured;
    scan_fwd_lanes_kernel<input_t, true><<<grid, kThreads, kRaw, stream>>>(p);
  } else {
    scan_fwd_lanes_kernel<input_t, false><<<grid, kThreads, 0, stream>>>(p);
  }
  MAMBA_CUDA_CHECK_LAUNCH();
}
template void launch_scan_fwd_lanes<float>(const ScanParams&, cudaStream_t);
template void launch_scan_fwd_lanes<__nv_bfloat16>(const ScanParams&, cudaStream_t);
template void launch_scan_fwd_lanes<__half>(const ScanParams&, cudaStream_t);

}  // namespace mamba::cuda

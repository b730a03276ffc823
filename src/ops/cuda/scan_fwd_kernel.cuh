// Selective scan forward: params → traits → kernel → launcher. The dispatcher (scan_fwd.cu) picks the
// traits and the split; scan_fwd_{f32,bf16,f16}.cu instantiate the launcher once per dtype.
//
// The work split. In the token-major layout the channels of one time step are contiguous, so a block
// takes a tile of channels and walks along time: each thread holds kG of the N states of each of kC
// channels in registers (kNSplit = N / kG threads per channel group), and every step costs kC·kG
// exponentials, 3·kC·kG FMAs and a few shared-memory reads. That is the paper's fused scan (§3.3): Δ·A,
// Δ·B·u, the states h and C·h never leave the chip. B_t and C_t are shared by the whole tile, so they are
// read from memory once per tile rather than once per channel as in the official (batch,
// channel)-per-block kernel; with kC > 1 each value read from shared memory also serves kC channels.
//
// Time goes through shared memory kT steps at a time: all threads stage u, Δ (bias and softplus applied
// once per element, not once per state), B and C for the tile, having loaded them (and z) into registers
// while the previous tile was scanned; then each scans its states over the kT steps, writing its partial
// C·h per step and channel; last, the kNSplit partial sums are added, D·u and the gate applied, and y
// stored with the channels contiguous across threads. Two barriers per tile. Where the rows are 16-byte
// aligned (kAligned: the usual case, u and z halves of in_proj's output, B and C columns of x_proj's
// when dt_rank is a multiple of 8, as in every released model), staging and the epilogue move 16-byte vectors (8 channels of one step in bf16/fp16) instead
// of single elements: one load, one pointer step per 8 elements instead of per element, and bitwise
// the same results. dev/notes/scan.md has each version's measurements.
//
// When B·D is too small to fill the GPU (long single sequences), L is cut into `segments` scanned in
// parallel, in one launch of two kinds of block: pass 1 (kStateOnly) scans a segment from zero and
// publishes its end state and ΣΔ, and stores the staged Δ (bias and softplus applied) for the full scan
// to read instead of computing them again; the full scan of a segment waits for its predecessor's true
// end state h_end, publishes its own (exp(A·ΣΔ) ⊙ h_start + pass 1's end state) at once, and then scans
// from h_start.
// Every exponential is computed twice, so the dispatcher cuts L only when too few threads would run
// otherwise; the blocks' order (seg_item) puts pass-1 blocks, which the SFU binds, on the SMs beside
// full-scan blocks, which the issue port binds.
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
  ScanParams p;
  int tiles = 0;        // channel tiles (blocks per segment and sequence)
  int segments = 1;     // S
  int64_t seg_len = 0;  // steps per segment, a multiple of kStateChunk (the last one shorter)
  int lag = 0;          // segmented launch: slots between pass 1 and the full scan (seg_item); the launcher sets it
  int sm_count = 0;
  // Segmented launch only (workspace), all (B, S, ...) with segment S − 1's slots unused:
  float* seg_state = nullptr;  // (B, S, D, N) pass 1: each segment's end state from zero
  float* seg_dsum = nullptr;   // (B, S, D) pass 1: ΣΔ over each segment
  float* seg_delta = nullptr;  // (B, L, D) pass 1: Δ after bias and softplus, for its segment's full scan
  float* seg_carry = nullptr;  // (B, S, D, N) each segment's true end state
  int* seg_ready = nullptr;    // (B, S, tiles) pass 1 of the tile's segment is published
  int* carry_ready = nullptr;  // (B, S, tiles) its true end state is published
  int* ticket = nullptr;       // the blocks' start order; zeroed with the flags before each launch
};

// Elements of u, Δ, z and y that a thread moves with one instruction when the rows are 16-byte aligned:
// the widest vector of at most 16 bytes such that whole vectors tile a step's channels and the threads
// tile the steps of a tile; 1 when none does.
constexpr int fwd_vec_width(int elem_bytes, int channels, int threads, int steps) {
  for (int v = 16 / elem_bytes; v > 1; v /= 2) {
    if (channels % v == 0 && threads % (channels / v) == 0 && steps % (threads / (channels / v)) == 0) return v;
  }
  return 1;
}

template <typename input_t_, int kC_, int kG_, int kNSplit_, bool kAligned_ = false>
struct ScanFwdTraits {
  using input_t = input_t_;
  static constexpr int kC = kC_;            // channels per thread
  static constexpr int kG = kG_;            // states per thread and channel, in registers
  static constexpr int kNSplit = kNSplit_;  // threads per channel group: N ≤ kG · kNSplit
  static_assert(kNSplit % kC == 0 && 32 % kNSplit == 0,
                "a channel group's threads sit in one warp; staging takes kNSplit / kC threads per step");
  // 32 channels per block where that fits in 32–128 threads: one warp-wide row per step for staging and
  // the epilogue, and as many blocks as v5 had, so they spread as evenly over the SMs.
  static constexpr int kThreads = std::clamp(32 * kNSplit / kC, 32, 128);
  static constexpr int kChannels = kThreads / kNSplit * kC;  // channels per block
  static constexpr int kNPad = kG * kNSplit;                 // states per channel, padded
  // Steps per tile: each thread holds its share of the next tile's u, Δ, z, B, C in registers while it
  // scans, so the tile is cut to keep that share at 8 values of each, and the partial sums C·h (kC per
  // thread and step) at 16 KB.
  static constexpr int kT = std::min({32, 8 * kThreads / kChannels, 8 * kThreads / kNPad, 4096 / (kC * kThreads)});
  static constexpr int kXPer = (kT * kChannels + kThreads - 1) / kThreads;  // a thread's share of a (kT, channels) tile
  static constexpr int kBCPer = (kT * kNPad + kThreads - 1) / kThreads;    // and of a (kT, N) tile
  // kAligned: the rows of u, Δ, z, y, B and C start on 16 bytes, D and N fill whole 16-byte vectors
  // and N = kNPad (the dispatcher checks). Staging and the epilogue then move kVec elements at a time:
  // one load, conversion pair and pointer step per vector instead of per element (measured: see v14
  // in dev/notes/scan.md).
  static constexpr bool kAligned = kAligned_;
  static constexpr int kVec = kAligned ? fwd_vec_width(sizeof(input_t), kChannels, kThreads, kT) : 1;
  static constexpr int kVecRow = kChannels / kVec;       // threads per step of a (kT, channels) tile
  static constexpr int kRowStride = kThreads / kVecRow;  // steps between a thread's vectors
  static constexpr int kPasses = kXPer / kVec;           // a thread's vectors per tile
  static constexpr int kXWords = kVec * sizeof(input_t) / 4;  // 32-bit words per vector (kVec > 1)
  // B and C likewise: rows of kNPad values in vectors of 16 bytes, the B vectors of a tile then the C
  // vectors dealt out over the threads.
  static constexpr int kBCVec = kAligned ? std::min<int>(16 / sizeof(input_t), kNPad) : 1;
  static constexpr int kBCRow = kNPad / kBCVec;  // vectors per step
  static constexpr int kBCVecPer = (2 * kT * kBCRow + kThreads - 1) / kThreads;
  static constexpr int kBCWords = kBCVec * sizeof(input_t) / 4;
  static_assert(!kAligned || (kVec > 1 && kBCWords * 4 == 16), "kAligned: the dispatcher takes it only where it vectorizes");
  // The staged (Δ, Δ·u) in shared memory, (kT, channels) float2: with vectors, 16 bytes of padding after
  // every 16 channels, so that a quarter-warp's 16-byte stores (two rows of four 64-byte vectors) fall
  // on distinct banks while the scan's reads of a warp's channels stay one wavefront. (Unpadded, eight
  // threads share each bank group: at 8×1536 the vectorized kernel then ran 0.227 ms against 0.219
  // element by element; padded, 0.209.)
  static constexpr int kDtuRow = kVec > 1 ? kChannels + kChannels / 16 * 2 : kChannels;
  __host__ __device__ static constexpr int dtu_col(int c) { return kVec > 1 ? c + c / 16 * 2 : c; }
  // The partial sums C·h in shared memory, (kT, kNSplit, channels) with padded rows when vectorized, so
  // that neither the scan's stores nor the epilogue's 16-byte loads meet on a bank.
  static constexpr int kYPlane = kChannels + (kNSplit > 1 ? std::max(4, 32 * kC / kNSplit) : 0);
  static constexpr int kYRow = kNSplit * kYPlane + 4;
  // Steps whose loads and exponentials the scan issues together (see the scan loop): ~32 exponentials
  // (measured: 2–3% faster than 16 at four of the anchor shapes, equal at the fifth; one step at 16
  // states per channel, where more would spill).
  static constexpr int kUnroll = kC * kG >= 32 || kG >= 16 ? 1 : std::min({32 / (kC * kG), kT, kStateChunk});
  // Step groups unrolled together, so that one group's loads and exponentials overlap the previous
  // group's h chains and stores (measured: 0.5–2.5% faster than 1).
  static constexpr int kGroupUnroll = 2;
  // 16 warps per SM at least: caps registers at 128 per thread.
  static constexpr int kMinBlocks = 512 / kThreads;
  static_assert(kStateChunk % kUnroll == 0 && (kT % kStateChunk == 0 || kStateChunk % kT == 0),
                "state chunks must start at a step group");
};

// Whether a split vectorizes for a dtype's element size (the dispatcher asks before taking kAligned).
template <typename input_t, int kC, int kG, int kNSplit>
constexpr bool fwd_split_vectorizes() {
  using Kt = ScanFwdTraits<input_t, kC, kG, kNSplit>;
  // 16-bit types only: fp32 vectors carry half the elements, and at the (1, 8, 2) split their words
  // made ptxas spill where the element-wise kernel does not.
  return sizeof(input_t) == 2 && fwd_vec_width(sizeof(input_t), Kt::kChannels, Kt::kThreads, Kt::kT) > 1 &&
         Kt::kNPad * sizeof(input_t) % 16 == 0;
}

// n consecutive fp32 values from shared memory, 16 (or 8) bytes at a time where n allows.
template <int n>
__device__ __forceinline__ void load_smem(float (&out)[n], const float* src) {
  if constexpr (n % 4 == 0) {
#pragma unroll
    for (int q = 0; q < n / 4; q++) {
      const float4 v = reinterpret_cast<const float4*>(src)[q];
      out[4 * q] = v.x, out[4 * q + 1] = v.y, out[4 * q + 2] = v.z, out[4 * q + 3] = v.w;
    }
  } else if constexpr (n % 2 == 0) {
#pragma unroll
    for (int q = 0; q < n / 2; q++) {
      const float2 v = reinterpret_cast<const float2*>(src)[q];
      out[2 * q] = v.x, out[2 * q + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int g = 0; g < n; g++) out[g] = src[g];
  }
}

// n fp32 values (n = 1, 2 or a multiple of 4) to shared or global memory, 16 bytes at a time where n allows.
template <int n>
__device__ __forceinline__ void store_floats(float* dst, const float (&x)[n]) {
  uint32_t w[n];
#pragma unroll
  for (int i = 0; i < n; i++) w[i] = __float_as_uint(x[i]);
  store_words(dst, w);
}

// A tile's raw inputs, loaded into registers one tile ahead of their use so that the loads' latency
// hides behind the scan of the previous tile.
//
// A thread's place in the (kT, channels) tiles of u, Δ, z and y is the same in every tile: the kVec
// channels from tc and steps tr, tr + kRowStride, tr + 2·kRowStride, ...; staging and the epilogue use
// the same place, so D·u and the gate stay in registers between them. kVec = 1: one element per
// step, held as input_t; kVec > 1: each step's vector as the 32-bit words loaded. In the (kT, kNPad)
// tiles of B and C, element j of a thread is element threadIdx.x + j·kThreads (kVec = 1), or vector
// threadIdx.x + j·kThreads of the tile's B vectors followed by its C vectors.
template <class Kt>
struct TileRegs {
  static constexpr bool kV = Kt::kVec > 1;
  typename Kt::input_t u[kV ? 1 : Kt::kXPer], delta[kV ? 1 : Kt::kXPer], z[kV ? 1 : Kt::kXPer];
  typename Kt::input_t B[kV ? 1 : Kt::kBCPer], C[kV ? 1 : Kt::kBCPer];
  static constexpr int kP = kV ? Kt::kPasses : 1, kW = kV ? Kt::kXWords : 1;
  uint32_t uw[kP][kW], deltaw[kP][kW], zw[kP][kW];
  uint32_t bcw[kV ? Kt::kBCVecPer : 1][kV ? Kt::kBCWords : 1];
  float dt[Kt::kXPer];  // Δ as pass 1 staged it (full scans of a segmented run)
};

// Pointers to this thread's first element of the current tile in u, Δ, z, B, C and y, advanced a tile at
// a time, and the distances between its elements: one 64-bit add per element instead of a multiply.
template <class Kt>
struct TilePtrs {
  using input_t = typename Kt::input_t;
  const input_t *u, *delta, *z, *B, *C;
  input_t* y;
  float* dt;  // segmented runs: the staged Δ in seg_delta, written by pass 1 and read by the full scan
  int64_t u_step, delta_step, z_step, y_step, dt_step;  // kRowStride rows
  int64_t B_step, C_step;  // kThreads / kNPad rows; one row when a row holds more than kThreads states
  // kVec > 1: this thread's B or C vectors, and their distance from one tile to the next.
  const input_t* bc[Kt::kVec > 1 ? Kt::kBCVecPer : 1];
  int64_t bc_tile[Kt::kVec > 1 ? Kt::kBCVecPer : 1];
};

// kVec > 1: whole vectors, the steps past the end zeroed; B's and C's vectors kBCRow per step.
template <class Kt, bool kStateOnly, bool kDtStaged, bool kFull>
__device__ __forceinline__ void load_tile_vec(TileRegs<Kt>& r, const TilePtrs<Kt>& x, int nt, int tr) {
  using input_t = typename Kt::input_t;
  constexpr int kT = Kt::kT, kThreads = Kt::kThreads;
  const int lim = kFull ? kT : nt;
  const input_t *u = x.u, *delta = x.delta, *z = x.z;
  const float* dt = x.dt;
#pragma unroll
  for (int j = 0; j < Kt::kPasses; j++) {
    const bool ok = kFull || tr + j * Kt::kRowStride < lim;
#pragma unroll
    for (int w = 0; w < Kt::kXWords; w++) r.uw[j][w] = r.deltaw[j][w] = r.zw[j][w] = 0;
#pragma unroll
    for (int v = 0; v < Kt::kVec; v++) r.dt[j * Kt::kVec + v] = 0.0f;
    if (ok) {
      ldg_words(r.uw[j], u);
      if constexpr (kDtStaged) {
        uint32_t w[Kt::kVec];
        ldcg_words(w, dt);  // written during this launch: through L2, not the read-only path
#pragma unroll
        for (int v = 0; v < Kt::kVec; v++) r.dt[j * Kt::kVec + v] = __uint_as_float(w[v]);
      } else {
        ldg_words(r.deltaw[j], delta);
      }
      if (!kStateOnly) ldg_words(r.zw[j], z);
    }
    u += x.u_step, delta += x.delta_step, z += x.z_step;
    if (kDtStaged) dt += x.dt_step;
  }
  constexpr int kItems = (kStateOnly ? 1 : 2) * kT * Kt::kBCRow;
#pragma unroll
  for (int j = 0; j < Kt::kBCVecPer; j++) {
    const int i = threadIdx.x + j * kThreads;
    const bool ok = i < kItems && (kFull || i % (kT * Kt::kBCRow) / Kt::kBCRow < lim);
#pragma unroll
    for (int w = 0; w < Kt::kBCWords; w++) r.bcw[j][w] = 0;
    if (ok) ldg_words(r.bcw[j], x.bc[j]);
  }
}

// kVec = 1: element by element.
template <class Kt, bool kStateOnly, bool kDtStaged, bool kFull>
__device__ __forceinline__ void load_tile_elems(TileRegs<Kt>& r, const TilePtrs<Kt>& x, int nt, int tr, bool n_ok, int N) {
  using input_t = typename Kt::input_t;
  constexpr int kT = Kt::kT, kThreads = Kt::kThreads, kNPad = Kt::kNPad;
  const int lim = kFull ? kT : nt;
  const input_t *u = x.u, *delta = x.delta, *z = x.z;
  const float* dt = x.dt;
  // __ldg: read-only loads, which the compiler may issue all at once, ahead of shared-memory stores.
  // seg_delta was written during this launch, so it is read through L2 (__ldcg), not the read-only path.
#pragma unroll
  for (int j = 0; j < Kt::kXPer; j++) {
    const bool ok = (kFull && Kt::kXPer * Kt::kRowStride <= kT) || tr + j * Kt::kRowStride < lim;
    r.u[j] = ok ? __ldg(u) : input_t(0.0f);
    if (kDtStaged) r.dt[j] = ok ? __ldcg(dt) : 0.0f;
    else r.delta[j] = ok ? __ldg(delta) : input_t(0.0f);
    if (!kStateOnly) r.z[j] = ok ? __ldg(z) : input_t(0.0f);
    u += x.u_step, delta += x.delta_step, z += x.z_step;
    if (kDtStaged) dt += x.dt_step;
  }
  if constexpr (kThreads % kNPad == 0) {
    // Step threadIdx.x / kNPad + j·kRows, state threadIdx.x % kNPad (valid: n_ok).
    constexpr int kRows = kThreads / kNPad;
    const int tb = threadIdx.x / kNPad;
    const input_t *Bm = x.B, *Cm = x.C;
#pragma unroll
    for (int j = 0; j < Kt::kBCPer; j++) {
      const bool ok = ((kFull && Kt::kBCPer * kRows <= kT) || tb + j * kRows < lim) && n_ok;
      r.B[j] = ok ? __ldg(Bm) : input_t(0.0f);
      if (!kStateOnly) r.C[j] = ok ? __ldg(Cm) : input_t(0.0f);
      Bm += x.B_step, Cm += x.C_step;
    }
  } else {
    // A row holds kR·kThreads states: step j / kR, state threadIdx.x + (j % kR)·kThreads.
    constexpr int kR = kNPad / kThreads;
#pragma unroll
    for (int j = 0; j < Kt::kBCPer; j++) {
      const bool ok = j / kR < lim && static_cast<int>(threadIdx.x) + (j % kR) * kThreads < N;
      r.B[j] = ok ? __ldg(x.B + j / kR * x.B_step + (j % kR) * kThreads) : input_t(0.0f);
      if (!kStateOnly) r.C[j] = ok ? __ldg(x.C + j / kR * x.C_step + (j % kR) * kThreads) : input_t(0.0f);
    }
  }
}

// The tile at x with nt valid steps; kFull: nt = kT, so no step needs a test. Threads past the last
// channel load the last channel's values (their pointers are clamped there), which staging ignores.
// kDtStaged: Δ comes from seg_delta, as pass 1 staged it, instead of from delta.
template <class Kt, bool kStateOnly, bool kDtStaged, bool kFull>
__device__ __forceinline__ void load_tile(TileRegs<Kt>& r, const TilePtrs<Kt>& x, int nt, int tr, bool n_ok, int N) {
  if constexpr (Kt::kVec > 1) load_tile_vec<Kt, kStateOnly, kDtStaged, kFull>(r, x, nt, tr);
  else load_tile_elems<Kt, kStateOnly, kDtStaged, kFull>(r, x, nt, tr, n_ok, N);
}

// The block's shared tiles.
template <class Kt>
struct ScanFwdSmem {
  __align__(16) float2 dtu[Kt::kT * Kt::kDtuRow];  // (kT, channels) Δ after bias and softplus, and Δ·u
  // Each thread's Σ_{its n} C·h for step t and each of its channels: kVec = 1: (kT, kC, kThreads), at
  // (t, c, threadIdx.x), so the kNSplit partial sums of a channel sit side by side; kVec > 1: (kT, kNSplit,
  // channels) in rows of kYRow, so a vector's partial sums from one thread of each group are contiguous.
  __align__(16) float y[Kt::kVec > 1 ? Kt::kT * Kt::kYRow : Kt::kT * Kt::kC * Kt::kThreads];
  __align__(16) float B[Kt::kT * Kt::kNPad];  // (kT, kNPad)
  __align__(16) float C[Kt::kT * Kt::kNPad];  // (kT, kNPad)
  __align__(16) float bias[Kt::kVec > 1 ? Kt::kChannels : 1];  // kVec > 1: the block's Δ bias and D
  __align__(16) float skip[Kt::kVec > 1 ? Kt::kChannels : 1];
};

// Segmented runs: a flag another block waits for, set once the data it guards is visible GPU-wide.
__device__ __forceinline__ void wait_flag(const int* flag) {
  int v = 0;
  do {
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
  } while (v == 0);
}
// Called by every thread of the block after its last store of the guarded data.
__device__ __forceinline__ void set_flag(int* flag) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(flag), "r"(1) : "memory");
}

// One block's work: channels [tile·kChannels, +kChannels) of batch b over segment seg. kStateOnly: pass 1
// (the segment's end state from zero and its ΣΔ, published for the blocks of later segments, and the
// staged Δ in seg_delta); otherwise the full scan from the segment's true start state, with kDtStaged
// reading Δ from seg_delta instead of applying the bias and softplus again.
template <class Kt, bool kStateOnly, bool kDtStaged = false>
__device__ __forceinline__ void scan_fwd_block(const ScanFwdKernelParams& kp, ScanFwdSmem<Kt>& sm, int tile, int seg,
                                               int b) {
  using input_t = typename Kt::input_t;
  constexpr int kC = Kt::kC, kG = Kt::kG, kT = Kt::kT, kThreads = Kt::kThreads, kChannels = Kt::kChannels;
  constexpr int kNPad = Kt::kNPad, kNSplit = Kt::kNSplit, kXPer = Kt::kXPer, kBCPer = Kt::kBCPer;
  constexpr int kRowStride = Kt::kRowStride;
  const ScanParams& p = kp.p;
  const int N = p.dstate, D = p.dim, S = kp.segments;
  const int d0 = tile * kChannels;
  // The scan: this thread's channel group (channels dq, dq + 1, ..., dq + kC − 1), its lane s in the
  // group and its first state.
  const int q = threadIdx.x / kNSplit, s = threadIdx.x % kNSplit, n0 = s * kG;
  const int dq = d0 + q * kC;
  // Staging and epilogue: this thread's first channel (of kVec) and first step in every tile. With
  // kVec > 1, D is a multiple of kVec, so a vector is all in range or all out.
  constexpr int kVec = Kt::kVec, kPasses = Kt::kPasses;
  const int tc = threadIdx.x % Kt::kVecRow * kVec, tr = threadIdx.x / Kt::kVecRow;
  const int td = d0 + tc;
  const bool td_ok = td < D;
  float bias = 0.0f, skip = 0.0f;  // kVec = 1; kVec > 1 reads sm.bias and sm.skip at staging
  if constexpr (kVec == 1) {
    bias = td_ok && p.delta_bias ? p.delta_bias[td] : 0.0f;
    skip = td_ok && p.D ? p.D[td] : 0.0f;
  } else {
    if (threadIdx.x < kChannels) {
      const int d = d0 + threadIdx.x;
      sm.bias[threadIdx.x] = d < D && p.delta_bias ? p.delta_bias[d] : 0.0f;
      sm.skip[threadIdx.x] = d < D && p.D ? p.D[d] : 0.0f;
    }
    __syncthreads();
  }
  float2* s_dtu = sm.dtu;
  float *s_y = sm.y, *s_B = sm.B, *s_C = sm.C;
  // Segment seg's flags: (B, S, tiles) each.
  const int64_t flag_i = (static_cast<int64_t>(b) * S + seg) * kp.tiles + tile;
  // Pass 1 writes seg_delta and a full scan with kDtStaged reads it; only segmented launches have either.
  constexpr bool kUsesDt = kStateOnly || kDtStaged;

  if (!kStateOnly && S > 1) {
    // The start state: segment seg − 1's true end state, published by its own full-scan block. Then this
    // segment's true end state, exp(A·ΣΔ) ⊙ h_start + (pass 1's end state from zero), published at once
    // for the next segment, before the scan.
    if (threadIdx.x == 0) {
      if (seg > 0) wait_flag(kp.carry_ready + flag_i - kp.tiles);
      if (seg < S - 1) wait_flag(kp.seg_ready + flag_i);
    }
    __syncthreads();
  }

  // exp(Δ·A) = exp2(Δ·A·log2 e): A pre-scaled so each step needs one multiply and one ex2.
  float A2[kC][kG], h[kC][kG];
  const int64_t L = p.seqlen;
#pragma unroll
  for (int c = 0; c < kC; c++) {
    const int d = dq + c;
    const int64_t bdn = (static_cast<int64_t>(b) * D + d) * N;  // (b, d, 0) of a (B, D, N) array
    const int64_t seg_bdn = ((static_cast<int64_t>(b) * S + seg) * D + d) * N;
#pragma unroll
    for (int g = 0; g < kG; g++) {
      const int n = n0 + g;
      const bool ok = d < D && n < N;
      A2[c][g] = ok ? p.A[static_cast<int64_t>(d) * N + n] * kLog2e : 0.0f;
      float h0 = 0.0f;
      if (ok && !kStateOnly) {
        // Other blocks wrote seg_carry, seg_state and seg_dsum during this launch: read through L2.
        if (seg > 0) h0 = __ldcg(kp.seg_carry + seg_bdn - static_cast<int64_t>(D) * N + n);
        else if (p.state_in) h0 = p.state_in[bdn + n];
        if (seg < S - 1) {
          // Over a segment, Π_t exp(Δ_t A) = exp(A ΣΔ).
          const float decay = exp2f(A2[c][g] * __ldcg(kp.seg_dsum + seg_bdn / N));
          kp.seg_carry[seg_bdn + n] = decay * h0 + __ldcg(kp.seg_state + seg_bdn + n);
        }
      }
      h[c][g] = h0;
    }
  }
  if (!kStateOnly && seg < S - 1) set_flag(kp.carry_ready + flag_i);
  float dsum[kC] = {};

  const int64_t t_begin = seg * kp.seg_len, t_end = L < t_begin + kp.seg_len ? L : t_begin + kp.seg_len;
  const int64_t row0 = static_cast<int64_t>(b) * L;  // row of (b, t = 0)
  auto steps = [&](int64_t t0) { return t_end - t0 < kT ? static_cast<int>(t_end - t0) : kT; };

  const int64_t z_stride = p.z ? p.z_stride : p.u_stride;
  TilePtrs<Kt> x;
  bool n_ok = true;  // this thread's state index in the B, C tiles is below N
  {
    const int64_t row = row0 + t_begin + tr;
    const int tdl = td_ok ? td : D - kVec;  // loads of threads past the last channel read the last one(s)
    x.u = static_cast<const input_t*>(p.u) + row * p.u_stride + tdl;
    x.delta = static_cast<const input_t*>(p.delta) + row * p.delta_stride + tdl;
    // Without a gate, z points at u (loaded, then ignored) so that its loads need no test of their own.
    x.z = p.z ? static_cast<const input_t*>(p.z) + row * z_stride + tdl : x.u;
    x.y = static_cast<input_t*>(p.y) + row * p.y_stride + td;
    x.dt = kUsesDt ? kp.seg_delta + row * D + tdl : nullptr;  // seg_delta is (B·L, D) and dense
    x.u_step = kRowStride * p.u_stride, x.delta_step = kRowStride * p.delta_stride;
    x.z_step = kRowStride * z_stride, x.y_step = kRowStride * p.y_stride, x.dt_step = kRowStride * D;
    int64_t bc_row = row0 + t_begin;
    int bc_n = threadIdx.x;
    if constexpr (kThreads % kNPad == 0) {
      bc_row += threadIdx.x / kNPad, bc_n = threadIdx.x % kNPad, n_ok = bc_n < N;
      x.B_step = kThreads / kNPad * p.B_stride, x.C_step = kThreads / kNPad * p.C_stride;
    } else {
      x.B_step = p.B_stride, x.C_step = p.C_stride;
    }
    x.B = static_cast<const input_t*>(p.Bm) + bc_row * p.B_stride + bc_n;
    x.C = static_cast<const input_t*>(p.Cm) + bc_row * p.C_stride + bc_n;
    if constexpr (kVec > 1) {
      // Vector i of a tile: B's (step, vector) pairs, then C's. Past the end (pass 1 has no C): unused.
#pragma unroll
      for (int j = 0; j < Kt::kBCVecPer; j++) {
        const int i = threadIdx.x + j * kThreads, per = kT * Kt::kBCRow;
        const bool is_c = i >= per && i < 2 * per && !kStateOnly;
        const int k = i % per, step = k / Kt::kBCRow, n = k % Kt::kBCRow * Kt::kBCVec;
        const int64_t stride = is_c ? p.C_stride : p.B_stride;
        const input_t* base = static_cast<const input_t*>(is_c ? p.Cm : p.Bm);
        x.bc[j] = base + (row0 + t_begin + step) * stride + n;
        x.bc_tile[j] = kT * stride;
      }
    }
  }
  auto advance = [&](TilePtrs<Kt>& xp) {
    xp.u += kT * p.u_stride, xp.delta += kT * p.delta_stride, xp.z += kT * z_stride, xp.y += kT * p.y_stride;
    if (kUsesDt) xp.dt += kT * D;
    xp.B += kT * p.B_stride, xp.C += kT * p.C_stride;
    if constexpr (kVec > 1) {
#pragma unroll
      for (int j = 0; j < Kt::kBCVecPer; j++) xp.bc[j] += xp.bc_tile[j];
    }
  };
  auto load = [&](TileRegs<Kt>& r, const TilePtrs<Kt>& xp, int nt) {
    if (nt == kT) load_tile<Kt, kStateOnly, kDtStaged, true>(r, xp, nt, tr, n_ok, N);
    else load_tile<Kt, kStateOnly, kDtStaged, false>(r, xp, nt, tr, n_ok, N);
  };

  TileRegs<Kt> next;
  load(next, x, steps(t_begin));
  float du[kXPer], gate[kXPer];  // D·u and SiLU(z) of this thread's elements, from staging to the epilogue
  for (int64_t t0 = t_begin; t0 < t_end; t0 += kT) {
    const int nt = steps(t0);
    // Stage the tile in fp32, Δ's bias and softplus applied once per element. Steps past the end get
    // Δ = 0 and B = 0: exp(0·A) = 1 and no input, so the scan runs all kT steps and those keep h.
    // Branch-free: a branch around each element's softplus would serialize their SFU latencies.
    if constexpr (kVec > 1) {
      float bias_v[kVec], skip_v[kVec];
      if (!kDtStaged) load_smem<kVec>(bias_v, sm.bias + tc);
      if (!kStateOnly) load_smem<kVec>(skip_v, sm.skip + tc);
#pragma unroll
      for (int jp = 0; jp < kPasses; jp++) {
        const int t = tr + jp * kRowStride;
        const bool ok = t < nt && td_ok;
        float dt[kVec], dtu[2 * kVec];
#pragma unroll
        for (int v = 0; v < kVec; v++) {
          const float uu = unpack<input_t>(next.uw[jp], v);
          if constexpr (kDtStaged) {
            dt[v] = ok ? next.dt[jp * kVec + v] : 0.0f;
          } else {
            const float pre = unpack<input_t>(next.deltaw[jp], v) + bias_v[v];
            const float sp = unconditional(softplus(pre));
            dt[v] = ok ? (p.delta_softplus ? sp : pre) : 0.0f;
          }
          dtu[2 * v] = dt[v], dtu[2 * v + 1] = dt[v] * uu;
          if (!kStateOnly) {
            const float g = unconditional(silu(unpack<input_t>(next.zw[jp], v)));
            du[jp * kVec + v] = skip_v[v] * uu, gate[jp * kVec + v] = p.z ? g : 1.0f;
          }
        }
        store_floats(reinterpret_cast<float*>(s_dtu + t * Kt::kDtuRow + Kt::dtu_col(tc)), dtu);
        if (kStateOnly && ok) store_floats(x.dt + jp * x.dt_step, dt);
      }
#pragma unroll
      for (int j = 0; j < Kt::kBCVecPer; j++) {
        const int i = threadIdx.x + j * kThreads, per = kT * Kt::kBCRow;
        if (i < (kStateOnly ? 1 : 2) * per) {
          const int k = i % per;
          float f[Kt::kBCVec];
#pragma unroll
          for (int v = 0; v < Kt::kBCVec; v++) f[v] = unpack<input_t>(next.bcw[j], v);
          store_floats((i < per ? s_B : s_C) + k / Kt::kBCRow * kNPad + k % Kt::kBCRow * Kt::kBCVec, f);
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < kXPer; j++) {
        const int t = tr + j * kRowStride;
        if (Kt::kXPer * kThreads > kT * kChannels && t >= kT) break;  // only when the tile has fewer elements than threads
        const float uu = to_float(next.u[j]);
        float dt;
        if constexpr (kDtStaged) {
          dt = t < nt && td_ok ? next.dt[j] : 0.0f;
        } else {
          const float pre = to_float(next.delta[j]) + bias;
          const float sp = unconditional(softplus(pre));
          dt = t < nt && td_ok ? (p.delta_softplus ? sp : pre) : 0.0f;
          if (kStateOnly && t < nt && td_ok) x.dt[j * x.dt_step] = dt;
        }
        s_dtu[t * kChannels + tc] = make_float2(dt, dt * uu);
        if (!kStateOnly) {
          const float g = unconditional(silu(to_float(next.z[j])));
          du[j] = skip * uu, gate[j] = p.z ? g : 1.0f;
        }
      }
#pragma unroll
      for (int j = 0; j < kBCPer; j++) {
        const int i = threadIdx.x + j * kThreads;
        if (i < kT * kNPad) {
          s_B[i] = to_float(next.B[j]);
          if (!kStateOnly) s_C[i] = to_float(next.C[j]);
        }
      }
    }
    __syncthreads();

    // In flight during the scan: the next tile.
    if (t0 + kT < t_end) {
      TilePtrs<Kt> xn = x;
      advance(xn);
      load(next, xn, steps(t0 + kT));
    }

    // The recurrence (paper eq. 2a, 2b with the ZOH-discretized Ā = exp(ΔA) and the Euler B̄ = ΔB):
    // h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t, and this thread's share of C_t·h_t for each of its kC
    // channels. kU steps at a time, written as loads, then exponentials, then the h chains: the
    // exponentials do not depend on h, so all kU·kC·kG of them are in flight together and only the FMAs
    // into h wait on one another. Every B_t, C_t value read from shared memory serves kC channels, and
    // the kC channels' (Δ, Δ·u) come as one 16-byte load per two.
    constexpr int kU = Kt::kUnroll, kGroupUnroll = Kt::kGroupUnroll;
    // The chunk states (every kStateChunk steps) are written between pieces of kPiece steps, outside
    // the inner loop: a branch inside it cost 4–8% (measured).
    constexpr int kPiece = kT < kStateChunk ? kT : kStateChunk;
#pragma unroll 1
    for (int p0 = 0; p0 < kT; p0 += kPiece) {
      if (!kStateOnly && p.chunk_states && (t0 + p0) % kStateChunk == 0 && t0 + p0 < t_end) {
        const int64_t chunk = static_cast<int64_t>(b) * ((L + kStateChunk - 1) / kStateChunk) + (t0 + p0) / kStateChunk;
#pragma unroll
        for (int c = 0; c < kC; c++) {
          float* cs = p.chunk_states + (chunk * D + dq + c) * N;
#pragma unroll
          for (int g = 0; g < kG; g++) {
            if (dq + c < D && n0 + g < N) cs[n0 + g] = h[c][g];
          }
        }
      }
#pragma unroll kGroupUnroll
      for (int t0s = p0; t0s < p0 + kPiece; t0s += kU) {
        float v[kU][2 * kC];  // (Δ, Δ·u) of each channel
        float Bt[kU][kG], Ct[kU][kG], e[kU][kC][kG];
#pragma unroll
        for (int k = 0; k < kU; k++) {
          load_smem<2 * kC>(v[k], reinterpret_cast<const float*>(s_dtu + (t0s + k) * Kt::kDtuRow + Kt::dtu_col(q * kC)));
          load_smem<kG>(Bt[k], s_B + (t0s + k) * kNPad + n0);
          if (!kStateOnly) load_smem<kG>(Ct[k], s_C + (t0s + k) * kNPad + n0);
        }
#pragma unroll
        for (int k = 0; k < kU; k++) {
#pragma unroll
          for (int c = 0; c < kC; c++) {
#pragma unroll
            for (int g = 0; g < kG; g++) e[k][c][g] = exp2f(v[k][2 * c] * A2[c][g]);
          }
        }
#pragma unroll
        for (int k = 0; k < kU; k++) {
#pragma unroll
          for (int c = 0; c < kC; c++) {
            float acc = 0.0f;
#pragma unroll
            for (int g = 0; g < kG; g++) {
              h[c][g] = e[k][c][g] * h[c][g] + v[k][2 * c + 1] * Bt[k][g];
              if (!kStateOnly) acc += Ct[k][g] * h[c][g];
            }
            if (kStateOnly) dsum[c] += v[k][2 * c];
            else if (kVec > 1) s_y[(t0s + k) * Kt::kYRow + s * Kt::kYPlane + q * kC + c] = acc;
            else s_y[((t0s + k) * kC + c) * kThreads + threadIdx.x] = acc;
          }
        }
      }
    }
    __syncthreads();

    if (!kStateOnly) {
      // y_t = (C_t·h_t + D u_t) · SiLU(z_t). No barrier after this: the next tile's staging writes only
      // s_dtu, s_B, s_C (all threads are past this tile's scan), and its scan writes s_y only after the
      // next barrier.
      input_t* y = x.y;
      if constexpr (kVec > 1) {
#pragma unroll
        for (int jp = 0; jp < kPasses; jp++) {
          const int t = tr + jp * kRowStride;
          float out[kVec];
#pragma unroll
          for (int v = 0; v < kVec; v++) out[v] = du[jp * kVec + v];
#pragma unroll
          for (int k = 0; k < kNSplit; k++) {
            float part[kVec];
            load_smem<kVec>(part, s_y + t * Kt::kYRow + k * Kt::kYPlane + tc);
#pragma unroll
            for (int v = 0; v < kVec; v++) out[v] += part[v];
          }
#pragma unroll
          for (int v = 0; v < kVec; v++) out[v] *= gate[jp * kVec + v];
          uint32_t w[Kt::kXWords];
          pack<input_t, kVec>(w, out);
          if (t < nt && td_ok) store_words(y, w);
          y += x.y_step;
        }
      } else {
#pragma unroll
        for (int j = 0; j < kXPer; j++) {
          const int t = tr + j * kRowStride;
          if (Kt::kXPer * kThreads > kT * kChannels && t >= kT) break;
          float part[kNSplit];
          load_smem<kNSplit>(part, s_y + (t * kC + tc % kC) * kThreads + tc / kC * kNSplit);
          float out = du[j];
#pragma unroll
          for (int k = 0; k < kNSplit; k++) out += part[k];
          out *= gate[j];
          if (t < nt && td_ok) *y = from_float<input_t>(out);
          y += x.y_step;
        }
      }
    }
    advance(x);
  }

#pragma unroll
  for (int c = 0; c < kC; c++) {
    const int d = dq + c;
    if (d >= D) break;
    if (kStateOnly) {
      const int64_t seg_bd = (static_cast<int64_t>(b) * S + seg) * D + d;
#pragma unroll
      for (int g = 0; g < kG; g++) {
        if (n0 + g < N) kp.seg_state[seg_bd * N + n0 + g] = h[c][g];
      }
      if (n0 == 0) kp.seg_dsum[seg_bd] = dsum[c];
    } else if (p.state_out && seg == S - 1) {
      const int64_t bdn = (static_cast<int64_t>(b) * D + d) * N;
#pragma unroll
      for (int g = 0; g < kG; g++) {
        if (n0 + g < N) p.state_out[bdn + n0 + g] = h[c][g];
      }
    }
  }
  if (kStateOnly) set_flag(kp.seg_ready + flag_i);
}

// One segment (the whole of L): block (tile, 0, b).
template <class Kt>
__global__ void __launch_bounds__(Kt::kThreads, Kt::kMinBlocks) scan_fwd_kernel(ScanFwdKernelParams kp) {
  __shared__ ScanFwdSmem<Kt> sm;
  scan_fwd_block<Kt, false>(kp, sm, blockIdx.x, 0, blockIdx.z);
}

// Which work item a segmented launch's ticket stands for. The items come in slots of `tiles · batch`
// blocks, one slot per segment and role: pass 1 of segments 0 .. lag − 1 first, then pass 1 of segment r
// and the full scan of segment r − lag alternately, then the full scans left. A block takes the next
// ticket when it starts, so every item it waits for (pass 1 of its segment, the full scan of the one
// before) started earlier and is resident or done: no deadlock, whatever the order the hardware starts
// blocks in. With lag ≈ two waves of blocks, pass 1 of a segment has usually finished when its full
// scan starts, and the SMs run pass-1 blocks (the exponentials' pipe binds) beside full-scan blocks (the
// issue port binds) for most of the launch.
struct SegItem {
  bool state_only;
  int tile, seg, b;
};
__device__ __forceinline__ SegItem seg_item(const ScanFwdKernelParams& kp, int ticket) {
  const int per = kp.tiles * kp.p.batch, S = kp.segments;
  const int k = ticket / per, i = ticket % per;
  const int lag = kp.lag;  // 1 ≤ lag ≤ S − 1
  SegItem it{};
  it.b = i / kp.tiles, it.tile = i % kp.tiles;
  if (k < lag) {
    it.state_only = true, it.seg = k;
  } else if (k < lag + 2 * (S - 1 - lag)) {
    const int j = k - lag;
    it.state_only = j % 2 == 0, it.seg = j % 2 == 0 ? lag + j / 2 : j / 2;
  } else {
    it.state_only = false, it.seg = S - 1 - lag + (k - lag - 2 * (S - 1 - lag));
  }
  return it;
}

// Several segments: (2S − 1) · tiles · batch blocks, each taking a ticket (seg_item).
template <class Kt>
__global__ void __launch_bounds__(Kt::kThreads, Kt::kMinBlocks) scan_fwd_segmented_kernel(ScanFwdKernelParams kp) {
  __shared__ ScanFwdSmem<Kt> sm;
  __shared__ int ticket;
  if (threadIdx.x == 0) ticket = atomicAdd(kp.ticket, 1);
  __syncthreads();
  const SegItem it = seg_item(kp, ticket);
  if (it.state_only) scan_fwd_block<Kt, true>(kp, sm, it.tile, it.seg, it.b);
  else if (it.seg < kp.segments - 1) scan_fwd_block<Kt, false, true>(kp, sm, it.tile, it.seg, it.b);
  else scan_fwd_block<Kt, false>(kp, sm, it.tile, it.seg, it.b);  // the last segment has no pass 1
}

template <class Kt>
void launch_scan_fwd(const ScanFwdKernelParams& kp_in, cudaStream_t stream) {
  ScanFwdKernelParams kp = kp_in;
  kp.tiles = (kp.p.dim + Kt::kChannels - 1) / Kt::kChannels;
  if (kp.segments == 1) {
    const dim3 grid(kp.tiles, 1, kp.p.batch);
    scan_fwd_kernel<Kt><<<grid, Kt::kThreads, 0, stream>>>(kp);
  } else {
    const int64_t per = static_cast<int64_t>(kp.tiles) * kp.p.batch;
    const int64_t blocks = (2 * kp.segments - 1) * per;
    if (blocks > 0x7fffffff) throw std::invalid_argument("selective_scan_fwd: too many segments and channel tiles");
    // The lag: two waves of blocks (measured at the long anchors: 1% faster than one wave, 5% than half a
    // wave, within 1% of three).
    static const int resident_per_sm = [] {
      int n = 0;
      MAMBA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, scan_fwd_segmented_kernel<Kt>, Kt::kThreads, 0));
      return n;
    }();
    const int64_t wave = static_cast<int64_t>(resident_per_sm) * kp.sm_count;
    kp.lag = static_cast<int>(std::clamp<int64_t>((2 * wave + per / 2) / per, 1, kp.segments - 1));
    scan_fwd_segmented_kernel<Kt><<<static_cast<unsigned>(blocks), Kt::kThreads, 0, stream>>>(kp);
  }
  MAMBA_CUDA_CHECK_LAUNCH();
}

// One split, vectorized where the rows allow it (`aligned`, checked by the dispatcher) and the split does.
template <typename input_t, int kC, int kG, int kNSplit>
void launch_scan_fwd_split(const ScanFwdKernelParams& kp, bool aligned, cudaStream_t stream) {
  if constexpr (fwd_split_vectorizes<input_t, kC, kG, kNSplit>()) {
    if (aligned) return launch_scan_fwd<ScanFwdTraits<input_t, kC, kG, kNSplit, true>>(kp, stream);
  }
  launch_scan_fwd<ScanFwdTraits<input_t, kC, kG, kNSplit>>(kp, stream);
}

// The compiled splits, (channels per thread, states per thread, threads per channel group); the dispatcher
// picks one (kFwdSplits in scan_fwd.cu lists the same). Instantiated once per dtype, in scan_fwd_f32.cu,
// scan_fwd_bf16.cu and scan_fwd_f16.cu, so they compile in parallel.
template <typename input_t>
void launch_scan_fwd_dtype(const ScanFwdKernelParams& kp, int kC, int kG, int nsplit, bool aligned, cudaStream_t stream) {
  switch (kC * 10000 + kG * 100 + nsplit) {
    case 10101: launch_scan_fwd_split<input_t, 1, 1, 1>(kp, aligned, stream); break;
    case 10401: launch_scan_fwd_split<input_t, 1, 4, 1>(kp, aligned, stream); break;
    case 10404: launch_scan_fwd_split<input_t, 1, 4, 4>(kp, aligned, stream); break;
    case 10416: launch_scan_fwd_split<input_t, 1, 4, 16>(kp, aligned, stream); break;
    case 10116: launch_scan_fwd_split<input_t, 1, 1, 16>(kp, aligned, stream); break;
    case 10208: launch_scan_fwd_split<input_t, 1, 2, 8>(kp, aligned, stream); break;
    case 10802: launch_scan_fwd_split<input_t, 1, 8, 2>(kp, aligned, stream); break;
    case 11601: launch_scan_fwd_split<input_t, 1, 16, 1>(kp, aligned, stream); break;
    case 11604: launch_scan_fwd_split<input_t, 1, 16, 4>(kp, aligned, stream); break;
    case 11616: launch_scan_fwd_split<input_t, 1, 16, 16>(kp, aligned, stream); break;
    case 20208: launch_scan_fwd_split<input_t, 2, 2, 8>(kp, aligned, stream); break;
    case 20404: launch_scan_fwd_split<input_t, 2, 4, 4>(kp, aligned, stream); break;
    case 20802: launch_scan_fwd_split<input_t, 2, 8, 2>(kp, aligned, stream); break;
    case 40208: launch_scan_fwd_split<input_t, 4, 2, 8>(kp, aligned, stream); break;
    case 40404: launch_scan_fwd_split<input_t, 4, 4, 4>(kp, aligned, stream); break;
    default:
      throw std::invalid_argument(
          "selective_scan_fwd: no compiled split for this channels_per_thread, states_per_thread and N");
  }
}
extern template void launch_scan_fwd_dtype<float>(const ScanFwdKernelParams&, int, int, int, bool, cudaStream_t);
extern template void launch_scan_fwd_dtype<__nv_bfloat16>(const ScanFwdKernelParams&, int, int, int, bool, cudaStream_t);
extern template void launch_scan_fwd_dtype<__half>(const ScanFwdKernelParams&, int, int, int, bool, cudaStream_t);

}  // namespace mamba::cuda

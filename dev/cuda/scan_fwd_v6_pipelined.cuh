// dev experiment (v6, dev/notes/scan.md): the forward with one barrier per tile, double-buffered shared
// tiles, vector loads of kV channels per thread, and staging/epilogue spread over the scan's step groups;
// plus FMA-pipe versions of exp2, softplus and SiLU. Correct (passed every forward test) but 5-15% slower
// than v5: shared-memory wavefronts bind (85% of the L1 data pipe). Not built; kept for its parts.

// kW consecutive elements of type T (fp32, bf16 or fp16) packed into 32-bit words, as one vector
// load or store moves them: 8 bf16 are one 16-byte load and four registers, not eight.
template <typename T, int kW>
struct Packed {
  static constexpr int kWords = (kW * static_cast<int>(sizeof(T)) + 3) / 4;
  uint32_t w[kWords];

  __device__ __forceinline__ float get(int e) const {
    if constexpr (sizeof(T) == 4) {
      return __uint_as_float(w[e]);
    } else {
      const uint32_t word = w[e / 2];
      if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        return __uint_as_float(e % 2 ? word & 0xffff0000u : word << 16);  // bf16 is the top half of an fp32
      } else {
        return __half2float(__ushort_as_half(static_cast<unsigned short>(e % 2 ? word >> 16 : word & 0xffffu)));
      }
    }
  }
  __device__ __forceinline__ void set(int e, float x) {
    if constexpr (sizeof(T) == 4) {
      w[e] = __float_as_uint(x);
    } else {
      uint32_t bits;
      if constexpr (std::is_same_v<T, __nv_bfloat16>) bits = __bfloat16_as_ushort(__float2bfloat16_rn(x));
      else bits = __half_as_ushort(__float2half_rn(x));
      w[e / 2] = e % 2 ? (w[e / 2] & 0xffffu) | (bits << 16) : (w[e / 2] & 0xffff0000u) | bits;
    }
  }
};

// Loads the `valid` (≤ kW) elements at p, zeros after them: one vector load when `vec` (p aligned to
// the vector's size) and all kW are valid, else element by element.
template <typename T, int kW>
__device__ __forceinline__ void load_packed(Packed<T, kW>& r, const T* p, int valid, bool vec) {
  constexpr int kBytes = kW * static_cast<int>(sizeof(T));
  if (vec && valid == kW && kBytes >= 4) {
    const auto* q = reinterpret_cast<const uint32_t*>(p);
    if constexpr (kBytes == 4) {
      r.w[0] = __ldg(q);
    } else if constexpr (kBytes == 8) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(q));
      r.w[0] = v.x, r.w[1] = v.y;
    } else {
#pragma unroll
      for (int k = 0; k < kBytes / 16; k++) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(q) + k);
        r.w[4 * k] = v.x, r.w[4 * k + 1] = v.y, r.w[4 * k + 2] = v.z, r.w[4 * k + 3] = v.w;
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < Packed<T, kW>::kWords; k++) r.w[k] = 0;
#pragma unroll
    for (int e = 0; e < kW; e++) {
      if (e < valid) r.set(e, to_float(__ldg(p + e)));
    }
  }
}

// Stores the first `valid` elements of r at p (one vector store when `vec` and all are valid).
template <typename T, int kW>
__device__ __forceinline__ void store_packed(T* p, const Packed<T, kW>& r, int valid, bool vec) {
  constexpr int kBytes = kW * static_cast<int>(sizeof(T));
  if (vec && valid == kW && kBytes >= 4) {
    auto* q = reinterpret_cast<uint32_t*>(p);
    if constexpr (kBytes == 4) {
      q[0] = r.w[0];
    } else if constexpr (kBytes == 8) {
      *reinterpret_cast<uint2*>(q) = make_uint2(r.w[0], r.w[1]);
    } else {
#pragma unroll
      for (int k = 0; k < kBytes / 16; k++) {
        reinterpret_cast<uint4*>(q)[k] = make_uint4(r.w[4 * k], r.w[4 * k + 1], r.w[4 * k + 2], r.w[4 * k + 3]);
      }
    }
  } else {
#pragma unroll
    for (int e = 0; e < kW; e++) {
      if (e < valid) p[e] = from_float<T>(r.get(e));
    }
  }
}

// Whether every row start ptr + k·stride (elements) is aligned to a vector of `bytes`.
template <typename T>
inline bool rows_aligned(const void* ptr, int64_t stride, int bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0 && (stride * static_cast<int64_t>(sizeof(T))) % bytes == 0;
}

// Keeps a value that only some lanes need computed by every lane, in straight-line code: without it
// the compiler puts an expensive function (softplus, SiLU) under a branch per element, and the
// elements' latencies, which would overlap, are serialized.
__device__ __forceinline__ float unconditional(float x) {
  asm volatile("" : "+f"(x));
  return x;
}

constexpr float kLog2e = 1.4426950408889634f;

// softplus(x) = log(1 + eˣ) = max(x, 0) + log1p(y), y = e^−|x| ≤ 1. (Above x = 20 the log1p term is below
// half an ulp of x, so this equals torch's and the CPU oracle's threshold.) log1p(y) = 2·atanh(s) with
// s = y / (2 + y) ≤ 1/3, as its odd series to s¹³ (relative error < 2e-8): the SFU's log has an absolute
// error (~2⁻²²) too large next to a small log1p, and log1pf's branches would serialize a staging loop.
__device__ __forceinline__ float softplus(float x) {
  const float y = __expf(-fabsf(x));
  const float s = __fdividef(y, 2.0f + y), s2 = s * s;
  float p = 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  return fmaxf(x, 0.0f) + 2.0f * s * p;
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }
__device__ __forceinline__ float silu(float x) { return x * sigmoid(x); }

// ---- The same functions on the FMA pipe, for kernels whose special-function units are the bottleneck
// (the scan spends them on its exponentials): more instructions, no MUFU.

// 2^x (Cody–Waite): x = j + f with j = round(x), f ∈ [−½, ½]; 2^f by its degree-5 minimax polynomial
// (relative error 7.5e-8, ≤ 2e-7 after rounding); 2^j added into the exponent bits. x is clamped to
// [−126, 126], so the result stays a normal float (2^−126 where the SFU would give 0).
__device__ __forceinline__ float exp2_fma(float x) {
  x = fminf(fmaxf(x, -126.0f), 126.0f);
  constexpr float kRound = 12582912.0f;  // 1.5·2²³: x + kRound holds round(x) in its low mantissa bits
  const float t = x + kRound;
  const float f = x - (t - kRound);
  float p = 1.327646686e-3f;
  p = p * f + 9.675541296e-3f;
  p = p * f + 5.550713289e-2f;
  p = p * f + 2.402211972e-1f;
  p = p * f + 6.931469671e-1f;
  p = p * f + 1.000000072f;
  // t's bits are 0x4B400000 + j; shifted left by 23, only j << 23 is left: the exponent increment.
  return __uint_as_float(__float_as_uint(p) + (__float_as_uint(t) << 23));
}

// 1/q for q ≥ 1: the classic bit-pattern estimate (relative error ≤ 12%) and three Newton steps
// (error squared each: ≤ 6e-8).
__device__ __forceinline__ float rcp_fma(float q) {
  float r = __uint_as_float(0x7EF311C7u - __float_as_uint(q));
#pragma unroll
  for (int k = 0; k < 3; k++) r = fmaf(r, fmaf(-q, r, 1.0f), r);
  return r;
}

// softplus as above, with log1p(y) = y·P(y), P the degree-8 minimax polynomial of log1p(y)/y on [0, 1]
// (relative error 3e-8).
__device__ __forceinline__ float softplus_fma(float x) {
  const float y = exp2_fma(-fabsf(x) * kLog2e);
  float p = 5.218085951e-3f;
  p = p * y - 2.944613579e-2f;
  p = p * y + 7.812862985e-2f;
  p = p * y - 1.365488168e-1f;
  p = p * y + 1.910201259e-1f;
  p = p * y - 2.484194233e-1f;
  p = p * y + 3.331896313e-1f;
  p = p * y - 4.999948654e-1f;
  p = p * y + 9.999999693e-1f;
  return fmaxf(x, 0.0f) + y * p;
}

__device__ __forceinline__ float silu_fma(float x) { return x * rcp_fma(1.0f + exp2_fma(-x * kLog2e)); }

// The kernel's arguments: the user's params plus the split the dispatcher chose.
struct ScanFwdKernelParams {
  ScanParams p;
  int segments = 1;              // S
  int64_t seg_len = 0;           // steps per segment, a multiple of kStateChunk (the last one shorter)
  float* seg_state = nullptr;    // (B, S, D, N) pass 1: each segment's h from zero; then its start state
  float* seg_dsum = nullptr;     // (B, S, D) pass 1: ΣΔ over each segment
  bool vec_x = false;            // u, Δ, z, y rows aligned for one vector access per thread (kV elements)
  bool vec_bc = false;           // B, C rows aligned likewise (kW elements)
};

// Which elementwise functions and what share of the scan's exponentials run on the FMA pipe rather
// than on the special-function units (dev/notes/scan.md, v6: the SFUs bind once the rest is cheap).
#ifndef MAMBA_SCAN_FWD_FMA_SOFTPLUS
#define MAMBA_SCAN_FWD_FMA_SOFTPLUS 0
#endif
#ifndef MAMBA_SCAN_FWD_FMA_SILU
#define MAMBA_SCAN_FWD_FMA_SILU 0
#endif
#ifndef MAMBA_SCAN_FWD_POLY_EXPS
#define MAMBA_SCAN_FWD_POLY_EXPS 0
#endif

template <typename input_t_, int kG_, int kNSplit_>
struct ScanFwdTraits {
  using input_t = input_t_;
  static constexpr int kG = kG_;                       // states per thread, in registers
  static constexpr int kNSplit = kNSplit_;             // threads per channel: N ≤ kG · kNSplit
  static constexpr int kThreads = 128;
  static constexpr int kChannels = kThreads / kNSplit;  // channels per block
  static constexpr int kNPad = kG * kNSplit;           // states per channel, padded
  // Shared memory per step of a tile, one buffer: each thread's partial C·h, (Δ, Δu, D·u/kNSplit) per
  // channel, B and C. Everything is double-buffered (tile k is scanned while k + 1 is staged and k − 1
  // finished), so the tile is cut to keep that under 48 KB.
  static constexpr int kStepBytes = 4 * (kThreads + 4 * kChannels + 2 * kNPad);
  static constexpr int tile_steps() {
    int cap = 32;
    cap = cap < 8 * kNSplit ? cap : 8 * kNSplit;          // a thread's share of a tile: ≤ 8 elements
    cap = cap < 8 * kThreads / kNPad ? cap : 8 * kThreads / kNPad;
    cap = cap < 23552 / kStepBytes ? cap : 23552 / kStepBytes;
    int t = 1;
    while (2 * t <= cap) t *= 2;
    return t;
  }
  static constexpr int kT = tile_steps();  // steps per tile, a power of two
  // Steps whose loads and exponentials the scan issues together (see the scan loop): ~16 exponentials.
  static constexpr int kUnroll = kG >= 16 ? 1 : 16 / kG < kT ? 16 / kG : kT;
  static constexpr int kGroups = kT / kUnroll;
  // Staging and the epilogue: each thread takes kV consecutive channels of one step (one vector load
  // of u, Δ, z and one store of y); B and C: kW consecutive states of one step.
  static constexpr int kV = kT * kChannels >= kThreads ? kT * kChannels / kThreads : 1;
  static constexpr int kW = kT * kNPad >= kThreads ? kT * kNPad / kThreads : 1;
  // At least 4 blocks (16 warps) per SM: caps registers at 128 per thread.
  static constexpr int kMinBlocks = 4;
  static constexpr bool kFmaSoftplus = MAMBA_SCAN_FWD_FMA_SOFTPLUS;
  static constexpr bool kFmaSilu = MAMBA_SCAN_FWD_FMA_SILU;
  static constexpr int kPolyExps = MAMBA_SCAN_FWD_POLY_EXPS;  // of every 16 exponentials of the scan
  static_assert(kStateChunk % kUnroll == 0 && (kT % kStateChunk == 0 || kStateChunk % kT == 0),
                "state chunks must start at a step group");
  static_assert(kV <= 8 && kW <= 8, "a thread's share of a tile is at most 8 elements");
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
  } else if constexpr (kG == 2) {
    const float2 v = *reinterpret_cast<const float2*>(src);
    out[0] = v.x, out[1] = v.y;
  } else {
#pragma unroll
    for (int g = 0; g < kG; g++) out[g] = src[g];
  }
}

template <int kG>
__device__ __forceinline__ void store_smem(float* dst, const float (&v)[kG]) {
  if constexpr (kG % 4 == 0) {
#pragma unroll
    for (int q = 0; q < kG / 4; q++) reinterpret_cast<float4*>(dst)[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
  } else if constexpr (kG == 2) {
    *reinterpret_cast<float2*>(dst) = make_float2(v[0], v[1]);
  } else {
#pragma unroll
    for (int g = 0; g < kG; g++) dst[g] = v[g];
  }
}

// One tile's raw inputs in registers, loaded a tile ahead of their staging so that the loads' latency
// hides behind a whole tile of scan.
template <class Kt>
struct TileRegs {
  Packed<typename Kt::input_t, Kt::kV> u, delta;
  Packed<typename Kt::input_t, Kt::kW> B, C;
};

// The work of one block: a tile of kChannels channels of one segment of one sequence. The pipeline:
// while tile k is scanned (from shared buffer k & 1), tile k + 1 is staged into the other buffer from
// registers, tile k + 2 is loaded into registers, and tile k − 1's outputs are finished; one barrier
// per tile. The staging and epilogue work is spread over the scan's step groups, so that every warp
// issues a steady mix of the scan's exponentials (special-function units) and that work (FMA and
// load/store pipes) instead of phases that each leave one unit idle.
template <class Kt, bool kStateOnly>
__global__ void __launch_bounds__(Kt::kThreads, Kt::kMinBlocks) scan_fwd_kernel(ScanFwdKernelParams kp) {
  using input_t = typename Kt::input_t;
  constexpr int kG = Kt::kG, kT = Kt::kT, kThreads = Kt::kThreads, kChannels = Kt::kChannels;
  constexpr int kNPad = Kt::kNPad, kNSplit = Kt::kNSplit, kU = Kt::kUnroll, kGroups = Kt::kGroups;
  constexpr int kV = Kt::kV, kW = Kt::kW, kSegs = kChannels / kV, kBCSegs = kNPad / kW;
  // (Δ, Δ·u) per (step, channel); the output pass adds D·u / kNSplit, which each of a channel's kNSplit
  // threads adds to its partial C·h, so the epilogue's sum of the partials includes D·u.
  using dtu_t = std::conditional_t<kStateOnly, float2, float4>;
  const ScanParams& p = kp.p;
  const int N = p.dstate, D = p.dim;
  const int b = blockIdx.z, seg = blockIdx.y, d0 = blockIdx.x * kChannels;
  // The scan: this thread's channel and first state.
  const int c = threadIdx.x / kNSplit, n0 = (threadIdx.x % kNSplit) * kG;
  const int d = d0 + c;
  const bool d_ok = d < D;
  // Staging and epilogue: kV channels from xc, step xr of every tile.
  const bool x_slot = kT * kSegs >= kThreads || threadIdx.x < kT * kSegs;
  const int xr = threadIdx.x / kSegs, xc = (threadIdx.x % kSegs) * kV;
  const int x_valid = x_slot ? max(0, min(kV, D - (d0 + xc))) : 0;
  // B and C: kW states from bn, step br of every tile.
  const bool bc_slot = kT * kBCSegs >= kThreads || threadIdx.x < kT * kBCSegs;
  const int br = threadIdx.x / kBCSegs, bn = (threadIdx.x % kBCSegs) * kW;
  const int bc_valid = bc_slot ? max(0, min(kW, N - bn)) : 0;

  __shared__ __align__(16) dtu_t s_dtu[2][kT * kChannels];                    // (kT, channels)
  __shared__ __align__(16) float s_y[2][kStateOnly ? 1 : kT * kThreads];     // (kT, kThreads) partial C·h
  __shared__ __align__(16) float s_B[2][kT * kNPad];                          // (kT, kNPad)
  __shared__ __align__(16) float s_C[2][kStateOnly ? 1 : kT * kNPad];         // (kT, kNPad)
  __shared__ __align__(16) float s_bias[kChannels], s_skip[kChannels];
  for (int i = threadIdx.x; i < kChannels; i += kThreads) {
    const bool ok = d0 + i < D;
    s_bias[i] = ok && p.delta_bias ? p.delta_bias[d0 + i] : 0.0f;
    s_skip[i] = ok && p.D ? p.D[d0 + i] * (1.0f / kNSplit) : 0.0f;
  }

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
  const int ntiles = static_cast<int>((t_end - t_begin + kT - 1) / kT);
  const int64_t row0 = static_cast<int64_t>(b) * L + t_begin;  // (b, t_begin)
  auto steps = [&](int k) {  // valid steps of tile k (≤ 0 past the end)
    const int64_t left = t_end - t_begin - static_cast<int64_t>(k) * kT;
    return left < kT ? static_cast<int>(left) : kT;
  };
  // Per-thread pointers to this thread's elements, each advanced by one tile per iteration: u, Δ, B, C
  // at the tile being loaded, z at the tile being scanned, y at the tile being finished.
  const input_t* u_p = static_cast<const input_t*>(p.u) + (row0 + xr) * p.u_stride + d0 + xc;
  const input_t* dl_p = static_cast<const input_t*>(p.delta) + (row0 + xr) * p.delta_stride + d0 + xc;
  const input_t* z_p = static_cast<const input_t*>(p.z) + (row0 + xr) * p.z_stride + d0 + xc;
  input_t* y_p = static_cast<input_t*>(p.y) + (row0 + xr) * p.y_stride + d0 + xc;
  const input_t* B_p = static_cast<const input_t*>(p.Bm) + (row0 + br) * p.B_stride + bn;
  const input_t* C_p = static_cast<const input_t*>(p.Cm) + (row0 + br) * p.C_stride + bn;
  const int64_t u_step = kT * p.u_stride, dl_step = kT * p.delta_stride, z_step = kT * p.z_stride;
  const int64_t y_step = kT * p.y_stride, B_step = kT * p.B_stride, C_step = kT * p.C_stride;
  // Loads the tile the pointers are at (nt valid steps) and advances them.
  auto load_tile = [&](TileRegs<Kt>& r, int nt) {
    const int xv = xr < nt ? x_valid : 0;
    load_packed(r.u, u_p, xv, kp.vec_x);
    load_packed(r.delta, dl_p, xv, kp.vec_x);
    const int bv = br < nt ? bc_valid : 0;
    load_packed(r.B, B_p, bv, kp.vec_bc);
    if (!kStateOnly) load_packed(r.C, C_p, bv, kp.vec_bc);
    u_p += u_step, dl_p += dl_step, B_p += B_step, C_p += C_step;
  };
  // Staging: element e of a tile into buffer nb, Δ's bias and softplus applied once per element. Steps
  // past the end get Δ = 0 and B = 0: exp(0·A) = 1 and no input, so the scan runs all kT steps and
  // those keep h.
  auto stage_x = [&](const TileRegs<Kt>& r, int e, int nb, bool row_ok) {
    if (!x_slot) return;
    const float uu = r.u.get(e);
    const float pre = r.delta.get(e) + s_bias[xc + e];
    const float sp = unconditional(Kt::kFmaSoftplus ? softplus_fma(pre) : softplus(pre));
    const float dt = row_ok && e < x_valid ? (p.delta_softplus ? sp : pre) : 0.0f;
    if constexpr (kStateOnly) s_dtu[nb][xr * kChannels + xc + e] = make_float2(dt, dt * uu);
    else s_dtu[nb][xr * kChannels + xc + e] = make_float4(dt, dt * uu, s_skip[xc + e] * uu, 0.0f);
  };
  auto stage_bc = [&](const TileRegs<Kt>& r, int nb) {
    if (!bc_slot) return;
    float v[kW];
#pragma unroll
    for (int w = 0; w < kW; w++) v[w] = r.B.get(w);
    store_smem<kW>(&s_B[nb][br * kNPad + bn], v);
    if (!kStateOnly) {
#pragma unroll
      for (int w = 0; w < kW; w++) v[w] = r.C.get(w);
      store_smem<kW>(&s_C[nb][br * kNPad + bn], v);
    }
  };
  // Epilogue: y_t = (C_t·h_t + D u_t) · SiLU(z_t) for element e of a tile; the kNSplit partial sums of a
  // channel sit side by side in s_y.
  auto finish_x = [&](Packed<input_t, kV>& y, const Packed<input_t, kV>& z, int e, int pb) {
    if (!x_slot) return;
    float part[kNSplit];
    load_smem<kNSplit>(part, &s_y[pb][xr * kThreads + (xc + e) * kNSplit]);
    float out = 0.0f;
#pragma unroll
    for (int k = 0; k < kNSplit; k++) out += part[k];
    const float gate = unconditional(Kt::kFmaSilu ? silu_fma(z.get(e)) : silu(z.get(e)));
    y.set(e, p.z ? out * gate : out);
  };
  auto store_y = [&](const Packed<input_t, kV>& y, int nt) {
    store_packed(y_p, y, xr < nt ? x_valid : 0, kp.vec_x);
    y_p += y_step;
  };
  auto load_z = [&](Packed<input_t, kV>& z, int nt) {
    load_packed(z, z_p, p.z && xr < nt ? x_valid : 0, kp.vec_x);
    z_p += z_step;
  };

  // Prologue: tile 0 staged into buffer 0; tile 1 in registers.
  TileRegs<Kt> cur, nxt;
  Packed<input_t, kV> z_cur = {}, z_nxt = {}, y_out = {};
  load_tile(cur, steps(0));
  load_tile(nxt, steps(1));
  __syncthreads();  // s_bias, s_skip
#pragma unroll
  for (int e = 0; e < kV; e++) stage_x(cur, e, 0, xr < steps(0));
  stage_bc(cur, 0);
  cur = nxt;
  __syncthreads();

  const int64_t chunks = (L + kStateChunk - 1) / kStateChunk;
#pragma unroll 1
  for (int k = 0; k < ntiles; k++) {
    const int cb = k & 1, nb = cb ^ 1;
    const int64_t t0 = t_begin + static_cast<int64_t>(k) * kT;
    // In flight during this tile: tile k + 2's inputs and tile k's gate.
    const int64_t left = t_end - t0;  // steps from this tile's start to the segment's end
    const int nt_prev = kT, nt_next = left - kT < kT ? static_cast<int>(left - kT) : kT;
    load_tile(nxt, left - 2 * kT < kT ? static_cast<int>(left - 2 * kT) : kT);
    if (!kStateOnly) load_z(z_nxt, left < kT ? static_cast<int>(left) : kT);
    const bool next_row_ok = xr < nt_next;
    if (!kStateOnly) {
#pragma unroll
      for (int w = 0; w < Packed<input_t, kV>::kWords; w++) y_out.w[w] = 0;
    }

    // The recurrence (paper eq. 2a, 2b with the ZOH-discretized Ā = exp(ΔA) and the Euler B̄ = ΔB):
    // h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t, and this thread's share of C_t·h_t (+ D u_t / kNSplit).
    // kU steps at a time, written as loads, then exponentials, then the h chain: the exponentials do
    // not depend on h, so all kU·kG of them are in flight together and only the FMAs into h wait on
    // one another.
#pragma unroll
    for (int grp = 0; grp < kGroups; grp++) {
      const int s0 = grp * kU;
      if (!kStateOnly && s0 % kStateChunk == 0 && p.chunk_states && d_ok &&
          (kT >= kStateChunk || (t0 + s0) % kStateChunk == 0) && t0 + s0 < t_end) {
        float* cs = p.chunk_states + ((static_cast<int64_t>(b) * chunks + (t0 + s0) / kStateChunk) * D + d) * N + n0;
#pragma unroll
        for (int g = 0; g < kG; g++) {
          if (n0 + g < N) cs[g] = h[g];
        }
      }
      dtu_t v[kU];
      float Bt[kU][kG], Ct[kU][kG], e[kU][kG];
#pragma unroll
      for (int k2 = 0; k2 < kU; k2++) {
        v[k2] = s_dtu[cb][(s0 + k2) * kChannels + c];
        load_smem<kG>(Bt[k2], &s_B[cb][(s0 + k2) * kNPad + n0]);
        if (!kStateOnly) load_smem<kG>(Ct[k2], &s_C[cb][(s0 + k2) * kNPad + n0]);
      }
#pragma unroll
      for (int k2 = 0; k2 < kU; k2++) {
#pragma unroll
        for (int g = 0; g < kG; g++) {
          // kPolyExps of every 16 on the FMA pipe, spread evenly.
          const int i = k2 * kG + g;
          const bool poly = Kt::kPolyExps > 0 && (i * Kt::kPolyExps) % 16 < Kt::kPolyExps;
          e[k2][g] = poly ? exp2_fma(v[k2].x * A2[g]) : exp2f(v[k2].x * A2[g]);
        }
      }
#pragma unroll
      for (int k2 = 0; k2 < kU; k2++) {
        float acc = 0.0f;
        if constexpr (!kStateOnly) acc = v[k2].z;
#pragma unroll
        for (int g = 0; g < kG; g++) {
          h[g] = e[k2][g] * h[g] + v[k2].y * Bt[k2][g];
          if (!kStateOnly) acc += Ct[k2][g] * h[g];
        }
        if (kStateOnly) dsum += v[k2].x;
        else s_y[cb][(s0 + k2) * kThreads + threadIdx.x] = acc;
      }

      // This group's share of staging tile k + 1 and of finishing tile k − 1.
#pragma unroll
      for (int e2 = 0; e2 < kV; e2++) {
        if (e2 * kGroups / kV != grp) continue;
        stage_x(cur, e2, nb, next_row_ok);
        if (!kStateOnly) finish_x(y_out, z_cur, e2, nb);
      }
      if (grp == 0) stage_bc(cur, nb);
    }
    if (!kStateOnly && k > 0) store_y(y_out, nt_prev);
    cur = nxt;
    z_cur = z_nxt;
    __syncthreads();
  }
  if (!kStateOnly && ntiles > 0) {
    const int lb = (ntiles - 1) & 1;
#pragma unroll
    for (int w = 0; w < Packed<input_t, kV>::kWords; w++) y_out.w[w] = 0;
#pragma unroll
    for (int e2 = 0; e2 < kV; e2++) finish_x(y_out, z_cur, e2, lb);
    store_y(y_out, steps(ntiles - 1));
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
void launch_scan_fwd_pass(const ScanFwdKernelParams& kp_in, cudaStream_t stream) {
  using T = typename Kt::input_t;
  ScanFwdKernelParams kp = kp_in;
  const ScanParams& p = kp.p;
  // A thread's kV (kW) elements move as one access of up to 16 bytes (two for 8 fp32).
  constexpr int vx = Kt::kV * sizeof(T) < 16 ? Kt::kV * sizeof(T) : 16;
  constexpr int vbc = Kt::kW * sizeof(T) < 16 ? Kt::kW * sizeof(T) : 16;
  kp.vec_x = rows_aligned<T>(p.u, p.u_stride, vx) && rows_aligned<T>(p.delta, p.delta_stride, vx) &&
             rows_aligned<T>(p.y, p.y_stride, vx) && (!p.z || rows_aligned<T>(p.z, p.z_stride, vx));
  kp.vec_bc = rows_aligned<T>(p.Bm, p.B_stride, vbc) && rows_aligned<T>(p.Cm, p.C_stride, vbc);
  const dim3 grid((kp.p.dim + Kt::kChannels - 1) / Kt::kChannels, kp.segments, kp.p.batch);
  scan_fwd_kernel<Kt, kStateOnly><<<grid, Kt::kThreads, 0, stream>>>(kp);
  MAMBA_CUDA_CHECK_LAUNCH();
}


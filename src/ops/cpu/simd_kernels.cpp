// The kernels of simd.h, one source for every target: Highway compiles the part between
// HWY_BEFORE_NAMESPACE and HWY_AFTER_NAMESPACE once per target (foreach_target.h re-includes this file)
// and HWY_DYNAMIC_DISPATCH calls the best one the CPU supports.
//
// Decode is bound by reading the weights: a token reads every matrix once, so the kernels widen each
// weight vector in registers (BF16: a shift, F16: vcvtph2ps, I8: two conversions and a scale per block)
// and use it for every activation row before the next is loaded. Arithmetic is fp32 throughout.

// Every target the compiler can reach, not only those above the flags this file is built with, and
// AVX-512 with VNNI (Ice Lake, Zen 4) beside plain AVX-512. Scalable vectors (SVE, RVV) are left out:
// the kernels keep their accumulators in arrays.
#define HWY_COMPILE_ALL_ATTAINABLE
#define HWY_WANT_AVX3_DL
#define HWY_DISABLED_TARGETS (HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128 | HWY_RVV)

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/cpu/simd_kernels.cpp"
#include <hwy/foreach_target.h>  // re-includes this file once per target

#include <hwy/highway.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops/cpu/simd.h"

HWY_BEFORE_NAMESPACE();
namespace mamba::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Lanes(df) weights from w, as fp32.
HWY_INLINE VF load_w(DF df, const float* w) { return hn::LoadU(df, w); }
HWY_INLINE VF load_w(DF df, const hwy::bfloat16_t* w) {
  return hn::PromoteTo(df, hn::LoadU(hn::Rebind<hwy::bfloat16_t, DF>(), w));
}
HWY_INLINE VF load_w(DF df, const hwy::float16_t* w) {
  return hn::PromoteTo(df, hn::LoadU(hn::Rebind<hwy::float16_t, DF>(), w));
}
HWY_INLINE VF load_w(DF df, const int8_t* w) {
  return hn::ConvertTo(df, hn::PromoteTo(hn::Rebind<int32_t, DF>(), hn::LoadU(hn::Rebind<int8_t, DF>(), w)));
}

// One weight as fp32, for the tails shorter than a vector.
HWY_INLINE float widen(float w) { return w; }
HWY_INLINE float widen(hwy::bfloat16_t w) { return hwy::F32FromBF16(w); }
HWY_INLINE float widen(hwy::float16_t w) {
  uint16_t bits;
  std::memcpy(&bits, &w, 2);
  return f16_to_f32(bits);
}
HWY_INLINE float widen(int8_t w) { return static_cast<float>(w); }

// sums[r] = Σ_k w[k] · x[r·ldx + k] for R activation rows, the weight row read once. U vectors per row
// are in flight so that the FMA latency does not bind.
template <int R, int U, class T>
HWY_INLINE void dot_rows(const T* HWY_RESTRICT w, int K, const float* HWY_RESTRICT x, int64_t ldx, float* sums) {
  const DF df;
  const int N = static_cast<int>(hn::Lanes(df));
  VF acc[R][U];
  for (int r = 0; r < R; r++) {
    for (int u = 0; u < U; u++) acc[r][u] = hn::Zero(df);
  }
  int k = 0;
  for (; k + U * N <= K; k += U * N) {
    VF wv[U];
    for (int u = 0; u < U; u++) wv[u] = load_w(df, w + k + u * N);
    for (int r = 0; r < R; r++) {
      for (int u = 0; u < U; u++) acc[r][u] = hn::MulAdd(wv[u], hn::LoadU(df, x + r * ldx + k + u * N), acc[r][u]);
    }
  }
  for (; k + N <= K; k += N) {
    const VF wv = load_w(df, w + k);
    for (int r = 0; r < R; r++) acc[r][0] = hn::MulAdd(wv, hn::LoadU(df, x + r * ldx + k), acc[r][0]);
  }
  for (int r = 0; r < R; r++) {
    for (int u = 1; u < U; u++) acc[r][0] = hn::Add(acc[r][0], acc[r][u]);
    sums[r] = hn::GetLane(hn::SumOfLanes(df, acc[r][0]));
  }
  for (; k < K; k++) {
    const float wk = widen(w[k]);
    for (int r = 0; r < R; r++) sums[r] += wk * x[r * ldx + k];
  }
}

// W weight rows against R activation rows: W·R accumulators, and each activation vector loaded once
// per step for W FMAs. With 5 to 16 activation rows (batched decode) they no longer fit in L1 beside the
// weight row, and a kernel that loads an activation vector for every FMA waits on L2; sharing each
// activation load among W weight rows cuts that traffic W times. sums[i·R + r] for weight row i,
// activation row r.
template <int W, int R, class T>
HWY_INLINE void dot_tile(const T* HWY_RESTRICT w, int64_t ldw, int K, const float* HWY_RESTRICT x, int64_t ldx,
                         float* sums) {
  const DF df;
  const int N = static_cast<int>(hn::Lanes(df));
  VF acc[W][R];
  for (int i = 0; i < W; i++) {
    for (int r = 0; r < R; r++) acc[i][r] = hn::Zero(df);
  }
  int k = 0;
  for (; k + N <= K; k += N) {
    VF wv[W];
    for (int i = 0; i < W; i++) wv[i] = load_w(df, w + i * ldw + k);
    for (int r = 0; r < R; r++) {
      const VF xv = hn::LoadU(df, x + r * ldx + k);
      for (int i = 0; i < W; i++) acc[i][r] = hn::MulAdd(wv[i], xv, acc[i][r]);
    }
  }
  for (int i = 0; i < W; i++) {
    for (int r = 0; r < R; r++) sums[i * R + r] = hn::GetLane(hn::SumOfLanes(df, acc[i][r]));
  }
  for (; k < K; k++) {
    for (int i = 0; i < W; i++) {
      const float wk = widen(w[i * ldw + k]);
      for (int r = 0; r < R; r++) sums[i * R + r] += wk * x[r * ldx + k];
    }
  }
}

// BF16 weights two vectors' worth at a time: 2N of them loaded as N 32-bit lanes, whose low halves
// (the even elements) shifted up and high halves (the odd elements) masked are their fp32 values. One
// shift or mask per N weights, where widening lane by lane takes a shuffle and a shift; the activations
// are stored even elements first in each chunk of 2N (permute_pairs) to meet them.
template <int R, int U>
HWY_INLINE void dot_rows_bf16(const hwy::bfloat16_t* HWY_RESTRICT w, int K, const float* HWY_RESTRICT x, int64_t ldx,
                              float* sums) {
  static_assert(std::endian::native == std::endian::little, "the even element is the low half of a 32-bit lane");
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  const int N = static_cast<int>(hn::Lanes(df));
  const auto high = hn::Set(du, 0xFFFF0000u);
  VF even[R][U], odd[R][U];
  for (int r = 0; r < R; r++) {
    for (int u = 0; u < U; u++) even[r][u] = odd[r][u] = hn::Zero(df);
  }
  int k = 0;
  for (; k + 2 * U * N <= K; k += 2 * U * N) {
    VF we[U], wo[U];
    for (int u = 0; u < U; u++) {
      const auto v = hn::LoadU(du, reinterpret_cast<const uint32_t*>(w + k + 2 * u * N));
      we[u] = hn::BitCast(df, hn::ShiftLeft<16>(v));
      wo[u] = hn::BitCast(df, hn::And(v, high));
    }
    for (int r = 0; r < R; r++) {
      for (int u = 0; u < U; u++) {
        const float* xr = x + r * ldx + k + 2 * u * N;
        even[r][u] = hn::MulAdd(we[u], hn::LoadU(df, xr), even[r][u]);
        odd[r][u] = hn::MulAdd(wo[u], hn::LoadU(df, xr + N), odd[r][u]);
      }
    }
  }
  for (; k + 2 * N <= K; k += 2 * N) {
    const auto v = hn::LoadU(du, reinterpret_cast<const uint32_t*>(w + k));
    const VF we = hn::BitCast(df, hn::ShiftLeft<16>(v)), wo = hn::BitCast(df, hn::And(v, high));
    for (int r = 0; r < R; r++) {
      even[r][0] = hn::MulAdd(we, hn::LoadU(df, x + r * ldx + k), even[r][0]);
      odd[r][0] = hn::MulAdd(wo, hn::LoadU(df, x + r * ldx + k + N), odd[r][0]);
    }
  }
  for (int r = 0; r < R; r++) {
    VF sum = hn::Add(even[r][0], odd[r][0]);
    for (int u = 1; u < U; u++) sum = hn::Add(sum, hn::Add(even[r][u], odd[r][u]));
    sums[r] = hn::GetLane(hn::SumOfLanes(df, sum));
  }
  for (; k < K; k++) {  // the tail past the last whole chunk is in its natural order
    const float wk = widen(w[k]);
    for (int r = 0; r < R; r++) sums[r] += wk * x[r * ldx + k];
  }
}

// Rows [0, M) of x (M, K; row stride ldx) into out (M, K), each whole chunk of 2·Lanes values as its
// even elements, then its odd ones; the rest as it is.
HWY_INLINE void permute_pairs(const float* HWY_RESTRICT x, int64_t ldx, int64_t M, int K, float* HWY_RESTRICT out) {
  const int N = static_cast<int>(hn::Lanes(DF()));
  for (int64_t m = 0; m < M; m++) {
    const float* xr = x + m * ldx;
    float* o = out + m * K;
    int k = 0;
    for (; k + 2 * N <= K; k += 2 * N) {
      for (int i = 0; i < N; i++) {
        o[k + i] = xr[k + 2 * i];
        o[k + N + i] = xr[k + 2 * i + 1];
      }
    }
    for (; k < K; k++) o[k] = xr[k];
  }
}

HWY_INLINE void dot_group_bf16(const hwy::bfloat16_t* w, int K, const float* x, int64_t ldx, int rows, float* sums) {
  switch (rows) {
    case 1: dot_rows_bf16<1, 2>(w, K, x, ldx, sums); break;
    case 2: dot_rows_bf16<2, 2>(w, K, x, ldx, sums); break;
    case 3: dot_rows_bf16<3, 1>(w, K, x, ldx, sums); break;
    default: dot_rows_bf16<4, 1>(w, K, x, ldx, sums); break;
  }
}

// Activation rows for the int8 weights: each block of kQ8Block values rounded to int16 with an fp32
// scale (the block's largest magnitude / 32767, so the rounding error is at most 2^-16 of it), zero
// beyond K up to whole blocks. Then a block of the dot product is exact integer arithmetic (products of
// int8 and int16 summed in int32: at most 32 · 127 · 32767 < 2^31), scaled once: one instruction
// (pmaddwd) multiplies and pair-sums two vectors' worth, where widening int8 to fp32 needs three per
// vector, more than a core can issue while it streams its share of the bandwidth.
struct Q16Rows {
  const int16_t* q = nullptr;  // (rows, ldq)
  const float* scale = nullptr;  // (rows, blocks); NaN where the block holds a NaN or an infinity
  int64_t ldq = 0, blocks = 0;
};


// Quantizes rows [0, M) of x (M, K; row stride ldx) into q (M, ldq) and scale (M, blocks).
HWY_INLINE void quantize_q16(const float* HWY_RESTRICT x, int64_t ldx, int64_t M, int K, int16_t* HWY_RESTRICT q,
                             float* HWY_RESTRICT scale, int64_t ldq, int64_t blocks) {
  const DF df;
  const hn::Rebind<int16_t, DF> d16;
  const int N = static_cast<int>(hn::Lanes(df));  // divides kQ8Block on every target
  for (int64_t m = 0; m < M; m++) {
    const float* xr = x + m * ldx;
    int16_t* qr = q + m * ldq;
    for (int64_t b = 0; b < blocks; b++) {
      const int k0 = static_cast<int>(b * kQ8Block), len = std::min(kQ8Block, K - k0);
      float peak = 0.0f, poison = 0.0f;  // poison: Σ x·0, NaN iff a value is NaN or infinite
      int k = 0;
      if (len == kQ8Block) {
        VF vmax = hn::Zero(df), vpoison = hn::Zero(df);
        for (; k < kQ8Block; k += N) {
          const VF v = hn::LoadU(df, xr + k0 + k);
          vmax = hn::Max(vmax, hn::Abs(v));
          vpoison = hn::MulAdd(v, hn::Zero(df), vpoison);
        }
        peak = hn::GetLane(hn::MaxOfLanes(df, vmax));
        poison = hn::GetLane(hn::SumOfLanes(df, vpoison));
      }
      for (; k < len; k++) {
        peak = std::max(peak, std::abs(xr[k0 + k]));
        poison += xr[k0 + k] * 0.0f;
      }
      int16_t* qb = qr + k0;
      if (poison != 0.0f || !(peak >= std::numeric_limits<float>::min())) {
        // Non-finite: the block's products become NaN through the scale. Zero or subnormal (flushed to
        // zero by the kernels' FTZ/DAZ mode anyway): contributes nothing.
        scale[m * blocks + b] = poison != 0.0f ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
        std::fill(qb, qb + kQ8Block, int16_t{0});
        continue;
      }
      scale[m * blocks + b] = peak / 32767.0f;
      const float inv = 32767.0f / peak;
      k = 0;
      if (len == kQ8Block) {
        for (; k < kQ8Block; k += N) {
          const VF v = hn::Mul(hn::LoadU(df, xr + k0 + k), hn::Set(df, inv));
          hn::StoreU(hn::DemoteTo(d16, hn::NearestInt(v)), d16, qb + k);
        }
      }
      for (; k < len; k++) qb[k] = static_cast<int16_t>(std::lrint(xr[k0 + k] * inv));
      for (; k < kQ8Block; k++) qb[k] = 0;
    }
  }
}

// sums[r] = Σ_k dequantized w[k] · x_r[k] for R activation rows quantized as Q16Rows, the int8 weight
// row (`scales`: its block scales as fp32) read once. Two accumulators per row so that the one FMA per
// block does not chain the blocks.
#if HWY_TARGET == HWY_SCALAR
// One lane: no pairs of int16 to multiply-add; the same integer sums, written out.
template <int R>
HWY_INLINE void dot_rows_q8(const int8_t* HWY_RESTRICT w, const float* HWY_RESTRICT scales, int K, const Q16Rows& x,
                            int64_t col_block, float* sums) {
  for (int r = 0; r < R; r++) sums[r] = 0.0f;
  for (int b = 0; b * kQ8Block < K; b++) {
    for (int r = 0; r < R; r++) {
      int32_t isum = 0;
      for (int k = b * kQ8Block; k < std::min(K, (b + 1) * kQ8Block); k++) isum += int32_t{w[k]} * x.q[r * x.ldq + k];
      sums[r] += scales[b] * x.scale[r * x.blocks + col_block + b] * static_cast<float>(isum);
    }
  }
}
#else
template <int R>
HWY_INLINE void dot_rows_q8(const int8_t* HWY_RESTRICT w, const float* HWY_RESTRICT scales, int K, const Q16Rows& x,
                            int64_t col_block, float* sums) {
  const DF df;
  const hn::Repartition<int16_t, DF> d16;  // twice the lanes of df
  const hn::Repartition<int32_t, DF> d32;
  const hn::Rebind<int8_t, decltype(d16)> d8;
  const int N16 = static_cast<int>(hn::Lanes(d16));  // divides kQ8Block on every target
  VF acc[R][2];
  for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = hn::Zero(df);
  const int whole = K / kQ8Block;
  // Block b's first `len` values (a multiple of the int16 vector) into accumulator `slot`.
  auto block = [&](int b, int len, int slot) HWY_ATTR {
    const int k = b * kQ8Block;
    hn::Vec<decltype(d32)> isum[R], isum1[R];
    for (int r = 0; r < R; r++) isum[r] = isum1[r] = hn::Zero(d32);
    for (int j = 0; j < len; j += N16) {
      const auto wv = hn::PromoteTo(d16, hn::LoadU(d8, w + k + j));
      for (int r = 0; r < R; r++) {
        isum[r] = hn::ReorderWidenMulAccumulate(d32, wv, hn::LoadU(d16, x.q + r * x.ldq + k + j), isum[r], isum1[r]);
      }
    }
    for (int r = 0; r < R; r++) {
      const float s = scales[b] * x.scale[r * x.blocks + col_block + b];
      acc[r][slot] = hn::MulAdd(hn::ConvertTo(df, hn::RearrangeToOddPlusEven(isum[r], isum1[r])), hn::Set(df, s),
                                acc[r][slot]);
    }
  };
  int b = 0;
  for (; b + 2 <= whole; b += 2) {
    block(b, kQ8Block, 0);
    block(b + 1, kQ8Block, 1);
  }
  if (b < whole) block(b++, kQ8Block, 0);
  // The last, partial block: its whole vectors (dt_proj's rows are 48 long), then one value at a time.
  const int rest = K - b * kQ8Block, vectors = rest / N16 * N16;
  if (vectors > 0) block(b, vectors, 1);
  for (int r = 0; r < R; r++) sums[r] = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc[r][0], acc[r][1])));
  if (vectors < rest) {
    for (int r = 0; r < R; r++) {
      int32_t isum = 0;
      for (int k = b * kQ8Block + vectors; k < K; k++) isum += int32_t{w[k]} * x.q[r * x.ldq + k];
      sums[r] += scales[b] * x.scale[r * x.blocks + col_block + b] * static_cast<float>(isum);
    }
  }
}
#endif  // HWY_TARGET == HWY_SCALAR

// n F16 scales as fp32.
HWY_INLINE void widen_scales(float* HWY_RESTRICT out, const uint16_t* HWY_RESTRICT in, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto* h = reinterpret_cast<const hwy::float16_t*>(in);
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(load_w(df, h + i), df, out + i);
  for (; i < n; i++) out[i] = widen(h[i]);
}

// One weight row against `rows` (≤ 4) activation rows.
template <class T>
HWY_INLINE void dot_group(const T* w, int K, const float* x, int64_t ldx, int rows, float* sums) {
  switch (rows) {
    case 1: dot_rows<1, 4>(w, K, x, ldx, sums); break;
    case 2: dot_rows<2, 4>(w, K, x, ldx, sums); break;
    case 3: dot_rows<3, 2>(w, K, x, ldx, sums); break;
    default: dot_rows<4, 2>(w, K, x, ldx, sums); break;
  }
}
HWY_INLINE void dot_group_q8(const int8_t* w, const float* scales, int K, const Q16Rows& x, int64_t col_block,
                             int rows, float* sums) {
  switch (rows) {
    case 1: dot_rows_q8<1>(w, scales, K, x, col_block, sums); break;
    case 2: dot_rows_q8<2>(w, scales, K, x, col_block, sums); break;
    case 3: dot_rows_q8<3>(w, scales, K, x, col_block, sums); break;
    default: dot_rows_q8<4>(w, scales, K, x, col_block, sums); break;
  }
}

constexpr int64_t kParallelBytes = 1 << 20;  // see matmul_rows_typed
constexpr int kTileRows = 3;         // weight rows per dot_tile: 12 accumulators, 3 weights, 1 activation
constexpr int64_t kTileMinRows = 8;  // activation rows from which tiles pay (at 5 the one-row kernel won)
constexpr int kRowGroup = 4;         // activation rows per pass over a weight row (it stays in L1)
constexpr int kScalePiece = 1024;    // an int8 row's scales widened at a time: 32768 values

// BF16 rows meet paired activations (dot_rows_bf16) below AVX-512 only: with 512-bit vectors widening
// each half-vector (PromoteTo, as F16 does) decoded faster on Zen 5 (docs/performance.md), while on AVX2
// the pairs were the faster of the two.
constexpr bool kPairedBf16 = !(HWY_TARGET <= HWY_AVX3);

template <class T>
void matmul_rows_typed(const MatmulParams& p) {
  const auto* weight = static_cast<const T*>(p.weight.data);
  const auto* inp = static_cast<const float*>(p.inp);
  auto* out = static_cast<float*>(p.out);
  const int K = p.K;
  const int64_t blocks = q8_blocks(K);
  // int8 weights: the activations quantized once, by the calling thread, for every weight row.
  thread_local std::vector<int16_t> xq;
  thread_local std::vector<float> xscale;
  const int64_t ldq = blocks * kQ8Block;
  if constexpr (std::is_same_v<T, int8_t>) {
    xq.resize(static_cast<size_t>(p.M * ldq));
    xscale.resize(static_cast<size_t>(p.M * blocks));
    quantize_q16(inp, p.ldi, p.M, K, xq.data(), xscale.data(), ldq, blocks);
  }
  // BF16 weights: the activations permuted once to meet the weights' even and odd halves.
  thread_local std::vector<float> xpairs;
  if constexpr (kPairedBf16 && std::is_same_v<T, hwy::bfloat16_t>) {
    xpairs.resize(static_cast<size_t>(p.M * K));
    permute_pairs(inp, p.ldi, p.M, K, xpairs.data());
  }
  const int16_t* q = xq.data();
  const float* qscale = xscale.data();
  const float* pairs = xpairs.data();
  const int64_t work = int64_t{p.N} * K * static_cast<int64_t>(sizeof(T)) + 2 * p.M * p.N * int64_t{K};
  if constexpr (!std::is_same_v<T, int8_t>) {
    if (p.M >= kTileMinRows) {  // batched decode: kTileRows weight rows at a time (dot_tile says why)
      const int tiles = (p.N + kTileRows - 1) / kTileRows;
#pragma omp parallel for schedule(static) if (work > kParallelBytes)
      for (int t = 0; t < tiles; t++) {
        const int n0 = t * kTileRows, rows_w = std::min(kTileRows, p.N - n0);
        float sums[kTileRows][kGemvMaxRows];
        for (int64_t m0 = 0; m0 < p.M; m0 += kRowGroup) {
          const int rows = static_cast<int>(std::min<int64_t>(kRowGroup, p.M - m0));
          const float* x = inp + m0 * p.ldi;
          float part[kTileRows * kRowGroup];
          if (rows_w == kTileRows && rows == kRowGroup) {
            dot_tile<kTileRows, kRowGroup>(weight + int64_t{n0} * K, K, K, x, p.ldi, part);
            for (int i = 0; i < kTileRows; i++) {
              for (int r = 0; r < kRowGroup; r++) sums[i][m0 + r] = part[i * kRowGroup + r];
            }
          } else {
            for (int i = 0; i < rows_w; i++) {
              dot_group(weight + int64_t{n0 + i} * K, K, x, p.ldi, rows, part);
              for (int r = 0; r < rows; r++) sums[i][m0 + r] = part[r];
            }
          }
        }
        for (int i = 0; i < rows_w; i++) {
          const float bias = p.bias ? p.bias[n0 + i] : 0.0f;
          for (int64_t m = 0; m < p.M; m++) out[m * p.ldo + n0 + i] = sums[i][m] + bias;
        }
      }
      return;
    }
  }
  // Threads only where the work outweighs waking them: a sleeping worker (OMP_WAIT_POLICY=PASSIVE, as
  // mambacpp runs) takes ~20 µs to wake, as long as one core reads ~300 KB. So x_proj and dt_proj of a
  // decode step (0.1–0.5 MB) run on the calling thread, in_proj, out_proj and the head on all.
#pragma omp parallel for schedule(static) if (work > kParallelBytes)
  for (int n = 0; n < p.N; n++) {
    const T* w = weight + int64_t{n} * K;
    const float bias = p.bias ? p.bias[n] : 0.0f;
    float sums[kGemvMaxRows] = {};
    alignas(64) float scales[kScalePiece];
    // The row in pieces of whole blocks (one piece unless K > 32768), each piece against every group.
    for (int k0 = 0; k0 < K; k0 += kScalePiece * kQ8Block) {
      const int len = std::min(K - k0, kScalePiece * kQ8Block);
      if constexpr (std::is_same_v<T, int8_t>) {
        widen_scales(scales, p.weight.scales + n * blocks + k0 / kQ8Block, q8_blocks(len));
      }
      for (int64_t m0 = 0; m0 < p.M; m0 += kRowGroup) {
        const int rows = static_cast<int>(std::min<int64_t>(kRowGroup, p.M - m0));
        float part[kRowGroup];
        if constexpr (std::is_same_v<T, int8_t>) {
          const Q16Rows group{q + m0 * ldq + k0, qscale + m0 * blocks, ldq, blocks};
          dot_group_q8(w + k0, scales, len, group, k0 / kQ8Block, rows, part);
        } else if constexpr (kPairedBf16 && std::is_same_v<T, hwy::bfloat16_t>) {
          dot_group_bf16(w + k0, len, pairs + m0 * K + k0, K, rows, part);
        } else {
          dot_group(w + k0, len, inp + m0 * p.ldi + k0, p.ldi, rows, part);
        }
        for (int r = 0; r < rows; r++) sums[m0 + r] += part[r];
      }
    }
    for (int64_t m = 0; m < p.M; m++) out[m * p.ldo + n] = sums[m] + bias;
  }
}

void matmul_rows(const MatmulParams& p) {
  switch (p.weight.dtype) {
    case DType::F32: matmul_rows_typed<float>(p); break;
    case DType::BF16: matmul_rows_typed<hwy::bfloat16_t>(p); break;
    case DType::F16: matmul_rows_typed<hwy::float16_t>(p); break;
    case DType::I8: matmul_rows_typed<int8_t>(p); break;
  }
}

template <class T>
void widen_rows_typed(float* out, const WeightView& wv, int64_t row0, int64_t rows, int K) {
  const DF df;
  const int N = static_cast<int>(hn::Lanes(df));
  const int64_t blocks = q8_blocks(K);
#pragma omp parallel for schedule(static) if (rows * K > 65536)
  for (int64_t r = 0; r < rows; r++) {
    const T* w = static_cast<const T*>(wv.data) + (row0 + r) * K;
    float* o = out + r * K;
    if constexpr (std::is_same_v<T, int8_t>) {
      thread_local std::vector<float> scales;
      scales.resize(static_cast<size_t>(blocks));
      widen_scales(scales.data(), wv.scales + (row0 + r) * blocks, blocks);
      for (int64_t b = 0; b < blocks; b++) {
        const int k0 = static_cast<int>(b * kQ8Block), k1 = std::min(K, k0 + kQ8Block);
        const float s = scales[b];
        int k = k0;
        if (k1 - k0 == kQ8Block) {
          for (; k < k1; k += N) hn::StoreU(hn::Mul(load_w(df, w + k), hn::Set(df, s)), df, o + k);
        }
        for (; k < k1; k++) o[k] = s * static_cast<float>(w[k]);
      }
    } else {
      int k = 0;
      for (; k + N <= K; k += N) hn::StoreU(load_w(df, w + k), df, o + k);
      for (; k < K; k++) o[k] = widen(w[k]);
    }
  }
}

void widen_rows(float* out, const WeightView& w, int64_t row0, int64_t rows, int K) {
  switch (w.dtype) {
    case DType::F32: widen_rows_typed<float>(out, w, row0, rows, K); break;
    case DType::BF16: widen_rows_typed<hwy::bfloat16_t>(out, w, row0, rows, K); break;
    case DType::F16: widen_rows_typed<hwy::float16_t>(out, w, row0, rows, K); break;
    case DType::I8: widen_rows_typed<int8_t>(out, w, row0, rows, K); break;
  }
}

}  // namespace mamba::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace mamba::cpu {

HWY_EXPORT(matmul_rows);
HWY_EXPORT(widen_rows);

void matmul_rows(const MatmulParams& p) {
  if (p.M <= 0 || p.N <= 0) return;
  HWY_DYNAMIC_DISPATCH(matmul_rows)(p);
}

void widen_rows(float* out, const WeightView& w, int64_t row0, int64_t rows, int K) {
  HWY_DYNAMIC_DISPATCH(widen_rows)(out, w, row0, rows, K);
}

namespace {
int64_t g_restricted = 0;  // the one target restrict_simd chose, or 0 for the best
}  // namespace

std::vector<SimdTarget> simd_targets() {
  hwy::SetSupportedTargetsForTest(0);  // the CPU's own, not the restriction
  const int64_t supported = hwy::SupportedTargets();
  hwy::SetSupportedTargetsForTest(g_restricted);
  std::vector<SimdTarget> targets;
  for (int64_t bits = HWY_TARGETS; bits != 0; bits &= bits - 1) {  // lower bits are better targets
    const int64_t bit = bits & -bits;
    targets.push_back({hwy::TargetName(bit), bit, (supported & bit) != 0});
  }
  return targets;
}

std::string simd_target() {
  const int64_t bits = hwy::SupportedTargets() & HWY_TARGETS;
  return hwy::TargetName(bits & -bits);
}

bool restrict_simd(std::string_view name) {
  int64_t bit = 0;
  if (!name.empty()) {
    for (const SimdTarget& t : simd_targets()) {
      if (t.name == name && t.supported) bit = t.bit;
    }
    if (!bit) return false;
  }
  g_restricted = bit;
  hwy::SetSupportedTargetsForTest(bit);
  hwy::GetChosenTarget().Update(hwy::SupportedTargets());
  return true;
}

}  // namespace mamba::cpu
#endif  // HWY_ONCE

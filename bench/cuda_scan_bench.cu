// Selective scan forward on the GPU at the issue's anchor shapes: bf16 (or, with `f16`, fp16) u, Δ, z, B,
// C; fp32 A and D; z gate, Δ bias + softplus, variable B and C. Prints, per shape, the median time over
// many runs (CUDA events around each run, after warm-up), the GB/s of compulsory traffic (u, Δ, z, B, C
// read once, y written once), exponentials per second, the ratios to the two floors, and the official mamba_ssm
// 2.3.2 time measured on an H100 (issue 5). `cuda_scan_bench sweep` also times the splits (channels and
// states per thread, segments; S=0: the dispatcher's choice); `fwdsweep` times only the forward's splits,
// `fwd` only the forward; `lanesweep` the forward's two kernels (one state per lane, blocked) on long
// sequences of 64 to 1536 channels, where the dispatcher switches between them. At N = 16 every shape
// also prints both kernels' times, and the blocked kernel's with its rows moved element by element
// ("blocked elem": ScanTuning::vector_rows = −1) rather than in 16-byte vectors.
//
// The floors: B·D·L·N exponentials on the special-function units (SMs × 16 per clock × the peak clock
// the device reports), and the compulsory bytes at the device-to-device copy bandwidth measured here.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops/cuda/check.h"
#include "ops/cuda/conv1d.h"
#include "ops/cuda/scan.h"

namespace {

using mamba::cuda::ScanParams;
using mamba::cuda::ScanTuning;

// Counter-based uniform values, so inputs of a GB fill in a few ms; 16-bit elements, bf16 or fp16.
bool g_f16 = false;  // the inputs' dtype: fp16 with the `f16` argument, else bf16
template <typename T>
__global__ void fill_uniform_kernel(T* x, int64_t n, uint32_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed ^ static_cast<uint32_t>(i >> 32) * 0x85EBCA77u;
    h ^= h >> 15, h *= 0x2C1B3C6Du, h ^= h >> 12, h *= 0x297A2D39u, h ^= h >> 15;
    const float v = lo + (hi - lo) * (h >> 8) * (1.0f / 16777216.0f);
    if constexpr (std::is_same_v<T, __half>) x[i] = __float2half_rn(v);
    else x[i] = __float2bfloat16_rn(v);
  }
}
void fill_uniform(void* x, int64_t n, uint32_t seed, float lo, float hi) {
  if (g_f16) fill_uniform_kernel<<<1024, 256>>>(static_cast<__half*>(x), n, seed, lo, hi);
  else fill_uniform_kernel<<<1024, 256>>>(static_cast<__nv_bfloat16*>(x), n, seed, lo, hi);
}
__global__ void fill_uniform_f32(float* x, int64_t n, uint32_t seed, float lo, float hi, bool neg_exp) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed;
    h ^= h >> 15, h *= 0x2C1B3C6Du, h ^= h >> 12, h *= 0x297A2D39u, h ^= h >> 15;
    const float v = lo + (hi - lo) * (h >> 8) * (1.0f / 16777216.0f);
    x[i] = neg_exp ? -__expf(v) : v;
  }
}

struct Shape {
  int B, D, L, N;
  double official_fwd_ms, official_fwdbwd_ms;
};

template <typename F>
double median_ms(F&& fn, int warmup, int reps) {
  for (int i = 0; i < warmup; i++) fn();
  cudaEvent_t start, stop;
  MAMBA_CUDA_CHECK(cudaEventCreate(&start));
  MAMBA_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; i++) {
    MAMBA_CUDA_CHECK(cudaEventRecord(start));
    fn();
    MAMBA_CUDA_CHECK(cudaEventRecord(stop));
    MAMBA_CUDA_CHECK(cudaEventSynchronize(stop));
    MAMBA_CUDA_CHECK(cudaEventElapsedTime(&ms[i], start, stop));
  }
  MAMBA_CUDA_CHECK(cudaEventDestroy(start));
  MAMBA_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2];
}

// Device-to-device copy bandwidth, bytes read plus bytes written.
double copy_bandwidth() {
  const size_t bytes = size_t(1) << 31;
  void *a, *b;
  MAMBA_CUDA_CHECK(cudaMalloc(&a, bytes));
  MAMBA_CUDA_CHECK(cudaMalloc(&b, bytes));
  MAMBA_CUDA_CHECK(cudaMemset(a, 1, bytes));
  const double ms = median_ms([&] { MAMBA_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 3, 20);
  MAMBA_CUDA_CHECK(cudaFree(a));
  MAMBA_CUDA_CHECK(cudaFree(b));
  return 2.0 * bytes / (ms * 1e-3);
}

}  // namespace

int main(int argc, char** argv) {
  // `sweep`: every split as well; `one B D L N`: that shape alone (for a profiler; also after a mode,
  // e.g. `fwdsweep one 8 1536 2048 16`); `f16` (last): fp16 inputs instead of bf16.
  if (argc > 1 && std::strcmp(argv[argc - 1], "f16") == 0) g_f16 = true, argc--;
  const mamba::cuda::DType dtype = g_f16 ? mamba::cuda::DType::F16 : mamba::cuda::DType::BF16;
  // `fwdsweep`: the forward's splits only (no backward, no conv1d); `fwd`: the forward alone at the
  // dispatcher's split, for comparing builds quickly.
  const bool fwd_sweep = argc > 1 && std::strcmp(argv[1], "fwdsweep") == 0;
  const bool fwd_only = fwd_sweep || (argc > 1 && (std::strcmp(argv[1], "fwd") == 0 || std::strcmp(argv[1], "lanesweep") == 0));
  const bool sweep = fwd_sweep || (argc > 1 && std::strcmp(argv[1], "sweep") == 0);
  std::vector<Shape> shapes = {{8, 1536, 2048, 16, 0.451, 2.29},
                               {8, 4096, 2048, 16, 1.168, 5.98},
                               {1, 1536, 65536, 16, 2.23, 10.08},
                               {1, 1536, 262144, 16, 9.02, 40.4},
                               {16, 5120, 2048, 16, 2.89, 14.96}};
  if (argc > 1 && std::strcmp(argv[1], "lanesweep") == 0) {  // where the dispatcher switches kernels
    shapes.clear();
    for (int D : {64, 128, 192, 256, 320, 384, 512, 1536}) shapes.push_back({1, D, 65536, 16, 0.0, 0.0});
    for (int B : {2, 4}) shapes.push_back({B, 128, 65536, 16, 0.0, 0.0});
  }
  for (int i = 1; i + 4 < argc; i++) {  // `one B D L N`, alone or after a mode
    if (std::strcmp(argv[i], "one") == 0) {
      shapes = {{std::atoi(argv[i + 1]), std::atoi(argv[i + 2]), std::atoi(argv[i + 3]), std::atoi(argv[i + 4]), 0.0, 0.0}};
    }
  }
  int dev = 0, sms = 0, clock_khz = 0;
  cudaDeviceProp prop;
  MAMBA_CUDA_CHECK(cudaGetDevice(&dev));
  MAMBA_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  MAMBA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  MAMBA_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, dev));
  const double exp_rate = sms * 16.0 * clock_khz * 1e3;  // MUFU.EX2 per second
  const double bw = copy_bandwidth();
  std::printf("device: %s, %d SMs, %.2f GHz peak clock; exp floor rate %.2e/s; copy bandwidth %.0f GB/s\n",
              prop.name, sms, clock_khz * 1e-6, exp_rate, bw * 1e-9);
  std::printf("timing: median of CUDA-event times per run after warm-up; %s inputs, fp32 A, D; z gate, Δ bias+softplus\n\n",
              g_f16 ? "fp16" : "bf16");
  std::printf("%-22s %9s %9s %8s %10s %9s %9s %10s %8s %12s %9s %7s\n", "B,D,L,N", "fwd ms", "official", "ratio",
              "GB/s", "exp/s", "x expflr", "x bw flr", "split", "fwd+bwd ms", "official", "ratio");

  for (const Shape& s : shapes) {
    const int64_t tokens = static_cast<int64_t>(s.B) * s.L;
    const int64_t nx = tokens * s.D, nbc = tokens * s.N;
    __nv_bfloat16 *u, *delta, *z, *Bm, *Cm, *y;
    float *A, *Dskip, *bias, *hL;
    MAMBA_CUDA_CHECK(cudaMalloc(&u, nx * 2));
    MAMBA_CUDA_CHECK(cudaMalloc(&delta, nx * 2));
    MAMBA_CUDA_CHECK(cudaMalloc(&z, nx * 2));
    MAMBA_CUDA_CHECK(cudaMalloc(&y, nx * 2));
    MAMBA_CUDA_CHECK(cudaMalloc(&Bm, nbc * 2));
    MAMBA_CUDA_CHECK(cudaMalloc(&Cm, nbc * 2));
    MAMBA_CUDA_CHECK(cudaMalloc(&A, sizeof(float) * s.D * s.N));
    MAMBA_CUDA_CHECK(cudaMalloc(&Dskip, sizeof(float) * s.D));
    MAMBA_CUDA_CHECK(cudaMalloc(&bias, sizeof(float) * s.D));
    MAMBA_CUDA_CHECK(cudaMalloc(&hL, sizeof(float) * s.B * s.D * s.N));
    fill_uniform(u, nx, 1, -2.0f, 2.0f);
    fill_uniform(delta, nx, 2, -3.0f, 1.0f);
    fill_uniform(z, nx, 3, -2.0f, 2.0f);
    fill_uniform(Bm, nbc, 4, -1.0f, 1.0f);
    fill_uniform(Cm, nbc, 5, -1.0f, 1.0f);
    fill_uniform_f32<<<64, 256>>>(A, int64_t(s.D) * s.N, 6, -1.0f, 2.8f, true);
    fill_uniform_f32<<<64, 256>>>(Dskip, s.D, 7, 0.5f, 1.5f, false);
    fill_uniform_f32<<<64, 256>>>(bias, s.D, 8, -2.0f, 0.0f, false);
    MAMBA_CUDA_CHECK_LAUNCH();

    ScanParams p;
    p.batch = s.B, p.seqlen = s.L, p.dim = s.D, p.dstate = s.N, p.dtype = dtype;
    p.y = y, p.y_stride = s.D, p.u = u, p.u_stride = s.D, p.delta = delta, p.delta_stride = s.D;
    p.A = A, p.Bm = Bm, p.B_stride = s.N, p.Cm = Cm, p.C_stride = s.N, p.D = Dskip, p.z = z, p.z_stride = s.D;
    p.delta_bias = bias, p.delta_softplus = true, p.state_out = hL;

    auto time_fwd = [&](ScanTuning t) {
      void* ws = nullptr;
      const size_t ws_bytes = mamba::cuda::selective_scan_fwd_workspace(p, t);
      if (ws_bytes) MAMBA_CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
      const double ms = median_ms([&] { mamba::cuda::selective_scan_fwd(p, ws, nullptr, t); }, 3, 30);
      if (ws) MAMBA_CUDA_CHECK(cudaFree(ws));
      return ms;
    };
    const double ms = time_fwd({});

    // Forward (keeping the chunk states) + backward, as training runs them.
    double fb_ms = 0;
    if (!fwd_only) {
      __nv_bfloat16 *dy, *du, *ddelta, *dz, *dB, *dC;
      float *chunks, *dA, *dD, *dbias;
      MAMBA_CUDA_CHECK(cudaMalloc(&dy, nx * 2));
      MAMBA_CUDA_CHECK(cudaMalloc(&du, nx * 2));
      MAMBA_CUDA_CHECK(cudaMalloc(&ddelta, nx * 2));
      MAMBA_CUDA_CHECK(cudaMalloc(&dz, nx * 2));
      MAMBA_CUDA_CHECK(cudaMalloc(&dB, nbc * 2));
      MAMBA_CUDA_CHECK(cudaMalloc(&dC, nbc * 2));
      MAMBA_CUDA_CHECK(cudaMalloc(&chunks, sizeof(float) * s.B * mamba::cuda::state_chunks(s.L) * s.D * s.N));
      MAMBA_CUDA_CHECK(cudaMalloc(&dA, sizeof(float) * s.D * s.N));
      MAMBA_CUDA_CHECK(cudaMalloc(&dD, sizeof(float) * s.D));
      MAMBA_CUDA_CHECK(cudaMalloc(&dbias, sizeof(float) * s.D));
      fill_uniform(dy, nx, 9, -1.0f, 1.0f);
      MAMBA_CUDA_CHECK_LAUNCH();
      ScanParams pf = p;
      pf.chunk_states = chunks;
      mamba::cuda::ScanBwdParams q;
      q.fwd = pf;
      q.dy = dy, q.dy_stride = s.D, q.du = du, q.du_stride = s.D, q.ddelta = ddelta, q.ddelta_stride = s.D;
      q.dz = dz, q.dz_stride = s.D, q.dB = dB, q.dB_stride = s.N, q.dC = dC, q.dC_stride = s.N;
      q.dA = dA, q.dD = dD, q.ddelta_bias = dbias;
      void *fws = nullptr, *bws = nullptr;
      const size_t fws_bytes = mamba::cuda::selective_scan_fwd_workspace(pf), bws_bytes = mamba::cuda::selective_scan_bwd_workspace(q);
      if (fws_bytes) MAMBA_CUDA_CHECK(cudaMalloc(&fws, fws_bytes));
      MAMBA_CUDA_CHECK(cudaMalloc(&bws, bws_bytes));
      fb_ms = median_ms([&] {
        mamba::cuda::selective_scan_fwd(pf, fws, nullptr);
        mamba::cuda::selective_scan_bwd(q, bws, nullptr);
      }, 2, 10);
      if (sweep) {  // the backward's segments
        for (int S : {1, 2, 3, 4, 8, 16, 32}) {
          void* ws = nullptr;
          MAMBA_CUDA_CHECK(cudaMalloc(&ws, mamba::cuda::selective_scan_bwd_workspace(q, {0, S})));
          const double t = median_ms([&] {
            mamba::cuda::selective_scan_fwd(pf, fws, nullptr);
            mamba::cuda::selective_scan_bwd(q, ws, nullptr, {0, S});
          }, 2, 10);
          MAMBA_CUDA_CHECK(cudaFree(ws));
          std::printf("  fwd+bwd with backward S=%-3d %9.3f ms (%.2f of official)\n", S, t, t / s.official_fwdbwd_ms);
        }
      }
      for (void* ptr : {static_cast<void*>(dy), static_cast<void*>(du), static_cast<void*>(ddelta),
                        static_cast<void*>(dz), static_cast<void*>(dB), static_cast<void*>(dC),
                        static_cast<void*>(chunks), static_cast<void*>(dA), static_cast<void*>(dD),
                        static_cast<void*>(dbias), fws, bws}) {
        if (ptr) MAMBA_CUDA_CHECK(cudaFree(ptr));
      }
    }
    const double bytes = 2.0 * (4.0 * nx + 2.0 * nbc);
    const double exps = static_cast<double>(nx) * s.N;
    const double exp_floor_ms = exps / exp_rate * 1e3, bw_floor_ms = bytes / bw * 1e3;
    char label[64];
    std::snprintf(label, sizeof label, "%d,%d,%d,%d", s.B, s.D, s.L, s.N);
    std::printf("%-22s %9.3f %9.3f %8.2f %10.0f %9.2e %9.2f %10.2f %8s %12.3f %9.2f %7.2f\n", label, ms,
                s.official_fwd_ms, ms / s.official_fwd_ms, bytes / (ms * 1e-3) * 1e-9, exps / (ms * 1e-3),
                ms / exp_floor_ms, ms / bw_floor_ms, "auto", fb_ms, s.official_fwdbwd_ms, fb_ms / s.official_fwdbwd_ms);
    if (s.N == 16) {  // the two forward kernels side by side
      for (int kernel : {0, 1, 2}) {
        ScanTuning t{};
        t.one_state_per_lane = kernel == 0 ? 1 : -1;
        t.vector_rows = kernel == 2 ? -1 : 0;
        const double tl = time_fwd(t);
        std::printf("%-22s %9.3f %9s %8.2f %10s %9s %9.2f %10s %14s\n", "", tl, "", s.official_fwd_ms > 0 ? tl / s.official_fwd_ms : 0.0,
                    "", "", tl / exp_floor_ms, "", kernel == 0 ? "lanes" : kernel == 1 ? "blocked" : "blocked elem");
      }
    }
    if (sweep) {
      struct Split {
        int kC, kG;
      };
      for (Split sp : {Split{1, 1}, Split{1, 2}, Split{1, 4}, Split{1, 8}, Split{1, 16}, Split{2, 2}, Split{2, 4},
                       Split{2, 8}, Split{4, 2}, Split{4, 4}}) {
        for (int S : {0, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256}) {
          if (S > 0 && s.B * s.D >= 32768) continue;
          for (int vec : {0, -1}) {  // 16-byte vectors where the rows allow, then element by element
            if (vec == -1 && S > 0) continue;
            ScanTuning tu{sp.kG, S, sp.kC};
            tu.vector_rows = vec;
            const double t = time_fwd(tu);
            char split[40];
            std::snprintf(split, sizeof split, "kC=%d kG=%d S=%d%s", sp.kC, sp.kG, S, vec ? " elem" : "");
            std::printf("%-22s %9.3f %9s %8.2f %10s %9s %9.2f %10s %14s\n", "", t, "",
                        s.official_fwd_ms > 0 ? t / s.official_fwd_ms : 0.0, "", "", t / exp_floor_ms, "", split);
          }
        }
      }
    }
    // The block's causal conv1d (K = 4) + SiLU over the same (B, L, D) bf16 input, forward and backward.
    if (!fwd_only) {
      float *w, *tail_in, *tail_out, *dw, *dbias_c, *cws;
      const int K = 4;
      MAMBA_CUDA_CHECK(cudaMalloc(&w, sizeof(float) * s.D * K));
      MAMBA_CUDA_CHECK(cudaMalloc(&tail_in, sizeof(float) * s.B * (K - 1) * s.D));
      MAMBA_CUDA_CHECK(cudaMalloc(&tail_out, sizeof(float) * s.B * (K - 1) * s.D));
      MAMBA_CUDA_CHECK(cudaMalloc(&dw, sizeof(float) * s.D * K));
      MAMBA_CUDA_CHECK(cudaMalloc(&dbias_c, sizeof(float) * s.D));
      fill_uniform_f32<<<64, 256>>>(w, int64_t(s.D) * K, 10, -0.5f, 0.5f, false);
      fill_uniform_f32<<<64, 256>>>(tail_in, int64_t(s.B) * (K - 1) * s.D, 11, -1.0f, 1.0f, false);
      MAMBA_CUDA_CHECK_LAUNCH();
      mamba::cuda::Conv1dParams cp;
      cp.batch = s.B, cp.seqlen = s.L, cp.dim = s.D, cp.width = K, cp.dtype = dtype;
      cp.out = y, cp.out_stride = s.D, cp.x = u, cp.x_stride = s.D, cp.weight = w, cp.bias = bias;
      cp.tail_in = tail_in, cp.tail_out = tail_out;
      mamba::cuda::Conv1dBwdParams cq;
      cq.fwd = cp, cq.dout = z, cq.dout_stride = s.D, cq.dx = delta, cq.dx_stride = s.D, cq.dweight = dw, cq.dbias = dbias_c;
      MAMBA_CUDA_CHECK(cudaMalloc(&cws, mamba::cuda::conv1d_silu_bwd_workspace(cq)));
      const double cf = median_ms([&] { mamba::cuda::conv1d_silu_fwd(cp, nullptr); }, 3, 20);
      const double cb = median_ms([&] { mamba::cuda::conv1d_silu_bwd(cq, cws, nullptr); }, 3, 20);
      const double cbytes = 2.0 * 2 * nx, bbytes = 2.0 * 3 * nx;  // fwd: x in, out; bwd: x, dout in, dx out
      std::printf("  conv1d K=4: fwd %.3f ms (%.0f GB/s, %.2f x bw floor), bwd %.3f ms (%.0f GB/s, %.2f x bw floor)\n", cf,
                  cbytes / (cf * 1e-3) * 1e-9, cf / (cbytes / bw * 1e3), cb, bbytes / (cb * 1e-3) * 1e-9,
                  cb / (bbytes / bw * 1e3));
      for (void* ptr : {static_cast<void*>(w), static_cast<void*>(tail_in), static_cast<void*>(tail_out),
                        static_cast<void*>(dw), static_cast<void*>(dbias_c), static_cast<void*>(cws)}) {
        MAMBA_CUDA_CHECK(cudaFree(ptr));
      }
    }
    for (void* ptr : {static_cast<void*>(u), static_cast<void*>(delta), static_cast<void*>(z),
                      static_cast<void*>(y), static_cast<void*>(Bm), static_cast<void*>(Cm), static_cast<void*>(A),
                      static_cast<void*>(Dskip), static_cast<void*>(bias), static_cast<void*>(hL)}) {
      MAMBA_CUDA_CHECK(cudaFree(ptr));
    }
  }
  return 0;
}

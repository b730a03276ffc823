// Causal depthwise conv1d + SiLU, forward and backward, and the two decode-step kernels. One thread per
// channel walks a block of kTL steps keeping the last K inputs in registers (K a template parameter so
// the window is never indexed at run time); consecutive threads take consecutive channels, so every load
// and store is coalesced in the token-major layout.
#include "ops/cuda/conv1d.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"

namespace mamba::cuda {

namespace {

constexpr int kConvThreads = 128;
constexpr int kTL = 64;  // steps per block

// SiLU′(a) = σ(a)·(1 + a·(1 − σ(a)))
__device__ __forceinline__ float silu_grad(float a) {
  const float s = sigmoid(a);
  return s * (1.0f + a * (1.0f - s));
}

// Input at time s of sequence b, channel d: from x for s ≥ 0, else from tail_in (zeros when null).
template <typename T>
__device__ __forceinline__ float conv_input(const Conv1dParams& p, int b, int64_t s, int d) {
  if (s >= 0) return to_float(static_cast<const T*>(p.x)[(static_cast<int64_t>(b) * p.seqlen + s) * p.x_stride + d]);
  if (!p.tail_in) return 0.0f;
  return p.tail_in[(static_cast<int64_t>(b) * (p.width - 1) + s + p.width - 1) * p.dim + d];
}

template <typename T, int K>
__global__ void __launch_bounds__(kConvThreads) conv1d_fwd_kernel(Conv1dParams p) {
  const int d = blockIdx.x * kConvThreads + threadIdx.x, b = blockIdx.z;
  if (d >= p.dim) return;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * kTL, t1 = t0 + kTL < p.seqlen ? t0 + kTL : p.seqlen;
  float w[K], win[K];  // win[k] = input at t − K + 1 + k
#pragma unroll
  for (int k = 0; k < K; k++) w[k] = p.weight[static_cast<int64_t>(d) * K + k];
  const float bias = p.bias ? p.bias[d] : 0.0f;
#pragma unroll
  for (int k = 0; k < K - 1; k++) win[k + 1] = conv_input<T>(p, b, t0 - K + 1 + k, d);
  T* out = static_cast<T*>(p.out);
  for (int64_t t = t0; t < t1; t++) {
#pragma unroll
    for (int k = 0; k < K - 1; k++) win[k] = win[k + 1];
    win[K - 1] = conv_input<T>(p, b, t, d);
    float acc = bias;
#pragma unroll
    for (int k = 0; k < K; k++) acc += w[k] * win[k];
    out[(static_cast<int64_t>(b) * p.seqlen + t) * p.out_stride + d] = from_float<T>(silu(acc));
  }
  if (p.tail_out && blockIdx.y == gridDim.y - 1) {
    for (int j = 0; j < K - 1; j++) {
      p.tail_out[(static_cast<int64_t>(b) * (K - 1) + j) * p.dim + d] = conv_input<T>(p, b, p.seqlen - (K - 1) + j, d);
    }
  }
}

struct ConvBwdKernelParams {
  Conv1dBwdParams q;
  int tblocks = 0;              // ceil(L / kTL)
  float* dw_part = nullptr;     // (B, tblocks, D, K)
  float* dbias_part = nullptr;  // (B, tblocks, D)
};

// dx[t] = Σ_k w[k]·g[t + K − 1 − k] with g = dout·SiLU′(a): walk s over this block's steps and K − 1
// beyond, keeping the last K values of g; dx of t = s − K + 1 comes out at step s. The first block also
// gives dtail_in (t < 0).
template <typename T, int K>
__global__ void __launch_bounds__(kConvThreads) conv1d_bwd_kernel(ConvBwdKernelParams kp) {
  const Conv1dParams& p = kp.q.fwd;
  const int d = blockIdx.x * kConvThreads + threadIdx.x, b = blockIdx.z;
  if (d >= p.dim) return;
  const int64_t L = p.seqlen;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * kTL, t1 = t0 + kTL < L ? t0 + kTL : L;
  float w[K], win[K], gwin[K] = {};
#pragma unroll
  for (int k = 0; k < K; k++) w[k] = p.weight[static_cast<int64_t>(d) * K + k];
  const float bias = p.bias ? p.bias[d] : 0.0f;
#pragma unroll
  for (int k = 0; k < K - 1; k++) win[k + 1] = conv_input<T>(p, b, t0 - K + 1 + k, d);
  float dw[K] = {}, db = 0.0f;
  const auto* dout = static_cast<const T*>(kp.q.dout);
  T* dx = static_cast<T*>(kp.q.dx);
  const int64_t emit_from = t0 == 0 ? -(K - 1) : t0;
  for (int64_t s = t0; s < t1 + K - 1; s++) {
    float g = 0.0f;
    if (s < L) {
#pragma unroll
      for (int k = 0; k < K - 1; k++) win[k] = win[k + 1];
      win[K - 1] = conv_input<T>(p, b, s, d);
      float a = bias;
#pragma unroll
      for (int k = 0; k < K; k++) a += w[k] * win[k];
      g = to_float(dout[(static_cast<int64_t>(b) * L + s) * kp.q.dout_stride + d]) * silu_grad(a);
      if (s < t1) {
#pragma unroll
        for (int k = 0; k < K; k++) dw[k] += g * win[k];
        db += g;
      }
    }
#pragma unroll
    for (int k = 0; k < K - 1; k++) gwin[k] = gwin[k + 1];
    gwin[K - 1] = g;  // gwin[k] = g[s − K + 1 + k]
    const int64_t t = s - (K - 1);
    if (t >= emit_from && t < t1) {
      float acc = 0.0f;
#pragma unroll
      for (int k = 0; k < K; k++) acc += w[k] * gwin[K - 1 - k];  // g[t + K − 1 − k]
      if (t >= 0) dx[(static_cast<int64_t>(b) * L + t) * kp.q.dx_stride + d] = from_float<T>(acc);
      else if (kp.q.dtail_in) kp.q.dtail_in[(static_cast<int64_t>(b) * (K - 1) + t + K - 1) * p.dim + d] = acc;
    }
  }
  const int64_t bt = static_cast<int64_t>(b) * kp.tblocks + blockIdx.y;
#pragma unroll
  for (int k = 0; k < K; k++) kp.dw_part[(bt * p.dim + d) * K + k] = dw[k];
  kp.dbias_part[bt * p.dim + d] = db;
}

__global__ void conv1d_bwd_reduce_kernel(ConvBwdKernelParams kp) {
  const Conv1dParams& p = kp.q.fwd;
  const int K = p.width;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (d, k)
  if (i >= static_cast<int64_t>(p.dim) * K) return;
  const int64_t parts = static_cast<int64_t>(p.batch) * kp.tblocks;
  float acc = 0.0f;
  for (int64_t j = 0; j < parts; j++) acc += kp.dw_part[j * p.dim * K + i];
  kp.q.dweight[i] += acc;
  if (kp.q.dbias && i % K == 0) {
    const int64_t d = i / K;
    float sb = 0.0f;
    for (int64_t j = 0; j < parts; j++) sb += kp.dbias_part[j * p.dim + d];
    kp.q.dbias[d] += sb;
  }
}

// One token of the conv: a thread per channel, blockIdx.y the sequence (no 64-bit division per thread: an
// emulated division costs as much as the thread's loads).
template <typename T>
__global__ void conv1d_step_kernel(T* out, float* tail, const T* x, int64_t x_stride, const float* weight,
                                   const float* bias, int dim, int K) {
  const int d = blockIdx.x * blockDim.x + threadIdx.x;
  const bool valid = d < dim;
  // The weights and the bias are read before waiting for the kernel before this one (parameters:
  // common.cuh), their loads overlapping that kernel's tail.
  const float* w = weight + static_cast<int64_t>(valid ? d : 0) * K;
  float wk[kMaxConvWidth];
#pragma unroll
  for (int k = 0; k < kMaxConvWidth; k++) wk[k] = valid && k < K ? w[k] : 0.0f;
  const float b0 = valid && bias ? bias[d] : 0.0f;
  pdl_launch_dependents();  // launched by launch_pdl (common.cuh)
  pdl_wait();
  if (!valid) return;
  const int64_t b = blockIdx.y;
  const float xv = to_float(x[b * x_stride + d]);
  float* tl = tail + b * (K - 1) * dim + d;  // (K − 1) rows of the tail, stride dim
  // Every load issued before the first is used (K is a runtime value: a plain loop waits on each in turn).
  float t[kMaxConvWidth - 1];
#pragma unroll
  for (int k = 0; k < kMaxConvWidth - 1; k++) t[k] = k < K - 1 ? tl[k * dim] : 0.0f;
  float acc = b0;
#pragma unroll
  for (int k = 0; k < kMaxConvWidth - 1; k++) acc += k < K - 1 ? wk[k] * t[k] : 0.0f;
  float last = 0.0f;  // w[K − 1], from registers (an indexed register array would go to local memory)
#pragma unroll
  for (int k = 0; k < kMaxConvWidth; k++) last = k == K - 1 ? wk[k] : last;
  acc += last * xv;
#pragma unroll
  for (int k = 0; k + 1 < kMaxConvWidth - 1; k++) {
    if (k + 1 < K - 1) tl[k * dim] = t[k + 1];
  }
  if (K > 1) tl[(K - 2) * dim] = xv;
  out[b * dim + d] = from_float<T>(silu(acc));
}

// Δ of channel d of sequence b before its bias: delta's element, or with a low-rank Δ (delta_proj) the dot
// of the sequence's R values with the channel's row, split over the channel's G lanes and summed by
// shuffles (every lane of the warp takes part, valid or not), rounded to T as a product into T would be.
template <typename T>
__device__ __forceinline__ float step_delta(const ScanParams& p, int64_t b, int d, bool valid, int lane, int G) {
  if (!p.delta_proj.data) return valid ? to_float(static_cast<const T*>(p.delta)[b * p.delta_stride + d]) : 0.0f;
  float s = 0.0f;
  if (valid) {
    const T* x = static_cast<const T*>(p.delta) + b * p.delta_stride;
    const T* w = static_cast<const T*>(p.delta_proj.data) + static_cast<int64_t>(d) * p.delta_rank;
    constexpr int V = 16 / sizeof(T);
    // In 16-byte loads where the rows allow (the published models' R do), a few in flight a lane.
    if (p.delta_rank % V == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0) {
#pragma unroll 4
      for (int c = lane; c < p.delta_rank / V; c += G) {
        uint32_t xv[4], wv[4];
        ldg_words<4>(xv, x + c * V);
        ldg_words<4>(wv, w + c * V);
#pragma unroll
        for (int i = 0; i < V; i++) s += unpack<T>(xv, i) * unpack<T>(wv, i);
      }
    } else {
#pragma unroll 4
      for (int r = lane; r < p.delta_rank; r += G) s += to_float(x[r]) * to_float(w[r]);
    }
  }
  for (int offset = G / 2; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
  return to_float(from_float<T>(s));
}

// One token of the scan: G = 2^log2G lanes per channel (b, d), a power of two ≤ 32 near N, lane j taking the
// states n ≡ j (mod G), so that a warp's loads and stores of its channels' states (contiguous, N floats each)
// are whole lines rather than one line per thread; C·h summed across the group by shuffles. blockIdx.y is the
// sequence and the rest is shifts: 64-bit divisions per thread cost more than the state's loads at batch 64.
template <typename T>
__global__ void scan_step_kernel(ScanParams p, float* state, int log2G) {
  const int G = 1 << log2G;
  const int lane = threadIdx.x & (G - 1);
  const int d = blockIdx.x * (blockDim.x >> log2G) + (threadIdx.x >> log2G);
  const int64_t b = blockIdx.y;
  const bool valid = d < p.dim;  // the others take part in the shuffles only
  // The state and A start on their way to L2 (neither is written by the kernel before this one).
  if (valid && lane == 0) prefetch_l2(state + (b * p.dim + d) * p.dstate);
  if (valid && lane == 0) prefetch_l2(p.A + static_cast<int64_t>(d) * p.dstate);
  pdl_launch_dependents();  // launched by launch_pdl (common.cuh)
  pdl_wait();
  const int N = p.dstate;
  float acc = 0.0f, u = 0.0f;
  const float delta = step_delta<T>(p, b, d, valid, lane, G);
  if (valid) {
    u = to_float(static_cast<const T*>(p.u)[b * p.u_stride + d]);
    float dt = delta + (p.delta_bias ? p.delta_bias[d] : 0.0f);
    if (p.delta_softplus) dt = softplus(dt);
    const T* Bm = static_cast<const T*>(p.Bm) + b * p.B_stride;
    const T* Cm = static_cast<const T*>(p.Cm) + b * p.C_stride;
    const float* A = p.A + static_cast<int64_t>(d) * N;
    float* h = state + (b * p.dim + d) * N;
    for (int n = lane; n < N; n += G) {
      const float hn = __expf(dt * A[n]) * h[n] + dt * to_float(Bm[n]) * u;
      h[n] = hn;
      acc += to_float(Cm[n]) * hn;
    }
  }
  for (int offset = G / 2; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (!valid || lane != 0) return;
  float y = acc + (p.D ? p.D[d] * u : 0.0f);
  if (p.z) y *= silu(to_float(static_cast<const T*>(p.z)[b * p.z_stride + d]));
  static_cast<T*>(p.y)[b * p.y_stride + d] = from_float<T>(y);
}

// The same step with four consecutive states a lane (N a multiple of 4, N / 4 a power of two ≤ 32: 16, 32,
// 64, 128): h and A move as float4, a quarter of the threads. With one state a thread the step is bound by
// the latency of its few loads (at large batches many waves of threads, each waiting on DRAM); four a
// thread keep four times the bytes in flight per thread.
template <typename T>
__global__ void scan_step4_kernel(ScanParams p, float* state, int log2G) {
  const int G = 1 << log2G;
  const int lane = threadIdx.x & (G - 1);
  const int d = blockIdx.x * (blockDim.x >> log2G) + (threadIdx.x >> log2G);
  const int64_t b = blockIdx.y;
  const bool valid = d < p.dim;  // the others take part in the shuffles only
  const int N = p.dstate, n = 4 * lane;
  // A, D and the Δ bias are read before waiting for the kernel before this one (parameters: common.cuh);
  // the state, which the previous step of this layer wrote, only starts on its way to L2.
  float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float dbias = 0.0f, dskip = 0.0f;
  if (valid) {
    a = *reinterpret_cast<const float4*>(p.A + static_cast<int64_t>(d) * N + n);
    if (p.delta_bias) dbias = p.delta_bias[d];
    if (p.D) dskip = p.D[d];
    if (lane == 0) prefetch_l2(state + (b * p.dim + d) * p.dstate);
  }
  pdl_launch_dependents();  // launched by launch_pdl (common.cuh)
  pdl_wait();
  // Every load this thread needs issued before Δ's dot product and its shuffles, so that they wait on
  // memory together: one round trip after the wait instead of two.
  float4* h4 = reinterpret_cast<float4*>(state + (b * p.dim + d) * N + n);
  float4 h = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float bv[4] = {}, cv[4] = {}, u = 0.0f, zv = 0.0f;
  if (valid) {
    h = *h4;
    const T* Bm = static_cast<const T*>(p.Bm) + b * p.B_stride + n;
    const T* Cm = static_cast<const T*>(p.Cm) + b * p.C_stride + n;
#pragma unroll
    for (int i = 0; i < 4; i++) bv[i] = to_float(Bm[i]), cv[i] = to_float(Cm[i]);
    u = to_float(static_cast<const T*>(p.u)[b * p.u_stride + d]);
    if (p.z && lane == 0) zv = to_float(static_cast<const T*>(p.z)[b * p.z_stride + d]);
  }
  const float delta = step_delta<T>(p, b, d, valid, lane, G);
  float acc = 0.0f;
  if (valid) {
    float dt = delta + dbias;
    if (p.delta_softplus) dt = softplus(dt);
    const float du = dt * u;
    float4 o;
    o.x = __expf(dt * a.x) * h.x + du * bv[0];
    o.y = __expf(dt * a.y) * h.y + du * bv[1];
    o.z = __expf(dt * a.z) * h.z + du * bv[2];
    o.w = __expf(dt * a.w) * h.w + du * bv[3];
    *h4 = o;
    acc = cv[0] * o.x + cv[1] * o.y + cv[2] * o.z + cv[3] * o.w;
  }
  for (int offset = G / 2; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (!valid || lane != 0) return;
  float y = acc + (p.D ? dskip * u : 0.0f);
  if (p.z) y *= silu(zv);
  static_cast<T*>(p.y)[b * p.y_stride + d] = from_float<T>(y);
}

unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

void check_conv(const Conv1dParams& p, const char* who) {
  auto fail = [&](const std::string& what) { throw std::invalid_argument(std::string(who) + ": " + what); };
  if (p.batch < 0 || p.seqlen < 0 || p.dim < 0 || p.width < 1 || p.width > kMaxConvWidth) fail("bad dimensions");
  if (p.batch > 65535) fail("batch above 65535");
  if (!p.x || !p.weight) fail("x and weight are required");
  if (p.dtype != DType::F32 && p.dtype != DType::BF16 && p.dtype != DType::F16) fail("dtype must be f32, bf16 or f16");
}

// Runtime K → template K.
template <template <typename, int> class Launch, typename T, typename... Args>
void with_width(int K, Args&&... args) {
  switch (K) {
    case 1: Launch<T, 1>::run(args...); break;
    case 2: Launch<T, 2>::run(args...); break;
    case 3: Launch<T, 3>::run(args...); break;
    case 4: Launch<T, 4>::run(args...); break;
    case 5: Launch<T, 5>::run(args...); break;
    case 6: Launch<T, 6>::run(args...); break;
    case 7: Launch<T, 7>::run(args...); break;
    case 8: Launch<T, 8>::run(args...); break;
    default: throw std::invalid_argument("conv1d: width must be 1..8");
  }
}

template <typename T, int K>
struct LaunchFwd {
  static void run(const Conv1dParams& p, cudaStream_t stream) {
    const dim3 grid(blocks_for(p.dim, kConvThreads), blocks_for(p.seqlen, kTL), p.batch);
    conv1d_fwd_kernel<T, K><<<grid, kConvThreads, 0, stream>>>(p);
    MAMBA_CUDA_CHECK_LAUNCH();
  }
};

template <typename T, int K>
struct LaunchBwd {
  static void run(const ConvBwdKernelParams& kp, cudaStream_t stream) {
    const dim3 grid(blocks_for(kp.q.fwd.dim, kConvThreads), kp.tblocks, kp.q.fwd.batch);
    conv1d_bwd_kernel<T, K><<<grid, kConvThreads, 0, stream>>>(kp);
    MAMBA_CUDA_CHECK_LAUNCH();
  }
};

}  // namespace

void conv1d_silu_fwd(const Conv1dParams& p, cudaStream_t stream) {
  check_conv(p, "conv1d_silu_fwd");
  if (!p.out) throw std::invalid_argument("conv1d_silu_fwd: out is required");
  if (p.batch == 0 || p.dim == 0) return;
  if (p.seqlen == 0) {
    if (p.tail_out && p.width > 1) {
      const size_t bytes = sizeof(float) * static_cast<size_t>(p.batch) * (p.width - 1) * p.dim;
      if (p.tail_in) MAMBA_CUDA_CHECK(cudaMemcpyAsync(p.tail_out, p.tail_in, bytes, cudaMemcpyDeviceToDevice, stream));
      else MAMBA_CUDA_CHECK(cudaMemsetAsync(p.tail_out, 0, bytes, stream));
    }
    return;
  }
  switch (p.dtype) {
    case DType::F32: with_width<LaunchFwd, float>(p.width, p, stream); break;
    case DType::BF16: with_width<LaunchFwd, __nv_bfloat16>(p.width, p, stream); break;
    case DType::F16: with_width<LaunchFwd, __half>(p.width, p, stream); break;
  }
}

size_t conv1d_silu_bwd_workspace(const Conv1dBwdParams& q) {
  const Conv1dParams& p = q.fwd;
  const size_t parts = static_cast<size_t>(p.batch) * blocks_for(p.seqlen, kTL);
  return sizeof(float) * parts * p.dim * (p.width + 1);
}

void conv1d_silu_bwd(const Conv1dBwdParams& q, void* workspace, cudaStream_t stream) {
  const Conv1dParams& p = q.fwd;
  check_conv(p, "conv1d_silu_bwd");
  if (!q.dout || !q.dx || !q.dweight) throw std::invalid_argument("conv1d_silu_bwd: dout, dx and dweight are required");
  if (p.bias && !q.dbias) throw std::invalid_argument("conv1d_silu_bwd: dbias is required when bias is given");
  if (p.batch == 0 || p.dim == 0) return;
  if (p.seqlen == 0) {
    if (q.dtail_in && p.width > 1) {
      MAMBA_CUDA_CHECK(cudaMemsetAsync(q.dtail_in, 0, sizeof(float) * static_cast<size_t>(p.batch) * (p.width - 1) * p.dim, stream));
    }
    return;
  }
  if (!workspace) throw std::invalid_argument("conv1d_silu_bwd: workspace required");
  ConvBwdKernelParams kp;
  kp.q = q;
  kp.tblocks = static_cast<int>(blocks_for(p.seqlen, kTL));
  kp.dw_part = static_cast<float*>(workspace);
  kp.dbias_part = kp.dw_part + static_cast<size_t>(p.batch) * kp.tblocks * p.dim * p.width;
  switch (p.dtype) {
    case DType::F32: with_width<LaunchBwd, float>(p.width, kp, stream); break;
    case DType::BF16: with_width<LaunchBwd, __nv_bfloat16>(p.width, kp, stream); break;
    case DType::F16: with_width<LaunchBwd, __half>(p.width, kp, stream); break;
  }
  conv1d_bwd_reduce_kernel<<<blocks_for(static_cast<int64_t>(p.dim) * p.width, 256), 256, 0, stream>>>(kp);
  MAMBA_CUDA_CHECK_LAUNCH();
}

void conv1d_silu_step(void* out, float* tail, const void* x, int64_t x_stride, const float* weight, const float* bias,
                      int batch, int dim, int width, DType dtype, cudaStream_t stream) {
  if (width < 1 || width > kMaxConvWidth || !out || !x || !weight || (width > 1 && !tail)) {
    throw std::invalid_argument("conv1d_silu_step: bad arguments");
  }
  if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16) {
    throw std::invalid_argument("conv1d_silu_step: dtype must be f32, bf16 or f16");
  }
  if (batch > 65535) throw std::invalid_argument("conv1d_silu_step: batch above 65535");
  if (batch <= 0 || dim <= 0) return;
  const dim3 grid(blocks_for(dim, 256), batch);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    launch_pdl(conv1d_step_kernel<T>, grid, dim3(256), stream, static_cast<T*>(out), tail, static_cast<const T*>(x),
               x_stride, weight, bias, dim, width);
  };
  switch (dtype) {
    case DType::F32: run(float{}); break;
    case DType::BF16: run(__nv_bfloat16{}); break;
    case DType::F16: run(__half{}); break;
  }
  MAMBA_CUDA_CHECK_LAUNCH();
}

void selective_scan_step(const ScanParams& p, float* state, cudaStream_t stream) {
  if (!p.y || !p.u || !p.delta || !p.A || !p.Bm || !p.Cm || !state || p.dstate < 1) {
    throw std::invalid_argument("selective_scan_step: y, u, delta, A, B, C and state are required");
  }
  if (p.dtype != DType::F32 && p.dtype != DType::BF16 && p.dtype != DType::F16) {
    throw std::invalid_argument("selective_scan_step: dtype must be f32, bf16 or f16");
  }
  if (p.batch > 65535) throw std::invalid_argument("selective_scan_step: batch above 65535");
  if (p.delta_proj && (p.delta_proj.dtype != p.dtype || p.delta_rank < 1)) {
    throw std::invalid_argument("selective_scan_step: delta_proj must be in the activations' dtype, with delta_rank ≥ 1");
  }
  if (p.batch <= 0 || p.dim <= 0) return;
  // Four states a lane where N allows and h and A are 16-byte aligned (every allocation is; an offset view
  // may not be); else one state a lane.
  const int quads = p.dstate / 4;
  const bool aligned = reinterpret_cast<uintptr_t>(state) % 16 == 0 && reinterpret_cast<uintptr_t>(p.A) % 16 == 0;
  const bool four = p.dstate % 4 == 0 && quads <= 32 && (quads & (quads - 1)) == 0 && aligned;
  int log2G = 0;  // lanes per channel: a power of two ≤ 32
  while ((1 << log2G) < (four ? quads : p.dstate) && log2G < 5) log2G++;
  // 128 threads: whole warps, so the groups never straddle one.
  const dim3 grid(blocks_for(p.dim, 128 >> log2G), p.batch);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    launch_pdl(four ? scan_step4_kernel<T> : scan_step_kernel<T>, grid, dim3(128), stream, p, state, log2G);
  };
  switch (p.dtype) {
    case DType::F32: run(float{}); break;
    case DType::BF16: run(__nv_bfloat16{}); break;
    case DType::F16: run(__half{}); break;
  }
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba::cuda

// Selective scan backward: the dispatcher, and the two small kernels that reduce the partial sums in a
// fixed order (dB, dC over channel tiles; dA, dD, dΔ bias over the batch).
#include <stdexcept>
#include <string>

#include "ops/cuda/scan_bwd_kernel.cuh"

namespace mamba::cuda {

namespace {

int bwd_nsplit(int N) { return N <= 4 ? 1 : N <= 16 ? 4 : 16; }

int sm_count() {
  static const int count = [] {
    int dev = 0, n = 0;
    MAMBA_CUDA_CHECK(cudaGetDevice(&dev));
    MAMBA_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  return count;
}

struct BwdLayout {
  int nsplit, tiles, segments;
  int64_t seg_len;
  size_t bc_part, dA_part, d_part;  // floats in each partial buffer
};

// Segments when the (sequence, channel tile) blocks would not give every SM two; then ~12 blocks per
// SM, where the measured time was best (dev/notes/scan.md). With enough blocks, one segment: the
// carry pass costs more than the extra warps gain (measured at 8,1536,2048,16 and above).
BwdLayout layout(const ScanBwdParams& q, ScanTuning tuning) {
  const ScanParams& p = q.fwd;
  BwdLayout l;
  l.nsplit = bwd_nsplit(p.dstate);
  const int channels = 128 / l.nsplit;
  l.tiles = (p.dim + channels - 1) / channels;
  const int64_t blocks = static_cast<int64_t>(l.tiles) * p.batch, sms = sm_count();
  const int64_t want_segments = tuning.segments > 0 ? tuning.segments
                                : blocks >= 2 * sms  ? 1
                                                     : (12 * sms + blocks - 1) / blocks;
  const int64_t L = p.seqlen > 0 ? p.seqlen : 1;
  const int64_t per = (L + want_segments - 1) / want_segments;
  l.seg_len = (per + kStateChunk - 1) / kStateChunk * kStateChunk;
  l.segments = static_cast<int>((L + l.seg_len - 1) / l.seg_len);
  const size_t bs = static_cast<size_t>(p.batch) * l.segments;
  l.bc_part = static_cast<size_t>(p.batch) * p.seqlen * l.tiles * p.dstate;
  l.dA_part = bs * p.dim * p.dstate;
  l.d_part = bs * p.dim;
  return l;
}

__global__ void scan_bwd_chain_kernel(ScanBwdKernelParams kp) {
  const ScanParams& p = kp.p.fwd;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (b, d, n)
  const int N = p.dstate, D = p.dim, S = kp.segments;
  if (i >= static_cast<int64_t>(p.batch) * D * N) return;
  const int n = static_cast<int>(i % N);
  const int d = static_cast<int>((i / N) % D);
  const int64_t b = i / (static_cast<int64_t>(N) * D);
  const float A = p.A[static_cast<int64_t>(d) * N + n];
  float carry = kp.p.dstate_out ? kp.p.dstate_out[i] : 0.0f;
  for (int s = S - 1; s >= 0; s--) {
    const int64_t bsd = (b * S + s) * D + d;
    const float local = kp.carry[bsd * N + n];
    kp.carry[bsd * N + n] = carry;
    carry = __expf(A * kp.seg_dsum[bsd]) * carry + local;  // Π_t exp(Δ_t A) = exp(A ΣΔ)
  }
  if (kp.p.dstate_in) kp.p.dstate_in[i] = carry;
}

template <typename out_t>
__global__ void reduce_bc_kernel(out_t* out, int64_t stride, const float* part, int64_t rows, int tiles, int N) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (row, n)
  if (i >= rows * N) return;
  const int64_t row = i / N;
  const int n = static_cast<int>(i % N);
  const float* src = part + row * tiles * N + n;
  float acc = 0.0f;
  for (int k = 0; k < tiles; k++) acc += src[static_cast<int64_t>(k) * N];
  out[row * stride + n] = from_float<out_t>(acc);
}

__global__ void reduce_params_kernel(ScanBwdKernelParams kp) {
  const ScanParams& p = kp.p.fwd;
  const int64_t DN = static_cast<int64_t>(p.dim) * p.dstate;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < DN) {
    float acc = 0.0f;
    for (int b = 0; b < p.batch * kp.segments; b++) acc += kp.dA_part[b * DN + i];
    kp.p.dA[i] += acc;
  }
  if (i < p.dim) {
    float sD = 0.0f, sb = 0.0f;
    for (int b = 0; b < p.batch * kp.segments; b++) {
      sD += kp.dD_part[static_cast<int64_t>(b) * p.dim + i];
      sb += kp.dbias_part[static_cast<int64_t>(b) * p.dim + i];
    }
    if (kp.p.dD) kp.p.dD[i] += sD;
    if (kp.p.ddelta_bias) kp.p.ddelta_bias[i] += sb;
  }
}

unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace

void launch_scan_bwd_chain(const ScanBwdKernelParams& kp, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(kp.p.fwd.batch) * kp.p.fwd.dim * kp.p.fwd.dstate;
  scan_bwd_chain_kernel<<<blocks_for(total, 256), 256, 0, stream>>>(kp);
  MAMBA_CUDA_CHECK_LAUNCH();
}

size_t selective_scan_bwd_workspace(const ScanBwdParams& q, ScanTuning tuning) {
  if (q.fwd.dstate < 1 || q.fwd.dstate > 64) {
    throw std::invalid_argument("selective_scan_bwd_workspace: N = " + std::to_string(q.fwd.dstate) +
                                " outside 1..64, the backward's range");
  }
  const BwdLayout l = layout(q, tuning);
  // dB, dC partials; dA, dD, dΔ-bias partials; the segments' carries and ΣΔ.
  return sizeof(float) * (2 * l.bc_part + 2 * l.dA_part + 3 * l.d_part);
}

void selective_scan_bwd(const ScanBwdParams& q, void* workspace, cudaStream_t stream, ScanTuning tuning) {
  const ScanParams& p = q.fwd;
  auto fail = [](const std::string& what) { throw std::invalid_argument("selective_scan_bwd: " + what); };
  if (p.batch < 0 || p.seqlen < 0 || p.dim < 0 || p.dstate < 1) fail("bad dimensions");
  if (p.dstate > 64) {
    fail("N = " + std::to_string(p.dstate) + " is above 64, the most the backward supports (4 states per thread, " +
         "at most 16 threads per channel)");
  }
  if (p.batch > 65535) fail("batch above 65535");
  if (p.dtype != DType::F32 && p.dtype != DType::BF16 && p.dtype != DType::F16) fail("dtype must be f32, bf16 or f16");
  if (p.bc_per_channel) fail("the LTI form (bc_per_channel) runs on the CPU only");
  if (tuning.states_per_thread != 0 && tuning.states_per_thread != 4) {
    fail("states_per_thread = " + std::to_string(tuning.states_per_thread) + " is not supported (the backward holds 4)");
  }
  if (tuning.segments < 0) fail("segments must be ≥ 0 (0: the dispatcher's choice)");
  if (!p.u || !p.delta || !p.A || !p.Bm || !p.Cm || !p.chunk_states) fail("u, delta, A, B, C and chunk_states are required");
  if (!q.dy || !q.du || !q.ddelta || !q.dB || !q.dC || !q.dA) fail("dy, du, ddelta, dB, dC and dA are required");
  if (p.z && !q.dz) fail("dz is required when z is given");
  if (p.D && !q.dD) fail("dD is required when D is given");
  if (p.delta_bias && !q.ddelta_bias) fail("ddelta_bias is required when delta_bias is given");
  if (p.batch == 0 || p.dim == 0) return;
  if (p.seqlen == 0) {
    if (q.dstate_in) {
      const size_t bytes = sizeof(float) * static_cast<size_t>(p.batch) * p.dim * p.dstate;
      if (q.dstate_out) MAMBA_CUDA_CHECK(cudaMemcpyAsync(q.dstate_in, q.dstate_out, bytes, cudaMemcpyDeviceToDevice, stream));
      else MAMBA_CUDA_CHECK(cudaMemsetAsync(q.dstate_in, 0, bytes, stream));
    }
    return;
  }
  if (!workspace) fail("workspace required (selective_scan_bwd_workspace)");
  const BwdLayout l = layout(q, tuning);
  ScanBwdKernelParams kp;
  kp.p = q;
  kp.tiles = l.tiles;
  kp.segments = l.segments;
  kp.seg_len = l.seg_len;
  kp.dB_part = static_cast<float*>(workspace);
  kp.dC_part = kp.dB_part + l.bc_part;
  kp.dA_part = kp.dC_part + l.bc_part;
  kp.dD_part = kp.dA_part + l.dA_part;
  kp.dbias_part = kp.dD_part + l.d_part;
  kp.carry = kp.dbias_part + l.d_part;
  kp.seg_dsum = kp.carry + l.dA_part;

  const int64_t rows = static_cast<int64_t>(p.batch) * p.seqlen;
  const unsigned grid = blocks_for(rows * p.dstate, 256);
  auto run = [&](auto zero) {  // the scan, then dB and dC from their per-tile partials, in the input dtype
    using T = decltype(zero);
    launch_scan_bwd_dtype<T>(kp, l.nsplit, stream);
    reduce_bc_kernel<<<grid, 256, 0, stream>>>(static_cast<T*>(q.dB), q.dB_stride, kp.dB_part, rows, l.tiles, p.dstate);
    reduce_bc_kernel<<<grid, 256, 0, stream>>>(static_cast<T*>(q.dC), q.dC_stride, kp.dC_part, rows, l.tiles, p.dstate);
    MAMBA_CUDA_CHECK_LAUNCH();
  };
  switch (p.dtype) {
    case DType::F32: run(float{}); break;
    case DType::BF16: run(__nv_bfloat16{}); break;
    case DType::F16: run(__half{}); break;
  }
  reduce_params_kernel<<<blocks_for(static_cast<int64_t>(p.dim) * p.dstate, 256), 256, 0, stream>>>(kp);
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba::cuda

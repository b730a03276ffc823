// include/mamba/kernels.h over the backends' scan ops: dense token-major arrays become ScanParams (CPU)
// or cuda::ScanFwdParams / ScanBwdParams with the row strides of dense arrays.
#include "mamba/kernels.h"

#include <cstring>

#include "core/error.h"
#include "core/runtime.h"
#include "ops/cpu/backward.h"
#include "ops/cpu/ops.h"
#include "ops/scan.h"
#ifdef MAMBA_HAVE_CUDA
#include "ops/cuda/ops.h"
#include "ops/cuda/scan.h"
#endif

namespace mamba::kernels {

namespace {

constexpr int kCpuStateChunk = 64;

void check_sizes(const ScanArgs& a, int max_state) {
  if (a.batch < 1 || a.seqlen < 1 || a.dim < 1) {
    fail("selective scan: batch, length and channels must be positive (got ", a.batch, ", ", a.seqlen, ", ", a.dim, ")");
  }
  if (a.dstate < 1 || a.dstate > max_state) fail("selective scan: d_state ", a.dstate, " must lie in [1, ", max_state, "]");
  if (!a.y || !a.u || !a.delta || !a.A || !a.B || !a.C) fail("selective scan: y, u, delta, A, B and C are required");
}

// Dense token-major arrays: every row stride is the row's width.
ScanParams cpu_params(const ScanArgs& a) {
  ScanParams p;
  p.batch = a.batch;
  p.seqlen = a.seqlen;
  p.dim = a.dim;
  p.dstate = a.dstate;
  p.dtype = mamba::DType::F32;
  p.y = a.y;
  p.y_stride = a.dim;
  p.u = a.u;
  p.u_stride = a.dim;
  p.delta = a.delta;
  p.delta_stride = a.dim;
  p.A = a.A;
  p.Bm = a.B;
  p.B_stride = a.dstate;
  p.Cm = a.C;
  p.C_stride = a.dstate;
  p.D = a.D;
  p.z = a.z;
  p.z_stride = a.dim;
  p.delta_bias = a.delta_bias;
  p.delta_softplus = a.delta_softplus;
  p.state_out = a.last_state;
  p.chunk_states = a.chunk_states;
  p.state_chunk = kCpuStateChunk;
  return p;
}

#ifdef MAMBA_HAVE_CUDA
// The CUDA scan takes the same contract, in the arrays' dtype, keeping h every kCudaStateChunk steps.
ScanParams cuda_params(const ScanArgs& a) {
  ScanParams p = cpu_params(a);
  p.dtype = a.dtype == DType::F32 ? mamba::DType::F32 : a.dtype == DType::BF16 ? mamba::DType::BF16 : mamba::DType::F16;
  p.state_chunk = kCudaStateChunk;
  return p;
}

cuda::ScanBwdParams cuda_grad_params(const ScanArgs& a, const ScanGradArgs& g) {
  cuda::ScanBwdParams p;
  p.fwd = cuda_params(a);
  p.dy = g.dy;
  p.dy_stride = a.dim;
  p.dstate_out = g.dlast_state;
  p.du = g.du;
  p.du_stride = a.dim;
  p.ddelta = g.ddelta;
  p.ddelta_stride = a.dim;
  p.dz = g.dz;
  p.dz_stride = a.dim;
  p.dB = g.dB;
  p.dB_stride = a.dstate;
  p.dC = g.dC;
  p.dC_stride = a.dstate;
  p.dA = g.dA;
  p.dD = g.dD;
  p.ddelta_bias = g.ddelta_bias;
  return p;
}

// The CUDA wing reports failures as std::exception; callers of this API get mamba::Error.
template <typename F>
auto cuda_call(const char* what, F&& f) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(what, ": ", e.what());
  }
}
#else
[[noreturn]] void no_cuda() { fail("selective scan: this build of mamba.cpp has no CUDA kernels (nvcc was not found)"); }
#endif

}  // namespace

int scan_state_chunk(Device device) {
  return device == Device::Cuda ? kCudaStateChunk : kCpuStateChunk;
}

bool cuda_built() {
#ifdef MAMBA_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

void scan_forward_cpu(const ScanArgs& a) {
  check_sizes(a, kMaxState);
  if (a.dtype != DType::F32) fail("selective scan on the CPU: fp32 only");
  FlushSubnormals flush;
  cpu::selective_scan_forward(cpu_params(a));
}

void scan_backward_cpu(const ScanArgs& a, const ScanGradArgs& g) {
  check_sizes(a, kMaxState);
  if (a.dtype != DType::F32) fail("selective scan on the CPU: fp32 only");
  if (!a.chunk_states) fail("selective scan backward: the forward's chunk_states are required");
  if (!g.dy || !g.du || !g.ddelta || !g.dB || !g.dC || !g.dA) fail("selective scan backward: dy, du, ddelta, dB, dC and dA are required");
  if ((a.z && !g.dz) || (a.D && !g.dD) || (a.delta_bias && !g.ddelta_bias)) {
    fail("selective scan backward: dz, dD and ddelta_bias are required when z, D and delta_bias are given");
  }
  // The CPU backward adds into every output; this API writes the activations' gradients.
  const size_t bld = sizeof(float) * static_cast<size_t>(a.batch) * a.seqlen * a.dim;
  const size_t bln = sizeof(float) * static_cast<size_t>(a.batch) * a.seqlen * a.dstate;
  std::memset(g.du, 0, bld);
  std::memset(g.ddelta, 0, bld);
  if (a.z) std::memset(g.dz, 0, bld);
  std::memset(g.dB, 0, bln);
  std::memset(g.dC, 0, bln);
  cpu::ScanGrads grads;
  grads.dy = static_cast<const float*>(g.dy);
  grads.dy_stride = a.dim;
  grads.dstate_out = g.dlast_state;
  grads.du = static_cast<float*>(g.du);
  grads.du_stride = a.dim;
  grads.ddelta = static_cast<float*>(g.ddelta);
  grads.ddelta_stride = a.dim;
  grads.dA = g.dA;
  grads.dB = static_cast<float*>(g.dB);
  grads.dC = static_cast<float*>(g.dC);
  grads.dbc_stride = a.dstate;
  grads.dD = g.dD;
  grads.dz = static_cast<float*>(g.dz);
  grads.dz_stride = a.dim;
  grads.ddelta_bias = g.ddelta_bias;
  FlushSubnormals flush;
  cpu::selective_scan_backward(grads, cpu_params(a));
}

#ifdef MAMBA_HAVE_CUDA
size_t scan_forward_cuda_workspace(const ScanArgs& a) {
  check_sizes(a, 256);
  return cuda_call("selective scan (CUDA)", [&] { return cuda::selective_scan_fwd_workspace(cuda_params(a)); });
}
void scan_forward_cuda(const ScanArgs& a, void* workspace, void* stream) {
  check_sizes(a, 256);
  cuda_call("selective scan (CUDA)", [&] {
    cuda::selective_scan_fwd(cuda_params(a), workspace, static_cast<cudaStream_t>(stream));
  });
}
size_t scan_backward_cuda_workspace(const ScanArgs& a, const ScanGradArgs& g) {
  check_sizes(a, 64);
  return cuda_call("selective scan backward (CUDA)",
                   [&] { return cuda::selective_scan_bwd_workspace(cuda_grad_params(a, g)); });
}
void scan_backward_cuda(const ScanArgs& a, const ScanGradArgs& g, void* workspace, void* stream) {
  check_sizes(a, 64);
  if (!a.chunk_states) fail("selective scan backward: the forward's chunk_states are required");
  cuda_call("selective scan backward (CUDA)", [&] {
    cuda::selective_scan_bwd(cuda_grad_params(a, g), workspace, static_cast<cudaStream_t>(stream));
  });
}
void transpose_cuda(void* dst, const void* src, int64_t batch, int64_t rows, int64_t cols, int elem_bytes,
                    int64_t src_batch_stride, int64_t src_row_stride, void* stream) {
  if (!dst || !src) fail("transpose: dst and src are required");
  if (src_row_stride < cols || src_batch_stride < 0) fail("transpose: the source's rows overlap");
  cuda_call("transpose (CUDA)", [&] {
    cuda::transpose(dst, src, batch, rows, cols, elem_bytes, src_batch_stride, src_row_stride,
                    static_cast<cudaStream_t>(stream));
  });
}
#else
size_t scan_forward_cuda_workspace(const ScanArgs&) { no_cuda(); }
void scan_forward_cuda(const ScanArgs&, void*, void*) { no_cuda(); }
size_t scan_backward_cuda_workspace(const ScanArgs&, const ScanGradArgs&) { no_cuda(); }
void scan_backward_cuda(const ScanArgs&, const ScanGradArgs&, void*, void*) { no_cuda(); }
void transpose_cuda(void*, const void*, int64_t, int64_t, int64_t, int, int64_t, int64_t, void*) { no_cuda(); }
#endif

}  // namespace mamba::kernels

// The SSM's A from its parameter A_log (A = −exp(A_log), negative so that exp(Δ·A) < 1 decays the state),
// and the parameter's gradient from A's: dA_log = dA ⊙ ∂A/∂A_log = dA ⊙ A.
#include <cmath>

#include "ops/cuda/check.h"
#include "ops/cuda/ops.h"

namespace mamba::cuda {

namespace {

__global__ void ssm_A_kernel(float* A, const float* A_log, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) A[i] = -::expf(A_log[i]);
}

__global__ void ssm_dA_log_kernel(float* dA_log, const float* dA, const float* A, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dA_log[i] += dA[i] * A[i];
}

unsigned blocks(int64_t n) { return static_cast<unsigned>((n + 255) / 256); }

}  // namespace

void ssm_A_fwd(float* A, const float* A_log, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  ssm_A_kernel<<<blocks(n), 256, 0, stream>>>(A, A_log, n);
  MAMBA_CUDA_CHECK_LAUNCH();
}

void ssm_dA_log_bwd(float* dA_log, const float* dA, const float* A, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  ssm_dA_log_kernel<<<blocks(n), 256, 0, stream>>>(dA_log, dA, A, n);
  MAMBA_CUDA_CHECK_LAUNCH();
}

}  // namespace mamba::cuda

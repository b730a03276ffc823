// The bf16 instances of the selective scan forward (u, Δ, z, B, C and y in bf16; all else fp32).
#include "ops/cuda/scan_fwd_kernel.cuh"

namespace mamba::cuda {
template void launch_scan_fwd_dtype<__nv_bfloat16>(const ScanFwdKernelParams&, int, int, int, bool, cudaStream_t);
}  // namespace mamba::cuda

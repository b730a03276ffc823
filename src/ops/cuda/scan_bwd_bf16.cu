// The bf16 instances of the selective scan backward.
#include "ops/cuda/scan_bwd_kernel.cuh"

namespace mamba::cuda {
template void launch_scan_bwd_dtype<__nv_bfloat16>(const ScanBwdKernelParams&, int, cudaStream_t);
}  // namespace mamba::cuda

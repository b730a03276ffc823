// The fp16 instances of the selective scan backward.
#include "ops/cuda/scan_bwd_kernel.cuh"

namespace mamba::cuda {
template void launch_scan_bwd_dtype<__half>(const ScanBwdKernelParams&, int, cudaStream_t);
}  // namespace mamba::cuda

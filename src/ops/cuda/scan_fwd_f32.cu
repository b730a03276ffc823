// The fp32 instances of the selective scan forward.
#include "ops/cuda/scan_fwd_kernel.cuh"

namespace mamba::cuda {
template void launch_scan_fwd_dtype<float>(const ScanFwdKernelParams&, int, int, int, bool, cudaStream_t);
}  // namespace mamba::cuda

// The fp16 instances of the selective scan forward (u, Δ, z, B, C and y in fp16; all else fp32).
#include "ops/cuda/scan_fwd_kernel.cuh"

namespace mamba::cuda {
template void launch_scan_fwd_dtype<__half>(const ScanFwdKernelParams&, int, int, int, bool, cudaStream_t);
}  // namespace mamba::cuda

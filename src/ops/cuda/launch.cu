// launch_pdl's question (common.cuh), in a file of its own: the kernels' objects need it, and the
// programs that link only some of them (bench/cuda_*.cu) must not pull in the backend with it.
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>

#include "ops/cuda/common.cuh"

namespace mamba::cuda {

bool pdl_enabled() {
  static const bool allowed = [] {
    const char* v = std::getenv("MAMBA_CUDA_PDL");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  int device = 0, major = 0;
  if (!allowed || cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    return false;
  }
  return major >= 9;
}

}  // namespace mamba::cuda

// launch_pdl's question (common.cuh), in a file of its own: the kernels' objects need it, and the
// programs that link only some of them (bench/cuda_*.cu) must not pull in the backend with it.
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "ops/cuda/common.cuh"

namespace mamba::cuda {

namespace {
constexpr int kMaxDevices = 64;
}  // namespace

bool pdl_enabled() {
  static const bool allowed = [] {
    const char* v = std::getenv("MAMBA_CUDA_PDL");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  // Asked at every launch: the answer per GPU is kept (0 not asked yet, 1 no, 2 yes).
  static std::atomic<int> known[kMaxDevices];
  int device = 0;
  if (!allowed || cudaGetDevice(&device) != cudaSuccess) return false;
  if (device < 0 || device >= kMaxDevices) return false;
  if (const int k = known[device].load(std::memory_order_relaxed); k != 0) return k == 2;
  int major = 0;
  const bool yes =
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 9;
  known[device].store(yes ? 2 : 1, std::memory_order_relaxed);
  return yes;
}

}  // namespace mamba::cuda

// Every CUDA runtime call goes through MAMBA_CUDA_CHECK: a failure throws with the call, file and line,
// so that no error is silently carried into a later, unrelated call.
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace mamba::cuda {

inline void check(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what + ": " +
                             cudaGetErrorString(err));
  }
}

}  // namespace mamba::cuda

#define MAMBA_CUDA_CHECK(call) ::mamba::cuda::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: the launch's own error (bad configuration, too much shared memory).
#define MAMBA_CUDA_CHECK_LAUNCH() ::mamba::cuda::check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// A build with CUDA opens cuBLAS only when a GPU backend is made (src/ops/cuda/cublas.h): a process that
// runs on the CPU does not map it (linked, libcublasLt alone put ~210 MB in every process's resident
// memory). ctest runs each test in a process of its own.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "ops/backend.h"
#if MAMBA_HAVE_CUDA
#include "ops/cuda/cublas.h"
#endif

namespace {

bool mapped(const std::string& library) {
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find(library) != std::string::npos) return true;
  }
  return false;
}

TEST(LazyCuda, CpuWorkDoesNotMapCublas) {
  mamba::Backend& cpu = mamba::Backend::get(mamba::Device::parse("cpu"));
  EXPECT_FALSE(cpu.describe().empty());
  EXPECT_FALSE(mapped("libcublas")) << "cuBLAS is mapped into a process that asked for no GPU";
}

TEST(LazyCuda, CublasOpensOnFirstUse) {
#if MAMBA_HAVE_CUDA
  EXPECT_FALSE(mapped("libcublas"));
  std::string why;
  ASSERT_TRUE(mamba::cuda::blas::available(&why)) << why;
  EXPECT_TRUE(mapped("libcublas"));
  EXPECT_STRNE(mamba::cuda::blas::status_string(CUBLAS_STATUS_SUCCESS), "");
#else
  GTEST_SKIP() << "a build without CUDA";
#endif
}

}  // namespace

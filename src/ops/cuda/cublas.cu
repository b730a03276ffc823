// cuBLAS opened with dlopen on first use (cublas.h says why).
#include "ops/cuda/cublas.h"

#include <dlfcn.h>

#include <stdexcept>

namespace mamba::cuda::blas {

namespace {

// cublasGemmEx's C entry point (C++ sees an overload too, for the older cudaDataType_t compute type).
using GemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                  const void*, cudaDataType_t, int, const void*, cudaDataType_t, int, const void*,
                                  void*, cudaDataType_t, int, cublasComputeType_t, cublasGemmAlgo_t);

struct Api {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetWorkspace_v2) set_workspace = nullptr;
  GemmEx gemm_ex = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
  std::string error;  // empty once every entry point is found
};

template <typename F>
bool resolve(void* lib, const char* name, F& fn, std::string& error) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) error = std::string("libcublas has no ") + name;
  return fn != nullptr;
}

Api open_cublas() {
  Api api;
  // The toolkit's library by its soname (found through the program's run path, LD_LIBRARY_PATH or the
  // loader's cache), then where the build found the toolkit.
  const char* candidates[] = {MAMBA_CUBLAS_SONAME, MAMBA_CUBLAS_DIR "/" MAMBA_CUBLAS_SONAME};
  void* lib = nullptr;
  std::string tried;
  for (const char* path : candidates) {
    // Never closed: handles made from it live as long as the process.
    if ((lib = dlopen(path, RTLD_NOW | RTLD_LOCAL))) break;
    const char* why = dlerror();
    tried += std::string(tried.empty() ? "" : "; ") + (why ? why : path);
  }
  if (!lib) {
    api.error = "cannot open cuBLAS (" + tried + "): the CUDA toolkit's libcublas must be installed and findable "
                "(LD_LIBRARY_PATH) to run on a GPU";
    return api;
  }
  resolve(lib, "cublasCreate_v2", api.create, api.error) && resolve(lib, "cublasSetStream_v2", api.set_stream, api.error) &&
      resolve(lib, "cublasSetWorkspace_v2", api.set_workspace, api.error) &&
      resolve(lib, "cublasGemmEx", api.gemm_ex, api.error) &&
      resolve(lib, "cublasGetStatusString", api.status_string, api.error);
  return api;
}

const Api& api() {
  static const Api opened = open_cublas();
  return opened;
}

const Api& loaded() {
  const Api& a = api();
  if (!a.error.empty()) throw std::runtime_error(a.error);
  return a;
}

}  // namespace

bool available(std::string* why) {
  const Api& a = api();
  if (why) *why = a.error;
  return a.error.empty();
}

cublasStatus_t create(cublasHandle_t* handle) { return loaded().create(handle); }

cublasStatus_t set_stream(cublasHandle_t handle, cudaStream_t stream) { return loaded().set_stream(handle, stream); }

cublasStatus_t set_workspace(cublasHandle_t handle, void* workspace, size_t bytes) {
  return loaded().set_workspace(handle, workspace, bytes);
}

cublasStatus_t gemm_ex(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                       const void* alpha, const void* A, cudaDataType_t a_type, int lda, const void* B,
                       cudaDataType_t b_type, int ldb, const void* beta, void* C, cudaDataType_t c_type, int ldc,
                       cublasComputeType_t compute, cublasGemmAlgo_t algo) {
  return loaded().gemm_ex(handle, ta, tb, m, n, k, alpha, A, a_type, lda, B, b_type, ldb, beta, C, c_type, ldc,
                          compute, algo);
}

const char* status_string(cublasStatus_t status) {
  const Api& a = api();
  return a.status_string ? a.status_string(status) : "cuBLAS error (the library is not open)";
}

}  // namespace mamba::cuda::blas

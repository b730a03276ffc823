// cuBLAS, opened on first use instead of linked. Linking it maps libcublasLt into every process of a CUDA
// build, and the loader's relocations of that library alone touch ~210 MB: a CPU run (or `--version`)
// would carry them in its resident memory. The few entry points the backend calls are resolved from the
// toolkit's libcublas when the first GPU backend is made.
#pragma once

#include <cublas_v2.h>

#include <string>

namespace mamba::cuda::blas {

// Whether libcublas could be opened and its entry points found; if not, why (the library's name and the
// loader's message). Opens it on the first call.
bool available(std::string* why = nullptr);

// cuBLAS's functions of the same names (cublasCreate, cublasSetStream, cublasSetWorkspace, cublasGemmEx,
// cublasGetStatusString). Each opens the library on first use and throws std::runtime_error, naming the
// library and the reason, when it cannot.
cublasStatus_t create(cublasHandle_t* handle);
cublasStatus_t set_stream(cublasHandle_t handle, cudaStream_t stream);
cublasStatus_t set_workspace(cublasHandle_t handle, void* workspace, size_t bytes);
cublasStatus_t gemm_ex(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                       const void* alpha, const void* A, cudaDataType_t a_type, int lda, const void* B,
                       cudaDataType_t b_type, int ldb, const void* beta, void* C, cudaDataType_t c_type, int ldc,
                       cublasComputeType_t compute, cublasGemmAlgo_t algo);
const char* status_string(cublasStatus_t status);

}  // namespace mamba::cuda::blas

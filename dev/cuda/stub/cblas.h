// Stand-in for <cblas.h> on the GPU machine, which has no BLAS package: the CUDA tests link the CPU
// oracle (src/ops/cpu/ops.cpp) but never call its matmul. Used only by dev/cuda/device_run.sh.
#pragma once
#ifdef __cplusplus
extern "C" {
#endif
enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 };
void cblas_sgemv(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, int, int, float, const float*, int, const float*, int, float,
                 float*, int);
void cblas_sgemm(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, int, int, int, float, const float*,
                 int, const float*, int, float, float*, int);
#ifdef __cplusplus
}
#endif

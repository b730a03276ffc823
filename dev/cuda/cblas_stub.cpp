// See stub/cblas.h: these abort if anything ever calls them.
#include <cstdio>
#include <cstdlib>

#include "cblas.h"

extern "C" void cblas_sgemv(CBLAS_ORDER, CBLAS_TRANSPOSE, int, int, float, const float*, int, const float*, int, float,
                            float*, int) {
  std::fprintf(stderr, "cblas_sgemv stub called\n");
  std::abort();
}
extern "C" void cblas_sgemm(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, int, int, int, float, const float*, int,
                            const float*, int, float, float*, int) {
  std::fprintf(stderr, "cblas_sgemm stub called\n");
  std::abort();
}

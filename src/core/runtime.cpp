#include "core/runtime.h"

#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>

namespace mamba {

namespace {
std::atomic<bool> g_bf16_products{false};
}  // namespace

void set_bf16_products(bool on) { g_bf16_products = on; }
bool bf16_products() { return g_bf16_products; }

void configure_runtime(int threads) {
  if (threads <= 0) threads = omp_get_num_procs();
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
#if defined(__SSE__)
  _mm_setcsr(_mm_getcsr() | FlushSubnormals::kFtz | FlushSubnormals::kDaz);
#pragma omp parallel
  { _mm_setcsr(_mm_getcsr() | FlushSubnormals::kFtz | FlushSubnormals::kDaz); }
#endif
}

int runtime_threads() { return omp_get_max_threads(); }

void relaunch_with_passive_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY")) return;
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
}

}  // namespace mamba

#include <cblas.h>
#include <omp.h>

#include "cli/commands.h"

namespace mamba::cli {

void set_threads(int threads) {
  if (threads <= 0) threads = omp_get_num_procs();
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
}

int thread_count() { return omp_get_max_threads(); }

}  // namespace mamba::cli

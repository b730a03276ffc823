// The CUDA backend: one GPU's memory, a stream that every op is queued on, a cuBLAS handle, and the ops
// of ops/<op>.h through the kernels of this folder.
#pragma once

#include <memory>

#include "ops/backend.h"

namespace mamba::cuda {

// Fails (Error) naming the reason when GPU `index` cannot be used: no GPU or driver, an index out of range.
std::unique_ptr<Backend> make_backend(int index);

}  // namespace mamba::cuda

// The CPU backend: host memory, the fp32 ops of ops.h, and matrix products for each weight type
// (matmul.h). It is the oracle that tests/test_backend_ops.cpp checks every other backend against.
#pragma once

#include <memory>

#include "ops/backend.h"

namespace mamba::cpu {

std::unique_ptr<Backend> make_backend();

}  // namespace mamba::cpu

// A parameter as the ops read it: its bytes in their stored type, on the device of the backend that
// runs the op. Matrices are row-major (rows, cols) as Hugging Face stores them (out, in). An I8 matrix
// is the quantized form of core/dtype.h: int8 values in `data`, an F16 scale per block of kQ8Block
// values along each row in `scales` (rows, q8_blocks(cols)).
#pragma once

#include "core/dtype.h"
#include "core/error.h"

namespace mamba {

struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  const uint16_t* scales = nullptr;  // I8 only

  explicit operator bool() const { return data != nullptr; }
  // The data as fp32; for the parameters that are fp32 on every backend (norms, A_log, D, Δ bias, conv).
  const float* f32() const {
    if (data && dtype != DType::F32) fail("internal: a ", dtype_name(dtype), " parameter read as F32");
    return static_cast<const float*>(data);
  }
};

}  // namespace mamba

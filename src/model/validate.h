// Checks made before a model is built or run, so that no input can crash the program, make it run
// away with memory, or make it compute garbage in silence:
//  - config.json against the weights files, before the parameter list is built (a config that claims
//    a billion layers is refused by the size of the files, not by running out of memory);
//  - every parameter and state value finite (a NaN weight is named, not turned into NaN logits);
//  - the bytes each kind of work allocates, computed from the shapes and checked with check_memory
//    (core/limits.h) before the allocation.
#pragma once

#include <cstdint>
#include <string>

#include "core/safetensors.h"
#include "model/config.h"
#include "ops/weight.h"

namespace mamba {

// The weights can hold what the config describes: one tensor per parameter tensor and at least 2 bytes (1 in a file with int8 matrices)
// (F16/BF16) per parameter. Fails naming `config_where` and both figures.
void check_config_fits_files(const Config& config, const SafeTensorsReader& reader, const std::string& config_where);

// Index of the first NaN or ±Inf in data[0, n), or -1.
int64_t first_nonfinite(const float* data, int64_t n);
// Fails with "WHAT holds a non-finite value (nan) at index I of N" when there is one.
void check_finite(const float* data, int64_t n, const std::string& what);
// The same for a (rows, cols) weight in its own type: F16/BF16 values with an all-ones exponent, or an I8
// matrix's F16 scales (its integers are always finite).
void check_finite(const WeightView& w, int64_t rows, int64_t cols, const std::string& what);

// Bytes of a model's flat fp32 parameters (param_layout_size, from the config alone) and of their list
// (param_specs): what init, training and Model::from_params allocate per copy.
int64_t parameter_bytes(const Config& config);
// Bytes of a State of `batch` sequences.
int64_t state_bytes(const Config& config, int64_t batch);
// Bytes of an Engine's buffers for passes of `rows` tokens (B × chunk), as Engine::reserve lays them out.
int64_t engine_bytes(const Config& config, int64_t rows);
// A forward over B sequences of L tokens from the state of B sequences: the engine's buffers (passes of
// at most max_tokens), the ids and the state, plus `logit_rows` rows of logits kept at once.
int64_t forward_bytes(const Config& config, int64_t B, int64_t L, int64_t logit_rows, int64_t max_tokens = 2048);

}  // namespace mamba

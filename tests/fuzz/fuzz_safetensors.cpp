// The safetensors reader on arbitrary bytes: header, offsets, shapes, dtypes, checksums; then every
// tensor converted to fp32, which reads each byte the reader accepted.
#include <vector>

#include "core/safetensors.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  mamba::fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba::fuzz::input_file(data, size, "model.safetensors");
  try {
    const mamba::SafeTensorsReader reader = mamba::SafeTensorsReader::open_file(path);
    std::vector<float> values;
    for (const auto& [name, t] : reader.tensors()) {
      values.resize(static_cast<size_t>(t.numel()));
      mamba::convert_to_f32(values.data(), t.data, t.dtype, values.size());
    }
  } catch (const mamba::Error&) {
  }
  return 0;
}

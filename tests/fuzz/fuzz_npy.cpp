// The .npy reader on arbitrary bytes, then the conversions the commands use (ids, floats).
#include "core/npy.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  mamba::fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba::fuzz::input_file(data, size, "ids.npy");
  try {
    const mamba::NpyArray array = mamba::read_npy(path);
    if (array.descr[1] == 'f') {
      (void)array.as_f32();
    } else {
      (void)array.as_i64();
    }
  } catch (const mamba::Error&) {
  }
  return 0;
}

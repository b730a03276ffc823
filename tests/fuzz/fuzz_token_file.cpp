// A MAMBATOK token file on arbitrary bytes: the header, the documents and the validation split, then
// batches drawn from what was loaded.
#include <vector>

#include "fuzz_util.h"
#include "model/data.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  mamba::fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba::fuzz::input_file(data, size, "data.tok");
  try {
    const mamba::Dataset d = mamba::load_token_dataset({path}, 0, 3);
    std::vector<int32_t> inputs(2 * 8), targets(2 * 8);
    for (bool sequential : {false, true}) {
      mamba::BatchSampler sampler(d.train, 2, 8, sequential, 1);
      for (int i = 0; i < 3; i++) sampler.next(inputs.data(), targets.data());
    }
  } catch (const mamba::Error&) {
  }
  return 0;
}

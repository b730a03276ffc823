// A saved generation session (generate --save-state) on arbitrary bytes, loaded for a small model:
// the state tensors, the logits, the metadata (pending token, sampler state, ids seen); then a few
// tokens generated from it, which must be an error for non-finite values, never garbage.
#include <memory>

#include "fuzz_util.h"
#include "model/generator.h"
#include "small_model.h"

namespace {
std::unique_ptr<mamba::Model> g_model;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  mamba::fuzz::init();
  g_model = std::make_unique<mamba::Model>(mamba::test::small_model(1));  // 2 layers, d_inner 48, N 5, vocab 37
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba::fuzz::input_file(data, size, "state.safetensors");
  try {
    mamba::Engine engine(*g_model);
    const mamba::TextCodec codec = mamba::TextCodec::ids_only();
    mamba::GenerateOptions options;
    options.max_new_tokens = 3;
    mamba::Generator gen(engine, codec, mamba::SamplerOptions{}, options);
    const int seq = gen.load(path, size % 2 == 0);
    gen.feed(seq, {});
    gen.run();
  } catch (const mamba::Error&) {
  }
  return 0;
}

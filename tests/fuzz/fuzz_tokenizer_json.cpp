// tokenizer.json on arbitrary bytes: loading (vocabulary, merges, added tokens, options), then
// encoding a text that touches every stage and decoding the ids back.
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  mamba::fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = mamba::fuzz::input_file(data, size, "tokenizer.json");
  try {
    const mamba::Tokenizer tokenizer = mamba::Tokenizer::load(path.string());
    const auto ids = tokenizer.encode("Hello, world!  It's <|endoftext|> caf\xc3\xa9 \xf0\x9f\x98\x80 \xff 12345\n\n");
    for (int32_t id : ids) {
      if (id < 0 || id >= tokenizer.vocab_size()) std::abort();
    }
    (void)tokenizer.decode(ids);
  } catch (const mamba::Error&) {
  }
  return 0;
}

// Encoding arbitrary bytes with a real tokenizer (GPT-NeoX's from ../shared when present, else the
// test fixture's tiny one), decoding the ids, and streaming them through the decoder one at a time:
// the stream must equal the whole decode.
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

namespace {
std::unique_ptr<mamba::Tokenizer> g_tokenizer;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  mamba::fuzz::init();
  const std::filesystem::path shared = MAMBA_SHARED_DIR "/data/gpt-neox-20b/tokenizer.json";
  const std::filesystem::path fixture = MAMBA_SOURCE_DIR "/tests/fuzz/corpus/tokenizer_json/tiny.json";
  const std::filesystem::path path = std::filesystem::exists(shared) ? shared : fixture;
  std::fprintf(stderr, "fuzz_tokenize: %s\n", path.c_str());
  g_tokenizer = std::make_unique<mamba::Tokenizer>(mamba::Tokenizer::load(path.string()));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto ids = g_tokenizer->encode(text);
  for (int32_t id : ids) {
    if (id < 0 || id >= g_tokenizer->vocab_size()) std::abort();
  }
  const std::string whole = g_tokenizer->decode(ids);
  mamba::StreamDecoder stream(*g_tokenizer);
  std::string pieces;
  for (int32_t id : ids) pieces += stream.push(id);
  pieces += stream.finish();
  if (pieces != whole) std::abort();
  return 0;
}

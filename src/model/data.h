// Training data as one stream of token ids, split into training and validation documents, and the
// batches drawn from it: byte-level text (bytes 0–255, then an end-of-document token 256) from files
// or folders, or pre-tokenized binary files.
//
// Binary token file: "MAMBATOK" (8 bytes), u32 version = 1, u32 bytes per token (2 or 4), u64 count,
// then `count` little-endian unsigned tokens. Documents are separated by the model's EOS token.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/rng.h"

namespace mamba {

constexpr int kByteVocab = 257;      // 256 byte values + end of document
constexpr int kByteEndOfDoc = 256;

struct TokenStream {
  std::vector<int32_t> tokens;
  int64_t documents = 0;
  int64_t rows = 0;  // > 0: `tokens` is this many independent rows of equal length (a fixed batch)
};

struct Dataset {
  TokenStream train, val;
  int32_t max_token = 0;  // the largest id seen (checked against the model's vocabulary)
};

// Text: every regular file under each path (folders are walked in name order), one document each.
// Every `val_every`-th document goes to validation (0: none).
Dataset load_text_dataset(const std::vector<std::filesystem::path>& paths, int val_every);
// Binary token files; documents end at `eos`. Every `val_every`-th document goes to validation.
Dataset load_token_dataset(const std::vector<std::filesystem::path>& paths, int32_t eos, int val_every);
void write_token_file(const std::filesystem::path& path, const std::vector<int32_t>& tokens, int bytes_per_token);
// A fixed batch: an integer .npy (B, L + 1), each row an independent sequence (inputs its first L
// tokens, targets its last L), the whole batch at every step, for comparisons with other frameworks.
// No validation split.
Dataset load_fixed_batch(const std::filesystem::path& path);

// Windows of L + 1 tokens: inputs are the first L, targets the last L.
class BatchSampler {
 public:
  // sequential = true reads the stream in order, window after window, wrapping at the end (for
  // comparisons against another trainer); otherwise windows start at random positions. A stream of
  // rows (a fixed batch) must hold B rows of L + 1 tokens and gives them at every call.
  BatchSampler(const TokenStream& stream, int B, int L, bool sequential, uint64_t seed);

  void next(int32_t* inputs, int32_t* targets);  // each (B, L)

  // Everything needed to continue exactly where a run stopped.
  uint64_t rng_state() const { return rng_.state; }
  int64_t cursor() const { return cursor_; }
  // Fails on a negative cursor (a cursor past the end wraps, as when the data has shrunk).
  void restore(uint64_t rng_state, int64_t cursor);

 private:
  const TokenStream& stream_;
  int B_, L_;
  bool sequential_;
  Rng rng_;
  int64_t cursor_ = 0;
};

}  // namespace mamba

// The byte-level BPE tokenizer of the GPT-2 / GPT-NeoX family, read from a Hugging Face tokenizer.json
// and giving the ids that Hugging Face `tokenizers` gives (checked against its own output on a fixture
// corpus: tests/fixtures/tokenizer/). The pipeline of encode(), in HF's order:
//
//   bytes ─ invalid UTF-8 → U+FFFD ─ split out added tokens with "normalized": false (<|endoftext|>)
//         ─ NFC on each piece between them ─ split out added tokens with "normalized": true (space runs)
//         ─ ByteLevel pre-tokenizer: GPT-2 regex splits words, each byte becomes one symbol
//         ─ BPE per word: merge the adjacent pair of lowest merge rank until none is left ─ ids
//
// decode() is HF's ByteLevel decoder: each token's characters map back to bytes, the bytes are
// concatenated, and invalid UTF-8 in the result becomes U+FFFD. docs/tokenizer.md has the details.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mamba {

class Tokenizer {
 public:
  // `path`: a tokenizer.json, or a folder that holds one. Throws Error naming the file and the field
  // when the file is not JSON, lacks a part, or asks for something other than byte-level BPE.
  static Tokenizer load(const std::string& path);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Any bytes: invalid UTF-8 is replaced by U+FFFD first (as a JavaScript caller's TextDecoder would).
  // Added tokens in the text (<|endoftext|>) are matched, as HF does. Safe to call from several threads.
  std::vector<int32_t> encode(std::string_view text) const;

  // Throws Error for an id that names no token. `skip_special` drops special added tokens.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // The bytes token `id` stands for, as the ByteLevel decoder maps it: possibly part of a UTF-8
  // character. Throws Error for an id that names no token.
  const std::string& token_bytes(int32_t id) const;
  bool is_special(int32_t id) const;
  int32_t vocab_size() const;  // one past the largest id of the model's vocabulary and the added tokens
  // The id of a token given as it is written in tokenizer.json ("Ġthe", "<|endoftext|>"), or -1.
  int32_t token_id(std::string_view token) const;
  const std::string& path() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Decodes ids one at a time and hands back only whole UTF-8 characters: a token that ends inside a
// multi-byte character (one emoji is often 2–4 byte-level tokens) is held until the rest arrives.
// The concatenation of push()es and finish() equals Tokenizer::decode() of all the ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false);
  std::string push(int32_t id);  // the text this token completes, maybe ""
  std::string finish();          // an unfinished character at the end becomes U+FFFD
  size_t held_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_;  // at most 3 bytes: the start of a character still being decoded
};

// Appends `in` to `out` with each maximal invalid subsequence replaced by one U+FFFD (the Unicode
// "substitution of maximal subparts", which Rust's String::from_utf8_lossy and the WHATWG
// TextDecoder both follow). With `hold_tail`, a truncated but so far valid sequence at the end is
// left unconsumed. Returns the number of bytes of `in` consumed.
size_t append_utf8_lossy(std::string& out, std::string_view in, bool hold_tail = false);
std::string utf8_lossy(std::string_view in);

}  // namespace mamba

#include "tokenizer/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/uniset.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "core/file.h"
#include "core/json.h"
#include "core/limits.h"

namespace mamba {

namespace {

using nlohmann::json;

// ---- UTF-8 ----

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// The sequence at s[0..avail): > 0 is the length of a valid character; < 0 is minus the length of a
// maximal invalid subpart (the lead byte and the continuation bytes that were still acceptable);
// 0 means a valid prefix that `avail` cut short. Byte ranges from Unicode 15, Table 3-7.
int utf8_sequence(const uint8_t* s, size_t avail) {
  const uint8_t b = s[0];
  if (b < 0x80) return 1;
  int need = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b >= 0xC2 && b <= 0xDF) {
    need = 1;
  } else if (b == 0xE0) {
    need = 2, lo = 0xA0;  // no overlong forms
  } else if (b == 0xED) {
    need = 2, hi = 0x9F;  // no surrogates
  } else if (b >= 0xE1 && b <= 0xEF) {
    need = 2;
  } else if (b == 0xF0) {
    need = 3, lo = 0x90;
  } else if (b >= 0xF1 && b <= 0xF3) {
    need = 3;
  } else if (b == 0xF4) {
    need = 3, hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return -1;  // 80..C1 and F5..FF never start a character
  }
  for (int k = 1; k <= need; ++k) {
    if (static_cast<size_t>(k) == avail) return 0;
    const uint8_t c = s[k];
    if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) return -k;
  }
  return need + 1;
}

bool is_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<uint8_t>(c) < 0x80; });
}

bool is_valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  for (size_t i = 0; i < s.size();) {
    const int len = utf8_sequence(p + i, s.size() - i);
    if (len <= 0) return false;
    i += static_cast<size_t>(len);
  }
  return true;
}

// Code point at s[i] of valid UTF-8; advances i.
char32_t next_char(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const uint8_t b = p[i];
  if (b < 0x80) return p[i++];
  const int len = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
  char32_t c = b & (0x7F >> len);
  for (int k = 1; k < len; ++k) c = (c << 6) | (p[i + k] & 0x3F);
  i += static_cast<size_t>(len);
  return c;
}

// Start of the character that ends at s[end) of valid UTF-8 (end > 0).
size_t prev_char_start(std::string_view s, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
  return start;
}

void append_char(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// Unicode classes that HF's added-token options use, through Rust's regex crate: \s is White_Space;
// \w is Alphabetic, marks, decimal digits, connector punctuation and Join_Control (UTS #18 Annex C).
bool is_space(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE); }
bool is_word(char32_t c) {
  const auto u = static_cast<UChar32>(c);
  return u_hasBinaryProperty(u, UCHAR_ALPHABETIC) || u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL) ||
         (U_GET_GC_MASK(u) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0;
}

// ---- the byte-level alphabet ----

// GPT-2's bytes_to_unicode: the printable bytes '!'..'~', '¡'..'¬', '®'..'ÿ' stand for themselves;
// the other 68 (controls, space, 7F..A0, AD) take U+0100, U+0101, ... in byte order. Every byte is
// then one visible character, and a token is a string of them.
constexpr char32_t kAlphabetEnd = 0x100 + 68;

struct ByteAlphabet {
  std::array<char32_t, 256> char_of{};          // byte → character
  std::array<int16_t, kAlphabetEnd> byte_of{};  // character → byte, -1 for none

  ByteAlphabet() {
    byte_of.fill(-1);
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char_of[b] = printable ? static_cast<char32_t>(b) : next++;
      byte_of[char_of[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

// HF's ByteLevel decoder for one token: its characters as bytes, or, when any character is outside
// the alphabet (an added token such as a run of spaces), the token's own UTF-8 unchanged.
std::string byte_level_decode(std::string_view token) {
  std::string bytes;
  for (size_t i = 0; i < token.size();) {
    const char32_t c = next_char(token, i);
    if (c >= kAlphabetEnd || alphabet().byte_of[c] < 0) return std::string(token);
    bytes += static_cast<char>(alphabet().byte_of[c]);
  }
  return bytes;
}

std::string byte_level_encode(std::string_view bytes) {
  std::string token;
  for (char b : bytes) append_char(token, alphabet().char_of[static_cast<uint8_t>(b)]);
  return token;
}

// ---- NFC ----

// HF's NFC (the unicode-normalization-alignments crate) has the tables of Unicode 9.0: a mark first
// assigned later (U+1DF6, U+08D3, ...) is an unknown starter to it, so it is neither reordered nor
// composed across. ICU's normalizer filtered to the code points of Unicode 9.0 does the same, since
// Unicode's stability policy freezes the decompositions and combining classes of assigned code points.
const icu::Normalizer2& hf_nfc() {
  static const icu::Normalizer2& normalizer = []() -> const icu::Normalizer2& {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
    static icu::UnicodeSet unicode_9(icu::UnicodeString::fromUTF8("[:age=9.0:]"), status);
    if (U_FAILURE(status)) fail("tokenizer: ICU has no NFC normalizer: ", u_errorName(status));
    unicode_9.freeze();  // a frozen set spans text with a bitmap instead of a binary search per character
    static const icu::FilteredNormalizer2 filtered(*nfc, unicode_9);
    return filtered;
  }();
  return normalizer;
}

// NFC as HF does it, through ICU. Returns `s` itself when it is already NFC, the usual case, else
// the normalized text in `storage`.
std::string_view to_nfc(std::string_view s, std::string& storage) {
  if (is_ascii(s)) return s;
  if (s.size() > INT32_MAX)
    fail("tokenizer: a text of ", s.size(), " bytes is too long to normalize at once");
  const icu::StringPiece piece(s.data(), static_cast<int32_t>(s.size()));
  UErrorCode status = U_ZERO_ERROR;
  // Text in full NFC is also in Unicode-9.0 NFC (each span the filter normalizes is then already
  // ordered and composed), and the unfiltered check is several times faster.
  const icu::Normalizer2* full = icu::Normalizer2::getNFCInstance(status);
  if (U_SUCCESS(status) && full->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) return s;
  const icu::Normalizer2& normalizer = hf_nfc();
  storage.clear();
  icu::StringByteSink<std::string> sink(&storage);
  status = U_ZERO_ERROR;
  normalizer.normalizeUTF8(0, piece, sink, nullptr, status);
  if (U_FAILURE(status)) fail("tokenizer: NFC normalization failed: ", u_errorName(status));
  return storage;
}

// ---- added tokens ----

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = true;
};

// Leftmost-longest search for a set of literal strings. HF uses an Aho-Corasick automaton with
// MatchKind::LeftmostLongest; a byte trie walked from each start position finds the same matches,
// and a tokenizer has only a few dozen added tokens.
class LiteralSet {
 public:
  LiteralSet() : nodes_(1) {}

  void add(std::string_view s, int value) {
    int32_t node = 0;
    for (char ch : s) {
      const auto b = static_cast<uint8_t>(ch);
      if (nodes_[node].next[b] == 0) {
        nodes_[node].next[b] = static_cast<int32_t>(nodes_.size());
        nodes_.emplace_back();
      }
      node = nodes_[node].next[b];
    }
    if (nodes_[node].value < 0) nodes_[node].value = value;  // the first token with this content wins
  }
  bool empty() const { return nodes_.size() == 1; }

  // The longest string that starts at text[pos]: its value, with its length in `len`; -1 for none.
  int longest_at(std::string_view text, size_t pos, size_t& len) const {
    int found = -1;
    int32_t node = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      node = nodes_[node].next[static_cast<uint8_t>(text[i])];
      if (node == 0) break;
      if (nodes_[node].value >= 0) found = nodes_[node].value, len = i + 1 - pos;
    }
    return found;
  }

 private:
  struct Node {
    std::array<int32_t, 256> next{};  // 0 = no child (the root is never a child)
    int value = -1;
  };
  std::vector<Node> nodes_;
};

// A stretch of text: an added token when id >= 0, else text still to tokenize.
struct Piece {
  size_t begin, end;
  int32_t id;
};

// ---- the split regex ----

// Ranges, in PCRE2 class syntax, of the code points in the Unicode property `property` ("L", "N")
// that were assigned after the Unicode version of PCRE2's own tables: HF's Oniguruma knows a newer
// Unicode (16.0) than PCRE2 10.42 (14.0), so \p{L} alone would miss letters such as CJK Extension H.
// ICU (72: Unicode 15.0) supplies them; code points first assigned after ICU's version may still split
// differently from HF.
std::string newer_than_pcre2(const char* property) {
  std::array<char, 64> version{};
  pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, version.data());
  std::string major_minor(version.data());
  major_minor = major_minor.substr(0, major_minor.find('.', major_minor.find('.') + 1));  // "14.0.0" → "14.0"
  UErrorCode status = U_ZERO_ERROR;
  const std::string pattern = std::string("[[:") + property + ":]-[:age=" + major_minor + ":]]";
  const icu::UnicodeSet set(icu::UnicodeString::fromUTF8(pattern), status);
  if (U_FAILURE(status)) fail("tokenizer: ICU rejects the set ", pattern, ": ", u_errorName(status));
  std::string ranges;
  char buffer[48];
  for (int32_t i = 0; i < set.getRangeCount(); ++i) {
    std::snprintf(buffer, sizeof(buffer), "\\x{%X}-\\x{%X}", static_cast<unsigned>(set.getRangeStart(i)),
                  static_cast<unsigned>(set.getRangeEnd(i)));
    ranges += buffer;
  }
  return ranges;
}

// GPT-2's pattern as HF's ByteLevel pre-tokenizer has it:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// HF runs it on Oniguruma, whose \s is exactly the White_Space property. PCRE2's \s under UCP also
// takes U+180E (through \h), which Oniguruma splits differently, so \s is spelled out here; \p{L}
// and \p{N} gain the code points PCRE2's tables are too old for.
std::string split_pattern() {
  const std::string ws =
      "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
  const std::string letter = "\\p{L}" + newer_than_pcre2("L"), number = "\\p{N}" + newer_than_pcre2("N");
  return "'s|'t|'re|'ve|'m|'ll|'d| ?[" + letter + "]+| ?[" + number + "]+| ?[^" + ws + letter + number +
         "]+|[" + ws + "]+(?![^" + ws + "])|[" + ws + "]+";
}

struct Pcre2Code {
  pcre2_code* code = nullptr;
  Pcre2Code() {
    int error = 0;
    PCRE2_SIZE offset = 0;
    const std::string pattern = split_pattern();
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                         &error, &offset, nullptr);
    if (code == nullptr) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(error, message.data(), message.size());
      fail("tokenizer: the split regex does not compile at offset ", offset, ": ",
           reinterpret_cast<const char*>(message.data()));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // when the JIT is missing, pcre2_match interprets
  }
  ~Pcre2Code() { pcre2_code_free(code); }
  Pcre2Code(const Pcre2Code&) = delete;
  Pcre2Code& operator=(const Pcre2Code&) = delete;
};

// The pattern is the same for every tokenizer: compiled (and JIT-compiled) once per process, not per
// load. A compiled pattern is read-only; each encode() has its own match data.
const Pcre2Code& split_regex() {
  static const Pcre2Code regex;
  return regex;
}

struct MatchData {
  pcre2_match_data* data;
  explicit MatchData(const pcre2_code* code) : data(pcre2_match_data_create_from_pattern(code, nullptr)) {}
  ~MatchData() { pcre2_match_data_free(data); }
  MatchData(const MatchData&) = delete;
  MatchData& operator=(const MatchData&) = delete;
};

// ---- BPE ----

struct Merge {
  int32_t rank;    // position in model.merges: lower merges first
  int32_t new_id;  // the token the pair becomes
};

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// (left, right) → Merge in one flat array, open addressing with linear probing: BPE looks up every
// adjacent pair it considers, and a node-based map costs a cache miss or two more per lookup.
class MergeTable {
 public:
  MergeTable() : slots_(16, Slot{kEmpty, {}}) {}

  void insert_or_assign(uint64_t key, Merge merge) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    Slot& slot = slots_[position(key)];
    if (slot.key == kEmpty) ++size_;
    slot = {key, merge};
  }
  const Merge* find(uint64_t key) const {
    const Slot& slot = slots_[position(key)];
    return slot.key == key ? &slot.merge : nullptr;
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // the pair (-1, -1): ids are never negative
  struct Slot {
    uint64_t key;
    Merge merge;
  };
  // The slot that holds `key`, or the empty one where it would go.
  size_t position(uint64_t key) const {
    const size_t mask = slots_.size() - 1;
    size_t i = static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;  // Fibonacci hashing
    while (slots_[i].key != key && slots_[i].key != kEmpty) i = (i + 1) & mask;
    return i;
  }
  void grow() {
    std::vector<Slot> old(slots_.size() * 2, Slot{kEmpty, {}});
    old.swap(slots_);
    for (const Slot& slot : old) {
      if (slot.key != kEmpty) slots_[position(slot.key)] = slot;
    }
  }
  std::vector<Slot> slots_;  // a power of two, at most half full
  size_t size_ = 0;
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// ---- reading tokenizer.json ----

const json* member(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::string type_of(const json& j, const std::string& file, const std::string& field) {
  const json* type = member(j, "type");
  if (type == nullptr || !type->is_string())
    fail(file, ": field \"", field, ".type\" is missing or not a string");
  return type->get<std::string>();
}

bool get_flag(const json& j, const char* key, bool fallback, const std::string& file,
              const std::string& field) {
  const json* v = member(j, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean())
    fail(file, ": field \"", field, ".", key, "\" must be true or false, got ", json_brief(*v));
  return v->get<bool>();
}

int32_t get_id(const json& v, const std::string& file, const std::string& field) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
    fail(file, ": field \"", field, "\" must be a token id (an integer >= 0), got ", json_brief(v));
  }
  return static_cast<int32_t>(v.get<int64_t>());
}

}  // namespace

struct Tokenizer::Impl {
  std::string path;
  bool normalize_nfc = false;     // normalizer: NFC
  bool add_prefix_space = false;  // pre_tokenizer.add_prefix_space
  bool use_regex = true;          // pre_tokenizer.use_regex
  bool ignore_merges = false;     // model.ignore_merges: a word that is a whole token is kept
  // The model's vocabulary, tokens as written in the file (byte-level characters: "Ġthe").
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> model_vocab;
  std::array<int32_t, 256> byte_id{};  // the token of each single byte, -1 for none
  int32_t unk_id = -1;                 // model.unk_token: stands for a byte without a token
  bool fuse_unk = false;               // model.fuse_unk: a run of such bytes is one unk
  MergeTable merges;                   // (left, right) → rank and result
  std::vector<AddedToken> added;
  LiteralSet raw_added, normalized_added;     // their values index `added`
  std::vector<std::string> id_bytes;          // id → bytes, as the decoder gives them
  std::vector<uint8_t> id_known, id_special;  // id → flags
  const Pcre2Code& regex = split_regex();

  // BPE results of words seen before, keyed by the word's bytes. HF keeps a similar cache.
  static constexpr size_t kCacheWords = 1 << 17, kCacheWordBytes = 256;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache;

  void read(const json& root);
  void split_added(std::string_view text, const LiteralSet& set, std::vector<Piece>& out) const;
  void encode_text(std::string_view text, MatchData& match, std::vector<int32_t>& ids) const;
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;
  void bpe(std::string_view word, std::vector<int32_t>& ids) const;
};

void Tokenizer::Impl::read(const json& root) {
  if (!root.is_object()) fail(path, ": expected a JSON object at the top level");
  const json* model = member(root, "model");
  if (model == nullptr || !model->is_object()) fail(path, ": missing field \"model\"");
  const std::string model_type = member(*model, "type") ? type_of(*model, path, "model") : "BPE";
  if (model_type != "BPE")
    fail(path, ": field \"model.type\" is \"", model_type, "\"; only byte-level \"BPE\" is supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const json* v = member(*model, key);
        v != nullptr && !(v->is_string() && v->get<std::string>().empty())) {
      fail(path, ": field \"model.", key, "\" is ", json_brief(*v), "; byte-level BPE has none");
    }
  }
  if (const json* v = member(*model, "dropout");
      v != nullptr && !(v->is_number() && v->get<double>() == 0.0)) {
    fail(path, ": field \"model.dropout\" is ", json_brief(*v), "; BPE dropout is not supported");
  }
  if (get_flag(*model, "byte_fallback", false, path, "model")) {
    fail(path, ": field \"model.byte_fallback\" is true; that is SentencePiece-style BPE, not byte-level");
  }
  ignore_merges = get_flag(*model, "ignore_merges", false, path, "model");

  // Vocabulary: token → id; the decoder's bytes for each id.
  const json* vocab = member(*model, "vocab");
  if (vocab == nullptr || !vocab->is_object())
    fail(path, ": missing field \"model.vocab\" (an object: token → id)");
  int32_t max_id = -1;
  for (const auto& [token, id_json] : vocab->items()) {
    const int32_t id = get_id(id_json, path, "model.vocab[\"" + token + "\"]");
    model_vocab.emplace(token, id);
    max_id = std::max(max_id, id);
  }
  if (model_vocab.empty()) fail(path, ": field \"model.vocab\" is empty");

  // Added tokens (HF lists specials and the others together; each carries its own flags).
  if (const json* list = member(root, "added_tokens")) {
    if (!list->is_array()) fail(path, ": field \"added_tokens\" must be an array");
    for (size_t i = 0; i < list->size(); ++i) {
      const json& t = (*list)[i];
      const std::string field = "added_tokens[" + std::to_string(i) + "]";
      const json* content = member(t, "content");
      const json* id = member(t, "id");
      if (content == nullptr || !content->is_string())
        fail(path, ": field \"", field, ".content\" is missing or not a string");
      if (id == nullptr) fail(path, ": field \"", field, ".id\" is missing");
      AddedToken a;
      a.content = content->get<std::string>();
      a.id = get_id(*id, path, field + ".id");
      a.special = get_flag(t, "special", false, path, field);
      a.single_word = get_flag(t, "single_word", false, path, field);
      a.lstrip = get_flag(t, "lstrip", false, path, field);
      a.rstrip = get_flag(t, "rstrip", false, path, field);
      a.normalized = get_flag(t, "normalized", !a.special, path, field);
      if (!a.content.empty()) added.push_back(std::move(a));  // HF ignores empty ones
    }
  }
  // HF gives added tokens their ids anew when it loads a file (AddedVocabulary::add_tokens), and only
  // warns when the file's "id" differs: a content already in the vocabulary keeps that id, a new one
  // takes the next id after the model's vocabulary (counted in entries) or after the largest added
  // id. A content listed twice is one token, with the later flags.
  std::unordered_map<std::string, size_t> added_index;  // content → position in `deduplicated`
  std::vector<AddedToken> deduplicated;
  const auto model_size = static_cast<int32_t>(model_vocab.size());
  int32_t max_added = -1;
  for (AddedToken& a : added) {
    if (auto it = added_index.find(a.content); it != added_index.end()) {
      a.id = deduplicated[it->second].id;
      deduplicated[it->second] = std::move(a);
      continue;
    }
    if (auto it = model_vocab.find(a.content); it != model_vocab.end()) {
      a.id = it->second;
    } else {
      if (max_added == INT32_MAX) fail(path, ": added token ", json_brief(a.content), " gets no id: the ids run past 2^31 - 1");
      a.id = max_added < 0 ? model_size : max_added >= model_size ? max_added + 1 : model_size;
    }
    max_added = std::max(max_added, a.id);
    max_id = std::max(max_id, a.id);
    added_index.emplace(a.content, deduplicated.size());
    deduplicated.push_back(std::move(a));
  }
  added = std::move(deduplicated);

  // The id tables are dense (index = id), so their size comes from the largest id, not from the
  // number of tokens: one absurd id would otherwise allocate gigabytes.
  check_memory(sat_mul(int64_t{max_id} + 1, sizeof(std::string) + 2),
               path + ": the tables of token ids up to " + std::to_string(max_id));
  id_bytes.assign(static_cast<size_t>(max_id) + 1, {});
  id_known.assign(id_bytes.size(), 0);
  id_special.assign(id_bytes.size(), 0);
  for (const auto& [token, id] : model_vocab) {
    id_bytes[id] = byte_level_decode(token);
    id_known[id] = 1;
  }
  for (const AddedToken& a : added) {  // an added token's content wins over the model's token of that id
    id_bytes[a.id] = byte_level_decode(a.content);
    id_known[a.id] = 1;
    id_special[a.id] = a.special;
  }
  // The token of each byte. GPT-NeoX's vocabulary lacks the 13 bytes that never occur in UTF-8
  // (C0, C1, F5..FF); as text is made valid UTF-8 first, those never reach BPE.
  for (int b = 0; b < 256; ++b) {
    auto it = model_vocab.find(byte_level_encode(std::string(1, static_cast<char>(b))));
    byte_id[b] = it == model_vocab.end() ? -1 : it->second;
  }
  if (const json* unk = member(*model, "unk_token")) {
    if (!unk->is_string() || !model_vocab.contains(unk->get<std::string>())) {
      fail(path, ": field \"model.unk_token\" must name a token of model.vocab, got ", json_brief(*unk));
    }
    unk_id = model_vocab.find(unk->get<std::string>())->second;
  }
  fuse_unk = get_flag(*model, "fuse_unk", false, path, "model");

  // Merges: "left right" strings (older files) or [left, right] pairs; the rank is the position.
  const json* merge_list = member(*model, "merges");
  if (merge_list == nullptr || !merge_list->is_array())
    fail(path, ": missing field \"model.merges\" (an array)");
  for (size_t i = 0; i < merge_list->size(); ++i) {
    const json& m = (*merge_list)[i];
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        fail(path, ": field \"model.merges[", i, "]\" must be two tokens separated by one space, got ",
             json_brief(m));
      }
      left = s.substr(0, space), right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>(), right = m[1].get<std::string>();
    } else {
      fail(path, ": field \"model.merges[", i, "]\" must be \"left right\" or [\"left\", \"right\"], got ",
           json_brief(m));
    }
    auto l = model_vocab.find(left), r = model_vocab.find(right), merged = model_vocab.find(left + right);
    if (l == model_vocab.end() || r == model_vocab.end() || merged == model_vocab.end()) {
      fail(path, ": field \"model.merges[", i, "]\" ", json_brief(m), " names a token that is not in model.vocab");
    }
    // A repeated pair takes its last rank, as HF's HashMap collect does.
    merges.insert_or_assign(pair_key(l->second, r->second), Merge{static_cast<int32_t>(i), merged->second});
  }

  // Normalizer: none, NFC, or a Sequence of NFCs.
  if (const json* normalizer = member(root, "normalizer")) {
    const std::string type = type_of(*normalizer, path, "normalizer");
    if (type == "NFC") {
      normalize_nfc = true;
    } else if (type == "Sequence" && member(*normalizer, "normalizers") &&
               (*normalizer)["normalizers"].is_array()) {
      for (const json& n : (*normalizer)["normalizers"]) {
        const std::string inner = type_of(n, path, "normalizer.normalizers[]");
        if (inner != "NFC")
          fail(path, ": field \"normalizer.normalizers[].type\" is \"", inner,
               "\"; only \"NFC\" is supported");
        normalize_nfc = true;
      }
    } else {
      fail(path, ": field \"normalizer.type\" is \"", type, "\"; only \"NFC\" (or none) is supported");
    }
  }
  const json* pre = member(root, "pre_tokenizer");
  if (pre == nullptr) fail(path, ": missing field \"pre_tokenizer\" (expected {\"type\": \"ByteLevel\"})");
  if (const std::string type = type_of(*pre, path, "pre_tokenizer"); type != "ByteLevel") {
    fail(path, ": field \"pre_tokenizer.type\" is \"", type, "\"; only \"ByteLevel\" is supported");
  }
  add_prefix_space = get_flag(*pre, "add_prefix_space", true, path, "pre_tokenizer");
  use_regex = get_flag(*pre, "use_regex", true, path, "pre_tokenizer");
  const json* decoder = member(root, "decoder");
  if (decoder == nullptr) fail(path, ": missing field \"decoder\" (expected {\"type\": \"ByteLevel\"})");
  if (const std::string type = type_of(*decoder, path, "decoder"); type != "ByteLevel") {
    fail(path, ": field \"decoder.type\" is \"", type, "\"; only \"ByteLevel\" is supported");
  }
  // Post-processing that adds tokens, and truncation, would change the ids; ByteLevel only moves offsets.
  if (const json* post = member(root, "post_processor")) {
    if (const std::string type = type_of(*post, path, "post_processor"); type != "ByteLevel") {
      fail(path, ": field \"post_processor.type\" is \"", type,
           "\"; only \"ByteLevel\" (or none) is supported");
    }
  }
  if (member(root, "truncation") != nullptr)
    fail(path, ": field \"truncation\" must be null; truncation is not supported");

  // Added tokens are found in the raw text or, when "normalized", in the normalized text with their
  // content normalized too. HF puts the specials first in its automaton.
  std::vector<size_t> order(added.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_partition(order.begin(), order.end(), [&](size_t i) { return added[i].special; });
  for (size_t i : order) {
    const AddedToken& a = added[i];
    if (!a.normalized) {
      raw_added.add(a.content, static_cast<int>(i));
    } else {
      std::string storage;
      normalized_added.add(normalize_nfc ? std::string(to_nfc(a.content, storage)) : a.content,
                           static_cast<int>(i));
    }
  }
}

// HF's AddedVocabulary::find_matches: leftmost-longest matches of the added tokens, with their
// single_word / lstrip / rstrip options; the text between them becomes pieces to tokenize.
void Tokenizer::Impl::split_added(std::string_view text, const LiteralSet& set,
                                  std::vector<Piece>& out) const {
  if (set.empty()) {
    out.push_back({0, text.size(), -1});
    return;
  }
  size_t done = 0;  // end of the last match
  size_t pos = 0;
  while (pos < text.size()) {
    size_t len = 0;
    const int found = set.longest_at(text, pos, len);
    if (found < 0) {
      ++pos;
      continue;
    }
    const AddedToken& a = added[static_cast<size_t>(found)];
    size_t start = pos, stop = pos + len;
    pos = stop;  // the automaton goes on after the match, whether or not it is kept
    if (a.single_word) {
      size_t before = start > 0 ? prev_char_start(text, start) : 0, after = stop;
      const bool word_before = start > 0 && is_word(next_char(text, before));
      const bool word_after = stop < text.size() && is_word(next_char(text, after));
      if (word_before || word_after) continue;
    }
    if (a.lstrip) {  // never back into the previous match
      while (start > done) {
        const size_t char_start = prev_char_start(text, start);
        size_t i = char_start;
        if (!is_space(next_char(text, i))) break;
        start = char_start;
      }
    }
    if (a.rstrip) {
      while (stop < text.size()) {
        size_t next = stop;
        if (!is_space(next_char(text, next))) break;
        stop = next;
      }
      pos = stop;  // HF could match again inside the stripped spaces; its splits would overlap
    }
    if (start > done) out.push_back({done, start, -1});
    out.push_back({start, stop, a.id});
    done = stop;
  }
  if (done < text.size()) out.push_back({done, text.size(), -1});
}

// One piece of normalized text between added tokens: the ByteLevel pre-tokenizer's regex split, then
// BPE on each word. Text between regex matches would be a word too (HF's "Isolated" split), though
// this pattern leaves none.
void Tokenizer::Impl::encode_text(std::string_view text, MatchData& match, std::vector<int32_t>& ids) const {
  std::string prefixed;
  if (add_prefix_space && text.front() != ' ') {
    prefixed.reserve(text.size() + 1);
    prefixed.append(" ").append(text);
    text = prefixed;
  }
  if (!use_regex) {
    encode_word(text, ids);
    return;
  }
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    const int rc =
        pcre2_match(regex.code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, match.data, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) {
      encode_word(text.substr(pos), ids);
      return;
    }
    if (rc < 0) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(rc, message.data(), message.size());
      fail("tokenizer: the split regex failed at byte ", pos, ": ",
           reinterpret_cast<const char*>(message.data()));
    }
    const PCRE2_SIZE* span = pcre2_get_ovector_pointer(match.data);
    if (span[0] > pos) encode_word(text.substr(pos, span[0] - pos), ids);
    if (span[1] == span[0]) {  // cannot happen with this pattern; guards against looping forever
      encode_word(text.substr(span[0]), ids);
      return;
    }
    encode_word(text.substr(span[0], span[1] - span[0]), ids);
    pos = span[1];
  }
}

void Tokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  if (word.size() == 1 && byte_id[static_cast<uint8_t>(word[0])] >= 0) {
    ids.push_back(byte_id[static_cast<uint8_t>(word[0])]);
    return;
  }
  if (ignore_merges) {
    if (auto it = model_vocab.find(byte_level_encode(word)); it != model_vocab.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  if (word.size() > kCacheWordBytes) {
    bpe(word, ids);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (auto it = cache.find(word); it != cache.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids.size();
  bpe(word, ids);
  std::lock_guard<std::mutex> lock(cache_mutex);
  if (cache.size() < kCacheWords)
    cache.emplace(std::string(word),
                  std::vector<int32_t>(ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end()));
}

// BPE on one word, as HF's Word::merge_all: every adjacent pair with a merge goes into a min-heap
// ordered by (rank, position); the top is merged unless it went stale (a neighbour was merged
// away), and the merged symbol's new pairs with its neighbours go in. O(n log n) in the word length.
void Tokenizer::Impl::bpe(std::string_view word, std::vector<int32_t>& ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // linked list over the live symbols; -1 at the ends
    bool live;
  };
  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  // (n,) one symbol per byte to start with. A byte without a token becomes unk_id, or is dropped when
  // there is none, as HF's BPE does with a character missing from the vocabulary.
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  bool last_unk = false;
  for (char ch : word) {
    int32_t id = byte_id[static_cast<uint8_t>(ch)];
    const bool unk = id < 0;
    if (unk) id = unk_id;
    if (id < 0 || (unk && last_unk && fuse_unk)) continue;
    last_unk = unk;
    const auto i = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, i - 1, -1, true});
    if (i > 0) symbols[i - 1].next = i;
  }
  const auto n = static_cast<int32_t>(symbols.size());
  if (n == 0) return;
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto consider = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    if (const Merge* m = merges.find(pair_key(symbols[left].id, symbols[right].id))) {
      heap.push({m->rank, left, m->new_id});
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = symbols[top.pos];
    if (!left.live || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const Merge* m = merges.find(pair_key(left.id, right.id));
    if (m == nullptr || m->new_id != top.new_id) continue;  // stale
    left.id = top.new_id;
    right.live = false;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
}

// ---- Tokenizer ----

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  std::filesystem::path file = path;
  if (std::filesystem::is_directory(file)) file /= "tokenizer.json";
  impl->path = file.string();
  if (!std::filesystem::exists(file)) fail(impl->path, ": no such file");
  const json root = read_json_file(impl->path);
  try {
    impl->read(root);
  } catch (const json::exception& e) {  // a field of an unexpected JSON type that the checks missed
    fail(impl->path, ": unexpected content: ", e.what());
  }
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::string cleaned;
  if (!is_valid_utf8(text)) {
    cleaned = utf8_lossy(text);
    text = cleaned;
  }
  const Impl& t = *impl_;
  MatchData match(t.regex.code);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3);
  std::vector<Piece> raw_pieces, pieces;
  std::string normalized_storage;
  t.split_added(text, t.raw_added, raw_pieces);
  for (const Piece& raw : raw_pieces) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    std::string_view piece = text.substr(raw.begin, raw.end - raw.begin);
    if (t.normalize_nfc) piece = to_nfc(piece, normalized_storage);
    pieces.clear();
    t.split_added(piece, t.normalized_added, pieces);
    for (const Piece& p : pieces) {
      if (p.id >= 0) {
        ids.push_back(p.id);
      } else if (p.end > p.begin) {
        t.encode_text(piece.substr(p.begin, p.end - p.begin), match, ids);
      }
    }
  }
  return ids;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !impl_->id_known[id]) {
    fail(impl_->path, ": token id ", id, " is not in the vocabulary (ids 0..", vocab_size() - 1, ")");
  }
  return impl_->id_bytes[id];
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    const std::string& b = token_bytes(id);
    if (!(skip_special && is_special(id))) bytes += b;
  }
  return utf8_lossy(bytes);
}

bool Tokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size() && impl_->id_special[id]; }
int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_bytes.size()); }
const std::string& Tokenizer::path() const { return impl_->path; }

int32_t Tokenizer::token_id(std::string_view token) const {
  for (const AddedToken& a : impl_->added) {
    if (a.content == token) return a.id;
  }
  auto it = impl_->model_vocab.find(token);
  return it == impl_->model_vocab.end() ? -1 : it->second;
}

// ---- UTF-8 and streaming ----

size_t append_utf8_lossy(std::string& out, std::string_view in, bool hold_tail) {
  const auto* s = reinterpret_cast<const uint8_t*>(in.data());
  size_t i = 0;
  while (i < in.size()) {
    const int len = utf8_sequence(s + i, in.size() - i);
    if (len > 0) {
      out.append(in.data() + i, static_cast<size_t>(len));
      i += static_cast<size_t>(len);
    } else if (len == 0 && hold_tail) {
      return i;
    } else {
      out += kReplacement;
      i += len == 0 ? in.size() - i : static_cast<size_t>(-len);
    }
  }
  return i;
}

std::string utf8_lossy(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  append_utf8_lossy(out, in);
  return out;
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(&tokenizer), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  const std::string& bytes = tokenizer_->token_bytes(id);
  if (skip_special_ && tokenizer_->is_special(id)) return {};
  pending_ += bytes;
  std::string out;
  const size_t used = append_utf8_lossy(out, pending_, true);
  pending_.erase(0, used);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out;
  append_utf8_lossy(out, pending_);
  pending_.clear();
  return out;
}

}  // namespace mamba

// The tokenizer against Hugging Face's own output (tests/fixtures/tokenizer/, made by
// tools/tokenizer_fixture.js with the npm package `tokenizers`) on the GPT-NeoX-20B tokenizer.json
// in ../shared, plus what needs no file: UTF-8 repair, streaming decode, and the errors that bad
// tokenizer.json files and bad ids give.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace mamba {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kNeox = std::string(MAMBA_SHARED_DIR) + "/data/gpt-neox-20b/tokenizer.json";
const std::string kFixtures = std::string(MAMBA_SOURCE_DIR) + "/tests/fixtures/tokenizer";

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::vector<json> rows;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) rows.push_back(json::parse(line));
  }
  return rows;
}

std::string from_hex(const std::string& hex) {
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    bytes += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return bytes;
}

bool valid_utf8(const std::string& s) { return utf8_lossy(s) == s; }

// The GPT-NeoX tokenizer, loaded once; nullptr when ../shared lacks it.
const Tokenizer* neox() {
  static const std::unique_ptr<Tokenizer> tokenizer =
      fs::exists(kNeox) ? std::make_unique<Tokenizer>(Tokenizer::load(kNeox)) : nullptr;
  return tokenizer.get();
}

#define REQUIRE_NEOX()                                               \
  if (neox() == nullptr) GTEST_SKIP() << kNeox << " is not present"; \
  const Tokenizer& tok = *neox()

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / ("mamba_tok_" + std::to_string(std::random_device{}()))) {
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string path() const { return path_.string(); }
  std::string write(const std::string& name, const std::string& text) const {
    const fs::path p = path_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }

 private:
  fs::path path_;
};

// ---- the fixtures ----

TEST(TokenizerFixture, EveryCaseMatchesHuggingFace) {
  REQUIRE_NEOX();
  const std::vector<json> corpus = read_jsonl(kFixtures + "/corpus.jsonl");
  const std::vector<json> expected = read_jsonl(kFixtures + "/expected.jsonl");
  ASSERT_EQ(corpus.size(), expected.size());
  ASSERT_GE(corpus.size(), 150u);
  int failures = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string name = corpus[i]["name"];
    ASSERT_EQ(name, expected[i]["name"].get<std::string>());
    const std::string text = corpus[i].contains("text") ? corpus[i]["text"].get<std::string>()
                                                        : from_hex(corpus[i]["hex"].get<std::string>());
    const auto want = expected[i]["ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> got = tok.encode(text);
    EXPECT_EQ(got, want) << name;
    // HF's decode of its ids is the text as HF normalizes it (invalid bytes as U+FFFD), and so must
    // our round trip be.
    EXPECT_EQ(tok.decode(want), expected[i]["decoded"].get<std::string>()) << name;
    EXPECT_EQ(tok.decode(got), expected[i]["decoded"].get<std::string>()) << name;
    failures += got != want;
  }
  EXPECT_EQ(failures, 0) << "of " << corpus.size() << " cases";
}

// The fixture script's variant() with the same edits: add_prefix_space and added tokens with lstrip,
// rstrip, single_word and a normalized non-ASCII content, which the GPT-NeoX file leaves unused.
TEST(TokenizerFixture, VariantWithAddedTokenOptionsMatchesHuggingFace) {
  if (!fs::exists(kNeox)) GTEST_SKIP() << kNeox << " is not present";
  std::ifstream in(kNeox);
  json j = json::parse(in);
  j["pre_tokenizer"]["add_prefix_space"] = true;
  auto token = [](int id, const std::string& content, bool special) {
    return json{{"id", id},        {"content", content}, {"special", special},    {"single_word", false},
                {"lstrip", false}, {"rstrip", false},    {"normalized", !special}};
  };
  json mask = token(50277, "<mask>", true), sep = token(50278, "<sep>", true),
       ony = token(50279, "ony", false);
  mask["lstrip"] = true, sep["rstrip"] = true, ony["single_word"] = true;
  for (const json& t : {mask, sep, ony, token(50280, "Ångström", false)}) j["added_tokens"].push_back(t);
  TempDir dir;
  const Tokenizer variant = Tokenizer::load(dir.write("tokenizer.json", j.dump()));
  const std::vector<json> expected = read_jsonl(kFixtures + "/variant_expected.jsonl");
  ASSERT_FALSE(expected.empty());
  for (const json& e : expected) {
    const std::vector<int32_t> ids = variant.encode(e["text"].get<std::string>());
    EXPECT_EQ(ids, e["ids"].get<std::vector<int32_t>>()) << e["name"] << ": " << e["text"];
    EXPECT_EQ(variant.decode(ids), e["decoded"].get<std::string>()) << e["name"];
  }
}

// ---- encode / decode on the real file ----

TEST(Tokenizer, KnownIds) {
  REQUIRE_NEOX();
  EXPECT_EQ(tok.vocab_size(), 50277);
  EXPECT_EQ(tok.token_id("<|endoftext|>"), 0);
  EXPECT_EQ(tok.token_id("Ġthe"), 253);
  EXPECT_EQ(tok.token_id("no such token"), -1);
  EXPECT_TRUE(tok.is_special(0));
  EXPECT_FALSE(tok.is_special(50276));  // the two-space token is added but not special
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int32_t>{12092, 1533}));
  EXPECT_EQ(tok.encode(""), std::vector<int32_t>{});
  EXPECT_EQ(tok.decode(std::vector<int32_t>{0, 12092}, /*skip_special=*/true), "Hello");
}

TEST(Tokenizer, LongInputsRoundTrip) {
  REQUIRE_NEOX();
  const std::string spaces = "a" + std::string(100000, ' ') + "b";
  const std::string letters(200000, 'x');
  std::string mixed_text;
  for (int i = 0; i < 20000; ++i) mixed_text += "word" + std::to_string(i) + (i % 7 ? " " : "\n\t") + "😀é猫 ";
  const std::string& mixed = mixed_text;
  for (const std::string* s : {&spaces, &letters, &mixed}) EXPECT_EQ(tok.decode(tok.encode(*s)), *s);
  EXPECT_EQ(tok.encode(spaces).size(), 2 + 100000 / 24 + 1u);  // runs of 24 spaces are one added token each
}

TEST(Tokenizer, InvalidUtf8NeverCrashes) {
  REQUIRE_NEOX();
  // Bytes that cannot combine into characters NFC would change: ASCII, stray continuation bytes, and
  // bytes never valid in UTF-8. The round trip then equals the repaired text exactly.
  std::mt19937 rng(7);
  const std::string alphabet = std::string("ab ,\n\t") + "\x80\x9f\xbf\xc0\xc1\xf5\xff";
  for (int trial = 0; trial < 500; ++trial) {
    std::string s(rng() % 40, ' ');
    for (char& c : s) c = alphabet[rng() % alphabet.size()];
    const std::vector<int32_t> ids = tok.encode(s);
    EXPECT_EQ(tok.decode(ids), utf8_lossy(s)) << trial;
  }
  // Any bytes at all: no crash, valid UTF-8 out.
  for (int trial = 0; trial < 500; ++trial) {
    std::string s(rng() % 64, ' ');
    for (char& c : s) c = static_cast<char>(rng() & 0xFF);
    const std::string text = tok.decode(tok.encode(s));
    EXPECT_TRUE(valid_utf8(text)) << trial;
  }
}

TEST(Tokenizer, UnknownIdsAreErrors) {
  REQUIRE_NEOX();
  for (int32_t id : {-1, 50277, 1 << 30}) {
    try {
      (void)tok.decode(std::vector<int32_t>{12092, id});
      ADD_FAILURE() << "no error for id " << id;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(id)), std::string::npos) << e.what();
    }
    StreamDecoder stream(tok);
    EXPECT_THROW(stream.push(id), Error);
  }
}

// ---- streaming decode ----

TEST(StreamDecoder, EqualsWholeDecodeAndNeverSplitsACharacter) {
  REQUIRE_NEOX();
  const std::vector<json> expected = read_jsonl(kFixtures + "/expected.jsonl");
  for (const json& e : expected) {
    const auto ids = e["ids"].get<std::vector<int32_t>>();
    StreamDecoder stream(tok);
    std::string text;
    for (int32_t id : ids) {
      const std::string piece = stream.push(id);
      EXPECT_TRUE(valid_utf8(piece)) << e["name"];
      EXPECT_LT(stream.held_bytes(), 4u);
      text += piece;
    }
    text += stream.finish();
    EXPECT_EQ(text, tok.decode(ids)) << e["name"];
  }
}

TEST(StreamDecoder, HoldsAnEmojiUntilItsLastToken) {
  REQUIRE_NEOX();
  const std::vector<int32_t> ids = tok.encode("a😀");  // "a", then the emoji's 4 bytes over 3 tokens
  ASSERT_GE(ids.size(), 3u);
  StreamDecoder stream(tok);
  EXPECT_EQ(stream.push(ids[0]), "a");
  for (size_t i = 1; i + 1 < ids.size(); ++i) {
    EXPECT_EQ(stream.push(ids[i]), "");
    EXPECT_GT(stream.held_bytes(), 0u);
  }
  EXPECT_EQ(stream.push(ids.back()), "😀");
  EXPECT_EQ(stream.finish(), "");
  // Cut short, the held bytes become one U+FFFD, as the whole decode gives.
  StreamDecoder cut(tok);
  EXPECT_EQ(cut.push(ids[1]), "");
  EXPECT_EQ(cut.finish(), "\xEF\xBF\xBD");
  EXPECT_EQ(tok.decode(std::vector<int32_t>{ids[1]}), "\xEF\xBF\xBD");
}

TEST(StreamDecoder, SkipsSpecialTokensWhenAsked) {
  REQUIRE_NEOX();
  StreamDecoder stream(tok, /*skip_special=*/true);
  EXPECT_EQ(stream.push(0), "");
  EXPECT_EQ(stream.push(12092), "Hello");
}

// ---- UTF-8 repair ----

TEST(Utf8, ReplacesMaximalSubparts) {
  // Unicode 15, §3.9, Table 3-8: each maximal subpart of an ill-formed sequence becomes one U+FFFD.
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8_lossy("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a" + r + r + r + "b" + r + "c" + r + r + "d");
  EXPECT_EQ(utf8_lossy("\xC0\xAF"), r + r);                  // overlong
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), r + r + r);          // a surrogate
  EXPECT_EQ(utf8_lossy("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98"), r);                  // truncated at the end
  EXPECT_EQ(utf8_lossy("ok \xC3\xA9 \xF0\x9F\x98\x80"), "ok \xC3\xA9 \xF0\x9F\x98\x80");
  EXPECT_EQ(utf8_lossy(std::string("a\0b", 3)), std::string("a\0b", 3));
  std::string out;
  EXPECT_EQ(append_utf8_lossy(out, "x\xF0\x9F\x98", /*hold_tail=*/true), 1u);
  EXPECT_EQ(out, "x");
}

// ---- a tiny tokenizer.json, and broken ones ----

// GPT-2's byte → character map, written out again here (independently of the library).
std::string byte_char(int b) {
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  int cp = b;
  if (!printable) {
    int n = 0;
    for (int i = 0; i < b; ++i)
      n += !((i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF));
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

json tiny_tokenizer() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  vocab["Ġt"] = 256, vocab["he"] = 257, vocab["Ġthe"] = 258;
  return json{
      {"version", "1.0"},
      {"added_tokens", json::array({json{{"id", 259},
                                         {"content", "<|end|>"},
                                         {"special", true},
                                         {"single_word", false},
                                         {"lstrip", false},
                                         {"rstrip", false},
                                         {"normalized", false}}})},
      {"normalizer", json{{"type", "NFC"}}},
      {"pre_tokenizer", json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}}},
      {"post_processor", nullptr},
      {"decoder", json{{"type", "ByteLevel"}}},
      {"model", json{{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"Ġ t", "h e", "Ġt he"})}}}};
}

TEST(TinyTokenizer, MergesByRank) {
  TempDir dir;
  const Tokenizer tok = Tokenizer::load(dir.write("tokenizer.json", tiny_tokenizer().dump()));
  EXPECT_EQ(tok.encode(" the"), (std::vector<int32_t>{258}));
  EXPECT_EQ(tok.encode("the the<|end|>"), (std::vector<int32_t>{'t', 257, 258, 259}));
  EXPECT_EQ(tok.decode(tok.encode("the the<|end|>")), "the the<|end|>");
  // The newer merges format, [left, right] pairs, reads the same; a folder finds its tokenizer.json.
  json pairs = tiny_tokenizer();
  pairs["model"]["merges"] =
      json::array({json::array({"Ġ", "t"}), json::array({"h", "e"}), json::array({"Ġt", "he"})});
  dir.write("tokenizer.json", pairs.dump());
  EXPECT_EQ(Tokenizer::load(dir.path()).encode(" the"), (std::vector<int32_t>{258}));
}

// Each broken file gives an Error whose message names the file and the field.
TEST(TinyTokenizer, MalformedFilesNameFileAndField) {
  struct Case {
    const char* name;
    std::function<void(json&)> edit;
    const char* field;
  };
  const std::vector<Case> cases = {
      {"no_model", [](json& j) { j.erase("model"); }, "model"},
      {"unigram", [](json& j) { j["model"]["type"] = "Unigram"; }, "model.type"},
      {"no_vocab", [](json& j) { j["model"].erase("vocab"); }, "model.vocab"},
      {"vocab_not_object", [](json& j) { j["model"]["vocab"] = json::array(); }, "model.vocab"},
      {"negative_id", [](json& j) { j["model"]["vocab"]["he"] = -3; }, "model.vocab"},
      {"no_merges", [](json& j) { j["model"].erase("merges"); }, "model.merges"},
      {"merge_one_token", [](json& j) { j["model"]["merges"][1] = "he"; }, "model.merges[1]"},
      {"merge_unknown", [](json& j) { j["model"]["merges"][2] = "x yz"; }, "model.merges[2]"},
      {"merge_wrong_type", [](json& j) { j["model"]["merges"][0] = 7; }, "model.merges[0]"},
      {"suffix", [](json& j) { j["model"]["end_of_word_suffix"] = "</w>"; }, "model.end_of_word_suffix"},
      {"byte_fallback", [](json& j) { j["model"]["byte_fallback"] = true; }, "model.byte_fallback"},
      {"lowercase",
       [](json& j) {
         j["normalizer"] = json{{"type", "Lowercase"}};
       },
       "normalizer.type"},
      {"metaspace",
       [](json& j) {
         j["pre_tokenizer"] = json{{"type", "Metaspace"}};
       },
       "pre_tokenizer.type"},
      {"no_pre_tokenizer", [](json& j) { j.erase("pre_tokenizer"); }, "pre_tokenizer"},
      {"no_decoder", [](json& j) { j["decoder"] = nullptr; }, "decoder"},
      {"template",
       [](json& j) {
         j["post_processor"] = json{{"type", "TemplateProcessing"}};
       },
       "post_processor.type"},
      {"added_no_id", [](json& j) { j["added_tokens"][0].erase("id"); }, "added_tokens[0].id"},
      {"added_flag_type", [](json& j) { j["added_tokens"][0]["lstrip"] = "yes"; }, "added_tokens[0].lstrip"},
      {"prefix_type", [](json& j) { j["pre_tokenizer"]["add_prefix_space"] = 1; },
       "pre_tokenizer.add_prefix_space"},
  };
  TempDir dir;
  for (const Case& c : cases) {
    json j = tiny_tokenizer();
    c.edit(j);
    const std::string path = dir.write(std::string(c.name) + ".json", j.dump());
    try {
      (void)Tokenizer::load(path);
      ADD_FAILURE() << c.name << ": loaded without an error";
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(path), std::string::npos) << c.name << ": " << message;
      EXPECT_NE(message.find(c.field), std::string::npos) << c.name << ": " << message;
    }
  }
  for (const char* text : {"", "{", "not json", "[1, 2]", "{\"model\": 5}"}) {
    const std::string path = dir.write("bad.json", text);
    try {
      (void)Tokenizer::load(path);
      ADD_FAILURE() << "loaded \"" << text << "\" without an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW((void)Tokenizer::load(dir.path() + "/missing.json"), Error);
}

// ---- the CLI ----

std::string run(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buffer[4096];
  for (size_t n; (n = fread(buffer, 1, sizeof(buffer), pipe)) > 0;) out.append(buffer, n);
  pclose(pipe);
  return out;
}

TEST(TokenizeCommand, EncodesDecodesAndReadsJsonLines) {
  REQUIRE_NEOX();
  const std::string cli = std::string(MAMBA_CLI_PATH) + " tokenize " + kNeox;
  EXPECT_EQ(run(cli + " 'Hello world'"), "12092,1533\n");
  EXPECT_EQ(run(cli + " --sep ' ' 'Hello world'"), "12092 1533\n");
  EXPECT_EQ(run(cli + " --decode '12092, 1533'"), "Hello world");
  TempDir dir;
  const std::string in = dir.write("in.jsonl", "\"Hello world\"\n\"a  b\"\n");
  EXPECT_EQ(run(cli + " --jsonl " + in), "[12092,1533]\n[66,50276,67]\n");
  const std::string ids = dir.write("ids.jsonl", "[12092,1533]\n[66,50276,67]\n");
  EXPECT_EQ(run(cli + " --decode --jsonl " + ids), "\"Hello world\"\n\"a  b\"\n");
  EXPECT_NE(run(cli + " --decode 99999999 2>&1"), "");
  (void)tok;
}

}  // namespace
}  // namespace mamba

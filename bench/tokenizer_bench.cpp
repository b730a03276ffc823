// Tokenizer throughput on one thread: encodes a few MB of text, document by document, and prints one
// JSON line. The text is a file given on the command line or, by default, a synthetic mix made from
// a fixed seed: English prose, source code, numbers, CJK, Arabic, Hindi, emoji, NFD accents, runs of
// spaces, and 10% made-up words so that the BPE word cache does not answer everything.
//
//   tokenizer_bench TOKENIZER_JSON_OR_DIR [TEXT_FILE] [--mb N]
//
// "cold" is the first pass with a freshly loaded tokenizer (empty word cache), "warm" a second pass
// over the same text; MB/s counts input bytes (1 MB = 1e6 bytes).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/file.h"
#include "tokenizer/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string synthetic_text(size_t bytes) {
  const std::vector<std::string> words = {
      "the",      "of",        "and",        "to",       "in",    "a",     "is",      "that",     "for",
      "it",       "as",        "was",        "with",     "be",    "by",    "on",      "not",      "he",
      "this",     "are",       "or",         "his",      "from",  "at",    "which",   "but",      "have",
      "an",       "had",       "they",       "you",      "were",  "their", "one",     "all",      "we",
      "can",      "her",       "has",        "there",    "been",  "if",    "more",    "when",     "will",
      "would",    "who",       "so",         "no",       "model", "state", "space",   "sequence", "selective",
      "language", "tokenizer", "parameters", "training", "It's",  "don't", "they're", "we've",    "I'm",
      "you'll",   "she'd"};
  const std::vector<std::string> snippets = {
      "\n\ndef forward(self, x):\n    h = self.norm(x)\n    return x + self.mixer(h)\n",
      "\nfor (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
      " 2024-02-29 12:34:56, 3.14159, 1,000,000 and 42%.",
      " 状态空间模型可以高效地处理长序列。",
      " 吾輩は猫である。",
      " 안녕하세요, 세계!",
      " مرحبا بالعالم",
      " नमस्ते दुनिया।",
      " 👋🏽 👨‍👩‍👧‍👦 😀🎉",
      " cafe\xCC\x81 re\xCC\x81sume\xCC\x81",
      "        ",
      "\n",
      "\r\n",
      "\t",
      " https://example.com/a/b?c=d&e=f",
      " <|endoftext|> "};
  std::mt19937 rng(20240229);
  std::string text;
  text.reserve(bytes + 256);
  std::string made_up;
  while (text.size() < bytes) {
    const uint32_t r = rng() % 100;
    if (r < 8) {
      text += snippets[rng() % snippets.size()];
    } else if (r < 18) {
      made_up.assign(3 + rng() % 10, ' ');
      for (char& c : made_up) c = static_cast<char>('a' + rng() % 26);
      text += " " + made_up;
    } else {
      const std::string& w = words[rng() % words.size()];
      text += (rng() % 12 == 0 ? ". " : " ") + w;
    }
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0) {
    std::fprintf(stderr, "usage: %s TOKENIZER_JSON_OR_DIR [TEXT_FILE] [--mb N]\n", argv[0]);
    return 2;
  }
  try {
    std::string text_file;
    double mb = 4.0;
    for (int i = 2; i < argc; ++i) {
      if (std::strcmp(argv[i], "--mb") == 0 && i + 1 < argc) {
        mb = std::stod(argv[++i]);
      } else {
        text_file = argv[i];
      }
    }
    const std::string text =
        text_file.empty() ? synthetic_text(static_cast<size_t>(mb * 1e6)) : mamba::read_text_file(text_file);
    // Documents of about 4 KB, cut at a newline or space so that no character is split.
    std::vector<std::string_view> docs;
    for (size_t start = 0; start < text.size();) {
      size_t end = std::min(text.size(), start + 4096);
      while (end < text.size() && text[end] != '\n' && text[end] != ' ') ++end;
      docs.emplace_back(text.data() + start, end - start);
      start = end;
    }

    auto start = Clock::now();
    const mamba::Tokenizer tokenizer = mamba::Tokenizer::load(argv[1]);
    const double load_s = seconds_since(start);
    double pass_s[2] = {0, 0};
    size_t tokens = 0;
    for (double& s : pass_s) {
      tokens = 0;
      start = Clock::now();
      for (std::string_view doc : docs) tokens += tokenizer.encode(doc).size();
      s = seconds_since(start);
    }
    const double megabytes = static_cast<double>(text.size()) / 1e6;
    auto quoted = [](const std::string& s) { return nlohmann::json(s).dump(); };
    std::printf(
        "{\"bench\":\"tokenizer\",\"tokenizer\":%s,\"text\":%s,\"bytes\":%zu,\"documents\":%zu,\"tokens\":%"
        "zu,"
        "\"bytes_per_token\":%.3f,\"threads\":1,\"load_s\":%.3f,\"cold_s\":%.3f,\"cold_mb_per_s\":%.2f,"
        "\"warm_s\":%.3f,\"warm_mb_per_s\":%.2f,\"warm_tokens_per_s\":%.0f}\n",
        quoted(tokenizer.path()).c_str(), quoted(text_file.empty() ? "synthetic" : text_file).c_str(),
        text.size(), docs.size(), tokens, static_cast<double>(text.size()) / static_cast<double>(tokens),
        load_s, pass_s[0], megabytes / pass_s[0], pass_s[1], megabytes / pass_s[1],
        static_cast<double>(tokens) / pass_s[1]);
  } catch (const mamba::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

#include "model/data.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/file.h"

namespace mamba {

namespace {

std::vector<std::filesystem::path> files_under(const std::vector<std::filesystem::path>& paths) {
  std::vector<std::filesystem::path> files;
  for (const auto& path : paths) {
    if (std::filesystem::is_directory(path)) {
      std::vector<std::filesystem::path> found;
      for (const auto& entry : std::filesystem::recursive_directory_iterator(path)) {
        if (entry.is_regular_file()) found.push_back(entry.path());
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) fail(path.string(), ": folder has no files");
      files.insert(files.end(), found.begin(), found.end());
    } else if (std::filesystem::is_regular_file(path)) {
      files.push_back(path);
    } else {
      fail(path.string(), ": no such file or folder");
    }
  }
  return files;
}

void add_document(Dataset& data, const int32_t* tokens, size_t n, int32_t eos, int val_every, int64_t index) {
  TokenStream& to = (val_every > 0 && index % val_every == val_every - 1) ? data.val : data.train;
  to.tokens.insert(to.tokens.end(), tokens, tokens + n);
  to.tokens.push_back(eos);
  to.documents++;
}

}  // namespace

Dataset load_text_dataset(const std::vector<std::filesystem::path>& paths, int val_every) {
  Dataset data;
  int64_t index = 0;
  std::vector<int32_t> doc;
  for (const auto& file : files_under(paths)) {
    MappedFile map(file);
    doc.assign(map.data(), map.data() + map.size());
    add_document(data, doc.data(), doc.size(), kByteEndOfDoc, val_every, index++);
  }
  data.max_token = kByteEndOfDoc;
  return data;
}

Dataset load_token_dataset(const std::vector<std::filesystem::path>& paths, int32_t eos, int val_every) {
  Dataset data;
  int64_t index = 0;
  for (const auto& file : files_under(paths)) {
    MappedFile map(file);
    const std::string where = file.string();
    if (map.size() < 24 || std::memcmp(map.data(), "MAMBATOK", 8) != 0) {
      fail(where, ": not a token file (expected the \"MAMBATOK\" header)");
    }
    uint32_t version, width;
    uint64_t count;
    std::memcpy(&version, map.data() + 8, 4);
    std::memcpy(&width, map.data() + 12, 4);
    std::memcpy(&count, map.data() + 16, 8);
    if (version != 1) fail(where, ": token file version ", version, " (expected 1)");
    if (width != 2 && width != 4) fail(where, ": ", width, " bytes per token (expected 2 or 4)");
    if (count > (map.size() - 24) / width || 24 + count * width != map.size()) {
      fail(where, ": header says ", count, " tokens but the file holds ", (map.size() - 24) / width);
    }
    std::vector<int32_t> doc;
    for (uint64_t i = 0; i < count; i++) {
      uint32_t t = 0;
      std::memcpy(&t, map.data() + 24 + i * width, width);
      if (t > INT32_MAX) fail(where, ": token ", t, " at index ", i, " is out of range");
      data.max_token = std::max(data.max_token, static_cast<int32_t>(t));
      if (static_cast<int32_t>(t) == eos) {
        add_document(data, doc.data(), doc.size(), eos, val_every, index++);
        doc.clear();
      } else {
        doc.push_back(static_cast<int32_t>(t));
      }
    }
    if (!doc.empty()) add_document(data, doc.data(), doc.size(), eos, val_every, index++);
  }
  return data;
}

void write_token_file(const std::filesystem::path& path, const std::vector<int32_t>& tokens, int bytes_per_token) {
  write_file_atomic(path, [&](std::FILE* f) {
    const uint32_t version = 1, width = static_cast<uint32_t>(bytes_per_token);
    const uint64_t count = tokens.size();
    write_bytes(f, "MAMBATOK", 8, path);
    write_bytes(f, &version, 4, path);
    write_bytes(f, &width, 4, path);
    write_bytes(f, &count, 8, path);
    for (int32_t t : tokens) write_bytes(f, &t, width, path);  // little-endian: the low bytes first
  });
}

BatchSampler::BatchSampler(const TokenStream& stream, int B, int L, bool sequential, uint64_t seed)
    : stream_(stream), B_(B), L_(L), sequential_(sequential), rng_(seed) {
  if (static_cast<int64_t>(stream.tokens.size()) < L + 1) {
    fail("the data has ", stream.tokens.size(), " tokens, fewer than one window of --seq-len + 1 = ", L + 1);
  }
}

void BatchSampler::next(int32_t* inputs, int32_t* targets) {
  const int64_t n = static_cast<int64_t>(stream_.tokens.size());
  for (int b = 0; b < B_; b++) {
    int64_t start;
    if (sequential_) {
      if (cursor_ + L_ + 1 > n) cursor_ = 0;
      start = cursor_;
      cursor_ += L_;
    } else {
      start = static_cast<int64_t>(rng_.below(static_cast<uint64_t>(n - L_)));
    }
    const int32_t* window = stream_.tokens.data() + start;
    std::memcpy(inputs + int64_t{b} * L_, window, sizeof(int32_t) * L_);
    std::memcpy(targets + int64_t{b} * L_, window + 1, sizeof(int32_t) * L_);
  }
}

}  // namespace mamba

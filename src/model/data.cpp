#include "model/data.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/file.h"
#include "core/limits.h"
#include "core/npy.h"

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
  const auto files = files_under(paths);
  int64_t bytes = 0;
  for (const auto& file : files) bytes = sat_add(bytes, static_cast<int64_t>(std::filesystem::file_size(file)));
  // Each byte becomes a 4-byte id; the streams may double their capacity as they grow.
  check_memory(sat_mul(bytes, 8), "the data (" + std::to_string(bytes) + " bytes of text as token ids)");
  for (const auto& file : files) {
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
  const auto files = files_under(paths);
  int64_t bytes = 0;
  for (const auto& file : files) bytes = sat_add(bytes, static_cast<int64_t>(std::filesystem::file_size(file)));
  // At least 2 bytes per token on disk, 4 in memory; the streams may double their capacity as they grow.
  check_memory(sat_mul(bytes, 4), "the data (" + std::to_string(bytes) + " bytes of token files)");
  for (const auto& file : files) {
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

Dataset load_fixed_batch(const std::filesystem::path& path) {
  const NpyArray array = read_npy(path);
  const std::string where = path.string();
  if (array.shape.size() != 2 || array.shape[0] < 1 || array.shape[1] < 2) {
    fail(where, ": a fixed batch is a 2-D array (B, L + 1) with B ≥ 1 and L ≥ 1");
  }
  if (array.shape[0] > INT32_MAX || array.shape[1] - 1 > INT32_MAX) fail(where, ": the batch is too large");
  std::vector<int64_t> values;
  try {
    values = array.as_i64();
  } catch (const Error& e) {
    fail(where, ": ", e.what());
  }
  Dataset data;
  data.train.rows = array.shape[0];
  data.train.documents = array.shape[0];
  data.train.tokens.reserve(values.size());
  for (size_t i = 0; i < values.size(); i++) {
    if (values[i] < 0 || values[i] > INT32_MAX) {
      fail(where, ": token id ", values[i], " at row ", i / array.shape[1], ", column ", i % array.shape[1],
           " is out of range");
    }
    data.train.tokens.push_back(static_cast<int32_t>(values[i]));
    data.max_token = std::max(data.max_token, static_cast<int32_t>(values[i]));
  }
  return data;
}

BatchSampler::BatchSampler(const TokenStream& stream, int B, int L, bool sequential, uint64_t seed)
    : stream_(stream), B_(B), L_(L), sequential_(sequential), rng_(seed) {
  if (B < 1 || L < 1) fail("batches of ", B, " × ", L, " tokens: both must be positive");
  if (stream.rows > 0) {
    if (stream.rows != B || static_cast<int64_t>(stream.tokens.size()) != int64_t{B} * (int64_t{L} + 1)) {
      fail("the fixed batch has ", stream.rows, " rows of ", static_cast<int64_t>(stream.tokens.size()) / stream.rows,
           " tokens; batches of ", B, " rows of --seq-len + 1 = ", int64_t{L} + 1, " were asked for");
    }
  } else if (static_cast<int64_t>(stream.tokens.size()) < int64_t{L} + 1) {
    fail("the data has ", stream.tokens.size(), " tokens, fewer than one window of --seq-len + 1 = ", int64_t{L} + 1);
  }
}

void BatchSampler::restore(uint64_t rng_state, int64_t cursor) {
  if (cursor < 0) fail("sampler cursor ", cursor, " is negative");
  rng_.state = rng_state;
  cursor_ = cursor;
}

void BatchSampler::next(int32_t* inputs, int32_t* targets) {
  const int64_t n = static_cast<int64_t>(stream_.tokens.size());
  if (stream_.rows > 0) {  // a fixed batch: row b gives inputs row[0, L), targets row[1, L + 1)
    for (int b = 0; b < B_; b++) {
      const int32_t* row = stream_.tokens.data() + int64_t{b} * (int64_t{L_} + 1);
      std::memcpy(inputs + int64_t{b} * L_, row, sizeof(int32_t) * L_);
      std::memcpy(targets + int64_t{b} * L_, row + 1, sizeof(int32_t) * L_);
    }
    return;
  }
  for (int b = 0; b < B_; b++) {
    int64_t start;
    if (sequential_) {
      if (cursor_ > n - L_ - 1) cursor_ = 0;
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

#include "core/safetensors.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json.h"

namespace mamba {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // the format's own limit

// Tensor checksums (the format is described in safetensors.h): XXH3's 64-bit hash, seed 0, of the bytes
// as stored, as 16 lowercase hex digits.
constexpr const char* kChecksumAlgorithm = "xxh3_64";
std::string checksum_key(const std::string& tensor) { return std::string(kChecksumAlgorithm) + ":" + tensor; }

std::string checksum_hex(const void* data, size_t size) {
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(XXH3_64bits(data, size)));
  return text;
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::shape_string() const {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

SafeTensorsReader SafeTensorsReader::open_file(const std::filesystem::path& path) {
  SafeTensorsReader reader;
  reader.add_file(path);
  return reader;
}

SafeTensorsReader SafeTensorsReader::open_dir(const std::filesystem::path& dir) {
  SafeTensorsReader reader;
  std::filesystem::path single = dir / "model.safetensors";
  std::filesystem::path index = dir / "model.safetensors.index.json";
  if (std::filesystem::exists(single)) {
    reader.add_file(single);
  } else if (std::filesystem::exists(index)) {
    const nlohmann::json j = read_json_file(index.string());
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      fail(index.string(), ": missing object field \"weight_map\"");
    }
    std::vector<std::string> shards;
    for (auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) fail(index.string(), ": weight_map[\"", name, "\"] is not a file name");
      std::string shard = file.get<std::string>();
      if (shard.find('/') != std::string::npos) fail(index.string(), ": shard name \"", shard, "\" has a path");
      if (std::find(shards.begin(), shards.end(), shard) == shards.end()) shards.push_back(shard);
    }
    for (const std::string& shard : shards) reader.add_file(dir / shard);
    for (auto& [name, file] : j["weight_map"].items()) {
      auto it = reader.tensors_.find(name);
      if (it == reader.tensors_.end() || it->second.file.filename() != file.get<std::string>()) {
        fail(index.string(), ": tensor ", name, " is listed in ", file.get<std::string>(), " but not found there");
      }
    }
  } else {
    fail(dir.string(), ": no model.safetensors or model.safetensors.index.json");
  }
  return reader;
}

void SafeTensorsReader::add_file(const std::filesystem::path& path) {
  MappedFile file(path);
  const std::string where = path.string();
  if (file.size() < 8) fail(where, ": truncated: ", file.size(), " bytes, shorter than the 8-byte header length");
  uint64_t header_len;
  std::memcpy(&header_len, file.data(), 8);
  if (header_len > kMaxHeaderBytes) fail(where, ": header length ", header_len, " is larger than 100 MB");
  if (8 + header_len > file.size()) {
    fail(where, ": header length ", header_len, " runs past the end of the file (", file.size(), " bytes)");
  }
  const nlohmann::json header =
      parse_json(std::string_view(reinterpret_cast<const char*>(file.data()) + 8, header_len), where + ": header");
  if (!header.is_object()) fail(where, ": header is not a JSON object");
  const uint8_t* base = file.data() + 8 + header_len;
  const uint64_t data_size = file.size() - 8 - header_len;

  std::map<std::string, std::string> metadata;  // this file's
  if (auto it = header.find("__metadata__"); it != header.end() && it->is_object()) {
    for (auto& [k, v] : it->items()) {
      if (v.is_string()) metadata[k] = v.get<std::string>();
    }
  }
  bool all_checksummed = false;
  if (auto it = metadata.find("checksum"); it != metadata.end()) {
    if (it->second != kChecksumAlgorithm) {
      fail(where, ": metadata \"checksum\" names ", json_brief(it->second), "; only \"", kChecksumAlgorithm,
           "\" is known");
    }
    all_checksummed = true;
  }

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string what = where + ": tensor " + name;
    if (!entry.is_object()) fail(what, ": entry is not an object");
    if (!entry.contains("dtype") || !entry["dtype"].is_string()) fail(what, ": missing \"dtype\"");
    TensorView t;
    t.name = name;
    t.file = path;
    const std::string dtype = entry["dtype"].get<std::string>();
    if (dtype != "F32" && dtype != "F16" && dtype != "BF16" && dtype != "I8") {
      fail(what, ": unsupported dtype \"", dtype, "\" (expected F32, F16, BF16 or I8)");
    }
    parse_dtype(dtype, &t.dtype);
    if (!entry.contains("shape") || !entry["shape"].is_array()) fail(what, ": missing \"shape\"");
    uint64_t numel = 1;
    for (auto& d : entry["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        fail(what, ": shape has an invalid dimension ", json_brief(d));
      }
      t.shape.push_back(d.get<int64_t>());
      numel *= static_cast<uint64_t>(t.shape.back());
      if (numel > (uint64_t{1} << 40)) fail(what, ": shape is implausibly large");
    }
    const auto offsets = entry.find("data_offsets");
    if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
        !(*offsets)[1].is_number_unsigned()) {
      fail(what, ": \"data_offsets\" must be two non-negative integers");
    }
    uint64_t begin = (*offsets)[0].get<uint64_t>(), end = (*offsets)[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      fail(what, ": data_offsets [", begin, ", ", end, "] are out of range (data section is ", data_size,
           " bytes)");
    }
    if (end - begin != numel * dtype_size(t.dtype)) {
      fail(what, ": data_offsets cover ", end - begin, " bytes but shape ", t.shape_string(), " of ", dtype,
           " needs ", numel * dtype_size(t.dtype));
    }
    t.data = base + begin;
    t.nbytes = end - begin;
    if (tensors_.count(name)) fail(what, ": appears in more than one file");
    if (auto it = metadata.find(checksum_key(name)); it != metadata.end()) {
      const std::string actual = checksum_hex(t.data, t.nbytes);
      if (actual != it->second) {
        fail(what, ": checksum mismatch: its bytes hash to ", kChecksumAlgorithm, " ", actual, " but the header says ",
             json_brief(it->second), " (the file is corrupted)");
      }
    } else if (all_checksummed) {
      fail(what, ": has no checksum, though the file's metadata says every tensor has one");
    }
    ranges.emplace_back(begin, end);
    tensors_.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); i++) {
    if (ranges[i].first < ranges[i - 1].second) {
      fail(where, ": tensor data ranges overlap at byte ", ranges[i].first);
    }
  }
  for (auto& [k, v] : metadata) {
    if (k.rfind(checksum_key(""), 0) != 0) metadata_[k] = v;  // checksums are this file's business
  }
  files_.push_back(std::move(file));
}

const TensorView* SafeTensorsReader::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::string SafeTensorsReader::describe() const {
  std::string s;
  for (const MappedFile& f : files_) s += (s.empty() ? "" : ", ") + f.path().string();
  return s;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> order;
  for (const TensorToWrite& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->name < b->name; });

  nlohmann::json header = nlohmann::json::object();
  std::map<std::string, std::string> meta = metadata;
  meta["checksum"] = kChecksumAlgorithm;
  uint64_t offset = 0;
  std::vector<uint8_t> buffer;
  for (const TensorToWrite* t : order) {
    int64_t numel = 1;
    for (int64_t d : t->shape) numel *= d;
    uint64_t nbytes = static_cast<uint64_t>(numel) * dtype_size(t->dtype);
    header[t->name] = {{"dtype", dtype_name(t->dtype)}, {"shape", t->shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    // The hash of the bytes as they will be written: bytes given and fp32 data as they are, other dtypes
    // once converted.
    if (t->bytes) {
      meta[checksum_key(t->name)] = checksum_hex(t->bytes, nbytes);
    } else if (t->dtype == DType::F32) {
      meta[checksum_key(t->name)] = checksum_hex(t->data, nbytes);
    } else {
      buffer.resize(nbytes);
      convert_from_f32(buffer.data(), t->data, t->dtype, static_cast<size_t>(numel));
      meta[checksum_key(t->name)] = checksum_hex(buffer.data(), nbytes);
    }
  }
  header["__metadata__"] = meta;
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');  // the data starts 8-byte aligned
  uint64_t header_len = text.size();

  write_file_atomic(path, [&](std::FILE* out) {
    write_bytes(out, &header_len, 8, path);
    write_bytes(out, text.data(), text.size(), path);
    for (const TensorToWrite* t : order) {
      int64_t numel = 1;
      for (int64_t d : t->shape) numel *= d;
      const size_t nbytes = static_cast<size_t>(numel) * dtype_size(t->dtype);
      if (t->bytes) {
        write_bytes(out, t->bytes, nbytes, path);
        continue;
      }
      buffer.resize(nbytes);
      convert_from_f32(buffer.data(), t->data, t->dtype, static_cast<size_t>(numel));
      write_bytes(out, buffer.data(), buffer.size(), path);
    }
  });
}

}  // namespace mamba

// Reading and writing Hugging Face safetensors files: an 8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets}}, then the tensor bytes. Reading memory-maps the file(s)
// and validates every entry against the file before any tensor is used.
//
// Checksums: files written here carry, in the header's "__metadata__" (a map of strings), the key
// "checksum": "xxh3_64" and for every tensor "xxh3_64:NAME": the XXH3 64-bit hash (seed 0) of its bytes
// as stored, in 16 lowercase hex digits. Reading verifies each tensor that has one and fails naming it
// on a mismatch; a file that declares "checksum" must have one for every tensor. Files from other
// programs (no such keys) are read as before. Other readers (transformers, safetensors) ignore them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/file.h"

namespace mamba {

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside a memory map; not necessarily aligned
  size_t nbytes = 0;
  std::filesystem::path file;

  int64_t numel() const;
  std::string shape_string() const;  // "(2, 3)"
};

// One model.safetensors, or the shards named by model.safetensors.index.json.
class SafeTensorsReader {
 public:
  // Opens a single .safetensors file.
  static SafeTensorsReader open_file(const std::filesystem::path& path);
  // Opens DIR/model.safetensors, or the shards listed in DIR/model.safetensors.index.json.
  static SafeTensorsReader open_dir(const std::filesystem::path& dir);

  const TensorView* find(const std::string& name) const;
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::string describe() const;  // the file name(s), for error messages

 private:
  void add_file(const std::filesystem::path& path);

  std::vector<MappedFile> files_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;  // fp32 values, converted to the file's dtype on write
  DType dtype = DType::F32;
  const void* bytes = nullptr;  // or, instead of data, the bytes already in `dtype` (written as they are)
};

// Writes one .safetensors file atomically, with the checksums above; tensors are laid out in name order.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace mamba

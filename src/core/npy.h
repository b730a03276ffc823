// NumPy .npy arrays (format version 1.0/2.0, little-endian, C order): how arrays leave this program
// for another one (logits, ids) and how test fixtures come in.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace mamba {

struct NpyArray {
  std::string descr;  // numpy dtype string: "<f4", "<i4", "<i8", "<u2", "<u4", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  int64_t numel() const;
  std::vector<float> as_f32() const;    // from <f4 or <f8; fails otherwise
  std::vector<int64_t> as_i64() const;  // from any integer dtype; fails otherwise
};

NpyArray read_npy(const std::filesystem::path& path);
void write_npy(const std::filesystem::path& path, const float* data, const std::vector<int64_t>& shape);
void write_npy(const std::filesystem::path& path, const int32_t* data, const std::vector<int64_t>& shape);

}  // namespace mamba

// Files: read-only memory maps, whole-file reads, and atomic writes (temporary file, fsync, rename)
// for everything that must survive a crash (checkpoints, states).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

namespace mamba {

// A read-only memory map of a whole regular file (a folder or a device is an Error naming the path).
// Move-only; unmaps on destruction.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::filesystem::path& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// A whole file's bytes. A folder, an unreadable file or one larger than the memory limit (core/limits.h)
// is an Error naming the path; pipes and devices are read until their end, within the same limit.
std::string read_text_file(const std::filesystem::path& path);
// Standard input, until its end, within the memory limit; `where` names it in errors.
std::string read_stdin(const std::string& where);

// Writes a file so that a reader sees either the old contents or the new, never a torn file:
// `write` fills a temporary file beside `path`, which is fsynced and then renamed over it.
void write_file_atomic(const std::filesystem::path& path, const std::function<void(std::FILE*)>& write);
// Makes the creation, rename or removal of entries in `dir` durable.
void fsync_dir(const std::filesystem::path& dir);
void write_bytes(std::FILE* file, const void* data, size_t size, const std::filesystem::path& path);

}  // namespace mamba

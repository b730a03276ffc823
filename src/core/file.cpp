#include "core/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "core/limits.h"

namespace mamba {

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path.string(), ": cannot open: ", std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail(path.string(), ": cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path.string(), S_ISDIR(st.st_mode) ? ": is a folder, not a file" : ": is not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail(path.string(), ": cannot memory-map: ", std::strerror(err));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::MappedFile(MappedFile&& other) noexcept { *this = std::move(other); }

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

namespace {

// Reads `file` to its end. A regular file's size is checked against the memory limit before reading;
// a pipe or device (which may never end: /dev/zero) is read in pieces while the total stays within it.
std::string read_all(std::FILE* file, const std::string& where) {
  struct stat st{};
  std::string text;
  if (::fstat(::fileno(file), &st) == 0 && S_ISREG(st.st_mode)) {
    check_memory(static_cast<int64_t>(st.st_size), "reading " + where);
    text.reserve(static_cast<size_t>(st.st_size));
  }
  const int64_t limit = memory_limit();
  char buffer[1 << 16];
  for (;;) {
    const size_t n = std::fread(buffer, 1, sizeof(buffer), file);
    text.append(buffer, n);
    if (limit > 0 && static_cast<int64_t>(text.size()) > limit) {
      fail(where, ": more than ", format_bytes(limit), " of input, the memory allowed (", memory_limit_source(), ")");
    }
    if (n < sizeof(buffer)) break;
  }
  if (std::ferror(file)) fail(where, ": read failed: ", std::strerror(errno));
  return text;
}

}  // namespace

std::string read_text_file(const std::filesystem::path& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) fail(path.string(), ": is a folder, not a file");
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) fail(path.string(), ": cannot open: ", std::strerror(errno));
  try {
    std::string text = read_all(file, path.string());
    std::fclose(file);
    return text;
  } catch (...) {
    std::fclose(file);
    throw;
  }
}

std::string read_stdin(const std::string& where) { return read_all(stdin, where); }

void write_bytes(std::FILE* file, const void* data, size_t size, const std::filesystem::path& path) {
  if (size > 0 && std::fwrite(data, 1, size, file) != size) {
    fail(path.string(), ": write failed: ", std::strerror(errno));
  }
}

void write_file_atomic(const std::filesystem::path& path, const std::function<void(std::FILE*)>& write) {
  std::filesystem::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  std::FILE* file = std::fopen(tmp.c_str(), "wb");
  if (!file) fail(tmp.string(), ": cannot create: ", std::strerror(errno));
  try {
    write(file);
    if (std::fflush(file) != 0 || ::fsync(::fileno(file)) != 0) {
      fail(tmp.string(), ": cannot flush to disk: ", std::strerror(errno));
    }
  } catch (...) {
    std::fclose(file);
    std::filesystem::remove(tmp);
    throw;
  }
  if (std::fclose(file) != 0) fail(tmp.string(), ": close failed: ", std::strerror(errno));
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    std::filesystem::remove(tmp);
    fail(path.string(), ": cannot rename the temporary file into place: ", std::strerror(err));
  }
  fsync_dir(path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path());  // the rename itself
}

void fsync_dir(const std::filesystem::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace mamba

// Shared by the libFuzzer targets (fuzz_*.cpp): every input must end in a mamba::Error or in success.
// Any other exception (std::bad_alloc, a standard library or nlohmann error) escapes and counts as a
// crash, as do the sanitizers' reports and allocations past -malloc_limit_mb.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include "core/error.h"
#include "core/limits.h"

namespace mamba::fuzz {

// Work the input asks for is refused above this, well under libFuzzer's default 2 GB RSS limit: a
// size the memory checks let through is a size the program really allocates.
constexpr int64_t kMemoryLimit = int64_t{256} << 20;

inline void init() { set_memory_limit(kMemoryLimit); }

// The input as a file (the readers take paths), in memory-backed /dev/shm when there is one.
inline std::filesystem::path input_file(const uint8_t* data, size_t size, const char* name) {
  static const std::filesystem::path dir = std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
  const std::filesystem::path path = dir / ("mambacpp-fuzz-" + std::to_string(::getpid()) + "-" + name);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || (size > 0 && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
    std::perror("fuzz: cannot write the input file");
    std::abort();
  }
  return path;
}

}  // namespace mamba::fuzz

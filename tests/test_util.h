// Helpers shared by the tests: paths, temporary folders, comparisons.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/error.h"
#include "ops/backend.h"
#include "ops/scan.h"

namespace mamba::test {

// The first GPU, for the tests that skip without one (REQUIRE_GPU: the reason is the backend's error).
inline const Device kGpu{Device::Kind::Cuda, 0};

inline bool have_gpu(std::string* why) {
  try {
    Backend::get(kGpu);
    return true;
  } catch (const Error& e) {
    *why = e.what();
    return false;
  }
}

#define REQUIRE_GPU()                                         \
  do {                                                        \
    std::string why_no_gpu;                                   \
    if (!::mamba::test::have_gpu(&why_no_gpu)) GTEST_SKIP() << why_no_gpu; \
  } while (0)

inline std::filesystem::path source_dir() { return MAMBA_SOURCE_DIR; }
inline std::filesystem::path fixtures_dir() { return source_dir() / "tests" / "fixtures"; }
inline std::filesystem::path shared_dir() { return MAMBA_SHARED_DIR; }

// The golden fixtures' names (tests/fixtures/cases.json, written by tools/mamba_ref.py).
inline std::vector<std::string> fixture_cases() {
  std::ifstream in(fixtures_dir() / "cases.json");
  nlohmann::json j = nlohmann::json::parse(in);
  std::vector<std::string> names;
  for (auto& c : j["cases"]) names.push_back(c["name"].get<std::string>());
  return names;
}

// A fresh empty folder under the system's temporary directory, removed when the object goes.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("mambacpp-" + std::string(info ? info->name() : "test") + "-" + std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// max |a − b| / max |b|: the error relative to the scale of the reference.
inline double relative_error(const float* a, const float* b, size_t n) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < n; i++) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  return relative_error(a.data(), b.data(), std::min(a.size(), b.size()));
}

// The scan's params with the states entering every `chunk`-th step: written by the forward, read by the
// backward (which takes them const).
inline ScanParams with_checkpoints(ScanParams p, const float* checkpoints, int chunk) {
  p.chunk_states = const_cast<float*>(checkpoints);
  p.state_chunk = chunk;
  return p;
}

}  // namespace mamba::test

#include "core/limits.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace mamba {

namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

std::atomic<int64_t> g_user_limit{0};

// The first integer in a small text file (a cgroup's limit or usage), or -1 ("max" or unreadable).
int64_t read_number(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) return -1;
  try {
    return static_cast<int64_t>(std::min<unsigned long long>(std::stoull(text), kMax));
  } catch (const std::exception&) {
    return -1;
  }
}

int64_t mem_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return sat_mul(kib, 1024);
  }
  return -1;
}

// Room left under the memory limits of this process's cgroup and of every cgroup above it (v2, or
// v1's memory controller): min(limit − usage). -1 when no limit is set or none is readable.
int64_t cgroup_room() {
  std::ifstream in("/proc/self/cgroup");
  int64_t room = -1;
  for (std::string line; std::getline(in, line);) {
    // "0::/path" (v2) or "4:memory:/path" (v1)
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const bool v2 = line.compare(0, a, "0") == 0 && controllers.empty();
    if (!v2 && controllers.find("memory") == std::string::npos) continue;
    const std::filesystem::path mount = v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory";
    const char* limit_file = v2 ? "memory.max" : "memory.limit_in_bytes";
    const char* usage_file = v2 ? "memory.current" : "memory.usage_in_bytes";
    std::filesystem::path dir = mount / std::filesystem::path(line.substr(b + 1)).relative_path();
    for (;;) {
      const int64_t limit = read_number(dir / limit_file), usage = read_number(dir / usage_file);
      // v1 writes "no limit" as a number near 2^63.
      if (limit >= 0 && limit < (int64_t{1} << 60) && usage >= 0) {
        const int64_t left = std::max<int64_t>(0, limit - usage);
        room = room < 0 ? left : std::min(room, left);
      }
      if (dir == mount || !dir.has_relative_path() || dir.parent_path() == dir) break;
      dir = dir.parent_path();
    }
  }
  return room;
}

}  // namespace

int64_t sat_mul(int64_t a, int64_t b) {
  int64_t out;
  return __builtin_mul_overflow(a, b, &out) || out < 0 ? kMax : out;
}

int64_t sat_add(int64_t a, int64_t b) {
  int64_t out;
  return __builtin_add_overflow(a, b, &out) || out < 0 ? kMax : out;
}

void set_memory_limit(int64_t bytes) { g_user_limit.store(std::max<int64_t>(0, bytes)); }

int64_t memory_limit() {
  if (const int64_t user = g_user_limit.load(); user > 0) return user;
  const int64_t available = mem_available(), room = cgroup_room();
  if (available < 0 && room < 0) return 0;
  if (available < 0) return room;
  return room < 0 ? available : std::min(available, room);
}

std::string memory_limit_source() {
  if (g_user_limit.load() > 0) return "by --max-memory";
  return "the memory available: MemAvailable or the cgroup's limit; --max-memory sets another";
}

void check_memory(int64_t bytes, const std::string& what) {
  const int64_t limit = memory_limit();
  if (limit > 0 && bytes > limit) {
    fail(what, ": ", format_bytes(bytes), " needed, more than the ", format_bytes(limit), " allowed (",
         memory_limit_source(), ")");
  }
}

std::string format_bytes(int64_t bytes) {
  if (bytes >= kMax) return "more than 8 EiB";
  static const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " bytes";
  double v = static_cast<double>(bytes);
  int u = -1;
  while (v >= 1024 && u < 5) v /= 1024, u++;
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f %s", v, units[u]);
  return text;
}

int64_t parse_bytes(const std::string& text, const std::string& where) {
  size_t used = 0;
  double value = -1;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char c) { return std::tolower(c); });
  double scale = 0;
  if (unit.empty() || unit == "b") {
    scale = 1;
  } else if (unit == "k" || unit == "kb" || unit == "kib") {
    scale = 0x1p10;
  } else if (unit == "m" || unit == "mb" || unit == "mib") {
    scale = 0x1p20;
  } else if (unit == "g" || unit == "gb" || unit == "gib") {
    scale = 0x1p30;
  } else if (unit == "t" || unit == "tb" || unit == "tib") {
    scale = 0x1p40;
  }
  const double bytes = value * scale;
  if (used == 0 || scale == 0 || !(bytes >= 1) || bytes >= 0x1p62) {
    fail(where, ": \"", text, "\" is not a size (give e.g. 512M, 4G or a number of bytes)");
  }
  return static_cast<int64_t>(bytes);
}

}  // namespace mamba

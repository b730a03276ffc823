// Limits on what input can make the program allocate. Sizes come from files and flags, so they are
// computed before anything is allocated, with arithmetic that cannot overflow, and compared with the
// memory this process may use: the machine's (MemAvailable, or the cgroup's limit when lower) or the
// user's --max-memory. Work that would not fit is refused with the figure, instead of running the
// machine out of memory or ending in std::bad_alloc.
#pragma once

#include <cstdint>
#include <string>

namespace mamba {

// Products and sums of sizes taken from input: they saturate at INT64_MAX, which no memory check
// passes, instead of wrapping around to a small or negative size. Negative operands are a caller's bug.
int64_t sat_mul(int64_t a, int64_t b);
int64_t sat_add(int64_t a, int64_t b);

// The bytes this process may still allocate: the limit given to set_memory_limit(), else the smaller
// of /proc/meminfo's MemAvailable and the cgroup's limit minus its usage (0 when neither is readable:
// then nothing is refused).
int64_t memory_limit();
// A limit in bytes for every later check (--max-memory); 0 goes back to the machine's figure.
void set_memory_limit(int64_t bytes);
// Where the limit comes from, for messages: "by --max-memory" or "the memory available: ...".
std::string memory_limit_source();

// Fails with "WHAT: X needed, more than the Y allowed (SOURCE)" when `bytes` exceeds memory_limit().
void check_memory(int64_t bytes, const std::string& what);

// "1.5 GiB", "12.0 MiB", "512 bytes"; "more than 8 EiB" for a saturated size.
std::string format_bytes(int64_t bytes);
// "4G", "512M", "1.5GiB", "1000000" (bytes). Fails naming `where` on anything else.
int64_t parse_bytes(const std::string& text, const std::string& where);

}  // namespace mamba

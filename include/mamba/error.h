// The one exception type of the library: every failure a caller can cause (a bad file, option, id or
// argument) is a mamba::Error whose message names the file, the field or the argument, and what was
// expected. Cancelled is what a call stopped by its cancel check throws.
#pragma once

#include <stdexcept>
#include <string>

namespace mamba {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

class Cancelled : public Error {
 public:
  explicit Cancelled(const std::string& what = "cancelled") : Error(what) {}
};

}  // namespace mamba

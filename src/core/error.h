// Errors: every failure the user can cause (bad files, bad flags, bad ids) is a mamba::Error whose
// message names the file, the field or tensor, and what was expected. The CLI prints it and exits 1.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace mamba {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Concatenates the arguments with operator<< and throws them as an Error.
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream message;
  (message << ... << args);
  throw Error(message.str());
}

}  // namespace mamba

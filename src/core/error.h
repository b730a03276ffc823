// Errors: every failure the user can cause (bad files, bad flags, bad ids) is a mamba::Error (the public
// type of include/mamba/error.h) whose message names the file, the field or tensor, and what was
// expected. The CLI prints it and exits 1; the Python package raises it as mambacpp.Error.
#pragma once

#include <sstream>
#include <string>

#include "mamba/error.h"

namespace mamba {

// Concatenates the arguments with operator<< and throws them as an Error.
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream message;
  (message << ... << args);
  throw Error(message.str());
}

}  // namespace mamba

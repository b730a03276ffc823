// config.json in either format: parsing, validation, and what is computed from a valid config (the
// parameter count and list, state sizes); a valid config also survives writing and reading back.
#include <cstdlib>
#include <string_view>

#include "core/json.h"
#include "fuzz_util.h"
#include "model/config.h"
#include "model/validate.h"
#include "model/weights.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  mamba::fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto j = mamba::parse_json(std::string_view(reinterpret_cast<const char*>(data), size), "config.json");
    const mamba::Config c = mamba::config_from_json(j, "config.json");
    mamba::check_memory(mamba::parameter_bytes(c), "the parameter list");
    mamba::check_memory(mamba::state_bytes(c, 1), "a state");
    const auto specs = mamba::param_specs(c);
    if (mamba::param_layout_size(specs) < c.parameter_count()) std::abort();
    const mamba::Config again = mamba::config_from_json(mamba::config_to_json(c), "round trip");
    if (again.parameter_count() != c.parameter_count() || again.vocab_size != c.vocab_size) std::abort();
  } catch (const mamba::Error&) {
  }
  return 0;
}

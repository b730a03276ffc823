#include <cstdio>

#include "cli/commands.h"

namespace mamba::cli {

void add_quantize(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "quantize", "Write a model folder with int8 matrices (q8 blocks of 32 with F16 scales; docs/performance.md)");
  struct Options {
    std::string dir, out;
  };
  static Options o;
  cmd->add_option("dir", o.dir, "Model folder (any dtype)")->required();
  cmd->add_option("--out", o.out, "Folder to write (config.json, model.safetensors and the tokenizer files)")->required();
  cmd->callback([] {
    const api::QuantizeSummary q = api::quantize_model(o.dir, o.out);
    const double mib = 1024.0 * 1024.0;
    std::printf("%s: %.1f MiB of int8 matrices and scales (%lld parameters)\n", o.out.c_str(), q.bytes / mib,
                static_cast<long long>(q.config.parameters));
  });
}

}  // namespace mamba::cli

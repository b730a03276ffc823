#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "model/model.h"

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
    namespace fs = std::filesystem;
    if (fs::exists(o.out) && fs::equivalent(o.dir, o.out)) fail("quantize: --out must differ from the model folder");
    const Model model = Model::load(o.dir, DType::I8);
    model.save(o.out, DType::I8);
    // The files beside the weights that describe the vocabulary travel with them.
    for (const auto& entry : fs::directory_iterator(o.dir)) {
      const std::string name = entry.path().filename().string();
      if (entry.is_regular_file() && name.rfind("tokenizer", 0) == 0) {
        fs::copy_file(entry.path(), fs::path(o.out) / name, fs::copy_options::overwrite_existing);
      }
    }
    const double mib = 1024.0 * 1024.0;
    std::printf("%s: %.1f MiB of int8 matrices and scales (%lld parameters)\n", o.out.c_str(),
                model.converted_bytes() / mib, static_cast<long long>(model.config().parameter_count()));
  });
}

}  // namespace mamba::cli

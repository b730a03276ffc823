#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "model/model.h"

namespace mamba::cli {

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Show a model's configuration, parameter count, dtype and memory");
  static std::string dir;
  cmd->add_option("dir", dir, "Model folder (config.json + model.safetensors)")->required();
  cmd->callback([] {
    Model model = Model::load(dir);
    const Config& c = model.config();
    int64_t file_bytes = 0;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      if (entry.path().extension() == ".safetensors") file_bytes += static_cast<int64_t>(entry.file_size());
    }
    const double mib = 1024.0 * 1024.0;
    const int64_t state_bytes = int64_t{c.n_layer} * c.d_inner() * (c.d_conv - 1 + c.d_state) * 4;
    std::printf("model        %s\n", dir.c_str());
    std::printf("d_model      %d\nn_layer      %d\nvocab_size   %d\n", c.d_model, c.n_layer, c.vocab_size);
    std::printf("d_inner      %d (expand %d)\nd_state      %d\nd_conv       %d\ndt_rank      %d\n", c.d_inner(),
                c.expand, c.d_state, c.d_conv, c.dt_rank);
    std::printf("bias         in/out_proj %s, conv %s\ntied head    %s\nnorm eps     %g\n", c.use_bias ? "yes" : "no",
                c.use_conv_bias ? "yes" : "no", c.tie_embeddings ? "yes" : "no", c.norm_eps);
    std::printf("parameters   %lld (%.1fM)\n", static_cast<long long>(c.parameter_count()), c.parameter_count() / 1e6);
    std::printf("dtype        %s (the embedding and projections are read in it; the rest in F32)\n",
                std::string(dtype_name(model.file_dtype())).c_str());
    std::printf("memory       files %.1f MiB; used in place %.1f MiB; converted at load %.1f MiB\n", file_bytes / mib,
                model.mapped_bytes() / mib, model.converted_bytes() / mib);
    std::printf("state        %.1f KiB per sequence (conv tail + SSM state, fp32)\n", state_bytes / 1024.0);
  });
}

}  // namespace mamba::cli

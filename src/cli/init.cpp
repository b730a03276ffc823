#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "model/model.h"

namespace mamba::cli {

void add_init(CLI::App& app) {
  auto* cmd = app.add_subcommand("init", "Write a randomly initialised model (the official initialisation)");
  struct Options {
    std::string preset, out, dtype = "f32";
    int d_model = 0, n_layer = 0, vocab = 50280, d_state = 16, d_conv = 4, expand = 2, dt_rank = 0;
    uint64_t seed = 0;
  };
  static Options o;
  cmd->add_option("--preset", o.preset, std::string("Shape of a published checkpoint: ") + preset_names());
  cmd->add_option("--d-model", o.d_model, "Model width (instead of --preset)")->check(CLI::PositiveNumber);
  cmd->add_option("--n-layer", o.n_layer, "Number of layers")->check(CLI::PositiveNumber);
  cmd->add_option("--vocab", o.vocab, "Vocabulary size (embedding rows)")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--d-state", o.d_state, "SSM state size N")->capture_default_str()->check(CLI::Range(1, 256));
  cmd->add_option("--d-conv", o.d_conv, "Convolution width")->capture_default_str()->check(CLI::Range(1, 64));
  cmd->add_option("--expand", o.expand, "d_inner / d_model")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--dt-rank", o.dt_rank, "Rank of the Δ projection (0 = ceil(d_model/16))")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--out", o.out, "Output folder")->required();
  cmd->add_option("--seed", o.seed, "Random seed")->capture_default_str();
  cmd->add_option("--dtype", o.dtype, "Stored dtype")->capture_default_str()->check(CLI::IsMember({"f32", "bf16", "f16"}));
  cmd->callback([] {
    Config c;
    if (!o.preset.empty()) {
      if (o.d_model) fail("init: give either --preset or --d-model, not both");
      if (!preset_config(o.preset, &c)) fail("init: unknown preset \"", o.preset, "\" (known: ", preset_names(), ")");
    } else {
      if (!o.d_model || !o.n_layer) fail("init: give --preset NAME, or --d-model and --n-layer");
      c.d_model = o.d_model;
      c.n_layer = o.n_layer;
      c.vocab_size = o.vocab;
      c.d_state = o.d_state;
      c.d_conv = o.d_conv;
      c.expand = o.expand;
      c.dt_rank = o.dt_rank ? o.dt_rank : (o.d_model + 15) / 16;
      c.validate("init");
    }
    DType dtype;
    parse_dtype(o.dtype, &dtype);
    std::vector<ParamSpec> specs = param_specs(c);
    std::vector<float> params(static_cast<size_t>(param_layout_size(specs)), 0.0f);
    init_params(params.data(), c, specs, o.seed);
    Model model = Model::from_params(c, std::move(params));
    model.save(o.out, dtype);
    std::printf("wrote %s: %lld parameters, %s, seed %llu\n", o.out.c_str(),
                static_cast<long long>(c.parameter_count()), o.dtype.c_str(), static_cast<unsigned long long>(o.seed));
  });
}

}  // namespace mamba::cli

#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "core/limits.h"
#include "model/model.h"
#include "model/validate.h"

namespace mamba::cli {

void add_init(CLI::App& app) {
  auto* cmd = app.add_subcommand("init", "Write a randomly initialised model (the official initialisation)");
  struct Options {
    ShapeFlags shape;
    std::string out, dtype = "f32";
    int vocab = 50280;
    uint64_t seed = 0;
  };
  static Options o;
  add_shape_flags(cmd, o.shape);
  cmd->add_option("--vocab", o.vocab, "Vocabulary size (embedding rows; not with --preset)")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--out", o.out, "Output folder")->required();
  cmd->add_option("--seed", o.seed, "Random seed")->capture_default_str();
  cmd->add_option("--dtype", o.dtype, "Stored dtype")->capture_default_str()->check(CLI::IsMember({"f32", "fp32", "bf16", "f16", "fp16"}));
  cmd->callback([] {
    Config c = shape_config(o.shape, "init");
    if (o.shape.preset.empty()) c.vocab_size = o.vocab;
    c.validate("init");
    DType dtype;
    parse_dtype(o.dtype, &dtype);
    check_memory(parameter_bytes(c), "init: " + std::to_string(c.parameter_count()) + " parameters");
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

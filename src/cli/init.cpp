#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"

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
    shape_config(o.shape, "init");  // the flags checked, errors naming them
    api::InitOptions init;
    o.shape.copy_to(init);
    init.vocab_size = o.vocab;
    init.seed = o.seed;
    init.dtype = o.dtype;
    const api::ModelConfig c = api::init_model(o.out, init);
    std::printf("wrote %s: %lld parameters, %s, seed %llu\n", o.out.c_str(),
                static_cast<long long>(c.parameters), o.dtype.c_str(), static_cast<unsigned long long>(o.seed));
  });
}

}  // namespace mamba::cli

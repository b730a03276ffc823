#include <cstdio>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/npy.h"

namespace mamba::cli {

void add_score(CLI::App& app) {
  auto* cmd = app.add_subcommand("score", "Run the full forward pass and write fp32 logits as a NumPy .npy");
  struct Options {
    std::string dir, ids, ids_file, out;
    DeviceFlags device;
  };
  static Options o;
  add_device_flags(cmd, o.device);
  cmd->add_option("dir", o.dir, "Model folder")->required();
  auto* ids = cmd->add_option("--ids", o.ids, "Comma-separated token ids: one sequence");
  cmd->add_option("--ids-file", o.ids_file, "Token ids as .npy: (L,) or (B, L) integers")->excludes(ids);
  cmd->add_option("--out", o.out, "Output .npy: logits (L, V), or (B, L, V) for 2-D ids")->required();
  cmd->callback([] {
    if (o.ids.empty() && o.ids_file.empty()) fail("score: give --ids or --ids-file");
    std::vector<int32_t> tokens;
    std::vector<int64_t> shape;
    if (!o.ids.empty()) {
      tokens = parse_ids(o.ids, "--ids");
      if (tokens.empty()) fail("--ids: no token ids given");
      shape = {static_cast<int64_t>(tokens.size())};
    } else {
      tokens = read_ids_npy(o.ids_file, shape);
    }
    if (shape.front() > INT32_MAX || shape.back() > INT32_MAX) fail(o.ids_file, ": shape is too large");
    const int B = shape.size() == 2 ? static_cast<int>(shape[0]) : 1;
    const int L = static_cast<int>(shape.back());
    api::ModelOptions options = model_options(o.device);
    options.text = false;  // ids only: no tokenizer read
    const api::Model model(o.dir, options);
    const int64_t V = model.config().vocab_size;
    api::check_memory(model.forward_bytes(B, L, api::Logits::All),
                      "score: logits of " + std::to_string(B) + " × " + std::to_string(L) + " tokens × " + std::to_string(V));
    std::vector<float> logits(static_cast<size_t>(int64_t{B} * L * V));
    model.score(tokens.data(), B, L, logits.data());  // fails, naming the position, on logits that are not finite
    shape.push_back(V);
    write_npy(o.out, logits.data(), shape);
    std::fprintf(stderr, "wrote %s: logits of %d × %d tokens × %lld\n", o.out.c_str(), B, L, static_cast<long long>(V));
  });
}

}  // namespace mamba::cli

// mambacpp: the command-line front end. Errors the user can cause are printed as one line naming the
// file, field or flag, with exit status 1; bad flags give CLI11's message and usage, and its non-zero code.
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"
#include "core/runtime.h"

int main(int argc, char** argv) {
  mamba::relaunch_with_passive_wait(argv);  // before libgomp reads its settings (core/runtime.h says why)
  CLI::App app{"mambacpp " MAMBA_VERSION ": Mamba selective state space models on the CPU and the GPU"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mambacpp " MAMBA_VERSION " (" MAMBA_BUILD_FLAGS ")");
  int threads = 0;
  app.add_option("-t,--threads", threads, "Threads for the math (0 = all cores)")->check(CLI::NonNegativeNumber);
  // Threads, and subnormals flushed to zero in every thread, before any command runs.
  app.parse_complete_callback([&] { mamba::configure_runtime(threads); });
  mamba::cli::add_info(app);
  mamba::cli::add_init(app);
  mamba::cli::add_score(app);
  mamba::cli::add_bench(app);
  mamba::cli::add_train(app);
  mamba::cli::add_generate(app);
  mamba::cli::add_perplexity(app);
  mamba::cli::add_tokenize(app);
  mamba::cli::add_tasks(app);
  mamba::cli::add_serve(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const mamba::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

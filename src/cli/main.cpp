// mambacpp: the command-line front end. Errors the user can cause are printed as one line naming the
// file, field or flag, with exit status 1; bad flags give CLI11's message and usage, and its non-zero code.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"
#include "ops/cpu/math.h"

int main(int argc, char** argv) {
  // Idle OpenMP threads should sleep, not spin: spinning threads take the cores from OpenBLAS and
  // from other processes (measured here: training 2.5× faster on a busy 2-core machine). libgomp
  // reads OMP_WAIT_POLICY once, when it loads, so the program sets it and starts itself again; a
  // value the user set is kept.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    ::execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
  }
  // Subnormal floats flushed to zero for the whole program, before any thread starts (threads inherit
  // the mode): every op, OpenBLAS's too, skips the x86 microcode assist that each subnormal costs. The
  // scans also set it themselves (ops/cpu/math.h), for programs that use the library directly.
  const mamba::cpu::FlushSubnormals ftz;
  CLI::App app{"mambacpp " MAMBA_VERSION ": Mamba selective state space models on the CPU"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mambacpp " MAMBA_VERSION " (" MAMBA_BUILD_FLAGS ")");
  int threads = 0;
  app.add_option("-t,--threads", threads, "Threads for the math (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.parse_complete_callback([&] { mamba::cli::set_threads(threads); });
  mamba::cli::add_info(app);
  mamba::cli::add_init(app);
  mamba::cli::add_score(app);
  mamba::cli::add_bench(app);
  mamba::cli::add_train(app);
  mamba::cli::add_generate(app);
  mamba::cli::add_perplexity(app);
  mamba::cli::add_tokenize(app);
  mamba::cli::add_tasks(app);
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

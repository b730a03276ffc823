// mambacpp: the command-line front end. Errors the user can cause are printed as one line naming the
// file, field or flag, with exit status 1; bad flags give CLI11's message and usage, and its non-zero code.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "core/limits.h"
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
  std::string max_memory;
  app.add_option("-t,--threads", threads, "Threads for the math (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--max-memory", max_memory,
                 "Refuse work that needs more memory than this (e.g. 8G, 512M); default: the memory available "
                 "(MemAvailable, or the cgroup's limit)");
  app.parse_complete_callback([&] {
    mamba::cli::set_threads(threads);
    if (!max_memory.empty()) mamba::set_memory_limit(mamba::parse_bytes(max_memory, "--max-memory"));
  });
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
  } catch (const std::bad_alloc&) {
    // The memory checks (core/limits.h) refuse the work whose size comes from input before it starts;
    // this is what remains: the machine ran short while working.
    std::fprintf(stderr, "error: out of memory (%s available now); --max-memory sets a limit under which work is refused before it starts\n",
                 mamba::format_bytes(mamba::memory_limit()).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

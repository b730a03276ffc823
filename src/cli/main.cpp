// mambacpp: the command-line front end. Errors the user can cause are printed as one line naming the
// file, field or flag, with exit status 1; bad flags give CLI11's message and usage, and its non-zero code.
#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "core/limits.h"
#include "core/runtime.h"
#include "dist/comm.h"

namespace {

// An error's one line; in a data-parallel job (several ranks), named by rank, and the whole job stopped:
// the other ranks would otherwise wait for this one until their watchdogs fire.
int report_error(const std::string& message) {
  if (mamba::launched_as_several()) {
    const mamba::LaunchInfo launch = mamba::detect_launch();
    std::fprintf(stderr, "error: rank %d: %s\n", launch.rank, message.c_str());
    std::fflush(stderr);
    mamba::abort_job(1);
  }
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  mamba::relaunch_with_passive_wait(argv);  // before libgomp reads its settings (core/runtime.h says why)
  CLI::App app{"mambacpp " MAMBA_VERSION ": Mamba selective state space models on the CPU and the GPU"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mambacpp " MAMBA_VERSION " (" MAMBA_BUILD_FLAGS ")");
  int threads = 0;
  std::string max_memory;
  app.add_option("-t,--threads", threads, "Threads for the math (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--max-memory", max_memory,
                 "Refuse work that needs more memory than this (e.g. 8G, 512M); default: the memory available "
                 "(MemAvailable, or the cgroup's limit)");
  bool bf16_products = false;
  app.add_flag("--bf16-products", bf16_products,
               "Multiply BF16 weights with the activations rounded to bf16 on CPUs with AVX-512 BF16 (about 2x "
               "the prefill; results within bf16 rounding of the exact fp32 activations)");
  // Threads, and subnormals flushed to zero in every thread, before any command runs.
  app.parse_complete_callback([&] {
    mamba::configure_runtime(threads);
    mamba::set_bf16_products(bf16_products);
    if (!max_memory.empty()) mamba::set_memory_limit(mamba::parse_bytes(max_memory, "--max-memory"));
  });
  mamba::cli::add_info(app);
  mamba::cli::add_init(app);
  mamba::cli::add_score(app);
  mamba::cli::add_bench(app);
  mamba::cli::add_bench_train(app);
  mamba::cli::add_quantize(app);
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
    return report_error(e.what());
  } catch (const std::bad_alloc&) {
    // The memory checks (core/limits.h) refuse the work whose size comes from input before it starts;
    // this is what remains: the machine ran short while working.
    return report_error("out of memory (" + mamba::format_bytes(mamba::memory_limit()) +
                        " available now); --max-memory sets a limit under which work is refused before it starts");
  } catch (const std::exception& e) {
    return report_error(e.what());
  }
  return 0;
}

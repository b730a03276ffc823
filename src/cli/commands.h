// The subcommands of `mambacpp`. Each file adds one to the app: its flags (declared once, with
// defaults and help) and what it runs.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

namespace mamba::cli {

void add_info(CLI::App& app);
void add_init(CLI::App& app);
void add_score(CLI::App& app);
void add_bench(CLI::App& app);
void add_train(CLI::App& app);
void add_generate(CLI::App& app);
void add_perplexity(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_tasks(CLI::App& app);

// Token ids separated by commas and/or whitespace, optionally in brackets: "1,2,3", "1 2 3", "[1, 2, 3]".
// `where` names the source in errors.
std::vector<int32_t> parse_ids(const std::string& text, const std::string& where);

// Sets the OpenMP and OpenBLAS thread counts (0 = all cores).
void set_threads(int threads);
int thread_count();

}  // namespace mamba::cli

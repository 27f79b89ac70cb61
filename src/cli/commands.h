// Subcommand registry. Each subcommand has its own file src/cli/<name>.cpp exposing one
// `add_<name>_command(CLI::App&)` that declares its flags (with defaults and help), maps them onto the command's
// settings and installs a callback that calls its body, a run_<name>() in the command's area (prefs::run_build_prefs,
// generate::run_eval_igakuqa, ...). Bodies report failure by throwing medllm::UsageError (exit 2) or medllm::Error
// (exit 1); main() maps them.
#pragma once

#include <CLI/CLI.hpp>

namespace medllm::cli {

void add_cpt_command(CLI::App& app);
void add_build_prefs_command(CLI::App& app);
void add_rpo_command(CLI::App& app);
void add_pipeline_command(CLI::App& app);        // `pipeline`: the whole job
void add_eval_command(CLI::App& app);            // `eval igakuqa`, `eval mcqa`
void add_eval_mcqa_command(CLI::App& eval_cmd);  // src/cli/eval_mcqa.cpp, registered by add_eval_command
void add_generate_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_prepare_corpus_command(CLI::App& app);
void add_merge_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_version_command(CLI::App& app);

}  // namespace medllm::cli

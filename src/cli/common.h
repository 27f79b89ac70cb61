// Helpers shared by the subcommand files in src/cli/.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "medllm/core/config.h"

namespace medllm::cli {

// Registers a callback that refuses to run: the capability is not built yet (exit 2, one line).
void add_not_built_callback(CLI::App* cmd, const std::string& what);

// `--config FILE` and repeatable `--set key=value` for subcommands driven by a config file.
struct ConfigOptions {
    std::string path;
    std::vector<std::string> overrides;
    ConfigSource source() const { return {path, overrides}; }
};
void add_config_options(CLI::App* cmd, ConfigOptions& opts);

// Creates the run's output directory, adds <dir>/medllm.log, logs the resolved config as a
// two-column table and writes <dir>/config.resolved.yaml.
void start_run(const std::string& output_dir, const std::vector<ResolvedEntry>& resolved);

}  // namespace medllm::cli

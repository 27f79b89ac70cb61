#include "cli/common.h"

#include <filesystem>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/log.h"

namespace medllm::cli {

void add_not_built_callback(CLI::App* cmd, const std::string& what) {
    cmd->allow_extras();  // accept any flags so the message below is what the user sees
    cmd->callback([what, name = cmd->get_name()] {
        throw NotImplementedError("medllm " + name + ": " + what + " in this version");
    });
}

void add_config_options(CLI::App* cmd, ConfigOptions& opts) {
    cmd->add_option("--config", opts.path, "YAML or JSON config file (see configs/)")->check(CLI::ExistingFile);
    cmd->add_option("--set", opts.overrides,
                    "Override a config key, e.g. --set lora.rank=16 (repeatable; wins over --config)")
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

void start_run(const std::string& output_dir, const std::vector<ResolvedEntry>& resolved) {
    log_to_file(output_dir);
    spdlog::info("resolved configuration:\n{}", format_resolved_table(resolved));
    write_resolved_yaml(resolved, (std::filesystem::path(output_dir) / "config.resolved.yaml").string());
}

}  // namespace medllm::cli

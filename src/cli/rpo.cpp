// `medllm rpo`: reasoning preference optimization (DPO + alpha * NLL).
// Not built yet: the subcommand is registered so --help lists it, and running it exits 2.
#include "cli/commands.h"
#include "cli/common.h"

namespace medllm::cli {

void add_rpo_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("rpo", "Reasoning preference optimization (DPO + alpha * NLL) (not built yet)");
    add_not_built_callback(cmd, "the preference trainer (rpo/dpo) is not built yet");
}

}  // namespace medllm::cli

// `medllm merge`: merge LoRA adapters into a bf16 HF checkpoint.
// Not built yet: the subcommand is registered so --help lists it, and running it exits 2.
#include "cli/commands.h"
#include "cli/common.h"

namespace medllm::cli {

void add_merge_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("merge", "Merge LoRA adapters into a bf16 HF checkpoint (not built yet)");
    add_not_built_callback(cmd, "adapter merging is not built yet");
}

}  // namespace medllm::cli

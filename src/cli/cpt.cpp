// `medllm cpt`: continued pretraining (QLoRA) on a corpus.
// Not built yet: the subcommand is registered so --help lists it, and running it exits 2.
#include "cli/commands.h"
#include "cli/common.h"

namespace medllm::cli {

void add_cpt_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("cpt", "Continued pretraining (QLoRA) on a corpus (not built yet)");
    add_not_built_callback(cmd, "the training stage (cpt) is not built yet");
}

}  // namespace medllm::cli

// `medllm build-prefs`: build GT > chosen > rejected preference pairs from exam answers.
// Not built yet: the subcommand is registered so --help lists it, and running it exits 2.
#include "cli/commands.h"
#include "cli/common.h"

namespace medllm::cli {

void add_build_prefs_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("build-prefs",
                                   "Build GT > chosen > rejected preference pairs from exam answers (not built yet)");
    add_not_built_callback(cmd, "the preference builder is not built yet");
}

}  // namespace medllm::cli

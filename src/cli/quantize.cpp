// `medllm quantize`: write a bitsandbytes-compatible NF4 checkpoint.
// Not built yet: the subcommand is registered so --help lists it, and running it exits 2.
#include "cli/commands.h"
#include "cli/common.h"

namespace medllm::cli {

void add_quantize_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("quantize", "Write a bitsandbytes-compatible NF4 checkpoint (not built yet)");
    add_not_built_callback(cmd, "NF4 checkpoint writing is not built yet");
}

}  // namespace medllm::cli

// `medllm generate`: generate text from a model (batched, KV cache).
// Not built yet: the subcommand is registered so --help lists it, and running it exits 2.
#include "cli/commands.h"
#include "cli/common.h"

namespace medllm::cli {

void add_generate_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("generate", "Generate text from a model (batched, KV cache) (not built yet)");
    add_not_built_callback(cmd, "the generation engine is not built yet");
}

}  // namespace medllm::cli

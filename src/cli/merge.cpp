// `medllm merge`: fold PEFT LoRA adapters (one, a stack, or several folders) into a bf16 copy of their base model
// (dequantized first when the base is a bitsandbytes 4-bit checkpoint) and write a HF checkpoint that transformers
// loads. The body is peft::run_merge (include/medllm/peft/adapter.h); this file declares the flags.
#include "cli/commands.h"
#include "cli/common.h"
#include "medllm/peft/adapter.h"

namespace medllm::cli {

void add_merge_command(CLI::App& app) {
    auto opts = std::make_shared<peft::MergeConfig>();
    auto* cmd = app.add_subcommand("merge", "Merge PEFT LoRA adapters (one or a stack) into a bf16 HF checkpoint");
    cmd->footer(
        "The base is checked against its config.json first, as info and generate check it. "
        "A 4-bit base is dequantized first (the weights the adapter was trained against). An adapter folder with "
        "adapter_stack.json (medllm rpo with lora.merge_init_adapter: false) is a stack: every adapter in it is "
        "folded. --adapter may be given several times (e.g. a folder PEFT saved with several adapters: the folder "
        "and each adapter's subfolder); the deltas are summed in fp32 and the weight rounded to bf16 once. "
        "Progress is logged with a rate and an ETA; rerunning an interrupted merge with the same inputs keeps the "
        "shards it finished (.model-shards.json in the output directory).");
    // A missing input folder is a usage error (exit 2), as for every other subcommand.
    cmd->add_option("--model", opts->model, "Base model directory (HF bf16/fp32, or bitsandbytes 4-bit)")
        ->required()
        ->check(CLI::ExistingDirectory);
    cmd->add_option("--adapter", opts->adapters,
                    "PEFT adapter directory (adapter_config.json + adapter_model.safetensors), or a stack "
                    "(adapter_stack.json); repeat to fold several")
        ->required()
        ->expected(1)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
        ->check(CLI::ExistingDirectory);
    cmd->add_option("--output", opts->output, "Output directory for the merged checkpoint")->required();
    cmd->add_option("--max-shard-bytes", opts->max_shard_bytes, "Largest safetensors shard in bytes")
        ->capture_default_str()
        ->check(integer_in(1));
    cmd->callback([opts] { peft::run_merge(*opts); });
}

}  // namespace medllm::cli

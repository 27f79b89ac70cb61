// `medllm quantize`: write a bitsandbytes-compatible NF4 checkpoint once, instead of quantizing at every start. The
// body is quant::run_quantize (include/medllm/quant/quantize_checkpoint.h); this file declares the flags.
#include "cli/commands.h"
#include "cli/common.h"
#include "medllm/quant/quantize_checkpoint.h"

namespace medllm::cli {

void add_quantize_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("quantize",
                                   "Write a bitsandbytes/transformers-compatible 4-bit NF4 checkpoint (q/k/v/o and MLP "
                                   "projections quantized; embeddings, norms, biases and lm_head kept)");
    struct Options {
        quant::QuantizeConfig config;
        bool no_double_quant = false;
    };
    cmd->footer(
        "The input is checked against its config.json first (every tensor present, none extra, shapes and dtypes "
        "as the config implies), as info and generate check it. Progress is logged with a rate and an ETA. "
        "Rerunning an interrupted quantize with the same input and options (--max-shard-bytes included) keeps "
        "the shards it finished (.model-shards.json in the output directory).");
    auto opts = std::make_shared<Options>();
    cmd->add_option("--model", opts->config.model, "HF checkpoint directory (config.json + safetensors)")
        ->required()
        ->check(CLI::ExistingDirectory);
    cmd->add_option("--output", opts->config.output, "Output directory")->required();
    cmd->add_option("--blocksize", opts->config.options.blocksize, "NF4 block size (power of two, 32 to 4096)")
        ->capture_default_str()
        ->check(integer_in(32, 4096));
    cmd->add_flag("--no-double-quant", opts->no_double_quant, "Keep fp32 absmax (no double quantization)");
    cmd->add_option("--max-shard-bytes", opts->config.options.max_shard_bytes,
                    "Largest safetensors shard in bytes (a bigger output is written as model-0000i-of-0000n "
                    "shards plus an index; a rerun resumes shard by shard)")
        ->capture_default_str()
        ->check(integer_in(1));
    cmd->callback([opts] {
        opts->config.options.double_quant = !opts->no_double_quant;
        quant::run_quantize(opts->config);
    });
}

}  // namespace medllm::cli

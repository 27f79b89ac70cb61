// `medllm quantize`: write a bitsandbytes-compatible NF4 checkpoint once, instead of quantizing at every start.
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "medllm/core/progress.h"
#include "medllm/io/safetensors.h"
#include "medllm/model/checkpoint_check.h"
#include "medllm/model/config.h"
#include "medllm/quant/quantize_checkpoint.h"

namespace medllm::cli {

void add_quantize_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("quantize",
                                   "Write a bitsandbytes/transformers-compatible 4-bit NF4 checkpoint (q/k/v/o and MLP "
                                   "projections quantized; embeddings, norms, biases and lm_head kept)");
    struct Options {
        std::string model, output;
        quant::QuantizeOptions q;
        bool no_double_quant = false;
    };
    cmd->footer(
        "The input is checked against its config.json first (every tensor present, none extra, shapes and dtypes "
        "as the config implies), as info and generate check it. Progress is logged with a rate and an ETA. "
        "Rerunning an interrupted quantize with the same input and options (--max-shard-bytes included) keeps "
        "the shards it finished (.model-shards.json in the output directory).");
    auto opts = std::make_shared<Options>();
    cmd->add_option("--model", opts->model, "HF checkpoint directory (config.json + safetensors)")
        ->required()
        ->check(CLI::ExistingDirectory);
    cmd->add_option("--output", opts->output, "Output directory")->required();
    cmd->add_option("--blocksize", opts->q.blocksize, "NF4 block size (power of two, 32 to 4096)")
        ->capture_default_str()
        ->check(integer_in(32, 4096));
    cmd->add_flag("--no-double-quant", opts->no_double_quant, "Keep fp32 absmax (no double quantization)");
    cmd->add_option("--max-shard-bytes", opts->q.max_shard_bytes,
                    "Largest safetensors shard in bytes (a bigger output is written as model-0000i-of-0000n "
                    "shards plus an index; a rerun resumes shard by shard)")
        ->capture_default_str()
        ->check(integer_in(1));
    cmd->callback([opts] {
        opts->q.double_quant = !opts->no_double_quant;
        // The same check info and generate make, before anything is read or written.
        const auto config = model::Qwen2Config::from_file(opts->model);
        model::validate_checkpoint(io::CheckpointReader(opts->model), config, opts->model);
        auto report =
            quant::quantize_checkpoint(opts->model, opts->output, opts->q, progress_callback("quantize", "tensors"));
        spdlog::info("wrote {}: {} tensors in NF4, {} kept; {:.2f} GiB -> {:.2f} GiB", opts->output,
                     report.quantized_tensors, report.kept_tensors, report.bytes_in / double(1ull << 30),
                     report.bytes_out / double(1ull << 30));
    });
}

}  // namespace medllm::cli

// `medllm info --model DIR`: a model's config, parameter count and memory estimates. The body is model::run_info
// (include/medllm/model/info_command.h); this file declares the flags.
#include "cli/commands.h"
#include "cli/common.h"
#include "medllm/model/info_command.h"

namespace medllm::cli {
namespace {

// Flag limits: far above any real run, and (with the config's own limits) small enough that no byte count of the
// estimates comes near uint64 overflow; run_info refuses the few combinations that still would.
constexpr int64_t kMaxBatch    = int64_t{1} << 16;
constexpr int64_t kMaxSeqLen   = int64_t{1} << 24;
constexpr int64_t kMaxLoraRank = int64_t{1} << 16;

}  // namespace

void add_info_command(CLI::App& app) {
    auto opts = std::make_shared<model::InfoConfig>();
    auto* cmd = app.add_subcommand("info", "Show a model's config, parameter count and memory estimates");
    cmd->add_option("--model", opts->model, "Model directory (config.json, optionally safetensors) or a config.json")
        ->required();
    cmd->add_option("--batch", opts->batch, "Batch size for the activation and KV-cache estimates")
        ->capture_default_str()
        ->check(integer_in(1, kMaxBatch));
    cmd->add_option("--seq-len", opts->seq_len, "Sequence length for the activation and KV-cache estimates")
        ->capture_default_str()
        ->check(integer_in(1, kMaxSeqLen));
    cmd->add_option("--lora-r,--lora-rank", opts->lora_rank,
                    "LoRA rank r, as the config key lora.r (adapters on all seven linears of every layer)")
        ->capture_default_str()
        ->check(integer_in(0, kMaxLoraRank));
    cmd->add_flag("--no-activation-checkpointing", opts->no_checkpointing,
                  "Estimate activations without per-layer checkpointing");
    cmd->callback([opts] { model::run_info(*opts); });
}

}  // namespace medllm::cli

// `medllm info`: a model's config, parameter count and memory estimates (bf16, NF4 + LoRA, activations at batch x
// seq-len). Works on config-only directories (configs/models/*) and on full checkpoints, whose tensors are then
// checked against the config (names, shapes) without reading any weight data.
#pragma once

#include <cstdint>
#include <string>

namespace medllm::model {

struct InfoConfig {
    std::string model;  // a model folder or its config.json
    int64_t batch         = 1;
    int64_t seq_len       = 2048;
    int64_t lora_rank     = 64;
    bool no_checkpointing = false;  // estimate activations without per-layer checkpointing
};

// Prints the report to stdout. UsageError for a missing --model or estimates beyond 2^62 bytes; Error when the
// checkpoint does not match its config (after printing what differs).
void run_info(const InfoConfig& config);

}  // namespace medllm::model

// Writes a bitsandbytes/transformers-compatible 4-bit (NF4) checkpoint from a HF checkpoint, streaming tensor
// by tensor so a 72B base is quantized once, with about one tensor in memory at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace medllm::quant {

struct QuantizeOptions {
    int64_t blocksize        = 64;    // bitsandbytes' default; any power of two from 32 to 4096
    bool double_quant        = true;  // quantize the absmax statistics too (QLoRA's ~0.37 bits/param saving)
    uint64_t max_shard_bytes = 5'000'000'000ULL;
};

struct QuantizeReport {
    int64_t quantized_tensors = 0, kept_tensors = 0;
    int64_t resumed_tensors = 0;  // output tensors taken over from an interrupted run's finished shards
    uint64_t bytes_in = 0, bytes_out = 0;
};

// True for the weights bitsandbytes quantizes in a Qwen2 model: every nn.Linear weight except lm_head
// (transformers keeps the output head in full precision).
bool is_quantizable_weight(const std::string& name);

// Reads `model_dir` (config.json + safetensors), writes `output_dir` with the 4-bit tensors, a config.json that
// carries transformers' `quantization_config`, and copies of the tokenizer and generation files.
// `progress(done, total, bytes_read)` is called after each input tensor.
using CheckpointProgress = std::function<void(int64_t done, int64_t total, uint64_t bytes_read)>;
QuantizeReport quantize_checkpoint(const std::string& model_dir, const std::string& output_dir,
                                   const QuantizeOptions& options, const CheckpointProgress& progress = {});

// `medllm quantize`'s flags.
struct QuantizeConfig {
    std::string model;   // the HF checkpoint to quantize
    std::string output;  // the 4-bit checkpoint's folder
    QuantizeOptions options;
};

// The command: checks the checkpoint against its config.json (as info and generate do) before anything is read or
// written, quantizes it with its progress logged (rate, ETA), then logs what was written.
void run_quantize(const QuantizeConfig& config);

}  // namespace medllm::quant

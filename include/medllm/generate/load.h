// Loading a model directory for generation or evaluation (and for the training stages, which need the same
// weights, tokenizer and EOS ids without the CLI): device and dtype parsing, an optional PEFT adapter, NF4 bases.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "medllm/model/qwen2.h"
#include "medllm/text/tokenizer.h"

namespace medllm::generate {

// EOS ids of a model directory: generation_config.json `eos_token_id` (int or list) when present, else the
// config's. Errors name the file.
std::vector<int64_t> load_eos_token_ids(const std::filesystem::path& model_dir, const model::Qwen2Config& config);

// `--device`: auto (cuda:0 when CUDA is available, else cpu) | cpu | cuda | cuda:N. Throws UsageError naming the
// flag for anything else or for CUDA without a device.
at::Device parse_device(const std::string& device);
// `--dtype` for `device`: auto (bf16 on CUDA unless the config's dtype is float32; fp32 on CPU) | fp32 | bf16 |
// fp16 (also float32, bfloat16, float16). Throws UsageError naming the flag.
at::ScalarType parse_dtype(const std::string& dtype, at::Device device, const model::Qwen2Config& config);

// A model directory loaded for generation: weights, tokenizer (if the folder has one), EOS ids.
struct LoadedModel {
    std::shared_ptr<model::Qwen2ForCausalLM> model;
    std::shared_ptr<const text::Tokenizer> tokenizer;  // null when the folder has no tokenizer files
    std::vector<int64_t> eos_token_ids;
    bool has_chat_template = false;  // tokenizer_config.json has `chat_template`, or chat_template.jinja exists
    std::string name;                // folder name (+ "+<adapter folder>")
};

struct LoadOptions {
    std::string dtype  = "auto";  // see parse_dtype
    std::string device = "auto";  // see parse_device
    std::string adapter;          // PEFT LoRA adapter folder applied to the model
    // Quantize the base weights to NF4 as they load (QLoRA): all seven projections of every layer, adapted or
    // not, as transformers + bitsandbytes load a 4-bit model. A 4-bit checkpoint is NF4 without this flag.
    bool quantize_base     = false;
    bool require_tokenizer = true;
};

// Throws UsageError for a missing folder or bad option, Error for unreadable or inconsistent files (an adapter
// that does not fit the model names the adapter's file and tensor).
LoadedModel load_model(const std::filesystem::path& dir, const LoadOptions& options);

}  // namespace medllm::generate

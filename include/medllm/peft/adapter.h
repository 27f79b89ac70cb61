// PEFT adapter directories (`adapter_config.json` + `adapter_model.safetensors`) and merging an adapter into a
// base checkpoint. Saved keys are PEFT's: `base_model.model.<module>.lora_A.weight` [r, in] and
// `base_model.model.<module>.lora_B.weight` [out, r], e.g.
// base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "medllm/peft/lora.h"

namespace medllm::peft {

inline constexpr const char* kAdapterConfigFile  = "adapter_config.json";
inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";
inline constexpr const char* kPeftKeyPrefix      = "base_model.model.";

// The LoRA part of adapter_config.json as medllm uses it.
struct AdapterConfig {
    LoraConfig lora;                              // r, alpha, dropout, use_rslora, target_modules
    std::map<std::string, int64_t> rank_pattern;  // PEFT per-module overrides (key matched as a name suffix regex)
    std::map<std::string, double> alpha_pattern;

    int64_t rank_for(const std::string& module) const;
    double alpha_for(const std::string& module) const;
    double scaling_for(const std::string& module) const;
};

// Parses adapter_config.json. Throws Error naming the file for unreadable/malformed JSON and UsageError naming
// the file and key for settings medllm does not implement (DoRA, lora_bias, fan_in_fan_out, modules_to_save,
// layer replication, a peft_type other than LORA).
AdapterConfig read_adapter_config(const std::filesystem::path& dir);
// PEFT's LoraConfig as sorted JSON (inference_mode true, as PEFT saves it).
nlohmann::json adapter_config_json(const LoraConfig& cfg);

// One module's adapter weights from a PEFT file (CPU, as stored).
struct AdapterWeights {
    at::Tensor A;  // [r, in]
    at::Tensor B;  // [out, r]
    double scaling = 1.0;
};
// Reads adapter_model.safetensors (keys checked against the config: every module has both A and B, ranks agree,
// no unknown keys). Map key: the HF module name (`model.layers.0.self_attn.q_proj`).
std::map<std::string, AdapterWeights> read_adapter_weights(const std::filesystem::path& dir, const AdapterConfig& cfg);

// Writes the model's adapters in PEFT's format (fp32 or the adapters' dtype, as held).
void save_adapter(model::Qwen2ForCausalLM& model, const LoraConfig& cfg, const std::filesystem::path& dir);

// Copies an adapter directory's weights into a model that apply_lora() adapted with the same modules and ranks.
// Throws Error naming the file and key for a missing module, a shape mismatch, or a key the model lacks.
void load_adapter(model::Qwen2ForCausalLM& model, const std::filesystem::path& dir);

// Builds a model from a base checkpoint plus a PEFT adapter directory (rank, alpha, targets from its config).
std::shared_ptr<model::Qwen2ForCausalLM> load_model_with_adapter(const std::string& base_dir,
                                                                 const std::filesystem::path& adapter_dir,
                                                                 at::ScalarType dtype, at::Device device = at::kCPU,
                                                                 bool quantize_base = false);

struct MergeStats {
    int64_t merged_modules      = 0;
    int64_t dequantized_modules = 0;
    int64_t tensors             = 0;
    std::vector<std::filesystem::path> files;
};

// `medllm merge`: streams the base checkpoint (bf16/fp32, or bitsandbytes 4-bit, which is dequantized) tensor by
// tensor, adds scaling·B·A in fp32 to each adapted weight, and writes a bf16 HF checkpoint (sharded above
// `max_shard_bytes`) with config.json (dtype bfloat16, no quantization_config) and the base's tokenizer files.
// `progress(done, total, bytes_read)` is called after each base tensor.
MergeStats merge_adapter_checkpoint(const std::filesystem::path& base_dir, const std::filesystem::path& adapter_dir,
                                    const std::filesystem::path& out_dir, uint64_t max_shard_bytes = 5'000'000'000ULL,
                                    const std::function<void(int64_t, int64_t, uint64_t)>& progress = {});

// `medllm merge`'s flags.
struct MergeConfig {
    std::string model;    // the base checkpoint (HF bf16/fp32, or bitsandbytes 4-bit)
    std::string adapter;  // the PEFT adapter folder
    std::string output;   // the merged checkpoint's folder
    uint64_t max_shard_bytes = 5'000'000'000ULL;
};

// The command: merge_adapter_checkpoint with its progress logged (rate, ETA), then what was written.
void run_merge(const MergeConfig& config);

}  // namespace medllm::peft

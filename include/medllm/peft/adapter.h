// PEFT adapter directories (`adapter_config.json` + `adapter_model.safetensors`), stacks of them, and merging
// adapters into a base checkpoint. Saved keys are PEFT's: `base_model.model.<module>.lora_A.weight` [r, in] and
// `base_model.model.<module>.lora_B.weight` [out, r], e.g.
// base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight.
//
// A stack (several named adapters, all active) is saved as PEFT's save_pretrained saves a model with several
// adapters: "default" in the folder itself, every other adapter in a subfolder named after it, each with its own
// adapter_config.json and adapter_model.safetensors (same key names). PEFT records nowhere which adapters a folder
// holds or in which order they stack, so medllm adds `adapter_stack.json`: {"adapters": [bottom, ..., top]}.
// A folder without it is one adapter.
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
inline constexpr const char* kAdapterStackFile   = "adapter_stack.json";

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

// Reads adapter_model.safetensors (keys checked against the config: every module has both A and B, ranks agree,
// no unknown keys). Map key: the HF module name (`model.layers.0.self_attn.q_proj`).
std::map<std::string, AdapterWeights> read_adapter_weights(const std::filesystem::path& dir, const AdapterConfig& cfg);

// One adapter of a stack: its PEFT name and its folder.
struct StackEntry {
    std::string name;
    std::filesystem::path dir;
};
// The adapters a folder holds, bottom of the stack first: those adapter_stack.json names ("default" = the folder,
// others its subfolders), or the folder alone as "default". UsageError naming the file and key for a malformed
// adapter_stack.json, Error for a named adapter whose folder has no adapter_config.json.
std::vector<StackEntry> read_adapter_stack(const std::filesystem::path& dir);
// What identifies an adapter folder's contents for caches and run identities: io::model_dir_identity of a single
// adapter (as before stacks existed), that of every folder of a stack.
nlohmann::json adapter_identity(const std::filesystem::path& dir);

// Writes the model's adapters in PEFT's format (fp32 or the adapters' dtype, as held): the trainable adapter alone
// (with `cfg`'s settings), or, when the model holds frozen adapters, the whole stack with adapter_stack.json (each
// frozen adapter with the settings it was added with). A stack needs an adapter named "default".
void save_adapter(model::Qwen2ForCausalLM& model, const LoraConfig& cfg, const std::filesystem::path& dir);

// Copies an adapter directory's weights into a model that apply_lora() adapted with the same modules and ranks:
// a single adapter into the trainable one; a stack into the adapters of the same names, which must be the model's
// stack in the same order. Throws Error naming the file and key for a missing module, a shape mismatch, a key the
// model lacks, or another stack.
void load_adapter(model::Qwen2ForCausalLM& model, const std::filesystem::path& dir);

// Builds a model from a base checkpoint plus a PEFT adapter directory (rank, alpha, targets from its config). A
// stack's top adapter becomes the trainable one, the others frozen under it (all active).
std::shared_ptr<model::Qwen2ForCausalLM> load_model_with_adapter(const std::string& base_dir,
                                                                 const std::filesystem::path& adapter_dir,
                                                                 at::ScalarType dtype, at::Device device = at::kCPU,
                                                                 bool quantize_base = false);

// Adds every adapter of `dir` (a single adapter or a stack) to `model` as frozen adapters, bottom first, under the
// trainable one (see peft::add_frozen_adapter); checked against the model first. Returns their names.
std::vector<std::string> add_frozen_adapters(model::Qwen2ForCausalLM& model, const std::filesystem::path& dir,
                                             const std::string& base_dir);

struct MergeStats {
    int64_t merged_modules      = 0;
    int64_t dequantized_modules = 0;
    int64_t tensors             = 0;
    std::vector<std::filesystem::path> files;
};

// `medllm merge`: streams the base checkpoint (bf16/fp32, or bitsandbytes 4-bit, which is dequantized) tensor by
// tensor, adds Σ scaling·B·A of every adapter in fp32 to each adapted weight (every adapter of every folder in
// `adapter_dirs`, a stack's whole stack; one rounding to bf16 at the end), and writes a bf16 HF checkpoint (sharded
// above `max_shard_bytes`) with config.json (dtype bfloat16, no quantization_config) and the base's tokenizer
// files. `progress(done, total, bytes_read)` is called after each base tensor.
MergeStats merge_adapter_checkpoint(const std::filesystem::path& base_dir,
                                    const std::vector<std::filesystem::path>& adapter_dirs,
                                    const std::filesystem::path& out_dir, uint64_t max_shard_bytes = 5'000'000'000ULL,
                                    const std::function<void(int64_t, int64_t, uint64_t)>& progress = {});
inline MergeStats merge_adapter_checkpoint(const std::filesystem::path& base_dir,
                                           const std::filesystem::path& adapter_dir,
                                           const std::filesystem::path& out_dir,
                                           uint64_t max_shard_bytes = 5'000'000'000ULL,
                                           const std::function<void(int64_t, int64_t, uint64_t)>& progress = {}) {
    return merge_adapter_checkpoint(base_dir, std::vector<std::filesystem::path>{adapter_dir}, out_dir, max_shard_bytes,
                                    progress);
}

// `medllm merge`'s flags.
struct MergeConfig {
    std::string model;                  // the base checkpoint (HF bf16/fp32, or bitsandbytes 4-bit)
    std::vector<std::string> adapters;  // PEFT adapter folders or stacks (adapter_stack.json), folded together
    std::string output;                 // the merged checkpoint's folder
    uint64_t max_shard_bytes = 5'000'000'000ULL;
};

// The command: merge_adapter_checkpoint with its progress logged (rate, ETA), then what was written.
void run_merge(const MergeConfig& config);

}  // namespace medllm::peft

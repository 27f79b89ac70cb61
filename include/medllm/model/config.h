// Qwen2 / Qwen2.5 model configuration, read from a Hugging Face config.json (model_type "qwen2").
// Every value comes from the file. The five size keys (vocab_size, hidden_size, intermediate_size,
// num_hidden_layers, num_attention_heads) are required; HF class defaults are used only for the other keys the
// file omits, exactly as transformers does (they are NOT the Qwen2.5 values, see docs/reference/qwen2.md §1).
// Size-like keys are bounded (e.g. at most 1024 layers, hidden_size 65536; config.cpp lists the limits), far
// above any published model, so a typo such as 1e12 layers is a one-line error, not an allocation that never ends.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "medllm/core/error.h"

namespace medllm::model {

struct Qwen2Config {
    int64_t vocab_size              = 151936;
    int64_t hidden_size             = 4096;
    int64_t intermediate_size       = 22016;
    int64_t num_hidden_layers       = 32;
    int64_t num_attention_heads     = 32;
    int64_t num_key_value_heads     = 32;   // null/absent -> num_attention_heads
    int64_t head_dim                = 128;  // `head_dim` if present, else hidden_size / num_attention_heads
    std::string hidden_act          = "silu";
    int64_t max_position_embeddings = 32768;
    double initializer_range        = 0.02;
    double rms_norm_eps             = 1e-6;
    bool use_cache                  = true;
    bool tie_word_embeddings        = false;
    double rope_theta               = 10000.0;    // `rope_theta` or `rope_parameters.rope_theta`
    std::string rope_type           = "default";  // only default RoPE is implemented; YaRN etc. are rejected
    bool use_sliding_window         = false;      // true is rejected (no Qwen2.5 release uses it)
    std::optional<int64_t> sliding_window;
    int64_t max_window_layers = 28;
    double attention_dropout  = 0.0;
    std::optional<int64_t> bos_token_id;
    std::vector<int64_t> eos_token_ids;  // `eos_token_id` may be an int or a list
    std::optional<int64_t> pad_token_id;
    std::string torch_dtype;  // `dtype` (newer transformers) or `torch_dtype`; "" when absent
    std::string source;       // file the config came from (for error messages)

    // Parses and validates; `source` names the file in every error (UsageError for bad, missing, out-of-range or
    // unsupported values, naming the key and the allowed range; Error for unreadable files and malformed JSON).
    static Qwen2Config from_json(const nlohmann::json& json, const std::string& source = "config.json");
    // `path` is a config.json or a directory holding one.
    static Qwen2Config from_file(const std::filesystem::path& path);

    // The HF config.json form (transformers loads it), with `torch_dtype`/`rope_theta` spellings.
    nlohmann::json to_json() const;

    int64_t num_key_value_groups() const { return num_attention_heads / num_key_value_heads; }  // n_rep
    int64_t q_dim() const { return num_attention_heads * head_dim; }
    int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

}  // namespace medllm::model

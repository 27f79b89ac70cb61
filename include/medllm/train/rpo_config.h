// The `medllm rpo` config: its keys and schema and the keys a resume must agree on. The recipe itself is rpo.h; the
// pipeline reads this header to check an rpo stage section.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/config.h"
#include "medllm/data/guard.h"
#include "medllm/train/recipe_config.h"

namespace medllm::train {

struct RpoConfig {
    // model:
    std::string model_path;  // base checkpoint (HF folder)
    std::string tokenizer;   // tokenizer folder when it is not model.path
    std::string output = "runs/rpo";
    // data: a TRL preference JSONL (prompt / chosen / rejected; strings or message lists), e.g. build-prefs' pairs
    std::string data_path;
    std::string on_invalid        = "error";  // error (file:line) | skip (counted in the summary)
    int64_t max_length            = 1024;     // TRL v0.14-v0.28 defaults (0 = no limit)
    int64_t max_prompt_length     = 512;
    int64_t max_completion_length = 0;
    std::string truncation_mode   = "keep_end";  // keep_end | keep_start (TRL's names)
    std::string tokenization      = "separate";  // separate (TRL v0.12-v0.28) | joint (TRL >= v0.29)
    bool shuffle                  = true;
    int64_t data_seed             = 42;
    std::string eos_token;                       // when the tokenizer names none ('' = its own)
    std::string default_system_prompt = "auto";  // chat data without a system turn: auto = the tokenizer's
    data::GuardSettings guard;                   // eval_guard.*: the prompts must not contain evaluation questions
    LoraSettings lora;                           // lora.init_adapter: the CPT adapter (PEFT folder)
    bool merge_init_adapter = true;  // true: merged into the base before quantizing; false: stacked, kept frozen
    std::string resume_adapter;      // continue training this adapter instead of a fresh LoRA (reference = base)
    // loss:
    double beta = 0.1;
    nlohmann::json loss_type;     // "sigmoid" | "ipo" | "hinge" | a list (TRL >= 1.0: [sigmoid, sft]); null = sigmoid
    nlohmann::json loss_weights;  // a list of numbers, one per loss_type entry; null = 1 each
    double label_smoothing        = 0.0;
    double rpo_alpha              = 0.0;       // 0 = plain DPO
    std::string nll_normalization = "pooled";  // pooled (TRL) | per_sequence (Iterative RPO paper v3)
    bool nll_ignore_token_zero    = false;     // TRL v0.12-v0.28's ignore_index=0 quirk
    // reference:
    bool precompute_ref               = false;
    int64_t precompute_ref_batch_size = 0;  // 0 = training.batch_size
    std::string ref_cache_dir;              // default <output>/ref_cache
    OptimSettings optim{1e-6};              // TRL DPOConfig's default rate
    ScheduleSettings schedule{"linear", 0, 0.0, 0.0};
    TrainingSettings training = [] {
        TrainingSettings t;
        t.batch_size = 8;  // pairs per micro-batch (per process)
        return t;
    }();
    bool disable_dropout = true;   // TRL's default: dropout off in policy and reference (LoRA's too)
    bool share_prompt    = false;  // chosen + rejected in one row, the common prefix run once
    int64_t logits_chunk = 1024;   // completion positions per lm_head chunk (memory vs GEMM size)

    std::filesystem::path resolved_tokenizer_dir() const;
};

// Adds every rpo key to a schema.
void add_rpo_fields(ConfigSchema<RpoConfig>& schema);

// The resolved keys a resume must agree on (everything except output, logging and checkpoint cadence).
nlohmann::json rpo_math_identity(const std::vector<ResolvedEntry>& resolved);

}  // namespace medllm::train

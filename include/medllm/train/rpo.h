// The `medllm rpo` recipe: preference optimization with (Q)LoRA on TRL-format preference pairs — DPO and RPO
// (DPO + alpha · NLL of the chosen completion) as TRL's DPOTrainer computes them (../shared/reference/
// preference_losses.md), single process, exact resume. Same shape as the cpt recipe (cpt.h): setup -> load
// checkpoint -> train -> save, in src/train/rpo.cpp. The reference model is the policy with its trainable adapter
// disabled (peft::disable_adapters, no second copy), or log-probs precomputed once and cached on disk.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/config.h"
#include "medllm/dist/parallel.h"

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
    bool shuffle                  = true;
    int64_t data_seed             = 42;
    std::string eos_token;                       // when the tokenizer names none ('' = its own)
    std::string default_system_prompt = "auto";  // chat data without a system turn: auto = the tokenizer's
    // eval_guard: the prompts must not contain evaluation questions
    bool guard_enabled = true;
    std::string guard_dir;
    std::string guard_years  = "2018-2022";
    std::string guard_action = "refuse";  // refuse | drop | warn
    int64_t guard_ngram      = 8;
    double guard_threshold   = 0.7;
    // lora:
    int64_t lora_r      = 64;
    double lora_alpha   = 16.0;
    double lora_dropout = 0.05;
    bool lora_rslora    = false;
    bool quantize_base  = true;
    std::vector<std::string> target_modules{"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                            "gate_proj", "up_proj", "down_proj"};
    std::string init_adapter;        // the CPT adapter (PEFT folder)
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
    // optim:
    double lr            = 1e-6;  // TRL DPOConfig default
    double beta1         = 0.9;
    double beta2         = 0.999;
    double eps           = 1e-8;
    double weight_decay  = 0.0;
    double max_grad_norm = 1.0;
    // schedule:
    std::string schedule = "linear";
    int64_t warmup_steps = 0;
    double warmup_ratio  = 0.0;
    double min_lr_rate   = 0.0;
    // training:
    double epochs                 = 1;
    int64_t max_steps             = 0;
    int64_t batch_size            = 8;  // pairs per micro-batch (per process)
    int64_t grad_accum            = 1;
    bool activation_checkpointing = true;
    bool disable_dropout          = true;   // TRL's default: dropout off in policy and reference (LoRA's too)
    bool share_prompt             = false;  // chosen + rejected in one row, the common prefix run once
    int64_t train_seed            = 42;
    std::string device            = "auto";
    int64_t logits_chunk          = 1024;  // completion positions per lm_head chunk (memory vs GEMM size)
    int64_t logging_steps         = 10;
    int64_t save_steps            = 500;
    int64_t save_total_limit      = 3;
    bool skip_nonfinite           = false;
    std::string overlap_allreduce = "auto";  // auto | true | false: the gradient all-reduce inside the last backward
    double allreduce_bucket_mb    = 25;      // gradient buckets (DDP's default)
    bool merge                    = false;   // write <output>/merged (bf16 HF checkpoint) at the end

    std::filesystem::path resolved_tokenizer_dir() const;
};

// Adds every rpo key to a schema.
void add_rpo_fields(ConfigSchema<RpoConfig>& schema);

struct RpoOptions {
    std::string resume = "auto";          // auto | never | a checkpoint folder
    std::vector<ResolvedEntry> resolved;  // the resolved config (its math keys guard a resume)
    dist::Parallel parallel;
    std::function<void(int64_t step, const nlohmann::json& record)> on_step;  // after every optimizer step (tests)
};

struct RpoResult {
    int64_t steps       = 0;
    int64_t total_steps = 0;
    bool interrupted    = false;  // stopped by a signal / request_rpo_stop(); a checkpoint was written
    std::filesystem::path last_checkpoint;
    std::filesystem::path adapter_dir;  // <output>/adapter (when the run finished)
    std::filesystem::path merged_dir;   // <output>/merged (training.merge)
    nlohmann::json summary;             // also <output>/summary.json: steps, data counts, final metrics
};

RpoResult run_rpo(const RpoConfig& config, const RpoOptions& options);

// Asks a running run_rpo to stop after the current optimizer step (what SIGINT/SIGTERM do).
void request_rpo_stop();

// The resolved keys a resume must agree on (everything except output, logging and checkpoint cadence).
nlohmann::json rpo_math_identity(const std::vector<ResolvedEntry>& resolved);

}  // namespace medllm::train

// The `medllm cpt` recipe: continued pretraining with (Q)LoRA on a packed corpus, single process, with exact
// resume. Shape as torchtune's recipes: setup -> load checkpoint -> train -> save (src/train/cpt.cpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/config.h"
#include "medllm/data/corpus_config.h"
#include "medllm/dist/parallel.h"

namespace medllm::train {

struct CptConfig : data::CorpusConfig {
    // lora:
    int64_t lora_r      = 64;
    double lora_alpha   = 16.0;
    double lora_dropout = 0.05;
    bool lora_rslora    = false;
    bool quantize_base  = true;  // QLoRA (NF4 base); false = LoRA over the checkpoint's dtype
    std::string init_adapter;    // continue from a PEFT adapter (its rank, alpha and targets are used)
    std::vector<std::string> target_modules{"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                            "gate_proj", "up_proj", "down_proj"};
    // optim:
    double lr            = 1e-4;
    double beta1         = 0.9;
    double beta2         = 0.999;
    double eps           = 1e-8;
    double weight_decay  = 0.0;
    double max_grad_norm = 1.0;
    // schedule:
    std::string schedule = "cosine";
    int64_t warmup_steps = 0;
    double warmup_ratio  = 0.03;
    double min_lr_rate   = 0.0;
    // training:
    double epochs                 = 2;
    int64_t max_steps             = 0;
    int64_t batch_size            = 1;
    int64_t grad_accum            = 16;
    bool activation_checkpointing = true;
    int64_t train_seed            = 42;
    std::string device            = "auto";
    int64_t logging_steps         = 10;
    int64_t eval_steps            = 0;  // 0 = only at the start and the end
    bool eval_on_start            = true;
    int64_t save_steps            = 500;
    int64_t save_total_limit      = 3;
    bool skip_nonfinite           = false;
    std::string overlap_allreduce = "auto";  // auto | true | false: the gradient all-reduce inside the last backward
    double allreduce_bucket_mb    = 25;      // gradient buckets (DDP's default)
    bool merge                    = false;   // write <output>/merged (bf16 HF checkpoint) at the end
};

// Adds every cpt key (the corpus keys included) to a schema.
void add_cpt_fields(ConfigSchema<CptConfig>& schema);

struct CptOptions {
    std::string resume = "auto";          // auto | never | a checkpoint folder
    std::vector<ResolvedEntry> resolved;  // the resolved config (its math keys guard a resume)
    dist::Parallel parallel;
    std::function<void(int64_t step, const nlohmann::json& record)> on_step;  // after every optimizer step (tests)
};

struct CptResult {
    int64_t steps       = 0;  // optimizer steps done when the run ended
    int64_t total_steps = 0;
    bool interrupted    = false;  // stopped by a signal / request_stop(); a checkpoint was written
    std::filesystem::path last_checkpoint;
    std::filesystem::path adapter_dir;  // <output>/adapter (when the run finished)
    std::filesystem::path merged_dir;   // <output>/merged (training.merge)
    nlohmann::json summary;
};

CptResult run_cpt(const CptConfig& config, const CptOptions& options);

// Asks a running run_cpt to stop after the current optimizer step (what SIGINT/SIGTERM do).
void request_stop();

// The resolved keys a resume must agree on (everything except output, logging and checkpoint cadence).
nlohmann::json math_identity(const std::vector<ResolvedEntry>& resolved);

}  // namespace medllm::train

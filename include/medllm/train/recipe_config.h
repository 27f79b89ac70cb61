// The config groups cpt and rpo share (lora.* / optim.* / schedule.* / training.*), their schema fields and the
// run-identity rule: all a config or a schema needs, without the recipes' run-time pieces (recipe.h). The pipeline
// validates stage sections through these and cpt_config.h / rpo_config.h, never through a recipe header.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/config.h"

namespace medllm::train {

// ---------------------------------------------------------------- config groups

struct LoraSettings {  // lora.*
    int64_t r          = 64;
    double alpha       = 16.0;
    double dropout     = 0.05;
    bool use_rslora    = false;
    bool quantize_base = true;  // QLoRA (NF4 base); false = LoRA over the checkpoint's dtype
    std::vector<std::string> target_modules{"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                            "gate_proj", "up_proj", "down_proj"};
    std::string init_adapter;  // cpt: continue from this adapter; rpo: the CPT adapter the policy starts from
};

struct OptimSettings {  // optim.*: AdamW (HF Trainer's defaults)
    double lr            = 1e-4;
    double beta1         = 0.9;
    double beta2         = 0.999;
    double eps           = 1e-8;
    double weight_decay  = 0.0;
    double max_grad_norm = 1.0;
};

struct ScheduleSettings {  // schedule.*: transformers' schedules
    std::string name     = "cosine";
    int64_t warmup_steps = 0;
    double warmup_ratio  = 0.0;
    double min_lr_rate   = 0.0;
};

struct TrainingSettings {  // training.* (the keys both recipes have)
    double epochs                 = 1;
    int64_t max_steps             = 0;
    int64_t batch_size            = 1;
    int64_t grad_accum            = 1;
    bool activation_checkpointing = true;
    int64_t seed                  = 42;
    std::string device            = "auto";
    int64_t logging_steps         = 10;
    int64_t save_steps            = 500;
    int64_t save_total_limit      = 3;
    bool skip_nonfinite           = false;
    std::string overlap_allreduce = "auto";  // auto | true | false: the gradient all-reduce inside the last backward
    double allreduce_bucket_mb    = 25;      // gradient buckets (DDP's default)
    bool merge                    = false;   // write <output>/merged (bf16 HF checkpoint) at the end
};

// How a recipe's --help names its data: "the corpus" / "rows", "the pairs" / "pairs".
struct RecipeWords {
    std::string data;        // what an epoch passes over
    std::string batch_unit;  // what a micro-batch holds
    std::string paper;       // the paper's setting of the recipe ("2 epochs")
};

template <class C>
void add_lora_fields(ConfigSchema<C>& s, LoraSettings C::*g, const std::string& init_adapter_help) {
    using G = LoraSettings;
    s.field("lora.r", g, &G::r, "adapter rank; higher = more capacity and memory (QLoRA paper: 64)").range(1, 4096);
    s.field("lora.alpha", g, &G::alpha, "scaling numerator (scaling = alpha / r; QLoRA paper: 16)").range(1e-6, 1e6);
    s.field("lora.dropout", g, &G::dropout, "dropout on the adapter input (QLoRA paper: 0.05 for 33B/65B)")
        .range(0, 0.99);
    s.field("lora.use_rslora", g, &G::use_rslora, "rsLoRA scaling alpha / sqrt(r)");
    s.field("lora.quantize_base", g, &G::quantize_base, "QLoRA: hold the frozen base in NF4 (false = plain LoRA)");
    s.field("lora.target_modules", g, &G::target_modules, "projections that get an adapter (all seven by default)");
    s.field("lora.init_adapter", g, &G::init_adapter, init_adapter_help);
}

template <class C>
void add_optim_fields(ConfigSchema<C>& s, OptimSettings C::*g, const std::string& lr_help) {
    using G = OptimSettings;
    s.field("optim.lr", g, &G::lr, lr_help).range(0, 1);
    s.field("optim.beta1", g, &G::beta1, "AdamW beta1 (HF default)").range(0, 0.999999);
    s.field("optim.beta2", g, &G::beta2, "AdamW beta2 (HF default)").range(0, 0.999999999);
    s.field("optim.eps", g, &G::eps, "AdamW epsilon (HF default)").range(0, 1);
    s.field("optim.weight_decay", g, &G::weight_decay, "decoupled weight decay (HF default 0)").range(0, 10);
    s.field("optim.max_grad_norm", g, &G::max_grad_norm, "clip the total gradient L2 norm (0 = off; HF default 1.0)")
        .range(0, 1e6);
}

template <class C>
void add_schedule_fields(ConfigSchema<C>& s, ScheduleSettings C::*g) {
    using G = ScheduleSettings;
    s.field("schedule.name", g, &G::name, "learning-rate schedule (transformers' lambdas; HF default linear)")
        .one_of({"cosine", "cosine_with_min_lr", "linear", "constant_with_warmup", "constant"});
    s.field("schedule.warmup_steps", g, &G::warmup_steps, "linear warmup steps (> 0 overrides warmup_ratio)")
        .range(0, 9e15);
    s.field("schedule.warmup_ratio", g, &G::warmup_ratio, "warmup as a share of all steps (ceil)").range(0, 1);
    s.field("schedule.min_lr_rate", g, &G::min_lr_rate, "cosine_with_min_lr: the floor as a share of optim.lr")
        .range(0, 1);
}

// The training.* keys both recipes have; a recipe adds its own training.* keys after these.
template <class C>
void add_training_fields(ConfigSchema<C>& s, TrainingSettings C::*g, const RecipeWords& w) {
    using G = TrainingSettings;
    s.field("training.epochs", g, &G::epochs, "passes over " + w.data + " (the paper: " + w.paper + ")").range(0, 1e6);
    s.field("training.max_steps", g, &G::max_steps, "optimizer steps (> 0 overrides epochs)").range(0, 9e15);
    s.field("training.batch_size", g, &G::batch_size, w.batch_unit + " per micro-batch (per process)")
        .range(1, 1 << 20);
    s.field("training.grad_accum", g, &G::grad_accum, "micro-batches per optimizer step").range(1, 1 << 20);
    s.field("training.activation_checkpointing", g, &G::activation_checkpointing,
            "recompute each layer in backward: much less memory for ~30% more compute");
    s.field("training.seed", g, &G::seed, "adapter init and dropout").range(0, 9e15);
    s.field("training.device", g, &G::device, "auto | cpu | cuda | cuda:N");
    s.field("training.logging_steps", g, &G::logging_steps, "steps between log lines / metrics records").range(1, 9e15);
    s.field("training.save_steps", g, &G::save_steps, "steps between checkpoints (one is always written at the end)")
        .range(1, 9e15);
    s.field("training.save_total_limit", g, &G::save_total_limit, "checkpoints kept (0 = all)").range(0, 1e6);
    s.field("training.skip_nonfinite", g, &G::skip_nonfinite,
            "a NaN/Inf loss skips the update (false = stop, keeping the last good checkpoint)");
    s.field("training.merge", g, &G::merge,
            "at the end, merge the adapter into the model it was trained on, as a bf16 HF checkpoint in "
            "<output>/merged (as medllm merge)");
    s.field("training.overlap_allreduce", g, &G::overlap_allreduce,
            "data parallelism: start each gradient bucket's all-reduce while the last micro-batch's backward still "
            "runs (DDP's overlap); the same sums either way. auto = false: for 72B LoRA gradients the all-reduce is "
            "< 0.05% of a step over NVLink and < 2% over 25 Gb/s Ethernet, the buckets then stay allocated through "
            "the last backward, and on the CPU it measured no faster (docs/distributed.md)")
        .one_of({"auto", "true", "false"});
    s.field("training.allreduce_bucket_mb", g, &G::allreduce_bucket_mb,
            "data parallelism: MB per gradient all-reduce bucket (the adapter gradients, flattened)")
        .range(1e-6, 1e6);
}

// The resolved keys a resume must agree on: every key but `free` ones and those no recipe's numbers depend on
// (output, model paths, device, logging and checkpoint cadence, merge, data-parallel tuning, eval_guard.*).
nlohmann::json run_identity_config(const std::vector<ResolvedEntry>& resolved, const std::vector<std::string>& free);

}  // namespace medllm::train

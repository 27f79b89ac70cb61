// What the cpt and rpo recipes share: everything but their loops (torchtune's "copy the loop, share the pieces").
//
//   config groups  lora.* / optim.* / schedule.* / training.* (LoraSettings ... TrainingSettings), one help text each
//   Session        one run's process group, device, model with its adapters, optimizer, schedule, step plan,
//                  identity and the progress a checkpoint carries
//   resume / save  checkpoints with the same-checkpoint-on-every-rank check and the run-identity check
//   apply_update   clip -> schedule -> the non-finite refusal -> AdamW step (the end of every optimizer step)
//   LoopTools      signals, metrics.jsonl + TensorBoard, the log window, the live line, the gradient sync
//   finish_run     the last checkpoint, the adapter, the merged model, summary.json
//
// A recipe (src/train/cpt.cpp, src/train/rpo.cpp) reads top to bottom as setup -> resume -> the loop (batch ->
// forward -> loss -> backward -> step -> log) -> finish_run.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/config.h"
#include "medllm/core/progress.h"
#include "medllm/dist/parallel.h"
#include "medllm/model/qwen2.h"
#include "medllm/peft/lora.h"
#include "medllm/train/metrics.h"
#include "medllm/train/optimizer.h"
#include "medllm/train/schedule.h"

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

// ---------------------------------------------------------------- options, result, signals

struct TrainOptions {
    std::string resume = "auto";          // auto | never | a checkpoint folder
    bool overwrite     = false;           // a fresh run (--resume never) may replace the checkpoints in its folder
    std::vector<ResolvedEntry> resolved;  // the resolved config (its math keys guard a resume)
    dist::Parallel parallel;
    std::function<void(int64_t step, const nlohmann::json& record)> on_step;  // after every optimizer step (tests)
};

struct TrainResult {
    int64_t steps       = 0;  // optimizer steps done when the run ended
    int64_t total_steps = 0;
    bool interrupted    = false;  // stopped by a signal / request_stop(); a checkpoint was written
    std::filesystem::path last_checkpoint;
    std::filesystem::path adapter_dir;  // <output>/adapter (when the run finished)
    std::filesystem::path merged_dir;   // <output>/merged (training.merge)
    nlohmann::json summary;             // also <output>/summary.json
};

// Asks a running recipe to stop after the current optimizer step (what SIGINT/SIGTERM do).
void request_stop();

// ---------------------------------------------------------------- the session

struct Session {
    std::filesystem::path output;
    std::shared_ptr<dist::Distributed> dist;  // world size 1: no group, collectives are the identity
    at::Device device{at::kCPU};
    bool main = true;  // rank 0: the only rank that writes files
    std::shared_ptr<model::Qwen2ForCausalLM> model;
    peft::LoraConfig lora;
    std::unique_ptr<AdamW> optimizer;
    Schedule schedule;
    int64_t micro_per_epoch = 0, steps_per_epoch = 0, total_steps = 0;
    int64_t save_total_limit = 3;
    nlohmann::json identity;  // what a resume must match
    // The recipe's own part of trainer_state.json (its data position, its logging sums), called at every save.
    std::function<nlohmann::json()> recipe_state;

    // Progress that a checkpoint carries.
    int64_t step        = 0;
    int64_t tokens_seen = 0;
    double log_loss_sum = 0;  // the logging window's losses (a checkpoint inside a window keeps them)
    int64_t log_steps   = 0;
    double last_loss    = NAN;
    std::filesystem::path last_checkpoint;

    double epoch() const { return static_cast<double>(step) / static_cast<double>(steps_per_epoch); }
    int64_t world_size() const;
};

// The process group (or one process on training.device), the device, the output folder. UsageError when neither
// training.epochs nor training.max_steps is > 0, and when a fresh run (--resume never) finds checkpoints in its
// folder without `overwrite` (with it, rank 0 deletes them and the earlier run's adapter, merged model and summary).
Session open_session(const std::filesystem::path& output, const TrainingSettings& training,
                     const TrainOptions& options);

// The policy: `base_dir` with a fresh LoRA from `lora` (seeded by training.seed), or with `continue_adapter` (its
// rank, alpha, targets and dropout) when set. bf16 on CUDA, fp32 on the CPU. UsageError for unusable settings.
void load_policy(Session& s, const std::string& base_dir, const LoraSettings& lora, int64_t seed,
                 const std::string& continue_adapter);

// The tokens of `what` ("the corpus") must exist in the model's vocabulary (else the tokenizer does not belong to
// the model) and its longest row fit the context; UsageError otherwise (`too_long` says what is too long and how
// to shorten it: "data.seq_len 8192").
void check_fits_model(const Session& s, const std::string& what, int64_t max_token_id, int64_t longest_row,
                      const std::string& too_long);

// Seeds the global generators (dropout), sets activation checkpointing, broadcasts rank 0's adapter, builds AdamW,
// plans the steps (HF: ceil(micro-batches / grad_accum) per epoch) and the schedule.
void prepare_training(Session& s, const OptimSettings& optim, const ScheduleSettings& schedule,
                      const TrainingSettings& training, int64_t micro_per_epoch);

// ---------------------------------------------------------------- checkpoints

// How a checkpoint of another world size maps onto this run (--resume-world-size-change).
struct WorldSizeUnits {
    std::string unit;                                       // "rows" | "pairs"
    int64_t per_rank_step = 0;                              // units of one rank's step (batch_size x grad_accum)
    std::function<int64_t(int64_t world)> steps_per_epoch;  // with that many processes
};

// Resumes as --resume says (auto: the newest intact checkpoint, the same one on every rank; never; a folder, which
// must be intact): checks the checksums, the world size and the run identity, restores adapter, AdamW moments,
// RNG streams and the Session's
// progress. Returns the checkpoint's trainer_state.json for the recipe's own keys (nullopt: a fresh run);
// `world_changed` tells whether the checkpoint was written by another number of processes.
std::optional<nlohmann::json> resume_from_checkpoint(Session& s, const std::string& how, bool allow_world_size_change,
                                                     const WorldSizeUnits& units, bool* world_changed = nullptr);

// Writes checkpoint-<step>/ (adapter, optimizer, RNG, trainer_state.json with the Session's progress, identity and
// recipe_state()), applies retention; every rank waits for rank 0.
void save_checkpoint(Session& s);

// ---------------------------------------------------------------- one optimizer step's end

struct Update {
    double lr = 0, grad_norm = 0;
    bool applied = true;  // false: a non-finite step skipped (training.skip_nonfinite)
};

// Clips the gradients, takes the schedule's rate, refuses a non-finite loss or norm (Error naming the last good
// checkpoint) unless `skip_nonfinite`, steps AdamW, zeroes the gradients and advances the Session: step, last_loss,
// the logging window's sums.
Update apply_update(Session& s, double loss, double max_grad_norm, bool skip_nonfinite);

// ---------------------------------------------------------------- what surrounds the loop

class LoopTools {
public:
    LoopTools(Session& s, const TrainingSettings& training);
    ~LoopTools();
    LoopTools(const LoopTools&)            = delete;
    LoopTools& operator=(const LoopTools&) = delete;

    bool stop_requested() const;  // SIGINT / SIGTERM / request_stop() on this rank
    dist::Distributed::GradientSync* sync() const { return sync_.get(); }  // null for one process
    LiveLine& live() { return live_; }

    // After each optimizer step: what it saw.
    void add(int64_t tokens, int64_t units);
    // Whether this step ends a logging window (every logging_steps and the last step).
    bool log_due() const;
    struct Window {
        double seconds = 0, tokens_per_second = 0, units_per_second = 0, eta_seconds = 0;
        int64_t steps = 0;
    };
    Window window() const;
    // Appends `record` to metrics.jsonl and its numeric keys (`tags`: only these, named train/<key>; empty: all but
    // step) to TensorBoard, on rank 0; then starts the next window (and resets the Session's window sums).
    void write(const nlohmann::json& record, const std::vector<std::string>& tags = {});
    // A record outside the logging windows (cpt's validation passes): metrics.jsonl, and TensorBoard by tag.
    void append(const nlohmann::json& record);
    void add_scalar(const std::string& tag, double value);
    // The live line a terminal refreshes after every step (rank 0, a terminal only).
    void show_live(double loss, double lr);
    void close();
    double seconds_this_run() const;

private:
    Session& s_;
    LiveLine live_;
    std::unique_ptr<MetricsFile> metrics_;
    std::unique_ptr<TensorBoardWriter> tb_;
    std::unique_ptr<dist::Distributed::GradientSync> sync_;
    std::chrono::steady_clock::time_point start_, window_start_;
    int64_t window_tokens_ = 0, window_units_ = 0, window_steps_ = 0, steps_this_run_ = 0, tokens_at_start_ = 0;
    int64_t logging_steps_ = 1;
    double bucket_mb_      = 25;
    struct Signals;
    std::unique_ptr<Signals> signals_;
};

// The end of a run: the last checkpoint (unless the last step wrote one); unless interrupted, `before_adapter`
// (cpt's final validation), then on rank 0 the adapter, the merged model (training.merge, into `merge_base`) and
// summary.json (`recipe_summary()` plus steps, tokens, timing, memory, paths).
TrainResult finish_run(Session& s, LoopTools& tools, bool interrupted, bool merge, const std::string& merge_base,
                       const std::function<void()>& before_adapter,
                       const std::function<nlohmann::json()>& recipe_summary);

}  // namespace medllm::train

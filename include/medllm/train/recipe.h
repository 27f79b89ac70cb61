// What the cpt and rpo recipes share: everything but their loops (torchtune's "copy the loop, share the pieces").
//
//   config groups  lora.* / optim.* / schedule.* / training.* (recipe_config.h: what configs and schemas need)
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
#include "medllm/train/recipe_config.h"
#include "medllm/train/schedule.h"

namespace medllm::train {

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

// UsageError naming `key` unless `dir` is a model folder (config.json) / a PEFT adapter folder (adapter_config.json);
// an empty `dir` passes require_adapter_dir (no adapter) and fails require_model_dir. Checked before any loading.
void require_model_dir(const std::string& dir, const std::string& key);
void require_adapter_dir(const std::string& dir, const std::string& key);

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

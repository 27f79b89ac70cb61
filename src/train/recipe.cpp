// The pieces the cpt and rpo recipes share (include/medllm/train/recipe.h): session, resume, checkpoints, the
// update, logging, the end of a run.
#include "medllm/train/recipe.h"

#include <algorithm>
#include <atomic>
#include <csignal>
#include <ctime>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/peft/adapter.h"
#include "medllm/train/checkpoint.h"

namespace fs = std::filesystem;

namespace medllm::train {

nlohmann::json run_identity_config(const std::vector<ResolvedEntry>& resolved, const std::vector<std::string>& free) {
    // Keys that do not change the numbers a run computes, in every recipe.
    static const std::vector<std::string> kFree = {"output",
                                                   "model.path",
                                                   "model.tokenizer",
                                                   "training.device",
                                                   "training.logging_steps",
                                                   "training.save_steps",
                                                   "training.save_total_limit",
                                                   "training.merge",
                                                   "training.overlap_allreduce",
                                                   "training.allreduce_bucket_mb"};
    nlohmann::json out                          = nlohmann::json::object();
    for (const auto& e : resolved) {
        bool is_free = e.key.rfind("eval_guard.", 0) == 0;
        for (const auto& k : kFree) is_free = is_free || e.key == k;
        for (const auto& k : free) is_free = is_free || e.key == k;
        if (!is_free) out[e.key] = e.value;
    }
    return out;
}

// ---------------------------------------------------------------- signals

namespace {

std::atomic<bool> g_stop{false};
std::atomic<int64_t> g_first_signal_ns{0};

int64_t monotonic_ns() {  // clock_gettime is async-signal-safe
    timespec t{};
    ::clock_gettime(CLOCK_MONOTONIC, &t);
    return int64_t{t.tv_sec} * 1000000000 + t.tv_nsec;
}

// The first signal asks the loop to stop after its step; a second one ends the process at once — unless it comes
// within a second of the first: a pipeline stage gets its parent-death SIGTERM once per thread of the dying
// pipeline (Linux re-parents the stage to each remaining thread in turn and signals each time), and those repeats
// must not turn a clean stop into a kill.
extern "C" void on_stop_signal(int sig) {
    const int64_t now = monotonic_ns();
    g_stop.store(true);
    int64_t first = 0;
    if (g_first_signal_ns.compare_exchange_strong(first, now)) return;
    if (now - first < 1000000000) return;
    std::signal(sig, SIG_DFL);
    std::raise(sig);
}

}  // namespace

void request_stop() {
    g_stop.store(true);
}

struct LoopTools::Signals {
    void (*old_int)(int), (*old_term)(int);
    Signals() {
        g_stop.store(false);
        g_first_signal_ns.store(0);
        old_int  = std::signal(SIGINT, on_stop_signal);
        old_term = std::signal(SIGTERM, on_stop_signal);
    }
    ~Signals() {
        std::signal(SIGINT, old_int);
        std::signal(SIGTERM, old_term);
    }
};

// ---------------------------------------------------------------- the session

int64_t Session::world_size() const {
    return dist->world_size();
}

Session open_session(const fs::path& output, const TrainingSettings& training, const TrainOptions& options) {
    Session s;
    s.output = output;
    fs::create_directories(s.output);
    s.dist             = options.parallel.resolve(training.device);
    s.main             = s.dist->is_main();
    s.device           = s.dist->device();
    s.save_total_limit = training.save_total_limit;
    if (training.max_steps == 0 && !(training.epochs > 0))
        throw UsageError("training.epochs or training.max_steps must be > 0");
    if (options.resume == "never") {
        // A fresh run never mixes its checkpoints with an earlier run's (retention would delete them, its last
        // checkpoint replace theirs): refuse, or replace the earlier run as a whole.
        const auto earlier = list_checkpoints(s.output);
        if (!earlier.empty() && !options.overwrite)
            throw UsageError(s.output.string() + " holds checkpoints of an earlier run (" +
                             earlier.back().filename().string() + " and " + std::to_string(earlier.size() - 1) +
                             " older); --resume auto continues that run, --overwrite starts over and deletes them, "
                             "or use another output folder");
    }
    return s;
}

void require_model_dir(const std::string& dir, const std::string& key) {
    if (dir.empty()) throw UsageError("missing required key '" + key + "' (the model folder)");
    if (!fs::is_directory(dir)) throw UsageError(key + ": no such model folder " + dir);
    if (!fs::is_regular_file(fs::path(dir) / "config.json"))
        throw UsageError(key + ": " + dir + " has no config.json (not a Hugging Face model folder)");
}

void require_adapter_dir(const std::string& dir, const std::string& key) {
    if (dir.empty()) return;
    if (!fs::is_directory(dir)) throw UsageError(key + ": no such adapter folder " + dir);
    if (!fs::is_regular_file(fs::path(dir) / "adapter_config.json"))
        throw UsageError(key + ": " + dir + " has no adapter_config.json (not a PEFT adapter folder)");
}

void load_policy(Session& s, const std::string& base_dir, const LoraSettings& lora, int64_t seed,
                 const std::string& continue_adapter) {
    const at::ScalarType dtype = s.device.is_cuda() ? at::kBFloat16 : at::kFloat;
    if (!continue_adapter.empty()) {
        // r, alpha, targets and dropout come from the adapter's config (the lora.* keys other than quantize_base
        // are not used).
        s.lora               = peft::read_adapter_config(continue_adapter).lora;
        s.lora.quantize_base = lora.quantize_base;
        s.model = peft::load_model_with_adapter(base_dir, continue_adapter, dtype, s.device, lora.quantize_base);
    } else {
        s.lora.r              = lora.r;
        s.lora.alpha          = lora.alpha;
        s.lora.dropout        = lora.dropout;
        s.lora.use_rslora     = lora.use_rslora;
        s.lora.target_modules = lora.target_modules;
        s.lora.quantize_base  = lora.quantize_base;
        s.lora.seed           = static_cast<uint64_t>(seed);
        s.lora.validate();
        s.model = peft::load_model_for_lora(base_dir, s.lora, dtype, s.device);
    }
    s.lora.base_model_name_or_path = base_dir;
}

void check_fits_model(const Session& s, const std::string& what, int64_t max_token_id, int64_t longest_row,
                      const std::string& too_long) {
    const auto& c = s.model->config;
    if (longest_row > c.max_position_embeddings)
        throw UsageError(too_long + " exceeds the model's context (" + std::to_string(c.max_position_embeddings) +
                         " positions, config.json)");
    // A tokenizer that does not belong to the model gives ids past its embedding table: say so, not an index error.
    if (max_token_id >= c.vocab_size)
        throw UsageError(what + " holds token id " + std::to_string(max_token_id) + " but the model's vocabulary has " +
                         std::to_string(c.vocab_size) + " entries: model.tokenizer does not belong to model.path");
}

void prepare_training(Session& s, const OptimSettings& optim, const ScheduleSettings& schedule,
                      const TrainingSettings& training, int64_t micro_per_epoch) {
    // Dropout draws from the global generators: seed them so a fresh run is reproducible (a resume then restores
    // the checkpoint's state over this).
    at::manual_seed(static_cast<uint64_t>(training.seed));
    s.model->model->gradient_checkpointing = training.activation_checkpointing;
    auto params                            = peft::adapter_parameters(*s.model);
    if (params.empty()) throw UsageError("lora.target_modules: no adapter parameters to train");
    {
        // Every rank starts from rank 0's adapter (the same seed gives the same one; this makes it certain).
        at::NoGradGuard no_grad;
        std::vector<at::Tensor> weights;
        for (auto& p : params) weights.push_back(p.second);
        s.dist->broadcast(weights, 0);
    }
    AdamWOptions ao;
    ao.beta1        = optim.beta1;
    ao.beta2        = optim.beta2;
    ao.eps          = optim.eps;
    ao.weight_decay = optim.weight_decay;
    s.optimizer     = std::make_unique<AdamW>(params, ao);

    // Steps, known before the first one (HF: ceil(micro-batches / grad_accum) per epoch).
    s.micro_per_epoch       = micro_per_epoch;
    s.steps_per_epoch       = std::max<int64_t>(1, (micro_per_epoch + training.grad_accum - 1) / training.grad_accum);
    s.total_steps           = training.max_steps > 0 ? training.max_steps
                                                     : static_cast<int64_t>(std::ceil(training.epochs * s.steps_per_epoch));
    s.schedule.name         = schedule.name;
    s.schedule.base_lr      = optim.lr;
    s.schedule.total_steps  = s.total_steps;
    s.schedule.warmup_steps = resolve_warmup_steps(schedule.warmup_steps, schedule.warmup_ratio, s.total_steps);
    s.schedule.min_lr_rate  = schedule.min_lr_rate;
    s.schedule.validate();
}

// ---------------------------------------------------------------- checkpoints

std::optional<nlohmann::json> resume_from_checkpoint(Session& s, const std::string& how, bool allow_world_size_change,
                                                     const WorldSizeUnits& units, bool* world_changed) {
    if (world_changed) *world_changed = false;
    std::optional<fs::path> dir;
    if (how == "never") {
        // --overwrite (checked in open_session): the earlier run goes now that this one has set up without error.
        const auto earlier = list_checkpoints(s.output);
        if (!earlier.empty() && s.main) {
            spdlog::warn("--overwrite: deleting the earlier run's {} checkpoint(s), adapter and summary in {}",
                         earlier.size(), s.output.string());
            for (const auto& c : earlier) {
                fs::remove(c / kCheckpointComplete);  // first, so a deletion cut short leaves no trusted folder
                fs::remove_all(c);
            }
            for (const char* f : {"adapter", "merged", "summary.json"}) fs::remove_all(s.output / f);
        }
        s.dist->barrier(std::chrono::hours(1));
        return std::nullopt;
    } else if (how == "auto") {
        dir = find_latest_intact_checkpoint(s.output);
        // Every rank must resume the same checkpoint (a shared output folder): compare the steps found.
        const double found = dir ? static_cast<double>(checkpoint_step(*dir).value_or(0)) : -1.0;
        const auto lo      = s.dist->all_reduce_scalars({-found}, dist::Reduce::max);
        const auto hi      = s.dist->all_reduce_scalars({found}, dist::Reduce::max);
        if (-lo[0] != hi[0])
            throw Error("--resume auto: the ranks found different checkpoints in " + s.output.string() + " (steps " +
                        std::to_string(static_cast<int64_t>(-lo[0])) + " to " +
                        std::to_string(static_cast<int64_t>(hi[0])) +
                        "; -1 = none): the output folder must be one folder shared by every rank");
        if (!dir) return std::nullopt;
    } else {
        dir = fs::path(how);
        if (!is_complete_checkpoint(*dir))
            throw UsageError("--resume " + how + ": not a complete checkpoint folder (checkpoint-<step>/ with " +
                             kCheckpointComplete + ")");
        verify_checkpoint(*dir);
    }
    auto state                = read_json_file(*dir / "trainer_state.json");
    const int64_t saved_world = state["identity"].value("world_size", int64_t{1});
    const int64_t world       = s.world_size();
    if (saved_world != world) {
        check_world_size_change(*dir,
                                {saved_world, world, units.unit, units.per_rank_step, s.steps_per_epoch,
                                 units.steps_per_epoch(saved_world), s.total_steps, state.at("step").get<int64_t>()},
                                allow_world_size_change);
        state["identity"]["world_size"] = world;
        if (world_changed) *world_changed = true;
    }
    const std::string diff = describe_json_difference(state.at("identity"), s.identity);
    if (!diff.empty())
        throw UsageError("cannot resume from " + dir->string() + ": it belongs to a different run (" + diff +
                         "); use another output folder, or --resume never --overwrite to start over");
    peft::load_adapter(*s.model, *dir / "adapter");
    load_optimizer_and_rng(*dir, *s.optimizer, state.at("optimizer_steps").get<int64_t>(), s.device);
    s.step         = state.at("step").get<int64_t>();
    s.tokens_seen  = state.at("tokens_seen").get<int64_t>();
    s.log_loss_sum = state.at("log_loss_sum").get<double>();
    s.log_steps    = state.at("log_steps").get<int64_t>();
    if (!state.at("last_loss").is_null()) s.last_loss = state.at("last_loss").get<double>();
    s.last_checkpoint = *dir;
    spdlog::info("resuming from {} (step {}/{})", dir->string(), s.step, s.total_steps);
    return state;
}

void save_checkpoint(Session& s) {
    const int64_t step = s.step;
    if (!s.main) {
        s.last_checkpoint = checkpoint_path(s.output, step);
        s.dist->barrier(std::chrono::hours(1));  // rank 0 writes it
        return;
    }
    s.last_checkpoint = write_checkpoint(s.output, step, [&](const fs::path& dir) {
        peft::save_adapter(*s.model, s.lora, dir / "adapter");
        save_optimizer_and_rng(dir, *s.optimizer);
        nlohmann::json state     = s.recipe_state ? s.recipe_state() : nlohmann::json::object();
        state["step"]            = step;
        state["optimizer_steps"] = s.optimizer->steps();
        state["total_steps"]     = s.total_steps;
        state["epoch"]           = s.epoch();
        state["tokens_seen"]     = s.tokens_seen;
        state["log_loss_sum"]    = s.log_loss_sum;
        state["log_steps"]       = s.log_steps;
        state["last_loss"]       = std::isfinite(s.last_loss) ? nlohmann::json(s.last_loss) : nullptr;
        state["identity"]        = s.identity;
        write_file_atomic(dir / "trainer_state.json", dump_json(state, 2) + "\n");
    });
    // Retention counts and deletes this run's checkpoints only (the same identity, whatever its world size).
    apply_retention(s.output, s.save_total_limit, [&](const fs::path& dir) {
        try {
            auto theirs = read_json_file(dir / "trainer_state.json").at("identity");
            auto ours   = s.identity;
            theirs.erase("world_size");
            ours.erase("world_size");
            return theirs == ours;
        } catch (const std::exception&) {
            return false;
        }
    });
    spdlog::info("checkpoint {} written", s.last_checkpoint.string());
    s.dist->barrier(std::chrono::hours(1));
}

// ---------------------------------------------------------------- the update

Update apply_update(Session& s, double loss, double max_grad_norm, bool skip_nonfinite) {
    Update u;
    u.grad_norm       = clip_grad_norm(s.optimizer->params(), max_grad_norm);
    u.lr              = s.schedule.lr_at(s.step);
    const bool finite = std::isfinite(loss) && std::isfinite(u.grad_norm);
    if (!finite && !skip_nonfinite)
        throw Error("step " + std::to_string(s.step + 1) + ": the loss or gradient norm is not finite (loss " +
                    std::to_string(loss) + ", grad norm " + std::to_string(u.grad_norm) + "); " +
                    (s.last_checkpoint.empty() ? "no checkpoint was written yet"
                                               : "the last good checkpoint is " + s.last_checkpoint.string()) +
                    " (training.skip_nonfinite: true skips such steps)");
    if (finite) {
        s.optimizer->step(u.lr);
    } else {
        u.applied = false;
        spdlog::warn("step {}: non-finite loss or gradient norm, update skipped", s.step + 1);
    }
    s.optimizer->zero_grad();
    ++s.step;
    s.last_loss = loss;
    s.log_loss_sum += loss;
    ++s.log_steps;
    return u;
}

// ---------------------------------------------------------------- what surrounds the loop

LoopTools::LoopTools(Session& s, const TrainingSettings& training)
    : s_(s), live_(s.main ? stderr : nullptr), signals_(std::make_unique<Signals>()) {
    if (s.main) {
        metrics_ = std::make_unique<MetricsFile>(s.output / "metrics.jsonl", s.step);
        tb_      = std::make_unique<TensorBoardWriter>(s.output);
    }
    // Data parallelism: the gradient sum of each step (null for one process; one with an explicit --backend checks
    // the path).
    sync_  = dist::make_gradient_sync(*s.dist, s.optimizer->params(), training.overlap_allreduce,
                                      training.allreduce_bucket_mb);
    start_ = window_start_ = std::chrono::steady_clock::now();
    tokens_at_start_       = s.tokens_seen;
    logging_steps_         = training.logging_steps;
    bucket_mb_             = training.allreduce_bucket_mb;
}

LoopTools::~LoopTools() = default;

bool LoopTools::stop_requested() const {
    return g_stop.load();
}

void LoopTools::add(int64_t tokens, int64_t units) {
    if (sync_ && steps_this_run_ == 0 && s_.main)
        spdlog::info("gradient all-reduce: {} bucket(s) of at most {} MB, {}", sync_->num_buckets(), bucket_mb_,
                     sync_->overlap() ? fmt::format("overlapped with the last backward ({} started inside it)",
                                                    sync_->buckets_started_in_backward())
                                      : std::string("after the last backward"));
    s_.tokens_seen += tokens;
    window_tokens_ += tokens;
    window_units_ += units;
    ++window_steps_;
    ++steps_this_run_;
    live_.clear();  // log lines after this start on a clean line
}

bool LoopTools::log_due() const {
    return s_.step % logging_steps_ == 0 || s_.step == s_.total_steps;
}

LoopTools::Window LoopTools::window() const {
    const auto now      = std::chrono::steady_clock::now();
    const double dt     = std::chrono::duration<double>(now - window_start_).count();
    const double run_dt = std::chrono::duration<double>(now - start_).count();
    Window w;
    w.seconds           = dt;
    w.steps             = window_steps_;
    w.tokens_per_second = dt > 0 ? static_cast<double>(window_tokens_) / dt : 0.0;
    w.units_per_second  = dt > 0 ? static_cast<double>(window_units_) / dt : 0.0;
    w.eta_seconds       = run_dt / static_cast<double>(std::max<int64_t>(1, steps_this_run_)) *
                    static_cast<double>(s_.total_steps - s_.step);
    return w;
}

void LoopTools::write(const nlohmann::json& record, const std::vector<std::string>& tags) {
    if (metrics_) metrics_->append(record);
    if (tb_) {
        for (const auto& [k, v] : record.items()) {
            if (k == "step" || !v.is_number()) continue;
            if (!tags.empty() && std::find(tags.begin(), tags.end(), k) == tags.end()) continue;
            tb_->add_scalar(k == "lr" ? "train/learning_rate" : "train/" + k, v.get<double>(), s_.step);
        }
    }
    window_start_  = std::chrono::steady_clock::now();
    window_tokens_ = window_units_ = window_steps_ = 0;
    s_.log_loss_sum                                = 0;
    s_.log_steps                                   = 0;
}

void LoopTools::add_scalar(const std::string& tag, double value) {
    if (tb_) tb_->add_scalar(tag, value, s_.step);
}

void LoopTools::append(const nlohmann::json& record) {
    if (metrics_) metrics_->append(record);
}

void LoopTools::show_live(double loss, double lr) {
    if (!live_.enabled()) return;
    const double run_dt = seconds_this_run();
    StepReport now;
    now.step = s_.step, now.total_steps = s_.total_steps, now.loss = loss, now.lr = lr, now.epoch = s_.epoch();
    now.tokens_per_second = run_dt > 0 ? static_cast<double>(s_.tokens_seen - tokens_at_start_) / run_dt : 0.0;
    now.eta_seconds       = window().eta_seconds;
    live_.show(format_live_line(now));
}

void LoopTools::close() {
    live_.clear();
    if (metrics_) metrics_->close();
}

double LoopTools::seconds_this_run() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

// ---------------------------------------------------------------- the end of a run

TrainResult finish_run(Session& s, LoopTools& tools, bool interrupted, bool merge, const std::string& merge_base,
                       const std::function<void()>& before_adapter,
                       const std::function<nlohmann::json()>& recipe_summary) {
    tools.live().clear();
    TrainResult result;
    result.total_steps = s.total_steps;
    if (s.last_checkpoint.empty() || checkpoint_step(s.last_checkpoint) != s.step) save_checkpoint(s);
    result.steps           = s.step;
    result.last_checkpoint = s.last_checkpoint;
    if (interrupted) {
        result.interrupted = true;
        tools.close();
        return result;
    }
    if (before_adapter) before_adapter();
    result.adapter_dir = s.output / "adapter";
    if (!s.main) {  // rank 0 writes the adapter, the merged model and the summary
        s.dist->barrier(std::chrono::hours(24));
        return result;
    }
    peft::save_adapter(*s.model, s.lora, result.adapter_dir);
    nlohmann::json summary = recipe_summary ? recipe_summary() : nlohmann::json::object();
    if (merge) {
        result.merged_dir = s.output / "merged";
        spdlog::info("merging the adapter into {} -> {}", merge_base, result.merged_dir.string());
        peft::merge_adapter_checkpoint(merge_base, result.adapter_dir, result.merged_dir);
        summary["merged"] = result.merged_dir.string();
    }
    summary["steps"]            = s.step;
    summary["total_steps"]      = s.total_steps;
    summary["tokens_seen"]      = s.tokens_seen;
    summary["seconds_this_run"] = tools.seconds_this_run();
    summary["final_train_loss"] = std::isfinite(s.last_loss) ? nlohmann::json(s.last_loss) : nullptr;
    summary["adapter"]          = result.adapter_dir.string();
    summary["checkpoint"]       = s.last_checkpoint.string();
    summary["peak_memory_gb"]   = peak_memory_bytes(s.device) / 1e9;  // CUDA: allocator peak; CPU: peak RSS
    summary["peak_memory_kind"] = peak_memory_kind(s.device);
    if (s.world_size() > 1) summary["world_size"] = s.world_size();
    result.summary = summary;
    write_file_atomic(s.output / "summary.json", dump_json(result.summary, 2) + "\n");
    tools.close();
    s.dist->barrier(std::chrono::hours(24));
    return result;
}

}  // namespace medllm::train

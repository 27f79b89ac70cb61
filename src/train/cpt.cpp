// `medllm cpt`: continued pretraining with QLoRA / LoRA. Reads top-down like torchtune's recipes:
//   setup()            corpus -> packed rows, model (+ LoRA), optimizer, schedule, step count
//   load_checkpoint()  resume: adapter, AdamW moments, RNG streams, step (the data position is a function of it)
//   train()            the loop; the optimizer step is fenced below
//   save_checkpoint()  atomic checkpoint folder + retention
#include "medllm/train/cpt.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <optional>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/cuda.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/progress.h"
#include "medllm/io/model_files.h"
#include "medllm/peft/adapter.h"
#include "medllm/peft/lora.h"
#include "medllm/train/checkpoint.h"
#include "medllm/dist/distributed.h"
#include "medllm/train/metrics.h"
#include "medllm/train/optimizer.h"
#include "medllm/train/schedule.h"
#include "medllm/train/step.h"

namespace fs = std::filesystem;

namespace medllm::train {

// ---------------------------------------------------------------- config

void add_cpt_fields(ConfigSchema<CptConfig>& s) {
    data::add_corpus_fields(s);
    using C = CptConfig;
    s.field("lora.r", &C::lora_r, "adapter rank; higher = more capacity and memory (QLoRA paper: 64)").range(1, 4096);
    s.field("lora.alpha", &C::lora_alpha, "scaling numerator (scaling = alpha / r; QLoRA paper: 16)").range(1e-6, 1e6);
    s.field("lora.dropout", &C::lora_dropout, "dropout on the adapter input (QLoRA paper: 0.05 for 33B/65B)")
        .range(0, 0.99);
    s.field("lora.use_rslora", &C::lora_rslora, "rsLoRA scaling alpha / sqrt(r)");
    s.field("lora.quantize_base", &C::quantize_base, "QLoRA: hold the frozen base in NF4 (false = plain LoRA)");
    s.field("lora.target_modules", &C::target_modules, "projections that get an adapter (all seven by default)");
    s.field("lora.init_adapter", &C::init_adapter, "continue from this PEFT adapter (its r/alpha/targets are used)");
    s.field("optim.lr", &C::lr, "peak learning rate (QLoRA paper: 1e-4 for 33B/65B)").range(0, 1);
    s.field("optim.beta1", &C::beta1, "AdamW beta1 (HF default)").range(0, 0.999999);
    s.field("optim.beta2", &C::beta2, "AdamW beta2 (HF default)").range(0, 0.999999999);
    s.field("optim.eps", &C::eps, "AdamW epsilon (HF default)").range(0, 1);
    s.field("optim.weight_decay", &C::weight_decay, "decoupled weight decay (HF default 0)").range(0, 10);
    s.field("optim.max_grad_norm", &C::max_grad_norm, "clip the total gradient L2 norm (0 = off; HF default 1.0)")
        .range(0, 1e6);
    s.field("schedule.name", &C::schedule, "learning-rate schedule (transformers' lambdas)")
        .one_of({"cosine", "cosine_with_min_lr", "linear", "constant_with_warmup", "constant"});
    s.field("schedule.warmup_steps", &C::warmup_steps, "linear warmup steps (> 0 overrides warmup_ratio)")
        .range(0, 9e15);
    s.field("schedule.warmup_ratio", &C::warmup_ratio, "warmup as a share of all steps (ceil)").range(0, 1);
    s.field("schedule.min_lr_rate", &C::min_lr_rate, "cosine_with_min_lr: the floor as a share of optim.lr")
        .range(0, 1);
    s.field("training.epochs", &C::epochs, "passes over the corpus (the paper: 2)").range(0, 1e6);
    s.field("training.max_steps", &C::max_steps, "optimizer steps (> 0 overrides epochs)").range(0, 9e15);
    s.field("training.batch_size", &C::batch_size, "rows per micro-batch (per process)").range(1, 1 << 20);
    s.field("training.grad_accum", &C::grad_accum, "micro-batches per optimizer step").range(1, 1 << 20);
    s.field("training.activation_checkpointing", &C::activation_checkpointing,
            "recompute each layer in backward: much less memory for ~30% more compute");
    s.field("training.seed", &C::train_seed, "adapter init and dropout").range(0, 9e15);
    s.field("training.device", &C::device, "auto | cpu | cuda | cuda:N");
    s.field("training.logging_steps", &C::logging_steps, "steps between log lines / metrics records").range(1, 9e15);
    s.field("training.eval_steps", &C::eval_steps, "steps between validation passes (0 = start and end only)")
        .range(0, 9e15);
    s.field("training.eval_on_start", &C::eval_on_start, "validation loss before the first step (fresh runs)");
    s.field("training.save_steps", &C::save_steps, "steps between checkpoints (one is always written at the end)")
        .range(1, 9e15);
    s.field("training.save_total_limit", &C::save_total_limit, "checkpoints kept (0 = all)").range(0, 1e6);
    s.field("training.skip_nonfinite", &C::skip_nonfinite,
            "a NaN/Inf loss skips the update (false = stop, keeping the last good checkpoint)");
    s.field("training.merge", &C::merge,
            "at the end, merge the adapter into the base as a bf16 HF checkpoint in <output>/merged (medllm merge)");
    dist::add_allreduce_fields(s);
    s.strict_sections({"data", "eval_guard", "model", "lora", "optim", "schedule", "training"});
}

nlohmann::json math_identity(const std::vector<ResolvedEntry>& resolved) {
    // Keys that do not change the numbers a run computes; everything else must match for a resume.
    static const char* kFree[] = {"output",
                                  "model.path",
                                  "model.tokenizer",
                                  "data.cache_dir",
                                  "data.threads",
                                  "data.shard_mb",
                                  "training.device",
                                  "training.logging_steps",
                                  "training.save_steps",
                                  "training.save_total_limit",
                                  "training.eval_steps",
                                  "training.eval_on_start",
                                  "training.merge",
                                  "training.overlap_allreduce",
                                  "training.allreduce_bucket_mb"};
    nlohmann::json out         = nlohmann::json::object();
    for (const auto& e : resolved) {
        bool free = e.key.rfind("eval_guard.", 0) == 0;
        for (const char* k : kFree) free = free || e.key == k;
        if (!free) out[e.key] = e.value;
    }
    return out;
}

// ---------------------------------------------------------------- signals

namespace {

std::atomic<bool> g_stop{false};
volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_stop_signal(int sig) {
    g_signal = sig;
    g_stop.store(true);
    std::signal(sig, SIG_DFL);  // a second signal ends the process at once
}

struct SignalScope {
    void (*old_int)(int), (*old_term)(int);
    SignalScope() {
        g_stop.store(false);
        g_signal = 0;
        old_int  = std::signal(SIGINT, on_stop_signal);
        old_term = std::signal(SIGTERM, on_stop_signal);
    }
    ~SignalScope() {
        std::signal(SIGINT, old_int);
        std::signal(SIGTERM, old_term);
    }
};

double peak_memory_gb(at::Device d) {
    return peak_memory_bytes(d) / 1e9;  // CUDA: the allocator's peak allocated bytes; CPU: peak RSS
}

// ---------------------------------------------------------------- the run's state

struct Run {
    Run(const CptConfig& c, const CptOptions& o) : cfg(c), opts(o) {}
    const CptConfig& cfg;
    const CptOptions& opts;
    fs::path output;
    at::Device device{at::kCPU};
    std::shared_ptr<dist::Distributed> dist;  // world size 1: no group, collectives are the identity
    bool main = true;                   // rank 0: the only rank that writes files

    std::unique_ptr<data::TokenCache> cache;
    std::unique_ptr<data::PackedDataset> train_rows, val_rows;
    std::shared_ptr<model::Qwen2ForCausalLM> model;
    peft::LoraConfig lora;
    std::unique_ptr<AdamW> optimizer;
    Schedule schedule;
    int64_t micro_per_epoch = 0, steps_per_epoch = 0, total_steps = 0;
    nlohmann::json identity;  // what a resume must match

    // Progress that a checkpoint carries.
    int64_t step        = 0;
    int64_t tokens_seen = 0;
    double log_loss_sum = 0;
    int64_t log_steps   = 0;
    double last_loss = NAN, last_grad_norm = NAN;
    nlohmann::json eval_history = nlohmann::json::array();
    fs::path last_checkpoint;
};

// ---------------------------------------------------------------- setup

void setup(Run& r) {
    const CptConfig& cfg = r.cfg;
    r.dist               = r.opts.parallel.resolve(cfg.device);
    r.main               = r.dist->is_main();
    r.device             = r.dist->device();
    if (cfg.max_steps == 0 && !(cfg.epochs > 0)) throw UsageError("training.epochs or training.max_steps must be > 0");

    // Data: the token cache (built or reused; rank 0 builds it while the others wait), this rank's rows.
    if (!r.main) r.dist->barrier(std::chrono::hours(24));
    const auto prepared = data::prepare_corpus(cfg);
    if (r.main) r.dist->barrier(std::chrono::hours(24));
    r.cache               = std::make_unique<data::TokenCache>(cfg.resolved_cache_dir());
    auto train_opts       = data::packing_options(cfg, data::Split::train);
    train_opts.rank       = r.dist->rank();
    train_opts.world_size = r.dist->world_size();
    r.train_rows          = std::make_unique<data::PackedDataset>(*r.cache, train_opts);
    if (cfg.validation_fraction > 0 || cfg.validation_documents > 0) {
        auto val_opts    = data::packing_options(cfg, data::Split::validation);
        val_opts.shuffle = false;
        try {
            r.val_rows = std::make_unique<data::PackedDataset>(*r.cache, val_opts);
        } catch (const Error& e) {
            spdlog::warn("no validation rows ({}); validation loss is skipped", e.what());
        }
    }

    // Model: NF4 base as it streams in (QLoRA) or dense, plus the adapters.
    const at::ScalarType dtype = r.device.is_cuda() ? at::kBFloat16 : at::kFloat;
    if (!cfg.init_adapter.empty()) {
        r.lora               = peft::read_adapter_config(cfg.init_adapter).lora;
        r.lora.quantize_base = cfg.quantize_base;
        // r, alpha, targets and dropout come from the adapter's config (lora.* keys other than quantize_base
        // are not used).
        r.model = peft::load_model_with_adapter(cfg.model_path, cfg.init_adapter, dtype, r.device, cfg.quantize_base);
    } else {
        r.lora.r              = cfg.lora_r;
        r.lora.alpha          = cfg.lora_alpha;
        r.lora.dropout        = cfg.lora_dropout;
        r.lora.use_rslora     = cfg.lora_rslora;
        r.lora.target_modules = cfg.target_modules;
        r.lora.quantize_base  = cfg.quantize_base;
        r.lora.seed           = static_cast<uint64_t>(cfg.train_seed);
        r.lora.validate();
        r.model = peft::load_model_for_lora(cfg.model_path, r.lora, dtype, r.device);
    }
    r.lora.base_model_name_or_path = cfg.model_path;
    if (cfg.seq_len > r.model->config.max_position_embeddings)
        throw UsageError("data.seq_len " + std::to_string(cfg.seq_len) + " exceeds the model's context (" +
                         std::to_string(r.model->config.max_position_embeddings) + " positions, config.json)");
    // A tokenizer that does not belong to the model gives ids past its embedding table: say so, not an index error.
    uint32_t max_id = 0;
    for (std::size_t d = 0; d < r.cache->num_documents(); ++d) {
        const uint32_t* t = r.cache->tokens(d);
        for (uint32_t i = 0; i < r.cache->document(d).length; ++i) max_id = std::max(max_id, t[i]);
    }
    if (static_cast<int64_t>(max_id) >= r.model->config.vocab_size)
        throw UsageError("the corpus holds token id " + std::to_string(max_id) + " but the model's vocabulary has " +
                         std::to_string(r.model->config.vocab_size) +
                         " entries: model.tokenizer does not belong to model.path");
    // Dropout draws from the global generators: seed them so a fresh run is reproducible (a resume then restores
    // the checkpoint's state over this).
    at::manual_seed(static_cast<uint64_t>(cfg.train_seed));
    r.model->model->gradient_checkpointing = cfg.activation_checkpointing;
    r.model->train();

    auto params = peft::adapter_parameters(*r.model);
    if (params.empty()) throw UsageError("lora.target_modules: no adapter parameters to train");
    {
        // Every rank starts from rank 0's adapter (the same seed gives the same one; this makes it certain).
        at::NoGradGuard no_grad;
        std::vector<at::Tensor> weights;
        for (auto& p : params) weights.push_back(p.second);
        r.dist->broadcast(weights, 0);
    }
    AdamWOptions ao;
    ao.beta1        = cfg.beta1;
    ao.beta2        = cfg.beta2;
    ao.eps          = cfg.eps;
    ao.weight_decay = cfg.weight_decay;
    r.optimizer     = std::make_unique<AdamW>(params, ao);

    // Steps, known before the first one (HF: ceil(micro-batches / grad_accum) per epoch).
    const int64_t rows = r.train_rows->rows_per_epoch();
    r.micro_per_epoch  = (rows + cfg.batch_size - 1) / cfg.batch_size;
    r.steps_per_epoch  = std::max<int64_t>(1, (r.micro_per_epoch + cfg.grad_accum - 1) / cfg.grad_accum);
    r.total_steps = cfg.max_steps > 0 ? cfg.max_steps : static_cast<int64_t>(std::ceil(cfg.epochs * r.steps_per_epoch));
    r.schedule.name         = cfg.schedule;
    r.schedule.base_lr      = cfg.lr;
    r.schedule.total_steps  = r.total_steps;
    r.schedule.warmup_steps = resolve_warmup_steps(cfg.warmup_steps, cfg.warmup_ratio, r.total_steps);
    r.schedule.min_lr_rate  = cfg.min_lr_rate;
    r.schedule.validate();

    auto data_identity = r.train_rows->identity();
    data_identity.erase("rank");  // the same run on every rank; the world size is its own key below
    data_identity.erase("world_size");
    r.identity = {{"config", math_identity(r.opts.resolved)},
                  {"data", data_identity},
                  {"model", io::model_dir_identity(cfg.model_path)},
                  {"world_size", r.dist->world_size()}};
    spdlog::info(
        "cpt: {} rows of {} tokens per epoch ({} tokens), {} micro-batches of {} -> {} optimizer steps "
        "per epoch; {} steps in all (warmup {}), {} adapter tensors, device {}{}",
        rows, cfg.seq_len, r.train_rows->tokens_per_epoch(), r.micro_per_epoch, cfg.batch_size, r.steps_per_epoch,
        r.total_steps, r.schedule.warmup_steps, params.size(), r.device.str(),
        r.dist->world_size() > 1
            ? fmt::format(" (rank {} of {}; rows and micro-batches are per rank)", r.dist->rank(), r.dist->world_size())
            : std::string());
    (void)prepared;
}

// ---------------------------------------------------------------- checkpoints

void save_checkpoint(Run& r) {
    const int64_t step = r.step;
    if (!r.main) {
        r.last_checkpoint = checkpoint_path(r.output, step);
        r.dist->barrier(std::chrono::hours(1));  // rank 0 writes it
        return;
    }
    r.last_checkpoint = write_checkpoint(r.output, step, [&](const fs::path& dir) {
        peft::save_adapter(*r.model, r.lora, dir / "adapter");
        save_optimizer_and_rng(dir, *r.optimizer);
        const nlohmann::json state = {{"step", step},
                                      {"optimizer_steps", r.optimizer->steps()},
                                      {"total_steps", r.total_steps},
                                      {"epoch", static_cast<double>(step) / static_cast<double>(r.steps_per_epoch)},
                                      {"tokens_seen", r.tokens_seen},
                                      {"log_loss_sum", r.log_loss_sum},
                                      {"log_steps", r.log_steps},
                                      {"last_loss", std::isfinite(r.last_loss) ? nlohmann::json(r.last_loss) : nullptr},
                                      {"eval_history", r.eval_history},
                                      {"data_state", r.train_rows->state()},
                                      {"identity", r.identity}};
        write_file_atomic(dir / "trainer_state.json", dump_json(state, 2) + "\n");
    });
    apply_retention(r.output, r.cfg.save_total_limit);
    spdlog::info("checkpoint {} written", r.last_checkpoint.string());
    r.dist->barrier(std::chrono::hours(1));
}

void load_checkpoint(Run& r) {
    std::optional<fs::path> dir;
    const std::string& how = r.opts.resume;
    if (how == "never") {
        return;
    } else if (how == "auto") {
        dir = find_latest_checkpoint(r.output);
        // Every rank must resume the same checkpoint (a shared output folder): compare the steps found.
        const double found = dir ? static_cast<double>(checkpoint_step(*dir).value_or(0)) : -1.0;
        const auto lo      = r.dist->all_reduce_scalars({-found}, dist::Reduce::max);
        const auto hi      = r.dist->all_reduce_scalars({found}, dist::Reduce::max);
        if (-lo[0] != hi[0])
            throw Error("--resume auto: the ranks found different checkpoints in " + r.output.string() + " (steps " +
                        std::to_string(static_cast<int64_t>(-lo[0])) + " to " +
                        std::to_string(static_cast<int64_t>(hi[0])) +
                        "; -1 = none): the output folder must be one folder shared by every rank");
        if (!dir) return;
    } else {
        dir = fs::path(how);
        if (!is_complete_checkpoint(*dir))
            throw UsageError("--resume " + how + ": not a complete checkpoint folder (checkpoint-<step>/ with " +
                             kCheckpointComplete + ")");
    }
    auto state = read_json_file(*dir / "trainer_state.json");
    // Checkpoints before data parallelism kept the rank in the data identity.
    state["identity"]["data"].erase("rank");
    state["identity"]["data"].erase("world_size");
    state["data_state"]["dataset"]["rank"]       = r.dist->rank();  // rank 0 saved it; the cursor is the same
    state["data_state"]["dataset"]["world_size"] = r.dist->world_size();
    const int64_t saved_world                    = state["identity"].value("world_size", int64_t{1});
    const int64_t world                          = r.dist->world_size();
    const bool world_changed                     = saved_world != world;
    if (world_changed) {
        const int64_t B = r.cfg.batch_size, A = r.cfg.grad_accum;
        const int64_t saved_rows = (r.train_rows->packed_rows() + saved_world - 1) / saved_world;
        check_world_size_change(*dir,
                                {saved_world, world, "rows", A * B, r.steps_per_epoch,
                                 std::max<int64_t>(1, ((saved_rows + B - 1) / B + A - 1) / A), r.total_steps,
                                 state.at("step").get<int64_t>()},
                                r.opts.parallel.allow_world_size_change);
        state["identity"]["world_size"] = world;
    }
    const std::string diff = describe_json_difference(state.at("identity"), r.identity);
    if (!diff.empty())
        throw UsageError("cannot resume from " + dir->string() + ": it belongs to a different run (" + diff +
                         "); use another output folder, or --resume never to start over");
    if (!world_changed) r.train_rows->restore(state.at("data_state"));  // rank 0's position: the same on every rank
    peft::load_adapter(*r.model, *dir / "adapter");
    load_optimizer_and_rng(*dir, *r.optimizer, state.at("optimizer_steps").get<int64_t>(), r.device);
    r.step         = state.at("step").get<int64_t>();
    r.tokens_seen  = state.at("tokens_seen").get<int64_t>();
    r.log_loss_sum = state.at("log_loss_sum").get<double>();
    r.log_steps    = state.at("log_steps").get<int64_t>();
    if (!state.at("last_loss").is_null()) r.last_loss = state.at("last_loss").get<double>();
    r.eval_history    = state.at("eval_history");
    r.last_checkpoint = *dir;
    spdlog::info("resuming from {} (step {}/{})", dir->string(), r.step, r.total_steps);
}

// ---------------------------------------------------------------- data of one step

// The micro-batches of optimizer step `step`: a pure function of the step (epoch = step / steps_per_epoch; the
// epoch's last step may hold fewer micro-batches and its last micro-batch fewer rows, as HF's dataloader).
std::vector<MicroBatch> step_batches(const Run& r, int64_t step) {
    const int64_t epoch = step / r.steps_per_epoch, local = step % r.steps_per_epoch;
    const int64_t rows = r.train_rows->rows_per_epoch();
    std::vector<MicroBatch> out;
    std::vector<data::PackedRow> buf;
    for (int64_t m = local * r.cfg.grad_accum; m < std::min((local + 1) * r.cfg.grad_accum, r.micro_per_epoch); ++m) {
        const int64_t begin = m * r.cfg.batch_size, end = std::min(begin + r.cfg.batch_size, rows);
        buf.assign(static_cast<size_t>(end - begin), {});
        for (int64_t i = begin; i < end; ++i) r.train_rows->row(epoch, i, buf[static_cast<size_t>(i - begin)]);
        out.push_back(make_micro_batch(buf, r.device));
    }
    return out;
}

// What rank 0 writes: metrics.jsonl and TensorBoard (the other ranks have none).
struct Sinks {
    std::unique_ptr<MetricsFile> metrics;
    std::unique_ptr<TensorBoardWriter> tb;
    void append(const nlohmann::json& rec) {
        if (metrics) metrics->append(rec);
    }
    void add_scalar(const std::string& tag, double value, int64_t step) {
        if (tb) tb->add_scalar(tag, value, step);
    }
    void close() {
        if (metrics) metrics->close();
    }
};

void run_eval(Run& r, Sinks& sinks) {
    if (!r.val_rows) return;
    const auto t0 = std::chrono::steady_clock::now();
    auto ev       = evaluate(*r.model, *r.val_rows, r.cfg.batch_size, r.device, r.dist->rank(), r.dist->world_size());
    if (r.dist->world_size() > 1) {  // each rank evaluated every world_size-th row: add up
        const auto sums = r.dist->all_reduce_scalars({ev.loss_sum, static_cast<double>(ev.tokens)});
        ev.loss_sum     = sums[0];
        ev.tokens       = static_cast<int64_t>(sums[1]);
        ev.loss         = ev.tokens > 0 ? ev.loss_sum / static_cast<double>(ev.tokens) : 0.0;
        ev.perplexity   = std::exp(ev.loss);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    spdlog::info("eval step {}/{} | val_loss {:.4f} | val_ppl {:.2f} | {} tokens | {:.1f} s", r.step, r.total_steps,
                 ev.loss, ev.perplexity, ev.tokens, s);
    const nlohmann::json rec = {
        {"step", r.step}, {"eval_loss", ev.loss}, {"eval_perplexity", ev.perplexity}, {"eval_tokens", ev.tokens}};
    r.eval_history.push_back(rec);
    sinks.append(rec);
    sinks.add_scalar("eval/loss", ev.loss, r.step);
    sinks.add_scalar("eval/perplexity", ev.perplexity, r.step);
}

}  // namespace

void request_stop() {
    g_stop.store(true);
}

// ---------------------------------------------------------------- the recipe

CptResult run_cpt(const CptConfig& cfg, const CptOptions& opts) {
    Run r(cfg, opts);
    r.output = cfg.output;
    fs::create_directories(r.output);
    setup(r);
    load_checkpoint(r);
    SignalScope signals;

    Sinks sinks;
    if (r.main) {
        sinks.metrics = std::make_unique<MetricsFile>(r.output / "metrics.jsonl", r.step);
        sinks.tb      = std::make_unique<TensorBoardWriter>(r.output);
    }
    dist::Distributed& dist = *r.dist;
    if (r.step == 0 && cfg.eval_on_start) run_eval(r, sinks);

    const auto params = r.optimizer->params();
    // MFU only where the device's peak is known (6·N FLOPs per token; tokens/s is summed over the ranks).
    const std::optional<double> peak_flops = device_peak_flops(r.device);
    const double matmul_params             = matmul_parameters(r.model->config);
    LiveLine live(r.main ? stderr : nullptr);  // the refreshing line on a terminal; nothing in logs and pipes
    const auto start              = std::chrono::steady_clock::now();
    auto log_start                = start;
    const int64_t tokens_at_start = r.tokens_seen;
    int64_t log_tokens = 0, steps_this_run = 0, log_window_steps = 0;
    double comm_seconds = 0;
    bool interrupted    = false;
    // Data parallelism: the gradient sum of each step (null for one process; one with an explicit --backend checks the
    // path).
    const auto sync = dist::make_gradient_sync(dist, params, cfg.overlap_allreduce, cfg.allreduce_bucket_mb);
    while (r.step < r.total_steps) {
        // ======================== OPTIMIZER STEP BEGIN ========================
        const std::vector<MicroBatch> batches = step_batches(r, r.step);
        int64_t num_items = 0, real_tokens = 0;
        for (const auto& mb : batches) {
            num_items += mb.target_tokens;
            real_tokens += mb.real_tokens;
        }
        const double denom = std::max<int64_t>(1, num_items);
        StepLosses losses;
        if (sync && !batches.empty()) {  // the last micro-batch's backward may start the all-reduce
            losses = forward_backward(*r.model, {batches.begin(), batches.end() - 1}, denom);
            sync->arm(denom);
            const StepLosses last = forward_backward(*r.model, {batches.back()}, denom);
            losses.micro.push_back(last.micro.at(0));
            losses.loss += last.loss;
        } else {
            losses = forward_backward(*r.model, batches, denom);
            if (sync) sync->arm(denom);
        }
        bool stop_agreed = false;
        if (sync) {
            // HF normalizes by the step's target tokens across ranks (training.md §2). One round of collectives per
            // step (small ones cost a scheduler round trip each on a loaded CPU): the gradients, scaled back to
            // this rank's token-loss sum (arm(denom)), and beside them in float64 the counts, the loss sum and the
            // stop flag; dividing the summed gradients by the global count gives one process with N x A
            // micro-batches.
            const std::vector<double> v =
                sync->finish({double(num_items), losses.loss * denom, double(real_tokens), g_stop.load() ? 1.0 : 0.0});
            num_items           = static_cast<int64_t>(v[0]);
            const double global = std::max<double>(1.0, v[0]);
            {
                at::NoGradGuard no_grad;
                for (const auto& p : params) p.second.mutable_grad().div_(global);
            }
            if (steps_this_run == 0 && r.main)
                spdlog::info("gradient all-reduce: {} bucket(s) of at most {} MB, {}", sync->num_buckets(),
                             cfg.allreduce_bucket_mb,
                             sync->overlap() ? fmt::format("overlapped with the last backward ({} started inside it)",
                                                           sync->buckets_started_in_backward())
                                             : std::string("after the last backward"));
            losses.loss = v[1] / global;  // the step's mean token loss over all ranks
            real_tokens = static_cast<int64_t>(v[2]);
            stop_agreed = v[3] > 0;  // ranks agree on stopping: a signal may reach them at different steps
        }
        const double grad_norm = clip_grad_norm(params, cfg.max_grad_norm);
        const double lr        = r.schedule.lr_at(r.step);
        const bool finite      = std::isfinite(losses.loss) && std::isfinite(grad_norm);
        if (!finite && !cfg.skip_nonfinite)
            throw Error("step " + std::to_string(r.step + 1) + ": the loss or gradient norm is not finite (loss " +
                        std::to_string(losses.loss) + ", grad norm " + std::to_string(grad_norm) + "); " +
                        (r.last_checkpoint.empty() ? "no checkpoint was written yet"
                                                   : "the last good checkpoint is " + r.last_checkpoint.string()) +
                        " (training.skip_nonfinite: true skips such steps)");
        if (finite)
            r.optimizer->step(lr);
        else
            spdlog::warn("step {}: non-finite loss or gradient norm, update skipped", r.step + 1);
        r.optimizer->zero_grad();
        ++r.step;
        // ======================== OPTIMIZER STEP END ==========================
        ++steps_this_run;
        comm_seconds += dist.take_comm_seconds();
        r.tokens_seen += real_tokens;
        log_tokens += real_tokens;
        r.last_loss      = losses.loss;
        r.last_grad_norm = grad_norm;
        r.log_loss_sum += losses.loss;
        ++r.log_steps;

        nlohmann::json step_record = {{"step", r.step}, {"loss", losses.loss},    {"micro_losses", losses.micro},
                                      {"lr", lr},       {"grad_norm", grad_norm}, {"target_tokens", num_items}};
        if (opts.on_step) opts.on_step(r.step, step_record);
        ++log_window_steps;
        live.clear();  // log lines below start on a clean line

        if (r.step % cfg.logging_steps == 0 || r.step == r.total_steps) {
            const auto now      = std::chrono::steady_clock::now();
            const double dt     = std::chrono::duration<double>(now - log_start).count();
            const double run_dt = std::chrono::duration<double>(now - start).count();
            const double tps    = dt > 0 ? static_cast<double>(log_tokens) / dt : 0.0;
            const double eta =
                run_dt / static_cast<double>(steps_this_run) * static_cast<double>(r.total_steps - r.step);
            const double loss  = r.log_loss_sum / static_cast<double>(r.log_steps);
            const double epoch = static_cast<double>(r.step) / static_cast<double>(r.steps_per_epoch);
            StepReport report;
            report.step = r.step, report.total_steps = r.total_steps, report.epoch = epoch, report.loss = loss;
            report.lr = lr, report.grad_norm = grad_norm, report.tokens_per_second = tps, report.eta_seconds = eta;
            report.peak_memory_gb = peak_memory_gb(r.device);
            if (peak_flops)
                report.mfu = model_flops_utilization(matmul_params, tps / double(dist.world_size()), *peak_flops);
            spdlog::info("{}", format_log_line(report));
            nlohmann::json rec = {{"step", r.step},
                                  {"epoch", epoch},
                                  {"loss", loss},
                                  {"lr", lr},
                                  {"grad_norm", grad_norm},
                                  {"tokens_per_second", tps},
                                  {"tokens_seen", r.tokens_seen},
                                  {"peak_memory_gb", report.peak_memory_gb},
                                  {"peak_memory_kind", peak_memory_kind(r.device)}};
            if (report.mfu) rec["mfu"] = *report.mfu;
            if (dist.world_size() > 1) {
                rec["world_size"] = dist.world_size();
                // Seconds per step spent in the gradient all-reduce (the slowest rank's, which everyone waited for).
                rec["allreduce_seconds_per_step"] = dist.all_reduce_scalars(
                    {comm_seconds / double(std::max<int64_t>(1, log_window_steps))}, dist::Reduce::max)[0];
            }
            sinks.append(rec);
            sinks.add_scalar("train/loss", loss, r.step);
            sinks.add_scalar("train/learning_rate", lr, r.step);
            sinks.add_scalar("train/grad_norm", grad_norm, r.step);
            sinks.add_scalar("train/tokens_per_second", tps, r.step);
            comm_seconds     = 0;
            log_window_steps = 0;
            r.log_loss_sum   = 0;
            r.log_steps      = 0;
            log_tokens       = 0;
            log_start        = now;
        }
        if (cfg.eval_steps > 0 && r.step % cfg.eval_steps == 0 && r.step < r.total_steps) run_eval(r, sinks);
        const bool stop = dist.world_size() > 1 ? stop_agreed : g_stop.load();
        if (stop) {
            interrupted = true;
            break;
        }
        if (r.step % cfg.save_steps == 0 && r.step < r.total_steps) save_checkpoint(r);
        if (live.enabled()) {
            const double run_dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            StepReport now;
            now.step = r.step, now.total_steps = r.total_steps, now.loss = losses.loss, now.lr = lr;
            now.epoch             = static_cast<double>(r.step) / static_cast<double>(r.steps_per_epoch);
            now.tokens_per_second = run_dt > 0 ? static_cast<double>(r.tokens_seen - tokens_at_start) / run_dt : 0.0;
            now.eta_seconds =
                run_dt / static_cast<double>(steps_this_run) * static_cast<double>(r.total_steps - r.step);
            live.show(format_live_line(now));
        }
    }
    live.clear();

    CptResult result;
    result.total_steps = r.total_steps;
    if (r.last_checkpoint.empty() || checkpoint_step(r.last_checkpoint) != r.step) save_checkpoint(r);
    result.steps           = r.step;
    result.last_checkpoint = r.last_checkpoint;
    if (interrupted) {
        result.interrupted = true;
        sinks.close();
        return result;
    }
    run_eval(r, sinks);
    result.adapter_dir = r.output / "adapter";
    if (!r.main) {  // rank 0 writes the adapter, the merged model and the summary
        dist.barrier(std::chrono::hours(24));
        return result;
    }
    peft::save_adapter(*r.model, r.lora, result.adapter_dir);
    if (cfg.merge) {
        result.merged_dir = r.output / "merged";
        spdlog::info("merging the adapter into {} -> {}", cfg.model_path, result.merged_dir.string());
        peft::merge_adapter_checkpoint(cfg.model_path, result.adapter_dir, result.merged_dir);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    result.summary       = {{"steps", r.step},
                            {"total_steps", r.total_steps},
                            {"tokens_seen", r.tokens_seen},
                            {"seconds_this_run", seconds},
                            {"final_train_loss", std::isfinite(r.last_loss) ? nlohmann::json(r.last_loss) : nullptr},
                            {"eval", r.eval_history},
                            {"adapter", result.adapter_dir.string()},
                            {"checkpoint", r.last_checkpoint.string()}};
    if (cfg.merge) result.summary["merged"] = result.merged_dir.string();
    if (!r.eval_history.empty()) {
        result.summary["first_eval_loss"] = r.eval_history.front()["eval_loss"];
        result.summary["final_eval_loss"] = r.eval_history.back()["eval_loss"];
    }
    if (dist.world_size() > 1) result.summary["world_size"] = dist.world_size();
    write_file_atomic(r.output / "summary.json", dump_json(result.summary, 2) + "\n");
    sinks.close();
    dist.barrier(std::chrono::hours(24));
    return result;
}

}  // namespace medllm::train

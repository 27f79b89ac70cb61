// `medllm rpo`: DPO / RPO with QLoRA or LoRA on preference pairs. Copied from the cpt recipe (src/train/cpt.cpp:
// torchtune's "copy the loop, share the functions") and reads top-down the same way:
//   setup()            tokenizer, pairs (+ guard), model (+ CPT adapter, + LoRA), optimizer, schedule, reference
//   load_checkpoint()  resume: adapter, AdamW moments, RNG streams, step, the logging interval's sums
//   train()            the loop; the optimizer step is fenced below
//   save_checkpoint()  atomic checkpoint folder + retention
// The reference is the policy with its trainable adapter disabled (peft::disable_adapters), under no-grad, or
// log-probs precomputed once into <output>/ref_cache (reference.precompute).
#include "medllm/train/rpo.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <random>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/progress.h"
#include "medllm/data/token_cache.h"
#include "medllm/eval/igakuqa_data.h"
#include "medllm/io/model_files.h"
#include "medllm/io/safetensors.h"
#include "medllm/peft/adapter.h"
#include "medllm/peft/lora.h"
#include "medllm/train/checkpoint.h"
#include "medllm/train/metrics.h"
#include "medllm/train/optimizer.h"
#include "medllm/train/pair_data.h"
#include "medllm/train/preference_loss.h"
#include "medllm/train/schedule.h"

namespace fs = std::filesystem;

namespace medllm::train {

// ---------------------------------------------------------------- config

fs::path RpoConfig::resolved_tokenizer_dir() const {
    const std::string dir = tokenizer.empty() ? model_path : tokenizer;
    if (dir.empty()) throw UsageError("set model.path (or model.tokenizer): the pairs are tokenized with it");
    if (!fs::is_directory(dir))
        throw UsageError("tokenizer folder " + dir + " does not exist (model.path / model.tokenizer)");
    return dir;
}

void add_rpo_fields(ConfigSchema<RpoConfig>& s) {
    using C = RpoConfig;
    s.field("model.path", &C::model_path, "base model folder (HF checkpoint, bf16/fp32 or bitsandbytes 4-bit)")
        .required();
    s.field("model.tokenizer", &C::tokenizer, "tokenizer folder when it is not model.path");
    s.field("output", &C::output, "run folder: checkpoints, adapter/, metrics.jsonl, TensorBoard, summary.json");
    s.field("data.path", &C::data_path,
            "TRL preference JSONL: prompt, chosen, rejected (strings, or message lists -> chat template); "
            "other fields kept, pair_type gives per-type metrics (medllm build-prefs writes it)")
        .required();
    s.field("data.on_invalid", &C::on_invalid, "a malformed row: error (naming file:line) or skip (counted)")
        .one_of({"error", "skip"});
    s.field("data.max_length", &C::max_length,
            "tokens per prompt + completion row (TRL v0.14-v0.28: 1024; 0 = no limit)")
        .range(0, 1 << 24);
    s.field("data.max_prompt_length", &C::max_prompt_length,
            "the prompt keeps its last N tokens (TRL v0.14-v0.28: 512; 0 = no limit)")
        .range(0, 1 << 24);
    s.field("data.max_completion_length", &C::max_completion_length,
            "completions keep their first N tokens (TRL: none; 0 = no limit)")
        .range(0, 1 << 24);
    s.field("data.truncation_mode", &C::truncation_mode,
            "a row over max_length keeps its end (keep_end, TRL v0.28) or its start (keep_start, TRL >= 0.29)")
        .one_of({"keep_end", "keep_start"});
    s.field("data.shuffle", &C::shuffle, "shuffle the pairs every epoch (seeded by data.seed + epoch)");
    s.field("data.seed", &C::data_seed, "pair order").range(0, 9e15);
    s.field("data.eos_token", &C::eos_token, "EOS token text when the tokenizer names none ('' = its own)");
    s.field("data.default_system_prompt", &C::default_system_prompt,
            "chat rows without a system turn get this one (auto = the tokenizer's, as Qwen2.5's template)");
    s.field("eval_guard.enabled", &C::guard_enabled, "check the prompts against the evaluation exams");
    s.field("eval_guard.igakuqa_dir", &C::guard_dir, "IgakuQA data folder (holds data/<year>/)");
    s.field("eval_guard.years", &C::guard_years, "exam years the prompts must not contain");
    s.field("eval_guard.action", &C::guard_action,
            "a prompt holding an exam question: refuse (exit 2 naming file:line), drop the pair, or warn")
        .one_of({"refuse", "drop", "warn"});
    s.field("eval_guard.ngram", &C::guard_ngram, "characters per n-gram after normalization").range(4, 64);
    s.field("eval_guard.threshold", &C::guard_threshold, "share of a question's n-grams that makes a hit")
        .range(0.05, 1);
    s.field("lora.r", &C::lora_r, "adapter rank; higher = more capacity and memory").range(1, 4096);
    s.field("lora.alpha", &C::lora_alpha, "scaling numerator (scaling = alpha / r)").range(1e-6, 1e6);
    s.field("lora.dropout", &C::lora_dropout, "adapter dropout (off anyway while training.disable_dropout)")
        .range(0, 0.99);
    s.field("lora.use_rslora", &C::lora_rslora, "rsLoRA scaling alpha / sqrt(r)");
    s.field("lora.quantize_base", &C::quantize_base, "QLoRA: hold the frozen base in NF4 (false = plain LoRA)");
    s.field("lora.target_modules", &C::target_modules, "projections that get an adapter (all seven by default)");
    s.field("lora.init_adapter", &C::init_adapter,
            "the CPT adapter the policy starts from (the paper: RPO on the CPT weights); '' = the base alone");
    s.field("lora.merge_init_adapter", &C::merge_init_adapter,
            "true: merge init_adapter into the base before quantizing (<output>/init_merged, bf16), then a fresh "
            "LoRA; the reference is the merged model");
    s.field("lora.resume_adapter", &C::resume_adapter,
            "train this PEFT adapter further instead of a fresh LoRA (its r/alpha/targets are used); the "
            "reference stays the base with the adapter disabled");
    s.field("loss.beta", &C::beta, "DPO temperature (TRL default 0.1): higher = stay closer to the reference")
        .range(1e-9, 1e6);
    s.field("loss.loss_type", &C::loss_type,
            "sigmoid (DPO) | ipo | hinge, or TRL >= 1.0's list, e.g. [sigmoid, sft] (= RPO with loss_weights)");
    s.field("loss.loss_weights", &C::loss_weights, "one weight per loss_type entry (TRL >= 1.0: [1, alpha] for RPO)");
    s.field("loss.label_smoothing", &C::label_smoothing, "cDPO label noise for sigmoid (TRL <= 0.28)").range(0, 0.49);
    s.field("loss.rpo_alpha", &C::rpo_alpha,
            "RPO: add alpha * NLL of the chosen completion (the paper: 10; 0 = plain DPO; TRL v0.12-v0.28's key)")
        .range(0, 1e6);
    s.field("loss.nll_normalization", &C::nll_normalization,
            "pooled: the chosen tokens' NLL sum / their count per micro-batch (TRL); per_sequence: the mean of each "
            "chosen completion's mean NLL (Iterative RPO paper)")
        .one_of({"pooled", "per_sequence"});
    s.field("loss.nll_ignore_token_zero", &C::nll_ignore_token_zero,
            "reproduce TRL v0.12-v0.28's ignore_index=0: completion tokens with id 0 ('!' in Qwen2) leave the NLL");
    s.field("reference.precompute", &C::precompute_ref,
            "compute the reference log-probs once before training and cache them on disk (no reference forward "
            "per step: ~1/3 less compute; reused by later runs and resume)");
    s.field("reference.batch_size", &C::precompute_ref_batch_size, "pairs per precompute forward (0 = batch_size)")
        .range(0, 1 << 20);
    s.field("reference.cache_dir", &C::ref_cache_dir, "reference cache folder (default <output>/ref_cache)");
    s.field("optim.lr", &C::lr, "peak learning rate (TRL default 1e-6)").range(0, 1);
    s.field("optim.beta1", &C::beta1, "AdamW beta1 (HF default)").range(0, 0.999999);
    s.field("optim.beta2", &C::beta2, "AdamW beta2 (HF default)").range(0, 0.999999999);
    s.field("optim.eps", &C::eps, "AdamW epsilon (HF default)").range(0, 1);
    s.field("optim.weight_decay", &C::weight_decay, "decoupled weight decay (HF default 0)").range(0, 10);
    s.field("optim.max_grad_norm", &C::max_grad_norm, "clip the total gradient L2 norm (0 = off; HF default 1.0)")
        .range(0, 1e6);
    s.field("schedule.name", &C::schedule, "learning-rate schedule (transformers' lambdas; HF default linear)")
        .one_of({"cosine", "cosine_with_min_lr", "linear", "constant_with_warmup", "constant"});
    s.field("schedule.warmup_steps", &C::warmup_steps, "linear warmup steps (> 0 overrides warmup_ratio)")
        .range(0, 9e15);
    s.field("schedule.warmup_ratio", &C::warmup_ratio, "warmup as a share of all steps (ceil)").range(0, 1);
    s.field("schedule.min_lr_rate", &C::min_lr_rate, "cosine_with_min_lr: the floor as a share of optim.lr")
        .range(0, 1);
    s.field("training.epochs", &C::epochs, "passes over the pairs (the paper: 1)").range(0, 1e6);
    s.field("training.max_steps", &C::max_steps, "optimizer steps (> 0 overrides epochs)").range(0, 9e15);
    s.field("training.batch_size", &C::batch_size, "pairs per micro-batch (per process; 2x rows in the forward)")
        .range(1, 1 << 20);
    s.field("training.grad_accum", &C::grad_accum, "micro-batches per optimizer step").range(1, 1 << 20);
    s.field("training.activation_checkpointing", &C::activation_checkpointing,
            "recompute each layer in backward: much less memory for ~30% more compute");
    s.field("training.disable_dropout", &C::disable_dropout,
            "dropout off in policy and reference, LoRA dropout included (TRL's default)");
    s.field("training.share_prompt", &C::share_prompt,
            "chosen and rejected of a pair in one row, their common prefix (the prompt) computed once, the "
            "rejected tokens masked from chosen: the same log-probs for ~30% fewer tokens on prompt-heavy data, but on "
            "the CPU the masked attention "
            "costs more than that saves (measured, README) "
            "(used only with training.disable_dropout, so both see one dropout mask never)");
    s.field("training.seed", &C::train_seed, "adapter init and dropout").range(0, 9e15);
    s.field("training.device", &C::device, "auto | cpu | cuda | cuda:N");
    s.field("training.logits_chunk", &C::logits_chunk,
            "completion positions per lm_head chunk: bounds the fp32 logits to chunk x vocab")
        .range(1, 1 << 24);
    s.field("training.logging_steps", &C::logging_steps, "steps between log lines / metrics records (TRL: 10)")
        .range(1, 9e15);
    s.field("training.save_steps", &C::save_steps, "steps between checkpoints (one is always written at the end)")
        .range(1, 9e15);
    s.field("training.save_total_limit", &C::save_total_limit, "checkpoints kept (0 = all)").range(0, 1e6);
    s.field("training.skip_nonfinite", &C::skip_nonfinite,
            "a NaN/Inf loss skips the update (false = stop, keeping the last good checkpoint)");
    s.field("training.merge", &C::merge,
            "at the end, merge the adapter into the (merged CPT) base as a bf16 HF checkpoint in <output>/merged");
    dist::add_allreduce_fields(s);
    s.strict_sections({"data", "eval_guard", "model", "lora", "loss", "reference", "optim", "schedule", "training"});
}

nlohmann::json rpo_math_identity(const std::vector<ResolvedEntry>& resolved) {
    static const char* kFree[] = {"output",
                                  "model.path",
                                  "model.tokenizer",
                                  "data.path",
                                  "reference.cache_dir",
                                  "reference.batch_size",
                                  "training.device",
                                  "training.logits_chunk",
                                  "training.logging_steps",
                                  "training.save_steps",
                                  "training.save_total_limit",
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

extern "C" void on_rpo_stop_signal(int sig) {
    g_stop.store(true);
    std::signal(sig, SIG_DFL);  // a second signal ends the process at once
}

struct SignalScope {
    void (*old_int)(int), (*old_term)(int);
    SignalScope() {
        g_stop.store(false);
        old_int  = std::signal(SIGINT, on_rpo_stop_signal);
        old_term = std::signal(SIGTERM, on_rpo_stop_signal);
    }
    ~SignalScope() {
        std::signal(SIGINT, old_int);
        std::signal(SIGTERM, old_term);
    }
};

// Data parallelism: the mean over ranks of the logged preference metrics (TRL's names; a per-pair-type value is
// the mean of the ranks that saw that type). Every rank builds the same key list from the whole dataset's types.
void average_over_ranks(dist::Distributed& dist, nlohmann::json& rec, const std::map<std::string, int64_t>& pair_types) {
    if (dist.world_size() == 1) return;
    std::vector<std::string> keys{
        "loss",         "nll_loss",       "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
        "logps/chosen", "logps/rejected", "logits/chosen",  "logits/rejected"};
    for (const auto& [t, n] : pair_types) {
        keys.push_back("rewards/accuracies/" + t);
        keys.push_back("rewards/margins/" + t);
    }
    std::vector<double> v;
    for (const auto& k : keys) {
        const bool has = rec.contains(k) && rec[k].is_number();
        v.push_back(has ? rec[k].get<double>() : 0.0);
        v.push_back(has ? 1.0 : 0.0);
    }
    v = dist.all_reduce_scalars(v);
    for (size_t i = 0; i < keys.size(); ++i)
        if (v[2 * i + 1] > 0) rec[keys[i]] = v[2 * i] / v[2 * i + 1];
}

// ---------------------------------------------------------------- the run's state

struct Run {
    Run(const RpoConfig& c, const RpoOptions& o) : cfg(c), opts(o) {}
    const RpoConfig& cfg;
    const RpoOptions& opts;
    fs::path output;
    at::Device device{at::kCPU};
    std::shared_ptr<dist::Distributed> dist;  // world size 1: no group, collectives are the identity
    bool main = true;                   // rank 0: the only rank that writes files

    std::unique_ptr<text::Tokenizer> tokenizer;
    PrefDataset data;
    int32_t pad_id    = 0;
    bool share_prompt = false;  // training.share_prompt, in effect (dropout off)
    PreferenceLossSpec spec;
    std::string base_dir;  // the model the LoRA sits on (the merged CPT model when merge_init_adapter)
    std::shared_ptr<model::Qwen2ForCausalLM> model;
    peft::LoraConfig lora;
    std::unique_ptr<AdamW> optimizer;
    Schedule schedule;
    int64_t micro_per_epoch = 0, steps_per_epoch = 0, total_steps = 0;
    nlohmann::json identity;
    // Precomputed reference log-probs per pair (reference.precompute), [N] fp32 on the CPU.
    at::Tensor ref_chosen, ref_rejected;
    fs::path ref_cache_file;

    int64_t step        = 0;
    int64_t tokens_seen = 0, pairs_seen = 0;
    double log_loss_sum = 0;
    int64_t log_steps   = 0;
    MetricsAccumulator log_metrics;
    double last_loss = NAN;
    nlohmann::json last_metrics;
    fs::path last_checkpoint;
};

// The pairs of epoch `epoch` in training order: a Fisher-Yates shuffle with mt19937_64 (both fully specified, so
// the order is the same on every platform).
std::vector<int64_t> epoch_order(int64_t n, bool shuffle, int64_t seed, int64_t epoch) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
    if (!shuffle) return order;
    std::mt19937_64 rng(static_cast<uint64_t>(seed) * 1000003ULL + static_cast<uint64_t>(epoch));
    for (int64_t i = n - 1; i > 0; --i) {
        const int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
        std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
    }
    return order;
}

// ---------------------------------------------------------------- setup

std::unique_ptr<data::ContaminationGuard> make_guard(const RpoConfig& c) {
    if (!c.guard_enabled) {
        spdlog::warn("eval_guard.enabled is false: the prompts are NOT checked against the evaluation exams");
        return nullptr;
    }
    if (c.guard_dir.empty())
        throw UsageError(
            "eval_guard.igakuqa_dir is required: the prompts are checked against the IgakuQA exams (set "
            "eval_guard.enabled: false to skip the check)");
    if (!fs::is_directory(fs::path(c.guard_dir) / "data"))
        throw UsageError("eval_guard.igakuqa_dir " + c.guard_dir + " has no data/ folder");
    data::GuardOptions g;
    g.ngram     = static_cast<int>(c.guard_ngram);
    g.threshold = c.guard_threshold;
    auto guard  = std::make_unique<data::ContaminationGuard>(
        data::ContaminationGuard::from_igakuqa(c.guard_dir, eval::parse_years(c.guard_years), g));
    spdlog::info("contamination guard: {} questions of {}", guard->num_questions(), c.guard_years);
    return guard;
}

// <output>/init_merged: the base with the CPT adapter merged in (bf16), made once and reused while the inputs
// are the same.
std::string merged_init_base(const RpoConfig& c, const fs::path& output) {
    const fs::path dir         = output / "init_merged";
    const nlohmann::json ident = {{"base", io::model_dir_identity(c.model_path)},
                                  {"adapter", io::model_dir_identity(c.init_adapter)}};
    const fs::path marker      = dir / "medllm_merge.json";
    if (fs::exists(marker)) {
        try {
            if (describe_json_difference(read_json_file(marker), ident).empty()) return dir.string();
        } catch (const Error&) {
        }
    }
    spdlog::info("merging the CPT adapter {} into {} -> {} (lora.merge_init_adapter)", c.init_adapter, c.model_path,
                 dir.string());
    fs::remove_all(dir);
    peft::merge_adapter_checkpoint(c.model_path, c.init_adapter, dir);
    write_file_atomic(marker, dump_json(ident, 2) + "\n");
    return dir.string();
}

void setup(Run& r) {
    const RpoConfig& cfg = r.cfg;
    r.dist               = r.opts.parallel.resolve(cfg.device);
    r.main               = r.dist->is_main();
    r.device             = r.dist->device();
    if (cfg.max_steps == 0 && !(cfg.epochs > 0)) throw UsageError("training.epochs or training.max_steps must be > 0");
    r.spec = parse_loss_spec(cfg.loss_type, cfg.loss_weights, cfg.beta, cfg.label_smoothing, cfg.rpo_alpha,
                             cfg.nll_normalization, cfg.nll_ignore_token_zero);
    if (!cfg.init_adapter.empty() && !cfg.resume_adapter.empty())
        throw UsageError(
            "lora.init_adapter and lora.resume_adapter: set one (the CPT adapter to start from, or an "
            "adapter to keep training)");
    if (!cfg.init_adapter.empty() && !cfg.merge_init_adapter)
        throw UsageError(
            "lora.merge_init_adapter: false (a frozen CPT adapter stacked under the new one) is not "
            "built yet; use true (the CPT adapter merged into the base, the paper's setting)");
    if (!fs::is_regular_file(cfg.data_path)) throw UsageError("data.path: no such file " + cfg.data_path);

    // Data.
    r.tokenizer = text::Tokenizer::from_dir(cfg.resolved_tokenizer_dir());
    PrefDataOptions po;
    po.max_length                    = cfg.max_length;
    po.max_prompt_length             = cfg.max_prompt_length;
    po.max_completion_length         = cfg.max_completion_length;
    po.truncation_mode               = cfg.truncation_mode;
    po.on_invalid                    = cfg.on_invalid;
    po.default_system_prompt         = cfg.default_system_prompt;
    po.guard_action                  = cfg.guard_action;
    const auto guard                 = make_guard(cfg);
    po.guard                         = guard.get();
    std::optional<text::TokenId> eos = r.tokenizer->eos_id();
    if (!cfg.eos_token.empty()) {
        eos = r.tokenizer->token_to_id(cfg.eos_token);
        if (!eos) throw UsageError("data.eos_token: '" + cfg.eos_token + "' is not a token of the tokenizer");
    }
    if (!eos)
        throw UsageError("the tokenizer names no EOS token (TRL appends it to every completion): set data.eos_token");
    po.eos_id = *eos;
    r.data    = load_pref_dataset(cfg.data_path, *r.tokenizer, po);
    r.pad_id  = r.tokenizer->pad_id().value_or(*eos);

    // Model.
    const at::ScalarType dtype = r.device.is_cuda() ? at::kBFloat16 : at::kFloat;
    r.base_dir                 = cfg.model_path;
    if (!cfg.init_adapter.empty()) r.base_dir = merged_init_base(cfg, r.output);
    if (!cfg.resume_adapter.empty()) {
        r.lora               = peft::read_adapter_config(cfg.resume_adapter).lora;
        r.lora.quantize_base = cfg.quantize_base;
        r.model = peft::load_model_with_adapter(r.base_dir, cfg.resume_adapter, dtype, r.device, cfg.quantize_base);
    } else {
        r.lora.r              = cfg.lora_r;
        r.lora.alpha          = cfg.lora_alpha;
        r.lora.dropout        = cfg.lora_dropout;
        r.lora.use_rslora     = cfg.lora_rslora;
        r.lora.target_modules = cfg.target_modules;
        r.lora.quantize_base  = cfg.quantize_base;
        r.lora.seed           = static_cast<uint64_t>(cfg.train_seed);
        r.lora.validate();
        r.model = peft::load_model_for_lora(r.base_dir, r.lora, dtype, r.device);
    }
    r.lora.base_model_name_or_path = cfg.init_adapter.empty() ? cfg.model_path : r.base_dir;
    int64_t longest = 0, max_id = 0;
    for (const auto& ex : r.data.examples)
        for (const auto* sq : {&ex.chosen, &ex.rejected}) {
            longest = std::max<int64_t>(longest, static_cast<int64_t>(sq->ids.size()));
            for (int32_t id : sq->ids) max_id = std::max<int64_t>(max_id, id);
        }
    if (max_id >= r.model->config.vocab_size)
        throw UsageError("the pairs hold token id " + std::to_string(max_id) + " but the model's vocabulary has " +
                         std::to_string(r.model->config.vocab_size) +
                         " entries: model.tokenizer does not belong to model.path");
    if (longest > r.model->config.max_position_embeddings)
        throw UsageError("a pair row has " + std::to_string(longest) + " tokens, more than the model's context (" +
                         std::to_string(r.model->config.max_position_embeddings) + "): lower data.max_length");
    at::manual_seed(static_cast<uint64_t>(cfg.train_seed));
    r.model->model->gradient_checkpointing = cfg.activation_checkpointing;
    r.share_prompt                         = cfg.share_prompt && cfg.disable_dropout;
    // Dropout runs only in train mode; TRL's disable_dropout sets every dropout to 0, which is eval mode here.
    if (cfg.disable_dropout)
        r.model->eval();
    else
        r.model->train();

    auto params = peft::adapter_parameters(*r.model);
    if (params.empty()) throw UsageError("lora.target_modules: no adapter parameters to train");
    {
        at::NoGradGuard no_grad;  // every rank starts from rank 0's adapter
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

    const int64_t n        = static_cast<int64_t>(r.data.examples.size());
    const int64_t per_step = cfg.batch_size * r.opts.parallel.world_size;
    r.micro_per_epoch      = (n + per_step - 1) / per_step;
    r.steps_per_epoch      = std::max<int64_t>(1, (r.micro_per_epoch + cfg.grad_accum - 1) / cfg.grad_accum);
    r.total_steps = cfg.max_steps > 0 ? cfg.max_steps : static_cast<int64_t>(std::ceil(cfg.epochs * r.steps_per_epoch));
    r.schedule.name         = cfg.schedule;
    r.schedule.base_lr      = cfg.lr;
    r.schedule.total_steps  = r.total_steps;
    r.schedule.warmup_steps = resolve_warmup_steps(cfg.warmup_steps, cfg.warmup_ratio, r.total_steps);
    r.schedule.min_lr_rate  = cfg.min_lr_rate;
    r.schedule.validate();

    r.identity = {{"config", rpo_math_identity(r.opts.resolved)},
                  {"data", file_identity(cfg.data_path, true).at("xxh3")},
                  {"model", io::model_dir_identity(cfg.model_path)},
                  {"world_size", r.opts.parallel.world_size}};
    spdlog::info(
        "rpo: {} pairs ({} truncated, {} without completion, {} invalid skipped), {} micro-batches of {} -> {} "
        "optimizer steps per epoch; {} steps in all (warmup {}); loss {}; reference {}; device {}",
        n, r.data.stats.truncated, r.data.stats.dropped_empty, r.data.stats.invalid_skipped, r.micro_per_epoch,
        cfg.batch_size, r.steps_per_epoch, r.total_steps, r.schedule.warmup_steps, r.spec.describe(),
        cfg.precompute_ref ? "precomputed" : "adapters disabled", r.device.str());
}

// ---------------------------------------------------------------- data of one step

std::vector<const PrefExample*> micro_pairs(const Run& r, int64_t epoch, int64_t micro,
                                            const std::vector<int64_t>& order, std::vector<int64_t>* indices) {
    const int64_t n = static_cast<int64_t>(order.size());
    const int64_t B = r.cfg.batch_size;
    const int64_t begin =
        std::min(n, micro * B * r.opts.parallel.world_size + r.opts.parallel.rank * B);  // this rank's share
    const int64_t end = std::min(n, begin + B);
    std::vector<const PrefExample*> out;
    for (int64_t i = begin; i < end; ++i) {
        out.push_back(&r.data.examples[static_cast<size_t>(order[static_cast<size_t>(i)])]);
        if (indices) indices->push_back(order[static_cast<size_t>(i)]);
    }
    (void)epoch;
    return out;
}

// ---------------------------------------------------------------- the reference cache

void precompute_reference(Run& r) {
    const RpoConfig& cfg = r.cfg;
    const fs::path dir   = cfg.ref_cache_dir.empty() ? r.output / "ref_cache" : fs::path(cfg.ref_cache_dir);
    nlohmann::json key   = {
          {"data", file_identity(cfg.data_path, true).at("xxh3")},
          {"tokenizer", io::model_dir_identity(cfg.resolved_tokenizer_dir())},
          {"model", io::model_dir_identity(cfg.model_path)},
          {"init_adapter", cfg.init_adapter.empty() ? nlohmann::json(nullptr) : io::model_dir_identity(cfg.init_adapter)},
          {"quantize_base", cfg.quantize_base},
          {"device", r.device.is_cuda() ? "cuda" : "cpu"},
          {"length_normalized", r.spec.length_normalized()},
          {"share_prompt", r.share_prompt},
          {"data_options",
           {cfg.max_length, cfg.max_prompt_length, cfg.max_completion_length, cfg.truncation_mode, cfg.on_invalid,
            cfg.eos_token, cfg.default_system_prompt, cfg.guard_action}},
          {"pairs", r.data.examples.size()}};
    const std::string h = hash_bytes(key.dump());
    r.ref_cache_file    = dir / ("ref_logps-" + h + ".safetensors");
    const int64_t n     = static_cast<int64_t>(r.data.examples.size());
    if (fs::exists(r.ref_cache_file)) {
        io::SafetensorsFile f(r.ref_cache_file);
        if (f.contains("chosen") && f.contains("rejected") && f.tensor("chosen").numel() == n) {
            r.ref_chosen   = f.tensor("chosen").clone();
            r.ref_rejected = f.tensor("rejected").clone();
            spdlog::info("reference log-probs: reusing {}", r.ref_cache_file.string());
            return;
        }
    }
    const int64_t bs = cfg.precompute_ref_batch_size > 0 ? cfg.precompute_ref_batch_size : cfg.batch_size;
    spdlog::info("reference log-probs: one pass over {} pairs (batch {}) -> {}", n, bs, r.ref_cache_file.string());
    auto chosen = at::empty({n}, at::kFloat), rejected = at::empty({n}, at::kFloat);
    ProgressLog progress("reference log-probs", n, "pairs");
    for (int64_t i = 0; i < n; i += bs) {
        std::vector<const PrefExample*> pairs;
        for (int64_t j = i; j < std::min(n, i + bs); ++j) pairs.push_back(&r.data.examples[static_cast<size_t>(j)]);
        const auto batch   = collate_pairs(pairs, r.pad_id, r.device, r.share_prompt);
        const auto [c, rj] = reference_logps(*r.model, batch, r.spec, cfg.logits_chunk);
        chosen.narrow(0, i, batch.pairs).copy_(c.to(at::kCPU));
        rejected.narrow(0, i, batch.pairs).copy_(rj.to(at::kCPU));
        progress.update(i + batch.pairs);
    }
    fs::create_directories(dir);
    io::save_file(r.ref_cache_file, {{"chosen", chosen}, {"rejected", rejected}},
                  {{"format", "pt"}, {"key", key.dump()}});
    r.ref_chosen   = chosen;
    r.ref_rejected = rejected;
}

// ---------------------------------------------------------------- checkpoints

void save_checkpoint(Run& r) {
    const int64_t step = r.step;
    if (!r.main) {  // rank 0 writes it
        r.last_checkpoint = checkpoint_path(r.output, step);
        r.dist->barrier(std::chrono::hours(1));
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
                                      {"pairs_seen", r.pairs_seen},
                                      {"log_loss_sum", r.log_loss_sum},
                                      {"log_steps", r.log_steps},
                                      {"log_metrics", r.log_metrics.state()},
                                      {"last_loss", std::isfinite(r.last_loss) ? nlohmann::json(r.last_loss) : nullptr},
                                      {"last_metrics", r.last_metrics},
                                      {"ref_cache", r.ref_cache_file.filename().string()},
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
        if (!dir) return;
    } else {
        dir = fs::path(how);
        if (!is_complete_checkpoint(*dir))
            throw UsageError("--resume " + how + ": not a complete checkpoint folder (checkpoint-<step>/ with " +
                             kCheckpointComplete + ")");
    }
    auto state                = read_json_file(*dir / "trainer_state.json");
    const int64_t saved_world = state["identity"].value("world_size", int64_t{1});
    const int64_t world       = r.opts.parallel.world_size;
    if (saved_world != world) {
        const int64_t n = static_cast<int64_t>(r.data.examples.size());
        const int64_t B = r.cfg.batch_size, A = r.cfg.grad_accum;
        const int64_t saved_micro = (n + B * saved_world - 1) / (B * saved_world);
        check_world_size_change(
            *dir,
            {saved_world, world, "pairs", A * B, r.steps_per_epoch, std::max<int64_t>(1, (saved_micro + A - 1) / A),
             r.total_steps, state.at("step").get<int64_t>()},
            r.opts.parallel.allow_world_size_change);
        state["identity"]["world_size"] = world;
    }
    const std::string diff = describe_json_difference(state.at("identity"), r.identity);
    if (!diff.empty())
        throw UsageError("cannot resume from " + dir->string() + ": it belongs to a different run (" + diff +
                         "); use another output folder, or --resume never to start over");
    peft::load_adapter(*r.model, *dir / "adapter");
    load_optimizer_and_rng(*dir, *r.optimizer, state.at("optimizer_steps").get<int64_t>(), r.device);
    r.step         = state.at("step").get<int64_t>();
    r.tokens_seen  = state.at("tokens_seen").get<int64_t>();
    r.pairs_seen   = state.at("pairs_seen").get<int64_t>();
    r.log_loss_sum = state.at("log_loss_sum").get<double>();
    r.log_steps    = state.at("log_steps").get<int64_t>();
    r.log_metrics.restore(state.at("log_metrics"));
    if (!state.at("last_loss").is_null()) r.last_loss = state.at("last_loss").get<double>();
    r.last_metrics    = state.at("last_metrics");
    r.last_checkpoint = *dir;
    spdlog::info("resuming from {} (step {}/{})", dir->string(), r.step, r.total_steps);
}

}  // namespace

void request_rpo_stop() {
    g_stop.store(true);
}

// ---------------------------------------------------------------- the recipe

RpoResult run_rpo(const RpoConfig& cfg, const RpoOptions& opts) {
    Run r(cfg, opts);
    r.output = cfg.output;
    fs::create_directories(r.output);
    setup(r);
    if (cfg.precompute_ref) {
        // Rank 0 computes and caches the reference log-probs; the others then read the cache.
        if (!r.main) r.dist->barrier(std::chrono::hours(24));
        precompute_reference(r);
        if (r.main) r.dist->barrier(std::chrono::hours(24));
    }
    load_checkpoint(r);
    SignalScope signals;

    std::unique_ptr<MetricsFile> metrics;
    std::unique_ptr<TensorBoardWriter> tb;
    if (r.main) {
        metrics = std::make_unique<MetricsFile>(r.output / "metrics.jsonl", r.step);
        tb      = std::make_unique<TensorBoardWriter>(r.output);
    }
    dist::Distributed& dist  = *r.dist;
    const auto params  = r.optimizer->params();
    const auto start   = std::chrono::steady_clock::now();
    auto log_start     = start;
    int64_t log_tokens = 0, log_pairs = 0, steps_this_run = 0;
    bool interrupted    = false;
    const bool with_nll = r.spec.needs_nll();
    std::vector<int64_t> order;
    int64_t order_epoch = -1;
    // Data parallelism: the gradient mean of each step (null for one process; one with an explicit --backend checks the
    // path).
    const auto sync = dist::make_gradient_sync(dist, params, cfg.overlap_allreduce, cfg.allreduce_bucket_mb);
    while (r.step < r.total_steps) {
        // ======================== OPTIMIZER STEP BEGIN ========================
        const int64_t epoch = r.step / r.steps_per_epoch, local = r.step % r.steps_per_epoch;
        if (epoch != order_epoch) {
            order       = epoch_order(static_cast<int64_t>(r.data.examples.size()), cfg.shuffle, cfg.data_seed, epoch);
            order_epoch = epoch;
        }
        const int64_t m_begin = local * cfg.grad_accum;
        const int64_t m_end   = std::min((local + 1) * cfg.grad_accum, r.micro_per_epoch);
        const double n_micro  = static_cast<double>(std::max<int64_t>(1, m_end - m_begin));
        double step_loss      = 0;
        int64_t step_tokens = 0, step_pairs = 0;
        MetricsAccumulator step_metrics;
        for (int64_t m = m_begin; m < m_end; ++m) {
            std::vector<int64_t> idx;
            const auto pairs = micro_pairs(r, epoch, m, order, &idx);
            if (pairs.empty()) continue;
            const PrefBatch batch = collate_pairs(pairs, r.pad_id, r.device, r.share_prompt);
            at::Tensor ref_c, ref_r;
            if (cfg.precompute_ref) {
                const auto ix = at::tensor(idx, at::kLong);
                ref_c         = r.ref_chosen.index_select(0, ix).to(r.device);
                ref_r         = r.ref_rejected.index_select(0, ix).to(r.device);
            } else {
                std::tie(ref_c, ref_r) = reference_logps(*r.model, batch, r.spec, cfg.logits_chunk);
            }
            const PairLogps pol = pair_logps(*r.model, batch, r.spec, cfg.logits_chunk, with_nll);
            const auto out      = preference_loss(r.spec, pol.chosen, pol.rejected, ref_c, ref_r, pol.nll);
            // HF divides each micro-batch loss by the step's micro-batch count (TRL: model_accepts_loss_kwargs
            // is False); data parallelism then averages the gradients.
            if (sync && m + 1 == m_end) sync->arm();  // the last backward may start the all-reduce
            (out.loss / n_micro).backward();
            const MicroMetrics mm =
                make_micro_metrics(out, pol.chosen, pol.rejected, pol.nll, pol.logits_chosen, pol.logits_rejected);
            step_loss += mm.loss / n_micro;
            step_metrics.add(mm, batch.pair_types);
            r.log_metrics.add(mm, batch.pair_types);
            step_tokens += batch.real_tokens;
            step_pairs += batch.pairs;
        }
        if (sync) {
            // DDP's mean of the ranks' gradients (TRL: each rank's micro-batch loss is a mean over its pairs), the
            // logged sums in the same round.
            const auto v = sync->finish({step_loss, double(step_tokens), double(step_pairs)});
            {
                at::NoGradGuard no_grad;
                for (const auto& p : params) p.second.mutable_grad().div_(double(dist.world_size()));
            }
            step_loss   = v[0] / double(dist.world_size());
            step_tokens = static_cast<int64_t>(v[1]);
            step_pairs  = static_cast<int64_t>(v[2]);
        }
        const double grad_norm = clip_grad_norm(params, cfg.max_grad_norm);
        const double lr        = r.schedule.lr_at(r.step);
        const bool finite      = std::isfinite(step_loss) && std::isfinite(grad_norm);
        if (!finite && !cfg.skip_nonfinite)
            throw Error("step " + std::to_string(r.step + 1) + ": the loss or gradient norm is not finite (loss " +
                        std::to_string(step_loss) + ", grad norm " + std::to_string(grad_norm) + "); " +
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
        r.tokens_seen += step_tokens;
        r.pairs_seen += step_pairs;
        log_tokens += step_tokens;
        log_pairs += step_pairs;
        r.last_loss = step_loss;
        r.log_loss_sum += step_loss;
        ++r.log_steps;

        nlohmann::json step_record = step_metrics.averages(with_nll);
        average_over_ranks(dist, step_record, r.data.stats.pair_types);
        step_record["step"]      = r.step;
        step_record["loss"]      = step_loss;
        step_record["lr"]        = lr;
        step_record["grad_norm"] = grad_norm;
        r.last_metrics           = step_record;
        if (opts.on_step) opts.on_step(r.step, step_record);

        if (r.step % cfg.logging_steps == 0 || r.step == r.total_steps) {
            const auto now      = std::chrono::steady_clock::now();
            const double dt     = std::chrono::duration<double>(now - log_start).count();
            const double run_dt = std::chrono::duration<double>(now - start).count();
            const double tps    = dt > 0 ? static_cast<double>(log_tokens) / dt : 0.0;
            const double pps    = dt > 0 ? static_cast<double>(log_pairs) / dt : 0.0;
            const double eta =
                run_dt / static_cast<double>(steps_this_run) * static_cast<double>(r.total_steps - r.step);
            const double loss  = r.log_loss_sum / static_cast<double>(r.log_steps);
            const double ep    = static_cast<double>(r.step) / static_cast<double>(r.steps_per_epoch);
            nlohmann::json rec = r.log_metrics.averages(with_nll);
            average_over_ranks(dist, rec, r.data.stats.pair_types);
            auto num = [&](const char* k) {
                return rec.contains(k) && rec[k].is_number() ? rec[k].get<double>() : NAN;
            };
            spdlog::info(
                "step {}/{} | epoch {:.2f} | loss {:.4f} | acc {:.3f} | margin {:.4f} | nll {:.4f} | lr {:.3e} | "
                "grad_norm {:.4f} | {:.2f} pairs/s | {:.0f} tok/s | ETA {}",
                r.step, r.total_steps, ep, loss, num("rewards/accuracies"), num("rewards/margins"),
                with_nll ? num("nll_loss") : 0.0, lr, grad_norm, pps, tps, format_duration(eta));
            rec["step"]              = r.step;
            rec["epoch"]             = ep;
            rec["loss"]              = loss;
            rec["lr"]                = lr;
            rec["grad_norm"]         = grad_norm;
            rec["tokens_per_second"] = tps;
            rec["pairs_per_second"]  = pps;
            rec["tokens_seen"]       = r.tokens_seen;
            rec["peak_memory_gb"]    = peak_memory_bytes(r.device) / 1e9;  // CUDA: allocator peak; CPU: peak RSS
            rec["peak_memory_kind"]  = peak_memory_kind(r.device);
            if (dist.world_size() > 1) rec["world_size"] = dist.world_size();
            if (metrics) metrics->append(rec);
            for (const auto& [k, v] : rec.items()) {
                if (!tb || k == "step" || !v.is_number()) continue;
                const std::string tag = k == "lr" ? "train/learning_rate" : "train/" + k;
                tb->add_scalar(tag, v.get<double>(), r.step);
            }
            r.log_loss_sum = 0;
            r.log_steps    = 0;
            r.log_metrics.clear();
            log_tokens = 0;
            log_pairs  = 0;
            log_start  = now;
        }
        // Ranks agree on stopping: a signal may reach them at different steps.
        bool stop = g_stop.load();
        if (dist.world_size() > 1) stop = dist.all_reduce_scalars({stop ? 1.0 : 0.0}, dist::Reduce::max)[0] > 0;
        if (stop) {
            interrupted = true;
            break;
        }
        if (r.step % cfg.save_steps == 0 && r.step < r.total_steps) save_checkpoint(r);
    }

    RpoResult result;
    result.total_steps = r.total_steps;
    if (r.last_checkpoint.empty() || checkpoint_step(r.last_checkpoint) != r.step) save_checkpoint(r);
    result.steps           = r.step;
    result.last_checkpoint = r.last_checkpoint;
    if (interrupted) {
        result.interrupted = true;
        if (metrics) metrics->close();
        return result;
    }
    result.adapter_dir = r.output / "adapter";
    if (!r.main) {  // rank 0 writes the adapter, the merged model and the summary
        dist.barrier(std::chrono::hours(24));
        return result;
    }
    peft::save_adapter(*r.model, r.lora, result.adapter_dir);
    if (cfg.merge) {
        result.merged_dir = r.output / "merged";
        spdlog::info("merging the adapter into {} -> {}", r.base_dir, result.merged_dir.string());
        peft::merge_adapter_checkpoint(r.base_dir, result.adapter_dir, result.merged_dir);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    result.summary       = {{"steps", r.step},
                            {"total_steps", r.total_steps},
                            {"pairs_seen", r.pairs_seen},
                            {"tokens_seen", r.tokens_seen},
                            {"seconds_this_run", seconds},
                            {"loss", r.spec.describe()},
                            {"reference", cfg.precompute_ref ? "precomputed (" + r.ref_cache_file.string() + ")"
                                                             : std::string("policy with the adapter disabled")},
                            {"data", r.data.stats.to_json()},
                            {"final_train_loss", std::isfinite(r.last_loss) ? nlohmann::json(r.last_loss) : nullptr},
                            {"final_step_metrics", r.last_metrics},
                            {"adapter", result.adapter_dir.string()},
                            {"checkpoint", r.last_checkpoint.string()}};
    if (cfg.merge) result.summary["merged"] = result.merged_dir.string();
    if (dist.world_size() > 1) result.summary["world_size"] = dist.world_size();
    result.summary["peak_memory_gb"]   = peak_memory_bytes(r.device) / 1e9;
    result.summary["peak_memory_kind"] = peak_memory_kind(r.device);
    write_file_atomic(r.output / "summary.json", dump_json(result.summary, 2) + "\n");
    metrics->close();
    dist.barrier(std::chrono::hours(24));
    return result;
}

}  // namespace medllm::train

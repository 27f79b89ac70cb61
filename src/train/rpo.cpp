// `medllm rpo`: DPO / RPO with QLoRA or LoRA on preference pairs. Reads top-down like the cpt recipe: setup
// (tokenizer, pairs + guard, model + CPT adapter (merged into the base, or stacked frozen under the new one) + LoRA,
// optimizer, schedule, reference) -> resume -> the loop -> finish; what surrounds the loop is shared
// (include/medllm/train/recipe.h). The reference is the policy with its trainable adapter disabled
// (peft::disable_adapters: a stack's frozen adapters stay on), under no-grad, or log-probs precomputed once into
// <output>/ref_cache (reference.precompute).
#include "medllm/train/rpo.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <random>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/progress.h"
#include "medllm/io/model_files.h"
#include "medllm/io/safetensors.h"
#include "medllm/peft/adapter.h"
#include "medllm/train/pair_data.h"
#include "medllm/train/preference_loss.h"

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
    s.field("data.tokenization", &C::tokenization,
            "separate: prompt and completions tokenized on their own (TRL v0.12-v0.28, the TRL of the paper's "
            "time); joint: prompt + completion tokenized whole and split where the tokens diverge (TRL >= v0.29)")
        .one_of({"separate", "joint"});
    s.field("data.shuffle", &C::shuffle, "shuffle the pairs every epoch (seeded by data.seed + epoch)");
    s.field("data.seed", &C::data_seed, "pair order").range(0, 9e15);
    s.field("data.eos_token", &C::eos_token, "EOS token text when the tokenizer names none ('' = its own)");
    s.field("data.default_system_prompt", &C::default_system_prompt,
            "chat rows without a system turn get this one (auto = the tokenizer's, as Qwen2.5's template)");
    data::add_guard_fields(
        s, &C::guard, "the prompts",
        "a prompt holding an exam question: refuse (exit 2 naming file:line), drop the pair, or warn");
    add_lora_fields(s, &C::lora,
                    "the CPT adapter the policy starts from (the paper: RPO on the CPT weights); '' = the base alone");
    s.field("lora.merge_init_adapter", &C::merge_init_adapter,
            "true: merge init_adapter into the base before quantizing (<output>/init_merged, bf16), then a fresh "
            "LoRA; the reference is the merged model. false (stacked): init_adapter stays frozen, as trained, "
            "under the fresh LoRA on the unmerged base (no re-quantization); the reference is base + init_adapter; "
            "<output>/adapter is the stack (PEFT's multi-adapter layout + adapter_stack.json)");
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
    add_optim_fields(s, &C::optim, "peak learning rate (TRL default 1e-6)");
    add_schedule_fields(s, &C::schedule);
    add_training_fields(s, &C::training, {"the pairs", "pairs (2x rows in the forward)", "1"});
    s.field("training.disable_dropout", &C::disable_dropout,
            "dropout off in policy and reference, LoRA dropout included (TRL's default)");
    s.field("training.share_prompt", &C::share_prompt,
            "chosen and rejected of a pair in one row, their common prefix (the prompt) computed once, the "
            "rejected tokens masked from chosen: the same log-probs for ~30% fewer tokens on prompt-heavy data, but on "
            "the CPU the masked attention "
            "costs more than that saves (measured, docs/rpo.md) "
            "(used only with training.disable_dropout, so both see one dropout mask never)");
    s.field("training.logits_chunk", &C::logits_chunk,
            "completion positions per lm_head chunk: bounds the fp32 logits to chunk x vocab")
        .range(1, 1 << 24);
    s.strict_sections({"data", "eval_guard", "model", "lora", "loss", "reference", "optim", "schedule", "training"});
}

nlohmann::json rpo_math_identity(const std::vector<ResolvedEntry>& resolved) {
    return run_identity_config(resolved,
                               {"data.path", "reference.cache_dir", "reference.batch_size", "training.logits_chunk"});
}

namespace {

// Data parallelism: the mean over ranks of the logged preference metrics (TRL's names; a per-pair-type value is
// the mean of the ranks that saw that type). Every rank builds the same key list from the whole dataset's types.
void average_over_ranks(dist::Distributed& dist, nlohmann::json& rec,
                        const std::map<std::string, int64_t>& pair_types) {
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

// ---------------------------------------------------------------- setup

struct Pairs {
    std::unique_ptr<text::Tokenizer> tokenizer;
    PrefDataset data;
    int32_t pad_id = 0;
};

Pairs load_pairs(const RpoConfig& cfg) {
    if (fs::is_directory(cfg.data_path))
        throw UsageError("data.path: " + cfg.data_path + " is a folder; give the pairs file (e.g. " +
                         (fs::path(cfg.data_path) / "pairs.jsonl").string() + ")");
    if (!fs::is_regular_file(cfg.data_path)) throw UsageError("data.path: no such file " + cfg.data_path);
    Pairs p;
    p.tokenizer = text::Tokenizer::from_dir(cfg.resolved_tokenizer_dir());
    PrefDataOptions po;
    po.max_length                    = cfg.max_length;
    po.max_prompt_length             = cfg.max_prompt_length;
    po.max_completion_length         = cfg.max_completion_length;
    po.truncation_mode               = cfg.truncation_mode;
    po.tokenization                  = cfg.tokenization;
    po.on_invalid                    = cfg.on_invalid;
    po.default_system_prompt         = cfg.default_system_prompt;
    po.guard_action                  = cfg.guard.action;
    const auto guard                 = data::make_eval_guard(cfg.guard, "the prompts are");
    po.guard                         = guard.get();
    std::optional<text::TokenId> eos = p.tokenizer->eos_id();
    if (!cfg.eos_token.empty()) {
        eos = p.tokenizer->token_to_id(cfg.eos_token);
        if (!eos) throw UsageError("data.eos_token: '" + cfg.eos_token + "' is not a token of the tokenizer");
    }
    if (!eos)
        throw UsageError("the tokenizer names no EOS token (TRL appends it to every completion): set data.eos_token");
    po.eos_id = *eos;
    p.data    = load_pref_dataset(cfg.data_path, *p.tokenizer, po);
    p.pad_id  = p.tokenizer->pad_id().value_or(*eos);
    return p;
}

// <output>/init_merged: the base with the CPT adapter merged in (bf16), made once and reused while the inputs
// are the same.
std::string merged_init_base(const RpoConfig& c, const fs::path& output) {
    const fs::path dir         = output / "init_merged";
    const nlohmann::json ident = {{"base", io::model_dir_identity(c.model_path)},
                                  {"adapter", peft::adapter_identity(c.lora.init_adapter)}};
    const fs::path marker      = dir / "medllm_merge.json";
    if (fs::exists(marker)) {
        try {
            if (describe_json_difference(read_json_file(marker), ident).empty()) return dir.string();
        } catch (const Error&) {
        }
    }
    spdlog::info("merging the CPT adapter {} into {} -> {} (lora.merge_init_adapter)", c.lora.init_adapter,
                 c.model_path, dir.string());
    fs::remove_all(dir);
    peft::merge_adapter_checkpoint(c.model_path, c.lora.init_adapter, dir);
    write_file_atomic(marker, dump_json(ident, 2) + "\n");
    return dir.string();
}

// lora.merge_init_adapter false: the CPT adapter (or the stack of earlier rounds) frozen under the fresh trainable
// adapter, on the base as the CPT run saw it (NF4 from the same checkpoint with lora.quantize_base), so nothing is
// re-quantized. The trainable adapter is named "rpo" (rpo_2, rpo_3, ... when the stack already has that name).
std::vector<std::string> stack_init_adapter(Session& s, const RpoConfig& cfg) {
    std::vector<std::string> names;
    for (const auto& e : peft::read_adapter_stack(cfg.lora.init_adapter)) names.push_back(e.name);
    std::string name = "rpo";
    for (int k = 2; std::find(names.begin(), names.end(), name) != names.end(); ++k) name = "rpo_" + std::to_string(k);
    peft::set_trainable_adapter_name(*s.model, name);  // first: the frozen stack has a "default"
    s.lora.adapter_name = name;
    names               = peft::add_frozen_adapters(*s.model, cfg.lora.init_adapter, cfg.model_path);
    names.push_back(name);
    spdlog::info("rpo: {} stacked frozen under the new adapter '{}' (lora.merge_init_adapter: false)",
                 cfg.lora.init_adapter, name);
    return names;
}

// The largest token id and the longest row of the pairs (checked against the model).
std::pair<int64_t, int64_t> max_id_and_longest(const PrefDataset& data) {
    int64_t longest = 0, max_id = 0;
    for (const auto& ex : data.examples)
        for (const auto* sq : {&ex.chosen, &ex.rejected}) {
            longest = std::max<int64_t>(longest, static_cast<int64_t>(sq->ids.size()));
            for (int32_t id : sq->ids) max_id = std::max<int64_t>(max_id, id);
        }
    return {max_id, longest};
}

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

// This rank's pairs of micro-batch `micro` (ranks take consecutive batch_size slices of each world-wide batch).
std::vector<const PrefExample*> micro_pairs(const Pairs& p, const Session& s, int64_t batch_size, int64_t micro,
                                            const std::vector<int64_t>& order, std::vector<int64_t>* indices) {
    const int64_t n     = static_cast<int64_t>(order.size());
    const int64_t begin = std::min(n, micro * batch_size * s.world_size() + s.dist->rank() * batch_size);
    const int64_t end   = std::min(n, begin + batch_size);
    std::vector<const PrefExample*> out;
    for (int64_t i = begin; i < end; ++i) {
        out.push_back(&p.data.examples[static_cast<size_t>(order[static_cast<size_t>(i)])]);
        if (indices) indices->push_back(order[static_cast<size_t>(i)]);
    }
    return out;
}

// ---------------------------------------------------------------- the reference cache

struct Reference {
    at::Tensor chosen, rejected;  // [N] fp32 on the CPU (reference.precompute), undefined otherwise
    fs::path cache_file;
};

// One reference pass over every pair, cached on disk under a key of everything that decides the numbers, and
// reused by later runs and resumes.
Reference precompute_reference(const RpoConfig& cfg, const Session& s, const Pairs& p, const PreferenceLossSpec& spec,
                               bool share_prompt, bool stacked) {
    Reference ref;
    const fs::path dir = cfg.ref_cache_dir.empty() ? s.output / "ref_cache" : fs::path(cfg.ref_cache_dir);
    nlohmann::json key = {
        {"data", file_identity(cfg.data_path, true).at("xxh3")},
        {"tokenizer", io::model_dir_identity(cfg.resolved_tokenizer_dir())},
        {"model", io::model_dir_identity(cfg.model_path)},
        {"init_adapter",
         cfg.lora.init_adapter.empty() ? nlohmann::json(nullptr) : peft::adapter_identity(cfg.lora.init_adapter)},
        {"quantize_base", cfg.lora.quantize_base},
        {"device", s.device.is_cuda() ? "cuda" : "cpu"},
        {"length_normalized", spec.length_normalized()},
        {"share_prompt", share_prompt},
        {"data_options",
         {cfg.max_length, cfg.max_prompt_length, cfg.max_completion_length, cfg.truncation_mode, cfg.on_invalid,
          cfg.eos_token, cfg.default_system_prompt, cfg.guard.action, cfg.tokenization}},
        {"pairs", p.data.examples.size()}};
    if (stacked) key["init_adapter_mode"] = "stack";  // another reference model (merge mode keeps its old keys)
    ref.cache_file  = dir / ("ref_logps-" + hash_bytes(key.dump()) + ".safetensors");
    const int64_t n = static_cast<int64_t>(p.data.examples.size());
    // The log-probs' own checksum sits in the file's metadata: a damaged cache is never reused (it would train
    // against wrong reference log-probs); it is computed again.
    auto digest = [](const at::Tensor& c, const at::Tensor& r) {
        const auto bytes = [](const at::Tensor& t) {
            const auto x = t.contiguous();
            return std::string(static_cast<const char*>(x.data_ptr()), static_cast<size_t>(x.nbytes()));
        };
        return hash_bytes(bytes(c) + bytes(r));
    };
    if (fs::exists(ref.cache_file)) {
        std::string problem;
        try {
            io::SafetensorsFile f(ref.cache_file);
            if (!f.contains("chosen") || !f.contains("rejected") || f.tensor("chosen").numel() != n ||
                f.tensor("rejected").numel() != n) {
                problem = "it does not hold " + std::to_string(n) + " chosen and rejected log-probs";
            } else {
                ref.chosen      = f.tensor("chosen").clone();
                ref.rejected    = f.tensor("rejected").clone();
                const auto meta = f.metadata();
                if (!meta.count("xxh3") || meta.at("xxh3") != digest(ref.chosen, ref.rejected))
                    problem = "its log-probs do not match their checksum";
            }
        } catch (const std::exception& e) {
            problem = e.what();
        }
        if (problem.empty()) {
            spdlog::info("reference log-probs: reusing {}", ref.cache_file.string());
            return ref;
        }
        spdlog::warn("reference cache {} is damaged ({}); computing it again", ref.cache_file.string(), problem);
    }
    const int64_t bs = cfg.precompute_ref_batch_size > 0 ? cfg.precompute_ref_batch_size : cfg.training.batch_size;
    spdlog::info("reference log-probs: one pass over {} pairs (batch {}) -> {}", n, bs, ref.cache_file.string());
    auto chosen = at::empty({n}, at::kFloat), rejected = at::empty({n}, at::kFloat);
    ProgressLog progress("reference log-probs", n, "pairs");
    for (int64_t i = 0; i < n; i += bs) {
        std::vector<const PrefExample*> pairs;
        for (int64_t j = i; j < std::min(n, i + bs); ++j) pairs.push_back(&p.data.examples[static_cast<size_t>(j)]);
        const auto batch   = collate_pairs(pairs, p.pad_id, s.device, share_prompt);
        const auto [c, rj] = reference_logps(*s.model, batch, spec, cfg.logits_chunk);
        chosen.narrow(0, i, batch.pairs).copy_(c.to(at::kCPU));
        rejected.narrow(0, i, batch.pairs).copy_(rj.to(at::kCPU));
        progress.update(i + batch.pairs);
    }
    fs::create_directories(dir);
    io::save_file(ref.cache_file, {{"chosen", chosen}, {"rejected", rejected}},
                  {{"format", "pt"}, {"key", key.dump()}, {"xxh3", digest(chosen, rejected)}});
    ref.chosen   = chosen;
    ref.rejected = rejected;
    return ref;
}

// Forward and backward of one micro-batch of pairs: the reference log-probs (cached or the policy with its adapter
// off), the policy's, the preference loss; backward of loss / n_micro (HF divides each micro-batch loss by the step's
// micro-batch count, TRL: model_accepts_loss_kwargs is False; data parallelism then averages the gradients).
MicroMetrics forward_backward_pairs(const RpoConfig& cfg, Session& s, const PreferenceLossSpec& spec,
                                    const PrefBatch& batch, const Reference& ref, const std::vector<int64_t>& idx,
                                    double n_micro, bool with_nll) {
    at::Tensor ref_c, ref_r;
    if (cfg.precompute_ref) {
        const auto ix = at::tensor(idx, at::kLong);
        ref_c         = ref.chosen.index_select(0, ix).to(s.device);
        ref_r         = ref.rejected.index_select(0, ix).to(s.device);
    } else {
        std::tie(ref_c, ref_r) = reference_logps(*s.model, batch, spec, cfg.logits_chunk);
    }
    const PairLogps pol = pair_logps(*s.model, batch, spec, cfg.logits_chunk, with_nll);
    const auto out      = preference_loss(spec, pol.chosen, pol.rejected, ref_c, ref_r, pol.nll);
    (out.loss / n_micro).backward();
    return make_micro_metrics(out, pol.chosen, pol.rejected, pol.nll, pol.logits_chosen, pol.logits_rejected);
}

// The logging window's line and record (TRL's metric names, each the mean over the window's micro-batches).
void log_window(Session& s, LoopTools& tools, MetricsAccumulator& window_metrics, const Update& u, bool with_nll,
                const std::map<std::string, int64_t>& pair_types) {
    const auto w       = tools.window();
    const double loss  = s.log_loss_sum / static_cast<double>(std::max<int64_t>(1, s.log_steps));
    nlohmann::json rec = window_metrics.averages(with_nll);
    average_over_ranks(*s.dist, rec, pair_types);
    auto num = [&](const char* k) { return rec.contains(k) && rec[k].is_number() ? rec[k].get<double>() : NAN; };
    spdlog::info(
        "step {}/{} | epoch {:.2f} | loss {:.4f} | acc {:.3f} | margin {:.4f} | nll {:.4f} | lr {:.3e} | "
        "grad_norm {:.4f} | {:.2f} pairs/s | {:.0f} tok/s | ETA {}",
        s.step, s.total_steps, s.epoch(), loss, num("rewards/accuracies"), num("rewards/margins"),
        with_nll ? num("nll_loss") : 0.0, u.lr, u.grad_norm, w.units_per_second, w.tokens_per_second,
        format_duration(w.eta_seconds));
    rec["step"]              = s.step;
    rec["epoch"]             = s.epoch();
    rec["loss"]              = loss;
    rec["lr"]                = u.lr;
    rec["grad_norm"]         = u.grad_norm;
    rec["tokens_per_second"] = w.tokens_per_second;
    rec["pairs_per_second"]  = w.units_per_second;
    rec["tokens_seen"]       = s.tokens_seen;
    rec["peak_memory_gb"]    = peak_memory_bytes(s.device) / 1e9;  // CUDA: allocator peak; CPU: peak RSS
    rec["peak_memory_kind"]  = peak_memory_kind(s.device);
    if (s.world_size() > 1) rec["world_size"] = s.world_size();
    tools.write(rec);
    window_metrics.clear();
}

}  // namespace

// ---------------------------------------------------------------- the recipe

TrainResult run_rpo(const RpoConfig& cfg, const TrainOptions& opts) {
    const TrainingSettings& t     = cfg.training;
    Session s                     = open_session(cfg.output, t, opts);
    const PreferenceLossSpec spec = parse_loss_spec(cfg.loss_type, cfg.loss_weights, cfg.beta, cfg.label_smoothing,
                                                    cfg.rpo_alpha, cfg.nll_normalization, cfg.nll_ignore_token_zero);
    require_model_dir(cfg.model_path, "model.path");
    require_adapter_dir(cfg.lora.init_adapter, "lora.init_adapter");
    require_adapter_dir(cfg.resume_adapter, "lora.resume_adapter");
    if (!cfg.lora.init_adapter.empty() && !cfg.resume_adapter.empty())
        throw UsageError(
            "lora.init_adapter and lora.resume_adapter: set one (the CPT adapter to start from, or an adapter to "
            "keep training)");
    const bool stacked         = !cfg.lora.init_adapter.empty() && !cfg.merge_init_adapter;
    Pairs pairs                = load_pairs(cfg);
    const std::string base_dir = cfg.lora.init_adapter.empty() || stacked
                                     ? cfg.model_path
                                     : merged_init_base(cfg, s.output);  // the model under the LoRA (and the stack)
    load_policy(s, base_dir, cfg.lora, t.seed, cfg.resume_adapter);
    const auto stack             = stacked ? stack_init_adapter(s, cfg) : std::vector<std::string>{};
    const auto [max_id, longest] = max_id_and_longest(pairs.data);
    check_fits_model(s, "the pairs", max_id, longest,
                     "a pair row of " + std::to_string(longest) + " tokens (lower data.max_length)");
    const bool share_prompt = cfg.share_prompt && cfg.disable_dropout;
    const int64_t n         = static_cast<int64_t>(pairs.data.examples.size());
    prepare_training(s, cfg.optim, cfg.schedule, t,
                     (n + t.batch_size * s.world_size() - 1) / (t.batch_size * s.world_size()));
    if (const int64_t per_micro = t.batch_size * s.world_size(); s.world_size() > 1 && n % per_micro != 0 && s.main)
        spdlog::warn(
            "{} pairs do not fill the last micro-batch of {} ranks x {} pairs: the ranks take {} of them, so the "
            "last step averages the ranks' losses over unequal shares (DDP's mean) and differs from one process "
            "with {}x the batch",
            n, s.world_size(), t.batch_size, n % per_micro, s.world_size());
    // Dropout runs only in train mode; TRL's disable_dropout sets every dropout to 0, which is eval mode here.
    if (cfg.disable_dropout)
        s.model->eval();
    else
        s.model->train();
    s.identity = {{"config", rpo_math_identity(opts.resolved)},
                  {"data", file_identity(cfg.data_path, true).at("xxh3")},
                  {"model", io::model_dir_identity(cfg.model_path)},
                  {"world_size", s.world_size()}};
    spdlog::info(
        "rpo: {} pairs ({} truncated, {} without completion, {} invalid skipped), {} micro-batches of {} -> {} "
        "optimizer steps per epoch; {} steps in all (warmup {}); loss {}; reference {}; device {}",
        n, pairs.data.stats.truncated, pairs.data.stats.dropped_empty, pairs.data.stats.invalid_skipped,
        s.micro_per_epoch, t.batch_size, s.steps_per_epoch, s.total_steps, s.schedule.warmup_steps, spec.describe(),
        cfg.precompute_ref ? "precomputed"
        : stacked          ? "trainable adapter disabled, stack on"
                           : "adapters disabled",
        s.device.str());
    Reference ref;
    if (cfg.precompute_ref) {  // rank 0 computes and caches the reference log-probs; the others then read the cache
        if (!s.main) s.dist->barrier(std::chrono::hours(24));
        ref = precompute_reference(cfg, s, pairs, spec, share_prompt, stacked);
        if (s.main) s.dist->barrier(std::chrono::hours(24));
    }

    int64_t pairs_seen = 0;
    MetricsAccumulator window_metrics;  // the logging window's micro-batch metrics (checkpointed)
    nlohmann::json last_metrics;
    s.recipe_state = [&] {
        return nlohmann::json{{"pairs_seen", pairs_seen},
                              {"log_metrics", window_metrics.state()},
                              {"last_metrics", last_metrics},
                              {"ref_cache", ref.cache_file.filename().string()}};
    };
    const WorldSizeUnits units{"pairs", t.grad_accum * t.batch_size, [&](int64_t world) {
                                   const int64_t micro = (n + t.batch_size * world - 1) / (t.batch_size * world);
                                   return std::max<int64_t>(1, (micro + t.grad_accum - 1) / t.grad_accum);
                               }};
    if (const auto state = resume_from_checkpoint(s, opts.resume, opts.parallel.allow_world_size_change, units)) {
        pairs_seen = state->at("pairs_seen").get<int64_t>();
        window_metrics.restore(state->at("log_metrics"));
        last_metrics = state->at("last_metrics");
    }

    LoopTools tools(s, t);
    auto* sync          = tools.sync();
    const bool with_nll = spec.needs_nll();
    std::vector<int64_t> order;
    int64_t order_epoch = -1;
    bool interrupted    = false;
    while (s.step < s.total_steps) {
        // ======================== OPTIMIZER STEP BEGIN ========================
        const int64_t epoch = s.step / s.steps_per_epoch, local = s.step % s.steps_per_epoch;
        if (epoch != order_epoch) {
            order       = epoch_order(n, cfg.shuffle, cfg.data_seed, epoch);
            order_epoch = epoch;
        }
        const int64_t m_begin = local * t.grad_accum, m_end = std::min((local + 1) * t.grad_accum, s.micro_per_epoch);
        const double n_micro = static_cast<double>(std::max<int64_t>(1, m_end - m_begin));
        double step_loss     = 0;
        int64_t step_tokens = 0, step_pairs = 0;
        MetricsAccumulator step_metrics;
        for (int64_t m = m_begin; m < m_end; ++m) {
            std::vector<int64_t> idx;
            const auto micro = micro_pairs(pairs, s, t.batch_size, m, order, &idx);
            if (micro.empty()) continue;
            const PrefBatch batch = collate_pairs(micro, pairs.pad_id, s.device, share_prompt);
            if (sync && m + 1 == m_end) sync->arm();  // the last backward may start the all-reduce
            const MicroMetrics mm = forward_backward_pairs(cfg, s, spec, batch, ref, idx, n_micro, with_nll);
            step_loss += mm.loss / n_micro;
            step_metrics.add(mm, batch.pair_types);
            window_metrics.add(mm, batch.pair_types);
            step_tokens += batch.real_tokens;
            step_pairs += batch.pairs;
        }
        bool stop = tools.stop_requested();
        if (sync) {
            // DDP's mean of the ranks' gradients (TRL: each rank's micro-batch loss is a mean over its pairs), the
            // logged sums and the stop flag in the same round (a signal may reach the ranks at different steps).
            const auto v = sync->finish({step_loss, double(step_tokens), double(step_pairs), stop ? 1.0 : 0.0});
            at::NoGradGuard no_grad;
            for (const auto& p : s.optimizer->params()) p.second.mutable_grad().div_(double(s.world_size()));
            step_loss   = v[0] / double(s.world_size());
            step_tokens = static_cast<int64_t>(v[1]);
            step_pairs  = static_cast<int64_t>(v[2]);
            stop        = v[3] > 0;
        }
        const Update u = apply_update(s, step_loss, cfg.optim.max_grad_norm, t.skip_nonfinite);
        // ======================== OPTIMIZER STEP END ==========================
        tools.add(step_tokens, step_pairs);
        pairs_seen += step_pairs;
        nlohmann::json step_record = step_metrics.averages(with_nll);
        average_over_ranks(*s.dist, step_record, pairs.data.stats.pair_types);
        step_record["step"]      = s.step;
        step_record["loss"]      = step_loss;
        step_record["lr"]        = u.lr;
        step_record["grad_norm"] = u.grad_norm;
        last_metrics             = step_record;
        if (opts.on_step) opts.on_step(s.step, step_record);
        if (!sync) stop = tools.stop_requested();  // one process: a signal during this step stops after it
        if (tools.log_due()) log_window(s, tools, window_metrics, u, with_nll, pairs.data.stats.pair_types);
        if (stop) {
            interrupted = true;
            break;
        }
        if (s.step % t.save_steps == 0 && s.step < s.total_steps) save_checkpoint(s);
        tools.show_live(step_loss, u.lr);
    }
    return finish_run(s, tools, interrupted, t.merge, base_dir, nullptr, [&] {
        nlohmann::json summary{{"pairs_seen", pairs_seen},
                               {"loss", spec.describe()},
                               {"reference", cfg.precompute_ref ? "precomputed (" + ref.cache_file.string() + ")"
                                             : stacked ? std::string("policy with the trainable adapter disabled "
                                                                     "(base + the frozen stack)")
                                                       : std::string("policy with the adapter disabled")},
                               {"data", pairs.data.stats.to_json()},
                               {"final_step_metrics", last_metrics}};
        if (stacked) summary["adapter_stack"] = stack;  // <output>/adapter holds them all, bottom first
        return summary;
    });
}

}  // namespace medllm::train

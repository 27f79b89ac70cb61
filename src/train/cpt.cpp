// `medllm cpt`: continued pretraining with QLoRA / LoRA on the packed corpus. Reads top-down like torchtune's
// recipes: setup (corpus -> packed rows, model + LoRA, optimizer, schedule) -> resume -> the loop -> finish; what
// surrounds the loop is shared with rpo (include/medllm/train/recipe.h).
#include "medllm/train/cpt.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/io/model_files.h"
#include "medllm/train/step.h"

namespace fs = std::filesystem;

namespace medllm::train {

// ---------------------------------------------------------------- config

void add_cpt_fields(ConfigSchema<CptConfig>& s) {
    using C = CptConfig;
    data::add_corpus_fields(s);
    add_lora_fields(s, &C::lora, "continue from this PEFT adapter (its r/alpha/targets are used)");
    add_optim_fields(s, &C::optim, "peak learning rate (QLoRA paper: 1e-4 for 33B/65B)");
    add_schedule_fields(s, &C::schedule);
    add_training_fields(s, &C::training, {"the corpus", "rows of data.seq_len", "2"});
    s.field("training.eval_steps", &C::eval_steps, "steps between validation passes (0 = start and end only)")
        .range(0, 9e15);
    s.field("training.eval_on_start", &C::eval_on_start, "validation loss before the first step (fresh runs)");
    s.strict_sections({"data", "eval_guard", "model", "lora", "optim", "schedule", "training"});
}

nlohmann::json math_identity(const std::vector<ResolvedEntry>& resolved) {
    return run_identity_config(
        resolved, {"data.cache_dir", "data.threads", "data.shard_mb", "training.eval_steps", "training.eval_on_start"});
}

namespace {

// ---------------------------------------------------------------- setup

struct Corpus {
    std::unique_ptr<data::TokenCache> cache;
    std::unique_ptr<data::PackedDataset> train, validation;  // this rank's rows; validation: every row (or none)
    nlohmann::json eval_history = nlohmann::json::array();   // one record per validation pass (checkpointed)
};

// The token cache (built or reused: rank 0 builds it while the others wait) and the packed rows.
Corpus load_corpus(const CptConfig& cfg, const Session& s) {
    Corpus c;
    if (!s.main) s.dist->barrier(std::chrono::hours(24));
    data::prepare_corpus(cfg);
    if (s.main) s.dist->barrier(std::chrono::hours(24));
    c.cache               = std::make_unique<data::TokenCache>(cfg.resolved_cache_dir());
    auto train_opts       = data::packing_options(cfg, data::Split::train);
    train_opts.rank       = s.dist->rank();
    train_opts.world_size = s.world_size();
    c.train               = std::make_unique<data::PackedDataset>(*c.cache, train_opts);
    if (cfg.validation_fraction > 0 || cfg.validation_documents > 0) {
        auto val_opts    = data::packing_options(cfg, data::Split::validation);
        val_opts.shuffle = false;
        try {
            c.validation = std::make_unique<data::PackedDataset>(*c.cache, val_opts);
        } catch (const Error& e) {
            spdlog::warn("no validation rows ({}); validation loss is skipped", e.what());
        }
    }
    return c;
}

uint32_t max_token_id(const data::TokenCache& cache) {
    uint32_t max_id = 0;
    for (std::size_t d = 0; d < cache.num_documents(); ++d) {
        const uint32_t* t = cache.tokens(d);
        for (uint32_t i = 0; i < cache.document(d).length; ++i) max_id = std::max(max_id, t[i]);
    }
    return max_id;
}

// The micro-batches of optimizer step `step`: a pure function of the step (epoch = step / steps_per_epoch; the
// epoch's last step may hold fewer micro-batches and its last micro-batch fewer rows, as HF's dataloader).
std::vector<MicroBatch> step_batches(const Corpus& c, const Session& s, const TrainingSettings& t, int64_t step) {
    const int64_t epoch = step / s.steps_per_epoch, local = step % s.steps_per_epoch;
    const int64_t rows = c.train->rows_per_epoch();
    std::vector<MicroBatch> out;
    std::vector<data::PackedRow> buf;
    for (int64_t m = local * t.grad_accum; m < std::min((local + 1) * t.grad_accum, s.micro_per_epoch); ++m) {
        const int64_t begin = m * t.batch_size, end = std::min(begin + t.batch_size, rows);
        buf.assign(static_cast<size_t>(end - begin), {});
        for (int64_t i = begin; i < end; ++i) c.train->row(epoch, i, buf[static_cast<size_t>(i - begin)]);
        out.push_back(make_micro_batch(buf, s.device));
    }
    return out;
}

// The validation loss over every validation row (each rank takes every world_size-th row; the sums add up).
void validate(Corpus& c, const Session& s, LoopTools& tools, int64_t batch_size) {
    if (!c.validation) return;
    const auto t0 = std::chrono::steady_clock::now();
    auto ev       = evaluate(*s.model, *c.validation, batch_size, s.device, s.dist->rank(), s.world_size());
    if (s.world_size() > 1) {
        const auto sums = s.dist->all_reduce_scalars({ev.loss_sum, static_cast<double>(ev.tokens)});
        ev.loss_sum     = sums[0];
        ev.tokens       = static_cast<int64_t>(sums[1]);
        ev.loss         = ev.tokens > 0 ? ev.loss_sum / static_cast<double>(ev.tokens) : 0.0;
        ev.perplexity   = std::exp(ev.loss);
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    spdlog::info("eval step {}/{} | val_loss {:.4f} | val_ppl {:.2f} | {} tokens | {:.1f} s", s.step, s.total_steps,
                 ev.loss, ev.perplexity, ev.tokens, secs);
    const nlohmann::json rec = {
        {"step", s.step}, {"eval_loss", ev.loss}, {"eval_perplexity", ev.perplexity}, {"eval_tokens", ev.tokens}};
    c.eval_history.push_back(rec);
    tools.append(rec);
    tools.add_scalar("eval/loss", ev.loss);
    tools.add_scalar("eval/perplexity", ev.perplexity);
}

// The logging window's line and record (HF's names; MFU only where the device's peak is known: 6·N FLOPs per
// token, tokens/s summed over the ranks).
void log_window(Session& s, LoopTools& tools, const Update& u, double comm_seconds) {
    const auto w          = tools.window();
    const double loss     = s.log_loss_sum / static_cast<double>(std::max<int64_t>(1, s.log_steps));
    const auto peak_flops = device_peak_flops(s.device);
    StepReport report;
    report.step = s.step, report.total_steps = s.total_steps, report.epoch = s.epoch(), report.loss = loss;
    report.lr = u.lr, report.grad_norm = u.grad_norm, report.tokens_per_second = w.tokens_per_second;
    report.eta_seconds    = w.eta_seconds;
    report.peak_memory_gb = peak_memory_bytes(s.device) / 1e9;  // CUDA: allocator peak; CPU: peak RSS
    if (peak_flops)
        report.mfu = model_flops_utilization(matmul_parameters(s.model->config),
                                             w.tokens_per_second / double(s.world_size()), *peak_flops);
    spdlog::info("{}", format_log_line(report));
    nlohmann::json rec = {{"step", s.step},
                          {"epoch", report.epoch},
                          {"loss", loss},
                          {"lr", u.lr},
                          {"grad_norm", u.grad_norm},
                          {"tokens_per_second", w.tokens_per_second},
                          {"tokens_seen", s.tokens_seen},
                          {"peak_memory_gb", report.peak_memory_gb},
                          {"peak_memory_kind", peak_memory_kind(s.device)}};
    if (report.mfu) rec["mfu"] = *report.mfu;
    if (s.world_size() > 1) {
        rec["world_size"] = s.world_size();
        // Seconds per step spent in the gradient all-reduce (the slowest rank's, which everyone waited for).
        rec["allreduce_seconds_per_step"] =
            s.dist->all_reduce_scalars({comm_seconds / double(std::max<int64_t>(1, w.steps))}, dist::Reduce::max)[0];
    }
    tools.write(rec, {"loss", "lr", "grad_norm", "tokens_per_second"});
}

}  // namespace

// ---------------------------------------------------------------- the recipe

TrainResult run_cpt(const CptConfig& cfg, const TrainOptions& opts) {
    const TrainingSettings& t = cfg.training;
    Session s                 = open_session(cfg.output, t, opts);
    require_model_dir(cfg.model_path, "model.path");
    require_adapter_dir(cfg.lora.init_adapter, "lora.init_adapter");
    Corpus corpus = load_corpus(cfg, s);
    load_policy(s, cfg.model_path, cfg.lora, t.seed, cfg.lora.init_adapter);
    check_fits_model(s, "the corpus", max_token_id(*corpus.cache), cfg.seq_len,
                     "data.seq_len " + std::to_string(cfg.seq_len));
    s.model->train();
    const int64_t rows = corpus.train->rows_per_epoch();
    prepare_training(s, cfg.optim, cfg.schedule, t, (rows + t.batch_size - 1) / t.batch_size);
    if (const int64_t extra = rows * s.world_size() - corpus.train->packed_rows(); extra > 0 && s.main)
        spdlog::warn(
            "{} rows do not divide among {} ranks: {} row(s) are dealt twice every epoch to fill the last round (as "
            "PyTorch's DistributedSampler), so each epoch trains on {} rows instead of {} and the run differs from "
            "one process with {}x the accumulation; tokens_seen counts the repeats",
            corpus.train->packed_rows(), s.world_size(), extra, rows * s.world_size(), corpus.train->packed_rows(),
            s.world_size());
    auto data_identity = corpus.train->identity();
    data_identity.erase("rank");  // the same run on every rank; the world size is its own key below
    data_identity.erase("world_size");
    s.identity     = {{"config", math_identity(opts.resolved)},
                      {"data", data_identity},
                      {"model", io::model_dir_identity(cfg.model_path)},
                      {"world_size", s.world_size()}};
    s.recipe_state = [&] {
        return nlohmann::json{{"eval_history", corpus.eval_history}, {"data_state", corpus.train->state()}};
    };
    spdlog::info(
        "cpt: {} rows of {} tokens per epoch ({} tokens), {} micro-batches of {} -> {} optimizer steps per epoch; "
        "{} steps in all (warmup {}), {} adapter tensors, device {}{}",
        rows, cfg.seq_len, corpus.train->tokens_per_epoch(), s.micro_per_epoch, t.batch_size, s.steps_per_epoch,
        s.total_steps, s.schedule.warmup_steps, s.optimizer->params().size(), s.device.str(),
        s.world_size() > 1
            ? fmt::format(" (rank {} of {}; rows and micro-batches are per rank)", s.dist->rank(), s.world_size())
            : std::string());

    // Resume: the data position is rank 0's (the same on every rank), unless the world size changed.
    bool world_changed = false;
    const WorldSizeUnits units{"rows", t.grad_accum * t.batch_size, [&](int64_t world) {
                                   const int64_t saved_rows = (corpus.train->packed_rows() + world - 1) / world;
                                   const int64_t micro      = (saved_rows + t.batch_size - 1) / t.batch_size;
                                   return std::max<int64_t>(1, (micro + t.grad_accum - 1) / t.grad_accum);
                               }};
    if (auto state =
            resume_from_checkpoint(s, opts.resume, opts.parallel.allow_world_size_change, units, &world_changed)) {
        state->at("data_state")["dataset"]["rank"]       = s.dist->rank();
        state->at("data_state")["dataset"]["world_size"] = s.world_size();
        if (!world_changed) corpus.train->restore(state->at("data_state"));
        corpus.eval_history = state->at("eval_history");
    }

    LoopTools tools(s, t);
    if (s.step == 0 && cfg.eval_on_start) validate(corpus, s, tools, t.batch_size);
    auto* sync          = tools.sync();
    double comm_seconds = 0;
    bool interrupted    = false;
    while (s.step < s.total_steps) {
        // ======================== OPTIMIZER STEP BEGIN ========================
        const std::vector<MicroBatch> batches = step_batches(corpus, s, t, s.step);
        int64_t num_items = 0, real_tokens = 0;
        for (const auto& mb : batches) {
            num_items += mb.target_tokens;
            real_tokens += mb.real_tokens;
        }
        // Each micro-batch's token-loss sum over the step's target tokens: the gradient of one big batch (HF).
        const double denom = std::max<int64_t>(1, num_items);
        StepLosses losses;
        if (sync && !batches.empty()) {  // the last micro-batch's backward may start the all-reduce
            losses = forward_backward(*s.model, {batches.begin(), batches.end() - 1}, denom);
            sync->arm(denom);
            const StepLosses last = forward_backward(*s.model, {batches.back()}, denom);
            losses.micro.push_back(last.micro.at(0));
            losses.loss += last.loss;
        } else {
            losses = forward_backward(*s.model, batches, denom);
            if (sync) sync->arm(denom);
        }
        bool stop = tools.stop_requested();
        if (sync) {
            // HF normalizes by the step's target tokens across ranks (docs/reference/training.md §2.1). One round
            // of collectives: the gradients, scaled back to this rank's token-loss sum (arm(denom)), and beside
            // them the counts, the loss sum and the stop flag; the summed gradients over the global count give
            // one process with N x A micro-batches.
            const auto v = sync->finish({double(num_items), losses.loss * denom, double(real_tokens), stop ? 1. : 0.});
            num_items    = static_cast<int64_t>(v[0]);
            const double global = std::max<double>(1.0, v[0]);
            at::NoGradGuard no_grad;
            for (const auto& p : s.optimizer->params()) p.second.mutable_grad().div_(global);
            losses.loss = v[1] / global;  // the step's mean token loss over all ranks
            real_tokens = static_cast<int64_t>(v[2]);
            stop        = v[3] > 0;  // ranks agree on stopping: a signal may reach them at different steps
        }
        const Update u = apply_update(s, losses.loss, cfg.optim.max_grad_norm, t.skip_nonfinite);
        // ======================== OPTIMIZER STEP END ==========================
        tools.add(real_tokens, 0);
        comm_seconds += s.dist->take_comm_seconds();
        if (opts.on_step)
            opts.on_step(s.step, {{"step", s.step},
                                  {"loss", losses.loss},
                                  {"micro_losses", losses.micro},
                                  {"lr", u.lr},
                                  {"grad_norm", u.grad_norm},
                                  {"target_tokens", num_items}});
        if (!sync) stop = tools.stop_requested();  // one process: a signal during this step stops after it
        if (tools.log_due()) {
            log_window(s, tools, u, comm_seconds);
            comm_seconds = 0;
        }
        if (cfg.eval_steps > 0 && s.step % cfg.eval_steps == 0 && s.step < s.total_steps)
            validate(corpus, s, tools, t.batch_size);
        if (stop) {
            interrupted = true;
            break;
        }
        if (s.step % t.save_steps == 0 && s.step < s.total_steps) save_checkpoint(s);
        tools.show_live(losses.loss, u.lr);
    }
    return finish_run(
        s, tools, interrupted, t.merge, cfg.model_path, [&] { validate(corpus, s, tools, t.batch_size); },
        [&] {
            nlohmann::json summary = {{"eval", corpus.eval_history}};
            if (!corpus.eval_history.empty()) {
                summary["first_eval_loss"] = corpus.eval_history.front()["eval_loss"];
                summary["final_eval_loss"] = corpus.eval_history.back()["eval_loss"];
            }
            return summary;
        });
}

}  // namespace medllm::train

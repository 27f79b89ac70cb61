// `medllm eval igakuqa` and `medllm eval mcqa` on a model: join the group, load the engine, evaluate, report.
#include "medllm/generate/eval_commands.h"

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/generate/eval_backend.h"
#include "medllm/generate/load.h"
#include "medllm/generate/loglik.h"

namespace medllm::generate {
namespace {

// Under torchrun / srun every rank holds a model and takes its share of the questions; rank 0 scores and reports.
void eval_igakuqa_model(const eval::EvalIgakuqaConfig& cfg, const eval::IgakuqaPlan& plan, const dist::RunOptions& run,
                        const dist::Parallel& parallel) {
    const bool main = parallel.group->is_main();
    if (main) start_run(cfg.output, run.resolved);
    const auto questions = eval::first_questions_per_section(eval::load_questions(cfg.data_dir, plan.years), cfg.limit);
    const auto examples  = eval::load_few_shot_examples(plan.prompt_file);
    if (cfg.prompt_file.empty()) eval::check_against_manifest(cfg.data_dir, plan.prompt_file, examples.size());
    LoadOptions load;
    load.adapter = cfg.adapter;
    if (parallel.world_size > 1) load.device = parallel.group->device().str();  // cuda:LOCAL_RANK on a GPU node
    GenerateOptions engine;
    engine.max_batch_size = cfg.batch_size;
    EngineBackend backend(cfg.model, load, engine);
    const auto options =
        eval::model_eval_options(cfg, plan, backend.has_chat_template(), run.overwrite, dist::shard_place(parallel));
    auto result = eval::evaluate_model(questions, examples, backend, options, plan.years);
    if (!main) return;  // rank 0 holds every rank's records and scores them
    eval::report_eval_igakuqa(cfg, std::move(result), questions);
}

// Every rank loads the model and scores its share of each task; rank 0 then writes the reports and the summary.
void eval_mcqa_model(const eval::EvalMcqaConfig& f, const eval::McqaInputs& in, const dist::RunOptions& run,
                     const dist::Parallel& parallel) {
    const bool is_main = parallel.group->is_main();
    if (is_main) start_run(f.output, eval::mcqa_resolved(f, in));
    LoadOptions load;
    load.adapter = f.adapter;
    load.dtype   = f.dtype;
    load.device  = parallel.world_size > 1 ? parallel.group->device().str() : f.device;
    GenerateOptions engine;
    engine.max_batch_size = f.batch_size;
    McqaEngineBackend backend(f.model, load, engine);
    const auto options =
        eval::mcqa_options(f, in.scoring, backend.has_chat_template(), run.overwrite, dist::shard_place(parallel));

    eval::McqaResult result;
    result.model         = f.model_name.empty() ? backend.model_name() : f.model_name;
    result.prompt_format = eval::to_string(options.format);
    result.scoring       = in.scoring;
    for (size_t i = 0; i < in.entries.size(); ++i)
        result.tasks.push_back(eval::evaluate_mcqa_task(in.entries[i].task, in.datasets[i], backend, options));
    if (!is_main) return;  // rank 0 has every rank's records and writes the reports
    eval::write_mcqa_reports(f.output, result);
    write_stdout(eval::mcqa_summary(result, f.output));
}

}  // namespace

void run_eval_igakuqa(const eval::EvalIgakuqaConfig& config, const dist::RunOptions& run) {
    const auto plan = eval::check_eval_igakuqa(config, run.overwrite);
    if (!config.model.empty()) {
        const dist::Parallel parallel = dist::join_process_group(run.launch, "auto");
        dist::run_reporting_failure(parallel, [&] { eval_igakuqa_model(config, plan, run, parallel); });
        return;
    }
    if (dist::resolve_launch(run.launch).world_size > 1)
        throw UsageError(
            "eval igakuqa: --predictions scores saved predictions in one process; run it without torchrun / srun");
    eval::score_saved_predictions(config, plan, run.resolved);
}

void run_eval_mcqa(const eval::EvalMcqaConfig& config, const dist::RunOptions& run) {
    const auto inputs = eval::load_mcqa_inputs(config);
    // One process per GPU under torchrun / Slurm: each holds the whole model and scores its share of the questions;
    // rank 0 folds the records and writes the reports.
    parse_device(config.device);  // a bad --device is named as such (the group resolves it too)
    const auto parallel = dist::join_process_group(run.launch, config.device);
    dist::run_reporting_failure(parallel, [&] { eval_mcqa_model(config, inputs, run, parallel); });
}

}  // namespace medllm::generate

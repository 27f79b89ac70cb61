// `medllm eval mcqa`: zero-shot multiple-choice QA (the paper's Table 3), scored by option log-likelihood
// (lm-evaluation-harness acc / acc_norm) and/or by a greedy answer.
//
//   medllm eval mcqa --task medqa-jp --data data/medqa-jp/test.jsonl --model models/qwen2.5-7b --output runs/mcqa
//   medllm eval mcqa --tasks-config configs/mcqa/table3.yaml --model models/qwen2.5-7b --output runs/table3
#include <filesystem>
#include <memory>

#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/distributed_flags.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/eval/mcqa_evaluator.h"
#include "medllm/generate/load.h"
#include "medllm/generate/loglik.h"

namespace medllm::cli {
namespace {

struct EvalMcqaFlags {
    std::string task;
    std::string data;
    std::string tasks_config;
    std::string model;
    std::string adapter;
    std::string model_name;
    std::string output;
    std::string scoring       = "loglik";
    std::string prompt_format = "base";
    std::string dtype         = "auto";
    std::string device        = "auto";
    int64_t batch_size        = 16;
    int64_t limit             = 0;
    bool overwrite            = false;
    DistributedFlags dist;
};

// The model side, on every rank: load, score this rank's share; rank 0 then writes the reports and the summary.
void eval_with_model(const EvalMcqaFlags& f, eval::McqaScoring scoring, const std::vector<eval::McqaTaskEntry>& entries,
                     const std::vector<eval::McqaDataset>& datasets, const dist::Parallel& parallel) {
    const bool is_main = parallel.group->is_main();
    if (is_main)
        start_run(f.output, {{"tasks", std::to_string(entries.size()), "flags"},
                             {"model", f.model, "flags"},
                             {"adapter", f.adapter, "flags"},
                             {"scoring", f.scoring, "flags"},
                             {"prompt_format", f.prompt_format, "flags"},
                             {"batch_size", std::to_string(f.batch_size), "flags"},
                             {"limit", std::to_string(f.limit), "flags"}});

    generate::LoadOptions load;
    load.adapter = f.adapter;
    load.dtype   = f.dtype;
    load.device  = parallel.world_size > 1 ? parallel.group->device().str() : f.device;
    generate::GenerateOptions engine;
    engine.max_batch_size = f.batch_size;
    generate::McqaEngineBackend backend(f.model, load, engine);

    eval::McqaOptions options;
    options.scoring    = scoring;
    options.format     = f.prompt_format == "chat"     ? eval::PromptFormat::chat
                         : f.prompt_format == "base"   ? eval::PromptFormat::base
                         : backend.has_chat_template() ? eval::PromptFormat::chat
                                                       : eval::PromptFormat::base;
    options.batch_size = static_cast<int>(f.batch_size);
    options.output_dir = f.output;
    options.overwrite  = f.overwrite;
    options.limit      = f.limit;
    options.place      = shard_place(parallel);

    eval::McqaResult result;
    result.model         = f.model_name.empty() ? backend.model_name() : f.model_name;
    result.prompt_format = eval::to_string(options.format);
    result.scoring       = scoring;
    for (size_t i = 0; i < entries.size(); ++i)
        result.tasks.push_back(eval::evaluate_mcqa_task(entries[i].task, datasets[i], backend, options));
    if (!is_main) return;  // rank 0 has every rank's records and writes the reports
    eval::write_mcqa_reports(f.output, result);

    std::string lines;
    for (const auto& t : result.tasks) {
        char buf[256];
        std::snprintf(buf, sizeof buf, "%s: %lld questions", t.task.c_str(), static_cast<long long>(t.questions));
        lines += buf;
        if (scoring != eval::McqaScoring::generate) {
            std::snprintf(buf, sizeof buf, ", acc %.4f, acc_norm %.4f", t.acc.acc(), t.acc_norm.acc());
            lines += buf;
        }
        if (scoring != eval::McqaScoring::loglik) {
            std::snprintf(buf, sizeof buf, ", generate %.4f (%lld unparsed)", t.generate.acc(),
                          static_cast<long long>(t.generate_unparsed));
            lines += buf;
        }
        if (!t.skipped.empty()) lines += ", " + std::to_string(t.skipped.size()) + " rows skipped";
        lines += "\n";
    }
    const auto avg = eval::mcqa_report_json(result)["average"];
    if (avg.contains("acc")) {
        char buf[128];
        std::snprintf(buf, sizeof buf, "average over %zu tasks: acc %.4f, acc_norm %.4f\n", result.tasks.size(),
                      avg["acc"].get<double>(), avg["acc_norm"].get<double>());
        lines += buf;
    }
    lines += "reports: " + (std::filesystem::path(f.output) / "report.md").string() + "\n";
    write_stdout(lines);
}

void run_eval_mcqa(const EvalMcqaFlags& f) {
    if (f.tasks_config.empty() == f.task.empty())
        throw UsageError("eval mcqa: give --task TASK with --data FILE_OR_DIR, or --tasks-config FILE");
    if (!f.task.empty() && f.data.empty()) throw UsageError("eval mcqa: --task needs --data FILE_OR_DIR");
    if (!f.tasks_config.empty() && !f.data.empty())
        throw UsageError("eval mcqa: --data goes with --task; a --tasks-config names each task's data");
    if (f.model.empty()) throw UsageError("eval mcqa: --model DIR is required");
    if (f.output.empty()) throw UsageError("eval mcqa: --output DIR is required");
    if (!std::filesystem::is_directory(f.model))
        throw UsageError("eval mcqa: --model " + f.model + ": no such model directory");
    const auto scoring = eval::parse_mcqa_scoring(f.scoring);

    std::vector<eval::McqaTaskEntry> entries;
    if (!f.task.empty())
        entries.push_back({eval::resolve_mcqa_task(f.task), f.data});
    else
        entries = eval::load_mcqa_tasks_config(f.tasks_config);
    std::vector<eval::McqaDataset> datasets;
    std::vector<std::filesystem::path> inputs{f.model, f.adapter, f.tasks_config};
    for (const auto& e : entries) {
        datasets.push_back(eval::load_mcqa_dataset(e.task, e.data));
        inputs.push_back(e.data);
        if (!f.task.empty() && std::filesystem::exists(f.task)) inputs.push_back(f.task);
    }
    check_output_not_input(f.output, inputs);
    // One process per GPU under torchrun / Slurm: each holds the whole model and scores its share of the questions;
    // rank 0 folds the records and writes the reports.
    generate::parse_device(f.device);  // a bad --device is named as such (the group resolves it too)
    const auto parallel = join_process_group(f.dist, f.device);
    run_reporting_failure(parallel, [&] { eval_with_model(f, scoring, entries, datasets, parallel); });
}

}  // namespace

void add_eval_mcqa_command(CLI::App& eval_cmd) {
    auto* cmd = eval_cmd.add_subcommand(
        "mcqa",
        "Zero-shot multiple-choice QA (MedQA-jp, MedMCQA-jp, PubMedQA-jp, MMMLU medical; paper Table 3): option "
        "log-likelihood acc / acc_norm as lm-evaluation-harness, or a greedy answer");
    auto f = std::make_shared<EvalMcqaFlags>();
    cmd->add_option("--task", f->task,
                    "Built-in task (medqa-jp, medmcqa-jp, pubmedqa-jp, mmmlu-medical) or a task YAML file");
    cmd->add_option("--data", f->data, "The task's data: a file or a folder of them (JSONL, JSON or MMMLU CSV)");
    cmd->add_option("--tasks-config", f->tasks_config,
                    "YAML file listing several tasks with their data (tasks: [{task: medqa-jp, data: ...}, ...])");
    cmd->add_option("--model", f->model, "Model directory")->required();
    cmd->add_option("--adapter", f->adapter, "LoRA adapter directory applied to --model");
    cmd->add_option("--model-name", f->model_name, "Label in the reports (default: the model folder's name)");
    cmd->add_option("--output", f->output, "Output folder: report.json, report.md, predictions/<task>.jsonl")
        ->required();
    cmd->add_option("--scoring", f->scoring, "loglik | generate | both")
        ->capture_default_str()
        ->check(CLI::IsMember({"loglik", "generate", "both"}));
    cmd->add_option("--prompt-format", f->prompt_format,
                    "base (the prompt as text, lm-eval's default) | chat (one ChatML user turn; no delimiter before "
                    "the option) | auto (chat if the model has a chat template)")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "base", "chat"}));
    cmd->add_option("--dtype", f->dtype, "auto | fp32 | bf16 | fp16")->capture_default_str();
    cmd->add_option("--device", f->device, "auto | cpu | cuda | cuda:N")->capture_default_str();
    cmd->add_option("--batch-size", f->batch_size, "Questions per backend call (scores do not depend on it)")
        ->capture_default_str()
        ->check(integer_in(1, 65536));
    cmd->add_option("--limit", f->limit,
                    "Only the first N questions of each task (0 = all): a quick check; a later run resumes them")
        ->capture_default_str()
        ->check(integer_in(0));
    cmd->add_flag("--overwrite", f->overwrite,
                  "Start predictions/<task>.jsonl over instead of resuming (a resume under another model, task "
                  "definition, data, prompt format or scoring is refused naming the key)");
    add_distributed_options(cmd, f->dist, /*training=*/false);
    cmd->footer(
        "Each task's predictions are appended to <output>/predictions/<task>.jsonl as they are scored (one record per "
        "question and scoring: prompt, option log-likelihoods, token counts, choice); a rerun resumes. Rows of the "
        "data that do not fit the task are skipped, named by file:line in the log and report.json.\n" +
        distributed_generation_help("eval mcqa", "<output>/predictions/<task>.jsonl"));
    cmd->callback([f] { run_eval_mcqa(*f); });
}

}  // namespace medllm::cli

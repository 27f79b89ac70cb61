// `medllm eval mcqa` without a model: the checks and inputs before any work, the options, the printed summary.
#include "medllm/eval/mcqa_command.h"

#include <cstdio>

#include "medllm/core/error.h"
#include "medllm/core/files.h"

namespace medllm::eval {

McqaInputs load_mcqa_inputs(const EvalMcqaConfig& f) {
    if (f.tasks_config.empty() == f.task.empty())
        throw UsageError("eval mcqa: give --task TASK with --data FILE_OR_DIR, or --tasks-config FILE");
    if (!f.task.empty() && f.data.empty()) throw UsageError("eval mcqa: --task needs --data FILE_OR_DIR");
    if (!f.tasks_config.empty() && !f.data.empty())
        throw UsageError("eval mcqa: --data goes with --task; a --tasks-config names each task's data");
    if (f.model.empty()) throw UsageError("eval mcqa: --model DIR is required");
    if (f.output.empty()) throw UsageError("eval mcqa: --output DIR is required");
    if (!std::filesystem::is_directory(f.model))
        throw UsageError("eval mcqa: --model " + f.model + ": no such model directory");
    McqaInputs in;
    in.scoring = parse_mcqa_scoring(f.scoring);
    if (!f.task.empty())
        in.entries.push_back({resolve_mcqa_task(f.task), f.data});
    else
        in.entries = load_mcqa_tasks_config(f.tasks_config);
    std::vector<std::filesystem::path> inputs{f.model, f.adapter, f.tasks_config};
    for (const auto& e : in.entries) {
        in.datasets.push_back(load_mcqa_dataset(e.task, e.data));
        inputs.push_back(e.data);
        if (!f.task.empty() && std::filesystem::exists(f.task)) inputs.push_back(f.task);
    }
    check_output_not_input(f.output, inputs);
    return in;
}

std::vector<ResolvedEntry> mcqa_resolved(const EvalMcqaConfig& f, const McqaInputs& in) {
    return {{"tasks", std::to_string(in.entries.size()), "flags"},
            {"model", f.model, "flags"},
            {"adapter", f.adapter, "flags"},
            {"scoring", f.scoring, "flags"},
            {"prompt_format", f.prompt_format, "flags"},
            {"batch_size", std::to_string(f.batch_size), "flags"},
            {"limit", std::to_string(f.limit), "flags"}};
}

McqaOptions mcqa_options(const EvalMcqaConfig& f, McqaScoring scoring, bool has_chat_template, bool overwrite,
                         const ShardPlace& place) {
    McqaOptions options;
    options.scoring    = scoring;
    options.format     = f.prompt_format == "chat"   ? PromptFormat::chat
                         : f.prompt_format == "base" ? PromptFormat::base
                         : has_chat_template         ? PromptFormat::chat
                                                     : PromptFormat::base;
    options.batch_size = static_cast<int>(f.batch_size);
    options.output_dir = f.output;
    options.overwrite  = overwrite;
    options.limit      = f.limit;
    options.place      = place;
    return options;
}

std::string mcqa_summary(const McqaResult& result, const std::filesystem::path& output) {
    std::string lines;
    for (const auto& t : result.tasks) {
        char buf[256];
        std::snprintf(buf, sizeof buf, "%s: %lld questions", t.task.c_str(), static_cast<long long>(t.questions));
        lines += buf;
        if (result.scoring != McqaScoring::generate) {
            std::snprintf(buf, sizeof buf, ", acc %.4f, acc_norm %.4f", t.acc.acc(), t.acc_norm.acc());
            lines += buf;
        }
        if (result.scoring != McqaScoring::loglik) {
            std::snprintf(buf, sizeof buf, ", generate %.4f (%lld unparsed)", t.generate.acc(),
                          static_cast<long long>(t.generate_unparsed));
            lines += buf;
        }
        if (!t.skipped.empty()) lines += ", " + std::to_string(t.skipped.size()) + " rows skipped";
        lines += "\n";
    }
    const auto avg = mcqa_report_json(result)["average"];
    if (avg.contains("acc")) {
        char buf[128];
        std::snprintf(buf, sizeof buf, "average over %zu tasks: acc %.4f, acc_norm %.4f\n", result.tasks.size(),
                      avg["acc"].get<double>(), avg["acc_norm"].get<double>());
        lines += buf;
    }
    lines += "reports: " + (output / "report.md").string() + "\n";
    return lines;
}

}  // namespace medllm::eval

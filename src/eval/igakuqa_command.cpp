// `medllm eval igakuqa` without a model: its config keys, the checks before any work, --predictions, the reports.
#include "medllm/eval/igakuqa_command.h"

#include <cstdio>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/eval/igakuqa_predictions.h"
#include "medllm/eval/igakuqa_report.h"

namespace medllm::eval {

void add_eval_igakuqa_fields(ConfigSchema<EvalIgakuqaConfig>& s) {
    using C = EvalIgakuqaConfig;
    s.field("data_dir", &C::data_dir, "IgakuQA data folder (holds data/ and scripts/prompts/)");
    s.field("model", &C::model, "model directory to evaluate");
    s.field("adapter", &C::adapter, "LoRA adapter directory applied to --model");
    s.field("predictions", &C::predictions, "JSONL file or baseline_results-style folder of predictions to score");
    s.field("model_name", &C::model_name, "label in the reports (default: from the model or predictions)");
    s.field("output", &C::output, "output folder: report.json, report.md, scored.jsonl, predictions.jsonl");
    s.field("mode", &C::mode, "standard (3-shot), explanation (3-shot with reasoning) or both")
        .one_of({"standard", "explanation", "both"});
    s.field("years", &C::years, "exam years, e.g. 2018-2022 or 2019,2021");
    s.field("prompt_format", &C::prompt_format, "auto (chat if the model has a chat template), base or chat")
        .one_of({"auto", "base", "chat"});
    s.field("prompt_file", &C::prompt_file, "few-shot examples (default <data_dir>/scripts/prompts/prompt.jsonl)");
    s.field("extraction", &C::extraction, "headline extraction in standard mode: official (strict) or lenient")
        .one_of({"official", "lenient"});
    s.field("batch_size", &C::batch_size, "questions per generation batch; larger is faster if memory allows")
        .range(1, 65536);
    s.field("max_new_tokens", &C::max_new_tokens, "answer length limit in standard mode").range(1, 1 << 20);
    s.field("max_new_tokens_explanation", &C::max_new_tokens_explanation,
            "reasoning + answer length limit in explanation mode")
        .range(1, 1 << 20);
    s.field("limit", &C::limit, "--model: only the first N questions of each year and section (0 = all)").range(0, 1e9);
}

const ConfigSchema<EvalIgakuqaConfig>& eval_igakuqa_schema() {
    static const auto schema = [] {
        ConfigSchema<EvalIgakuqaConfig> s;
        add_eval_igakuqa_fields(s);
        return s;
    }();
    return schema;
}

namespace {

std::vector<PromptMode> parse_modes(const std::string& mode) {
    if (mode == "both") return {PromptMode::standard, PromptMode::explanation};
    return {parse_prompt_mode(mode)};
}

void print_summary(const EvalResult& result, const std::filesystem::path& output) {
    for (const auto& m : result.modes) {
        const auto& t = m.primary().total;
        std::printf("IgakuQA %s %s (%s): %d / %d = %.4f\n", result.model.c_str(), to_string(m.mode), m.primary_name(),
                    t.points, t.possible, t.normalized());
    }
    if (const auto* s = result.find(PromptMode::standard)) {
        if (const auto* e = result.find(PromptMode::explanation))
            std::printf("stability gap (explanation - standard): %+.4f\n",
                        e->primary().total.normalized() - s->primary().total.normalized());
    }
    if (!result.modes.empty()) {
        for (const auto& y : result.modes.front().official.years)
            if (!y.passed) std::printf("%d: no pass/fail (%s)\n", y.year, y.no_verdict_reason().c_str());
    }
    std::printf("reports: %s\n", (output / "report.md").string().c_str());
}

}  // namespace

IgakuqaPlan check_eval_igakuqa(const EvalIgakuqaConfig& cfg, bool overwrite) {
    if (cfg.model.empty() == cfg.predictions.empty())
        throw UsageError("eval igakuqa: give exactly one of --model DIR or --predictions FILE_OR_DIR");
    if (cfg.limit > 0 && cfg.model.empty()) throw UsageError("eval igakuqa: --limit applies to --model runs");
    if (!cfg.predictions.empty() && !cfg.adapter.empty())
        throw UsageError("eval igakuqa: --adapter applies to --model, not to --predictions");
    if (cfg.data_dir.empty()) throw UsageError("eval igakuqa: --data-dir DIR (config key data_dir) is required");
    if (cfg.output.empty()) throw UsageError("eval igakuqa: --output DIR (config key output) is required");
    if (!cfg.model.empty() && !std::filesystem::is_directory(cfg.model))
        throw UsageError("eval igakuqa: --model " + cfg.model + ": no such model directory");
    if (overwrite && cfg.model.empty())
        throw UsageError(
            "eval igakuqa: --overwrite starts --model predictions over; it does not apply to --predictions");
    IgakuqaPlan plan;
    plan.years = parse_years(cfg.years);
    plan.modes = parse_modes(cfg.mode);
    plan.prompt_file =
        cfg.prompt_file.empty() ? default_prompt_file(cfg.data_dir) : std::filesystem::path(cfg.prompt_file);
    // The output folder receives reports, predictions and the log: it must not be one of the inputs.
    check_output_not_input(cfg.output, {cfg.data_dir, cfg.predictions, cfg.model, cfg.adapter, plan.prompt_file});
    return plan;
}

void score_saved_predictions(const EvalIgakuqaConfig& cfg, const IgakuqaPlan& plan,
                             const std::vector<ResolvedEntry>& resolved) {
    start_run(cfg.output, resolved);
    const auto questions   = load_questions(cfg.data_dir, plan.years);
    const auto predictions = load_external_predictions(cfg.predictions);
    auto result = evaluate_predictions(questions, predictions, plan.modes, cfg.extraction == "lenient", plan.years);
    report_eval_igakuqa(cfg, std::move(result), questions);
}

ModelEvalOptions model_eval_options(const EvalIgakuqaConfig& cfg, const IgakuqaPlan& plan, bool has_chat_template,
                                    bool overwrite, const ShardPlace& place) {
    ModelEvalOptions options;
    options.modes                             = plan.modes;
    options.format                            = cfg.prompt_format == "chat"   ? PromptFormat::chat
                                                : cfg.prompt_format == "base" ? PromptFormat::base
                                                : has_chat_template           ? PromptFormat::chat
                                                                              : PromptFormat::base;
    options.batch_size                        = static_cast<int>(cfg.batch_size);
    options.standard_params.max_new_tokens    = static_cast<int>(cfg.max_new_tokens);
    options.explanation_params.max_new_tokens = static_cast<int>(cfg.max_new_tokens_explanation);
    options.lenient_standard                  = cfg.extraction == "lenient";
    options.output_dir                        = cfg.output;
    options.data_identity                     = data_identity(cfg.data_dir);
    options.overwrite                         = overwrite;
    options.place                             = place;
    return options;
}

void report_eval_igakuqa(const EvalIgakuqaConfig& cfg, EvalResult result, const std::vector<Question>& questions) {
    if (!cfg.model_name.empty()) result.model = cfg.model_name;
    write_reports(cfg.output, result, questions);
    print_summary(result, cfg.output);
}

}  // namespace medllm::eval

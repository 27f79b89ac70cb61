// `medllm eval igakuqa`: the IgakuQA exam evaluator (../shared/reference/igakuqa.md).
//
//   medllm eval igakuqa --data-dir ../shared/igakuqa_data --predictions runs/gpt4o/ --output runs/gpt4o-eval
//   medllm eval igakuqa --data-dir ../shared/igakuqa_data --model models/qwen2.5-7b --mode both --output runs/eval
//
// Settings come from flags, or from --config FILE / --set key=value with the same names as keys
// (data_dir, model, ...); flags given on the command line win. --predictions scores saved predictions with
// no model. --model runs the model through the generation engine (medllm::generate::EngineBackend).
#include <filesystem>
#include <iostream>

#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/distributed_flags.h"
#include "medllm/core/config.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/eval/igakuqa_evaluator.h"
#include "medllm/eval/igakuqa_report.h"
#include "medllm/generate/eval_backend.h"

namespace medllm::cli {
namespace {

struct EvalIgakuqaConfig {
    std::string data_dir;
    std::string model;
    std::string adapter;
    std::string predictions;
    std::string model_name;
    std::string output;
    std::string mode          = "standard";
    std::string years         = "2018-2022";
    std::string prompt_format = "auto";
    std::string prompt_file;
    std::string extraction             = "official";
    int64_t batch_size                 = 64;
    int64_t max_new_tokens             = 64;
    int64_t max_new_tokens_explanation = 1024;
    int64_t limit                      = 0;
};

ConfigSchema<EvalIgakuqaConfig> make_schema() {
    using C = EvalIgakuqaConfig;
    ConfigSchema<C> s;
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
    return s;
}

// A flag value as a YAML scalar for the config overrides: numbers as they are, text single-quoted.
std::string yaml_quote(const std::string& text) {
    std::string out = "'";
    for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
    return out + "'";
}

std::vector<eval::PromptMode> parse_modes(const std::string& mode) {
    if (mode == "both") return {eval::PromptMode::standard, eval::PromptMode::explanation};
    return {eval::parse_prompt_mode(mode)};
}

void print_summary(const eval::EvalResult& result, const std::filesystem::path& output) {
    for (const auto& m : result.modes) {
        const auto& t = m.primary().total;
        std::printf("IgakuQA %s %s (%s): %d / %d = %.4f\n", result.model.c_str(), eval::to_string(m.mode),
                    m.primary_name(), t.points, t.possible, t.normalized());
    }
    if (const auto* s = result.find(eval::PromptMode::standard)) {
        if (const auto* e = result.find(eval::PromptMode::explanation))
            std::printf("stability gap (explanation - standard): %+.4f\n",
                        e->primary().total.normalized() - s->primary().total.normalized());
    }
    if (!result.modes.empty()) {
        for (const auto& y : result.modes.front().official.years)
            if (!y.passed) std::printf("%d: no pass/fail (%s)\n", y.year, y.no_verdict_reason().c_str());
    }
    std::printf("reports: %s\n", (output / "report.md").string().c_str());
}

// `--model`: the generation engine as the evaluator's CompletionBackend (src/generate/eval_backend.cpp). Under
// torchrun / srun every rank holds a model and takes its share of the questions; rank 0 scores and reports.
void eval_model(const EvalIgakuqaConfig& cfg, const std::vector<ResolvedEntry>& resolved, bool overwrite,
                const dist::Parallel& parallel, const std::vector<int>& years,
                const std::vector<eval::PromptMode>& modes, const std::filesystem::path& prompt_file) {
    const bool main = parallel.group->is_main();
    if (main) start_run(cfg.output, resolved);
    const auto questions = eval::first_questions_per_section(eval::load_questions(cfg.data_dir, years), cfg.limit);
    const auto examples  = eval::load_few_shot_examples(prompt_file);
    if (cfg.prompt_file.empty()) eval::check_against_manifest(cfg.data_dir, prompt_file, examples.size());
    generate::LoadOptions load;
    load.adapter = cfg.adapter;
    if (parallel.world_size > 1) load.device = parallel.group->device().str();  // cuda:LOCAL_RANK on a GPU node
    generate::GenerateOptions engine;
    engine.max_batch_size = cfg.batch_size;
    generate::EngineBackend backend(cfg.model, load, engine);
    eval::ModelEvalOptions options;
    options.modes                             = modes;
    options.format                            = cfg.prompt_format == "chat"   ? eval::PromptFormat::chat
                                                : cfg.prompt_format == "base" ? eval::PromptFormat::base
                                                : backend.has_chat_template() ? eval::PromptFormat::chat
                                                                              : eval::PromptFormat::base;
    options.batch_size                        = static_cast<int>(cfg.batch_size);
    options.standard_params.max_new_tokens    = static_cast<int>(cfg.max_new_tokens);
    options.explanation_params.max_new_tokens = static_cast<int>(cfg.max_new_tokens_explanation);
    options.lenient_standard                  = cfg.extraction == "lenient";
    options.output_dir                        = cfg.output;
    options.data_identity                     = eval::data_identity(cfg.data_dir);
    options.overwrite                         = overwrite;
    options.place                             = shard_place(parallel);
    auto result                               = eval::evaluate_model(questions, examples, backend, options, years);
    if (!main) return;  // rank 0 holds every rank's records and scores them
    if (!cfg.model_name.empty()) result.model = cfg.model_name;
    eval::write_reports(cfg.output, result, questions);
    print_summary(result, cfg.output);
}

void run_eval_igakuqa(const EvalIgakuqaConfig& cfg, const std::vector<ResolvedEntry>& resolved, bool overwrite,
                      const DistributedFlags& dist) {
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
    const auto years = eval::parse_years(cfg.years);
    const auto modes = parse_modes(cfg.mode);
    const std::filesystem::path prompt_file =
        cfg.prompt_file.empty() ? eval::default_prompt_file(cfg.data_dir) : std::filesystem::path(cfg.prompt_file);
    // The output folder receives reports, predictions and the log: it must not be one of the inputs.
    check_output_not_input(cfg.output, {cfg.data_dir, cfg.predictions, cfg.model, cfg.adapter, prompt_file});
    if (!cfg.model.empty()) {
        const dist::Parallel parallel = join_process_group(dist, "auto");
        run_reporting_failure(parallel,
                              [&] { eval_model(cfg, resolved, overwrite, parallel, years, modes, prompt_file); });
        return;
    }
    if (launch_world_size(dist) > 1)
        throw UsageError(
            "eval igakuqa: --predictions scores saved predictions in one process; run it without torchrun / srun");
    start_run(cfg.output, resolved);
    const auto questions   = eval::load_questions(cfg.data_dir, years);
    const auto predictions = eval::load_external_predictions(cfg.predictions);
    auto result = eval::evaluate_predictions(questions, predictions, modes, cfg.extraction == "lenient", years);
    if (!cfg.model_name.empty()) result.model = cfg.model_name;
    eval::write_reports(cfg.output, result, questions);
    print_summary(result, cfg.output);
}

}  // namespace

void add_eval_command(CLI::App& app) {
    auto* eval_cmd = app.add_subcommand("eval", "Evaluate a model on a benchmark");
    eval_cmd->require_subcommand(1);
    add_eval_mcqa_command(*eval_cmd);
    auto* cmd = eval_cmd->add_subcommand(
        "igakuqa",
        "IgakuQA (Japanese medical licensing exam 2018-2022): official 3-shot scoring, pass/fail, "
        "explanation stability gap; --predictions scores saved predictions");

    // Flags mirror the config keys; only the ones given on the command line override --config / --set.
    struct State {
        EvalIgakuqaConfig flags;
        ConfigOptions config;
        std::vector<std::pair<CLI::Option*, std::string>> keyed;  // option, config key
        bool numeric[64] = {};
        bool overwrite   = false;
        DistributedFlags dist;
    };
    auto state = std::make_shared<State>();
    auto& f    = state->flags;
    auto text  = [&](const char* flag, std::string& target, const char* key, const char* help) {
        auto* opt = cmd->add_option(flag, target, help)->capture_default_str();
        state->keyed.push_back({opt, key});
        return opt;
    };
    auto number = [&](const char* flag, int64_t& target, const char* key, const char* help) {
        auto* opt                           = cmd->add_option(flag, target, help)->capture_default_str();
        state->numeric[state->keyed.size()] = true;
        state->keyed.push_back({opt, key});
        return opt;
    };
    text("--data-dir", f.data_dir, "data_dir", "IgakuQA data folder (holds data/ and scripts/prompts/)");
    text("--model", f.model, "model", "Model directory to evaluate");
    text("--adapter", f.adapter, "adapter", "LoRA adapter directory applied to --model");
    text("--predictions", f.predictions, "predictions",
         "Score saved predictions: a JSONL file ({problem_id, prediction} per line) or a folder laid out like "
         "IgakuQA's baseline_results/ (<year>/<exam>-<section>_<name>.jsonl)");
    text("--model-name", f.model_name, "model_name", "Label in the reports (default: from the model or predictions)");
    text("--output", f.output, "output", "Output folder (report.json, report.md, scored.jsonl, predictions.jsonl)");
    text("--mode", f.mode, "mode", "standard | explanation | both");
    text("--years", f.years, "years", "Exam years, e.g. 2018-2022 or 2019,2021");
    text("--prompt-format", f.prompt_format, "prompt_format",
         "auto | base | chat (auto: chat if the model has a chat template)");
    text("--prompt-file", f.prompt_file, "prompt_file",
         "Few-shot examples (default <data-dir>/scripts/prompts/prompt.jsonl)");
    text("--extraction", f.extraction, "extraction",
         "Headline extraction in standard mode: official | lenient (both are reported)");
    number("--batch-size", f.batch_size, "batch_size", "Questions per generation batch");
    number("--max-new-tokens", f.max_new_tokens, "max_new_tokens", "Answer length limit, standard mode");
    number("--max-new-tokens-explanation", f.max_new_tokens_explanation, "max_new_tokens_explanation",
           "Reasoning + answer length limit, explanation mode");
    number("--limit", f.limit, "limit", "--model: the first N questions of each year and section (a smoke run)");
    cmd->add_flag("--overwrite", state->overwrite,
                  "Start --output's predictions.jsonl over instead of resuming it (a resume under another model, "
                  "adapter, data, prompt or decoding settings is refused)");
    add_config_options(cmd, state->config);
    add_distributed_options(cmd, state->dist, /*training=*/false);
    cmd->footer(
        "--model runs resume: predictions.jsonl keeps one record per question and mode (the rendered prompt, the raw "
        "output, both extractions), appended as each batch completes; its run identity (model and adapter files, "
        "dtype, data and few-shot hashes, prompt format, decoding) is kept in predictions.jsonl.run.json, and a rerun "
        "under another identity is refused naming the key that differs (--overwrite starts over). Reports "
        "(report.json, report.md, scored.jsonl) are written atomically. Answers are checked against each question's "
        "choices; a year whose sections do not hold the exam's question counts is reported as 'incomplete: N of M "
        "questions' with no pass/fail.\n" +
        distributed_generation_help("eval igakuqa --model DIR --mode both --output runs/eval", "predictions.jsonl"));

    cmd->callback([state] {
        ConfigSource source = state->config.source();
        for (size_t i = 0; i < state->keyed.size(); ++i) {
            const auto& [opt, key] = state->keyed[i];
            if (opt->count() == 0) continue;
            const std::string value = opt->as<std::string>();
            source.overrides.push_back(key + "=" + (state->numeric[i] ? value : yaml_quote(value)));
        }
        std::vector<ResolvedEntry> resolved;
        const EvalIgakuqaConfig cfg = make_schema().load(source, &resolved);
        run_eval_igakuqa(cfg, resolved, state->overwrite, state->dist);
    });
}

}  // namespace medllm::cli

// `medllm eval igakuqa`: the IgakuQA exam evaluator (docs/eval-igakuqa.md, docs/reference/igakuqa.md).
//
//   medllm eval igakuqa --data-dir ../shared/igakuqa_data --predictions runs/gpt4o/ --output runs/gpt4o-eval
//   medllm eval igakuqa --data-dir ../shared/igakuqa_data --model models/qwen2.5-7b --mode both --output runs/eval
//
// Settings come from flags, or from --config FILE / --set key=value with the same names as keys
// (data_dir, model, ...); flags given on the command line win. The body is generate::run_eval_igakuqa
// (include/medllm/generate/eval_commands.h; the config keys are eval's, include/medllm/eval/igakuqa_command.h).
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/distributed_flags.h"
#include "medllm/eval/igakuqa_command.h"
#include "medllm/generate/eval_commands.h"

namespace medllm::cli {

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
        eval::EvalIgakuqaConfig flags;
        ConfigOptions config;
        KeyedFlags keyed;
        bool overwrite = false;
        DistributedFlags dist;
    };
    auto state = std::make_shared<State>();
    auto& f    = state->flags;
    auto text  = [&](const char* flag, std::string& target, const char* key, const char* help) {
        state->keyed.text(cmd->add_option(flag, target, help)->capture_default_str(), key);
    };
    auto number = [&](const char* flag, int64_t& target, const char* key, const char* help) {
        state->keyed.number(cmd->add_option(flag, target, help)->capture_default_str(), key);
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
    number("--limit", f.limit, "limit",
           "--model: only the first N questions of each year and section (a smoke run; 0 = all); a later run with "
           "a larger limit resumes the questions already done");
    cmd->add_flag("--overwrite", state->overwrite,
                  "Start --output's predictions.jsonl over instead of resuming it (a resume under another model, "
                  "adapter, data, prompt or decoding settings is refused)");
    add_config_options(cmd, state->config);
    add_distributed_options(cmd, state->dist, /*training=*/false);
    cmd->footer(
        "Config keys (--config FILE, --set key=value; flags win):\n" + eval::eval_igakuqa_schema().describe() +
        "\n--model runs resume: predictions.jsonl keeps one record per question and mode (the rendered prompt, the raw "
        "output, both extractions), appended as each batch completes; its run identity (model and adapter files, "
        "dtype, data and few-shot hashes, prompt format, decoding) is kept in predictions.jsonl.run.json, and a rerun "
        "under another identity is refused naming the key that differs (--overwrite starts over). Reports "
        "(report.json, report.md, scored.jsonl) are written atomically. Answers are checked against each question's "
        "choices; a year whose sections do not hold the exam's question counts is reported as 'incomplete: N of M "
        "questions' with no pass/fail.\n" +
        distributed_generation_help("eval igakuqa --model DIR --mode both --output runs/eval", "predictions.jsonl"));

    cmd->callback([state] {
        ConfigSource source = state->config.source();
        state->keyed.add_to(source);
        dist::RunOptions run;
        const auto config = eval::eval_igakuqa_schema().load(source, &run.resolved);
        run.overwrite     = state->overwrite;
        run.launch        = launch_flags(state->dist);
        generate::run_eval_igakuqa(config, run);
    });
}

}  // namespace medllm::cli

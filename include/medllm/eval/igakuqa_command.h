// `medllm eval igakuqa`'s settings and the parts of its body that need no model: the config keys
// (EvalIgakuqaConfig, add_eval_igakuqa_fields; a pipeline's eval: section is the same keys), the checks made before
// any work, scoring saved predictions (--predictions), and the reports and summary of a run. Evaluating a model
// (--model) needs the generation engine, which sits above eval, so the command's body is generate::run_eval_igakuqa
// (include/medllm/generate/eval_commands.h), which calls these.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "medllm/core/config.h"
#include "medllm/core/shards.h"
#include "medllm/eval/igakuqa_evaluator.h"

namespace medllm::eval {

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
    int64_t limit                      = 0;  // --model: the first N questions of each year and section (0: all)
};

// The config keys of `medllm eval igakuqa` (data_dir, model, ..., max_new_tokens_explanation, limit).
void add_eval_igakuqa_fields(ConfigSchema<EvalIgakuqaConfig>& schema);

// The command's schema (add_eval_igakuqa_fields), the one `medllm eval igakuqa --config` and a pipeline's eval:
// section are both read with.
const ConfigSchema<EvalIgakuqaConfig>& eval_igakuqa_schema();

// What a checked config asks for.
struct IgakuqaPlan {
    std::vector<int> years;
    std::vector<PromptMode> modes;      // standard, explanation, or both
    std::filesystem::path prompt_file;  // prompt_file, or the data folder's default
};

// Checks the settings before any work: exactly one of model and predictions, data_dir and output given, the model
// folder exists, --overwrite and --limit only with a model, years and mode parse, the output folder is none of the
// inputs. UsageError naming the flag.
IgakuqaPlan check_eval_igakuqa(const EvalIgakuqaConfig& config, bool overwrite);

// --predictions (one process): starts the output folder, scores the saved predictions, writes the reports and prints
// the summary.
void score_saved_predictions(const EvalIgakuqaConfig& config, const IgakuqaPlan& plan,
                             const std::vector<ResolvedEntry>& resolved);

// The evaluation loop's options for --model on a backend (`has_chat_template` decides prompt_format auto), with
// the data folder's identity (part of the resume check) and this process's place among the ranks.
ModelEvalOptions model_eval_options(const EvalIgakuqaConfig& config, const IgakuqaPlan& plan, bool has_chat_template,
                                    bool overwrite, const ShardPlace& place);

// After a run (rank 0): labels the result with model_name when set, writes report.json, report.md and scored.jsonl,
// and prints each mode's score, the stability gap and the years without a pass/fail verdict.
void report_eval_igakuqa(const EvalIgakuqaConfig& config, EvalResult result, const std::vector<Question>& questions);

}  // namespace medllm::eval

// `medllm eval mcqa`'s settings and the parts of its body that need no model: the checks and the loading of every
// task's definition and data before any work, the evaluation options, and the summary printed after a run. Scoring
// needs a model (generate::McqaEngineBackend, above eval), so the command's body is generate::run_eval_mcqa
// (include/medllm/generate/eval_commands.h), which calls these.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "medllm/core/config.h"
#include "medllm/core/shards.h"
#include "medllm/eval/mcqa_data.h"
#include "medllm/eval/mcqa_evaluator.h"

namespace medllm::eval {

// The command's flags (it has no config file).
struct EvalMcqaConfig {
    std::string task;          // a built-in task or a task YAML file, with `data`
    std::string data;          // the task's data: a file or a folder of them
    std::string tasks_config;  // or several tasks with their data
    std::string model;
    std::string adapter;
    std::string model_name;
    std::string output;
    std::string scoring       = "loglik";  // loglik | generate | both
    std::string prompt_format = "base";    // base | chat | auto
    std::string dtype         = "auto";
    std::string device        = "auto";
    int64_t batch_size        = 16;
    int64_t limit             = 0;  // > 0: only the first N questions of each task
};

// The checked settings with every task's definition and data loaded.
struct McqaInputs {
    McqaScoring scoring = McqaScoring::loglik;
    std::vector<McqaTaskEntry> entries;
    std::vector<McqaDataset> datasets;  // one per entry
};

// Checks the flags (--task with --data, or --tasks-config; --model and --output), loads each task and its data, and
// checks that the output folder is none of the inputs. UsageError naming the flag.
McqaInputs load_mcqa_inputs(const EvalMcqaConfig& config);

// The settings medllm.log and config.resolved.yaml record (origin "flags").
std::vector<ResolvedEntry> mcqa_resolved(const EvalMcqaConfig& config, const McqaInputs& inputs);

// The evaluation options on a backend (prompt_format auto: chat when `has_chat_template`).
McqaOptions mcqa_options(const EvalMcqaConfig& config, McqaScoring scoring, bool has_chat_template, bool overwrite,
                         const ShardPlace& place);

// The lines printed after a run: each task's accuracies, the average over tasks, where the reports are.
std::string mcqa_summary(const McqaResult& result, const std::filesystem::path& output);

}  // namespace medllm::eval

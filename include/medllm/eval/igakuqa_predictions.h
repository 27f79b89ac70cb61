// Predictions made elsewhere (IgakuQA's baseline format) and the evaluator's own predictions.jsonl.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "medllm/eval/igakuqa_data.h"
#include "medllm/eval/igakuqa_prompt.h"

namespace medllm::eval {

// One prediction as read from a file.
struct PredictionInput {
    std::string prediction;                 // the processed answer string the official scorer splits on ','
    std::optional<std::string> raw_output;  // present in medllm's own predictions.jsonl; lenient extraction reads it
};

struct ExternalPredictions {
    std::string model_name;  // the <name> of <exam>-<section>_<name>.jsonl, or the file stem
    // mode ("" for records without a `mode` field, else "standard"/"explanation") -> problem_id -> prediction
    std::map<std::string, std::map<std::string, PredictionInput>> by_mode;
    std::vector<std::filesystem::path> files;
};

// Reads one JSONL file, or a folder laid out like IgakuQA's baseline_results/ (<year>/<exam>-<section>_<name>.jsonl,
// or the same files directly in the folder; exactly one <name> per folder). Records need `problem_id` and
// `prediction` (strings); `mode` and `raw_output` (medllm's predictions.jsonl) are used when present. In a section
// file every problem_id must belong to that section. A problem_id given twice for the same mode is an error.
// Throws medllm::Error naming file and line; UsageError when the path is neither.
ExternalPredictions load_external_predictions(const std::filesystem::path& file_or_dir);

// One generated answer, as stored in predictions.jsonl (one JSON object per line).
struct PredictionRecord {
    std::string problem_id;
    PromptMode mode = PromptMode::standard;
    std::string prompt_format;  // "base" or "chat"
    std::string prompt;         // the rendered prompt sent to the model, for audits ("" in files from before it)
    std::string raw_output;     // the completion, stop token removed
    std::string prediction;     // official: zen_to_han(raw).lower() (explanation mode: after the last 答え:)
    std::optional<std::string> extracted;  // lenient extraction ("a,c"), nullopt when unparseable

    nlohmann::json to_json() const;
    static PredictionRecord from_json(const nlohmann::json& j, const std::string& where);
};

// The official prediction string of a completion: standard mode reads the whole output, explanation mode the
// text after the last answer marker (the whole output when there is none).
std::string official_prediction_for_mode(const std::string& raw_output, PromptMode mode);

// Builds the record for a completion (both extractions); `prompt` is the rendered prompt it answers.
PredictionRecord make_prediction_record(const Question& question, PromptMode mode, PromptFormat format,
                                        const std::string& prompt, const std::string& raw_output);

}  // namespace medllm::eval

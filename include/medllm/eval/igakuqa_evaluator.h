// The IgakuQA evaluation loop: prompts -> CompletionBackend (batched, resumable) -> extraction -> scoring,
// and the same scoring for predictions made elsewhere.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "medllm/core/shards.h"
#include "medllm/eval/backend.h"
#include "medllm/eval/igakuqa_data.h"
#include "medllm/eval/igakuqa_predictions.h"
#include "medllm/eval/igakuqa_prompt.h"
#include "medllm/eval/igakuqa_scoring.h"

namespace medllm::eval {

// One question's answer in the two extractions.
struct ScoredPrediction {
    std::string prediction;                // official string (split on ',' by the scorer)
    std::optional<std::string> extracted;  // lenient answer "a,c"; nullopt = unparseable
};

struct ModeResult {
    PromptMode mode      = PromptMode::standard;
    bool lenient_primary = false;  // headline extraction: standard mode official by default, explanation lenient
    std::vector<std::optional<ScoredPrediction>> predictions;  // aligned with the questions; nullopt = missing
    ScoreSummary official;
    ScoreSummary lenient;
    const ScoreSummary& primary() const { return lenient_primary ? lenient : official; }
    const char* primary_name() const { return lenient_primary ? "lenient" : "official"; }
};

struct EvalResult {
    std::string model;
    std::string source;         // "model" or "predictions"
    std::string prompt_format;  // "base", "chat", or "" for external predictions
    std::vector<int> years;
    std::vector<ModeResult> modes;  // standard before explanation
    const ModeResult* find(PromptMode mode) const;
};

// Scores aligned predictions with both extractions.
ModeResult score_mode(const std::vector<Question>& questions, PromptMode mode, bool lenient_primary,
                      std::vector<std::optional<ScoredPrediction>> predictions);

struct ModelEvalOptions {
    std::vector<PromptMode> modes{PromptMode::standard};
    PromptFormat format = PromptFormat::chat;
    int batch_size      = 64;
    GenerationParams standard_params;     // max_new_tokens 64 by default
    GenerationParams explanation_params;  // set max_new_tokens large enough for the reasoning
    bool lenient_standard = false;        // headline extraction for standard mode
    std::filesystem::path output_dir;     // predictions.jsonl and predictions.jsonl.run.json go here; a rerun resumes
    nlohmann::json data_identity;         // data_identity(data_dir): part of the run identity
    bool overwrite = false;               // start predictions.jsonl over instead of resuming it
    ShardPlace place;                     // several processes share the questions (core/shards.h); default one
};

// The identity a predictions.jsonl is saved under (its sidecar predictions.jsonl.run.json): the backend's
// identity(), prompt format, the few-shot examples (content hash), the data identity and both modes'
// GenerationParams.
nlohmann::json run_identity(const CompletionBackend& backend, const ModelEvalOptions& options,
                            const std::vector<FewShotExample>& examples);

// Runs every question of every mode through `backend` in batches of options.batch_size, skipping questions
// whose prediction is already saved in <output_dir>/predictions.jsonl (resume), appending each record with its
// rendered prompt as its batch completes (flushed and checked: a full disk is an Error naming the file), logging
// questions/s and ETA. Under several processes (options.place) rank R runs every R-th question still to do into
// its shard predictions.rank<R>-of<W>.jsonl and rank 0 folds the shards into predictions.jsonl in the order one
// process writes (mode, then question) and scores; the other ranks return a result without modes. Refuses (Error naming
// the first differing key) to resume a file saved under another run_identity, and (Error naming file:line and
// problem_id) a saved record whose prompt is not the one this run would send. Returns the scored result.
EvalResult evaluate_model(const std::vector<Question>& questions, const std::vector<FewShotExample>& examples,
                          CompletionBackend& backend, const ModelEvalOptions& options, const std::vector<int>& years);

// Scores predictions made elsewhere. Records without a `mode` field are scored as the single mode requested;
// medllm predictions.jsonl files carry `mode` and can be rescored in both modes. Lenient extraction reads
// `raw_output` when present, else `prediction`.
EvalResult evaluate_predictions(const std::vector<Question>& questions, const ExternalPredictions& predictions,
                                const std::vector<PromptMode>& modes, bool lenient_standard,
                                const std::vector<int>& years);

}  // namespace medllm::eval

// `medllm build-prefs`: the stage-2 preference data. The CPT model answers each question n times with the
// few-shot reasoning template; a response whose final answer (read with the evaluator's eval::extract_answer)
// matches the key is *chosen*, any other *rejected*; the verified explanation with the key is the ground truth
// (GT). Pairs follow GT > chosen > rejected: (GT, chosen), (GT, rejected), (chosen, rejected).
//
// Output folder: samples.jsonl (generate_to_file's records, resumable, run identity in samples.jsonl.run.json),
// pairs.jsonl (TRL DPOTrainer's prompt / chosen / rejected, plus problem_id, pair_type, chosen_answer,
// rejected_answer, chosen_source, rejected_source), summary.json. pairs.jsonl and summary.json are rebuilt from
// samples.jsonl on every run in question order, so a resumed run writes the same bytes as an uninterrupted one.
//
// Several processes (BuildPrefsOptions::place, torchrun / Slurm ranks each holding a whole model) share the
// questions still to sample (generate_to_file: a shard file per rank beside samples.jsonl, folded by rank 0 in
// question order); rank 0 alone then writes pairs.jsonl and summary.json, which equal a one-process run's.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/shards.h"
#include "medllm/eval/igakuqa_answer.h"
#include "medllm/prefs/inputs.h"

namespace medllm::prefs {

enum class SampleStatus { chosen, rejected, dropped };
const char* to_string(SampleStatus status);

struct SampleCheckOptions {
    bool require_marker = true;  // a response without an answer marker is unparseable
    // A response whose answer names no letter but names exactly one option by its text (「答え:肺炎」) is read as
    // that option's letter (eval::choice_named_by_text); off = the official scorer's letters only.
    bool answer_by_text           = false;
    int64_t min_explanation_chars = 1;      // shorter explanations (code points, spaces excluded) are flagged
    bool drop_flagged             = false;  // flagged (short explanation, cut by the token limit): drop, not reject
    // The template's answer marker as normalised text ("\n answer:"), taken off the explanation before it is
    // measured; build_prefs fills it from the template when empty.
    std::string answer_marker;
};

// One sampled response, checked against the key.
struct CheckedSample {
    int64_t sample_index = 0;
    std::string text;           // the response as generated (after the prompt's explanation marker)
    std::string finish_reason;  // "stop" | "eos" | "length"
    eval::ExtractedAnswer answer;
    bool by_text              = false;  // the answer was read from an option's text (answer_by_text)
    bool parsed               = false;
    bool correct              = false;
    bool truncated            = false;  // finish_reason "length"
    bool short_explanation    = false;
    bool empty                = false;  // nothing but whitespace: never a pair completion (always dropped)
    int64_t explanation_chars = 0;
    SampleStatus status       = SampleStatus::rejected;
};

// Extracts the final answer with eval::extract_answer (after the last answer marker), compares it with the key
// (eval::official_is_correct) and classifies the response.
CheckedSample check_sample(const PrefQuestion& q, std::string text, const std::string& finish_reason,
                           const SampleCheckOptions& options);

enum class PairType { gt_chosen, gt_rejected, chosen_rejected };
const char* to_string(PairType type);
PairType parse_pair_type(const std::string& text);  // UsageError naming the value

struct PairOptions {
    std::vector<PairType> types = {PairType::gt_chosen, PairType::gt_rejected, PairType::chosen_rejected};
    int64_t max_per_type        = 0;     // per question and type; 0 = no cap
    int64_t max_per_question    = 0;     // 0 = no cap
    bool dedup                  = true;  // identical responses (after trimming) count once per side
    uint64_t seed               = 0;     // which pairs a cap keeps
};

struct Pair {
    PairType type;
    int64_t chosen_sample   = -1;  // -1: the GT response
    int64_t rejected_sample = 0;
};

// The pairs of one question from its checked samples, in a fixed order (type, then chosen, then rejected sample).
// With caps, a seeded choice (seed, problem_id, type) picks which pairs stay, taking the types in turn when the
// per-question cap binds, so one type does not crowd out the others.
std::vector<Pair> build_pairs(const PrefQuestion& q, const std::vector<CheckedSample>& samples,
                              const PairOptions& options);

// ---------------------------------------------------------------- the whole run

struct BuildPrefsOptions {
    std::vector<std::filesystem::path> questions;
    QuestionLoadOptions load;
    std::filesystem::path few_shot_file;  // empty: draw from the question pool
    int64_t few_shot_k     = 3;
    uint64_t few_shot_seed = 0;
    EvalGuardOptions guard;
    bool allow_eval_overlap = false;

    std::filesystem::path model;
    std::filesystem::path adapter;
    std::string dtype         = "auto";
    std::string device        = "auto";
    std::string prompt_format = "auto";  // auto | base | chat
    PrefTemplate prompt_template;        // a preset (template_preset) or custom

    int64_t num_samples    = 8;
    double temperature     = 1.0;
    double top_p           = 1.0;
    int64_t top_k          = 0;
    int64_t max_new_tokens = 512;
    uint64_t seed          = 0;
    int64_t batch_size     = 64;

    SampleCheckOptions check;
    PairOptions pairs;

    std::filesystem::path output;  // folder
    bool overwrite    = false;     // start samples.jsonl over
    bool log_progress = true;      // this rank's share
    ShardPlace place;              // this process's place in a group sharing the questions (default: one process)
};

struct BuildPrefsResult {
    nlohmann::json summary;  // what summary.json holds (null on ranks other than 0)
    std::string table;       // the printed summary (empty on ranks other than 0)
};

// Loads and checks the inputs (questions, few-shot, guard) before the model; samples every question that
// samples.jsonl does not hold yet; writes pairs.jsonl and summary.json atomically. Throws UsageError for bad
// options, Error for bad files (naming file, line, field). In a group every rank calls it with the same options
// (but `place`); ranks other than 0 return an empty result once their share is in.
BuildPrefsResult build_prefs(const BuildPrefsOptions& options);

// pairs.jsonl and the summary from questions, their prompts and their checked samples (what build_prefs does
// after sampling; exposed for tests). `prompts[i]` is a string (base) or a message list (chat).
struct PairsOutput {
    std::vector<nlohmann::json> records;
    nlohmann::json summary;
};
PairsOutput make_pairs_output(const std::vector<PrefQuestion>& questions, const std::vector<nlohmann::json>& prompts,
                              const std::vector<std::vector<CheckedSample>>& samples, const PrefPrompt& prompt,
                              const PairOptions& options);

// Reads a samples.jsonl (generate_to_file's records) and checks every sample: result[i] are question i's samples
// in sample order. Errors name the file for a record out of range, repeated, or missing.
std::vector<std::vector<CheckedSample>> read_checked_samples(const std::filesystem::path& samples_path,
                                                             const std::vector<PrefQuestion>& questions,
                                                             const SampleCheckOptions& options);
// `options` with answer_marker filled from the template when empty.
SampleCheckOptions with_template_marker(SampleCheckOptions options, const PrefPrompt& prompt);

// The printed table of a summary.
std::string format_summary(const nlohmann::json& summary);

}  // namespace medllm::prefs

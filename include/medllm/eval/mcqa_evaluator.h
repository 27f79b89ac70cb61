// Zero-shot multiple-choice scoring (`medllm eval mcqa`): lm-evaluation-harness's acc / acc_norm over option
// log-likelihoods, generative scoring through the answer module, the resumable evaluation loop and the reports
// (report.json, report.md in the shape of the paper's Table 3, predictions/<task>.jsonl).
//
// Log-likelihood scoring follows lm-evaluation-harness's `multiple_choice` output type:
//   * request i of a question is (context = prompt, continuation = target_delimiter + choice_i);
//   * ll_i = sum of log p(token | everything before it) over the continuation's tokens;
//   * acc      = [argmax_i ll_i == gold]
//   * acc_norm = [argmax_i ll_i / len(choice_i) == gold], len = the number of Unicode code points of the choice
//                string without the delimiter (Python len(str) in lm_eval/api/task.py process_results; not bytes,
//                not tokens); np.argmax: the first index among equal maxima.
//   * acc_norm_tokens = [argmax_i ll_i / tokens_i == gold], tokens_i = the continuation's token count: JMedBench's
//                own scorer (nii-nlp/med-eval evaluate_mcqa.py "norm_accuracy": np.argmin(loss_i / n_valid_tokens_i),
//                the option's tokens after the prompt's), a different normalization from lm-eval's.
// Generative scoring: greedy completion of the same prompt (max_new_tokens of the task), the label read with the
// evaluator's answer module (extract_answer), else an option's text or label at the start of the answer.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/shards.h"
#include "medllm/eval/backend.h"
#include "medllm/eval/igakuqa_prompt.h"
#include "medllm/eval/mcqa_data.h"

namespace medllm::eval {

// One question's log-likelihood request: the rendered prompt and one continuation per option.
struct LoglikRequest {
    std::string context;
    std::vector<std::string> continuations;
};

struct ContinuationScore {
    double logprob = 0;      // summed log-probability of the continuation's tokens (fp32 log-softmax)
    int64_t tokens = 0;      // continuation tokens scored
    bool greedy    = false;  // every continuation token is the argmax of its distribution (lm-eval is_greedy)
};

// The model side: CompletionBackend for generative scoring plus log-likelihoods.
class McqaBackend : public CompletionBackend {
public:
    // One score per continuation of each request, in order. Tokenization as lm-eval: trailing whitespace of the
    // context moves to the continuation; the continuation's tokens are those of encode(context + continuation)
    // after the first len(encode(context)) tokens. Throws Error when a request does not fit the model's context.
    virtual std::vector<std::vector<ContinuationScore>> loglikelihood(const std::vector<LoglikRequest>& requests) = 0;
};

// np.argmax: the first index of the maximum. -1 for an empty list.
int argmax_first(const std::vector<double>& values);
// Number of Unicode code points (invalid bytes count one each), Python len() of the decoded string.
size_t codepoint_length(const std::string& text);

struct LoglikChoice {
    int pred             = -1;  // argmax of ll
    int pred_norm        = -1;  // argmax of ll / len(choice) in code points (lm-eval acc_norm)
    int pred_norm_tokens = -1;  // argmax of ll / the option's tokens (JMedBench norm_accuracy); -1 without tokens
};
// `tokens`: each option's scored token count (empty: pred_norm_tokens stays -1). A count of 0 divides by 1.
LoglikChoice choose_by_loglik(const std::vector<double>& logprobs, const std::vector<std::string>& choices,
                              const std::vector<int64_t>& tokens = {});

// The option index a generated answer names, or -1: extract_answer's letter (labels compared case-insensitively
// after zen_to_han), else the first line starting with an option's label or text (case-insensitive, longest match).
int generated_choice(const McqaTask& task, const McqaQuestion& question, const std::string& raw_output);

// The prompt as sent: the task's text alone (base) or as one ChatML user turn (with the task's system turn).
std::string format_mcqa_prompt(const McqaTask& task, const McqaQuestion& question, PromptFormat format);
// lm-eval's target_delimiter + choice; with the chat format the delimiter is "" (as lm-eval's
// apply_chat_template).
std::string mcqa_continuation(const McqaTask& task, const McqaQuestion& question, size_t i, PromptFormat format);

enum class McqaScoring { loglik, generate, both };
McqaScoring parse_mcqa_scoring(const std::string& text);  // throws UsageError
const char* to_string(McqaScoring scoring);

struct McqaOptions {
    McqaScoring scoring = McqaScoring::loglik;
    PromptFormat format = PromptFormat::base;
    int batch_size      = 16;          // questions per backend call
    std::filesystem::path output_dir;  // predictions/<task>.jsonl (+ .run.json) are written here; reruns resume
    bool overwrite = false;
    int64_t limit  = 0;  // > 0: only the first `limit` questions of each task (a smoke run; a later run resumes them)
    ShardPlace place;    // several processes share the questions (core/shards.h); default one process
};

struct McqaMetrics {
    int64_t n       = 0;
    int64_t correct = 0;
    double acc() const { return n ? static_cast<double>(correct) / static_cast<double>(n) : 0.0; }
};

struct McqaTaskResult {
    std::string task;
    nlohmann::json definition;
    std::vector<std::string> data_files;
    int64_t questions = 0;
    std::vector<std::string> skipped;
    McqaMetrics acc, acc_norm, generate;  // acc/acc_norm: log-likelihood scoring
    McqaMetrics acc_norm_tokens;          // log-likelihood per option token (JMedBench's normalization)
    int64_t generate_unparsed = 0;
    // per subject (mmmlu) -> acc, acc_norm, generate, acc_norm_tokens
    std::vector<std::pair<std::string, std::array<McqaMetrics, 4>>> subjects;
};

struct McqaResult {
    std::string model;
    std::string prompt_format;
    McqaScoring scoring = McqaScoring::loglik;
    std::vector<McqaTaskResult> tasks;
};

// The identity predictions/<task>.jsonl is saved under: the backend's identity, the task definition, the data
// files' hashes, the prompt format and the scoring.
nlohmann::json mcqa_run_identity(const McqaBackend& backend, const McqaTask& task, const McqaDataset& data,
                                 const McqaOptions& options);

// Scores every question (both scorings as asked) in batches of options.batch_size, resuming from
// <output_dir>/predictions/<task>.jsonl: a saved record (same run identity, same prompt) is not recomputed.
// Results do not depend on the batch size or on how a run was split by resumes. Under several processes
// (options.place) rank R runs every R-th question still to do (of each scoring) into its shard
// predictions/<task>.rank<R>-of<W>.jsonl; rank 0 folds the shards into predictions/<task>.jsonl in the order one
// process writes (log-likelihood records, then generated ones, each by question index) and scores; the other ranks
// return a result without scores.
McqaTaskResult evaluate_mcqa_task(const McqaTask& task, const McqaDataset& data, McqaBackend& backend,
                                  const McqaOptions& options);

nlohmann::json mcqa_report_json(const McqaResult& result);
std::string mcqa_report_markdown(const McqaResult& result);
// report.json and report.md into `dir`, atomically.
void write_mcqa_reports(const std::filesystem::path& dir, const McqaResult& result);

}  // namespace medllm::eval

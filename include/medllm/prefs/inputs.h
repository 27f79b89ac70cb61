// The inputs of `medllm build-prefs`: exam questions with verified explanations, the few-shot examples drawn for
// each question, the evaluation-overlap guard, and the reasoning prompt template.
//
// Questions use IgakuQA's record format (docs/reference/igakuqa.md §2) plus `explanation`:
//   {"problem_id": "111A1", "problem_text": "...", "choices": ["...", ...], "answer": ["c"], "points": "1",
//    "text_only": true, "explanation": "..."}
// and optionally `case_id` (questions of one linked case share it; see case_group()).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/data/guard.h"
#include "medllm/eval/igakuqa_data.h"

namespace medllm::prefs {

struct PrefQuestion {
    eval::Question question;  // answer normalised: sorted lower-case letters, or one number string
    std::string explanation;  // the verified explanation (the ground-truth response)
    std::string case_group;   // questions with the same non-empty group share a case stem
    std::string source;       // file the record came from
    std::size_t line = 0;     // 1-based line in `source`
    std::string where() const { return source + ":" + std::to_string(line); }
};

struct QuestionLoadOptions {
    bool refuse_bad_records = false;        // false: a record missing a needed field is reported and skipped
    std::string key         = "questions";  // the config key that named the files, in messages (few_shot.file)
};

struct QuestionLoadReport {
    std::size_t records = 0;            // records read
    std::vector<std::string> problems;  // "file:line: problem_id X: missing field 'explanation'" per skipped record
    std::vector<std::filesystem::path> files;
};

// Reads JSONL files, or every *.jsonl below a directory (sorted; IgakuQA's *_metadata / *_translate and
// prediction files are left out). A record missing a needed field (problem_id, problem_text, choices, answer,
// explanation), with a field of the wrong type, or with an answer that is not one of its choices is reported
// naming file, line and field, then skipped (logged) or refused (Error) per `options`. Invalid JSON and duplicate
// problem_ids are always an Error. The answers are normalised (zen_to_han, lower case, sorted).
std::vector<PrefQuestion> load_pref_questions(const std::vector<std::filesystem::path>& inputs,
                                              const QuestionLoadOptions& options, QuestionLoadReport* report = nullptr);

// Linked-case sets (連問): a leader "次の文を読み、47〜49の問いに答えよ。" covers the questions of the same exam and
// section numbered 47..49; they get the group "<exam><section>47-49". A record's `case_id` wins. Assigned by
// load_pref_questions; exposed for tests.
void assign_case_groups(std::vector<PrefQuestion>& questions);

// Few-shot examples for `target`: `k` questions of `pool`, drawn with a generator seeded by (seed, target's
// problem_id) so it depends only on the pool, the seed and the target, not on the other targets; never the target and
// never one that shares its case group. Throws Error naming the target when fewer than k candidates exist.
std::vector<const PrefQuestion*> draw_few_shot(const std::vector<PrefQuestion>& pool, const PrefQuestion& target,
                                               int64_t k, uint64_t seed);

// Few-shot examples for `target` from a fixed file (few_shot.file, loaded as `shots`): the first k of its questions,
// in file order, that are not the target itself (the same problem_id, or the same question text and choices after
// the guard's normalization) nor of the target's linked case -- a question never sees its own explanation and
// answer. Throws UsageError naming `file`, the target's problem_id and where it is when fewer than k remain
// (refused rather than run with fewer shots: a prompt with fewer examples is another experimental condition, and
// the fix -- one more example in the file, or the question out of the questions -- is quick before the model loads).
std::vector<const PrefQuestion*> fixed_few_shot(const std::vector<PrefQuestion>& shots,
                                                const std::filesystem::path& file, const PrefQuestion& target,
                                                int64_t k);

// ---------------------------------------------------------------- evaluation-overlap guard

struct EvalGuardOptions {
    std::vector<int64_t> eval_exams = {112, 113, 114, 115, 116};  // IgakuQA 2018-2022
    std::filesystem::path igakuqa_dir;                            // empty: no problem_id / text check
    std::vector<int> years = {2018, 2019, 2020, 2021, 2022};      // igakuqa_dir's years that are checked
    data::GuardOptions text;                                      // the corpus guard's n-gram settings
};

struct EvalOverlap {
    std::string where;  // file:line
    std::string problem_id;
    std::string reason;  // "exam 112 is an evaluation exam", "problem_id is in <dir>", "text overlaps 114A3 (0.93)"
};

// Every question that overlaps the evaluation exams: an exam number in eval_exams (from the problem_id), a
// problem_id present in the IgakuQA directory, or text (problem + choices) that the corpus contamination guard
// (data::ContaminationGuard) finds in it.
std::vector<EvalOverlap> find_eval_overlap(const std::vector<PrefQuestion>& questions, const EvalGuardOptions& options);

// ---------------------------------------------------------------- prompt template

// One question block, e.g. the paper's "Question: {question}\n{options}\n Explanation:{explanation}\n
// Answer:{answer}". A few-shot prompt is the examples' full blocks joined by `separator`, then the target's block
// cut just after the explanation marker; the model writes "<explanation>\n Answer:<answer>".
struct PrefTemplate {
    std::string block;
    std::string option           = "{label}: {text}";  // one line per choice, joined by "\n"
    std::string labels           = "abcdefgh";         // the choice labels (any case; answers are read lower-cased)
    std::string separator        = "\n\n";
    std::string answer_separator = ",";  // between the letters of a multi-answer key
    std::string system;                  // chat only: the system message ("" = none)
};

// "paper" (the English template above, no system message) or "ja" (問題 / 解説 / 答え, the IgakuQA system message
// "医師国家試験を解きます。"). Throws UsageError for another name.
PrefTemplate template_preset(const std::string& name);

class PrefPrompt {
public:
    // Checks the template: {question}, {options}, {explanation} and {answer} each once, in that order, an answer
    // marker between {explanation} and {answer} that the evaluator's extraction recognises (eval::extract_answer),
    // and enough labels. Throws UsageError naming the problem.
    explicit PrefPrompt(PrefTemplate t);

    // The target's block up to the explanation marker (what the model continues).
    std::string head(const eval::Question& q) const;
    // What follows the head for a given explanation and answer ("<explanation>\n Answer:a,c"): the GT response.
    std::string response(const std::string& explanation, const std::vector<std::string>& answer) const;
    std::string full_block(const PrefQuestion& q) const {
        return head(q.question) + response(q.explanation, q.question.answer);
    }

    // Base rendering: examples' blocks + separator + the target's head.
    std::string base_prompt(const PrefQuestion& target, const std::vector<const PrefQuestion*>& examples) const;
    // Chat rendering as messages: [system], then user = head, assistant = response per example, then the target's
    // head as the last user turn.
    nlohmann::json chat_messages(const PrefQuestion& target, const std::vector<const PrefQuestion*>& examples) const;

    // Stop string for base models: a new line that starts the next question block ("\nQuestion:").
    std::string next_block_stop() const;
    // The text between {explanation} and {answer} ("\n Answer:").
    const std::string& answer_marker() const { return between_e_a_; }
    const PrefTemplate& get() const { return t_; }
    nlohmann::json to_json() const;

private:
    std::string options_text(const std::vector<std::string>& choices) const;
    std::string answer_text(const std::vector<std::string>& answer) const;
    PrefTemplate t_;
    std::string before_question_, between_q_o_, between_o_e_, between_e_a_, after_answer_;
};

}  // namespace medllm::prefs

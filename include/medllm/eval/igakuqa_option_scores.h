// Option-text log-likelihood scoring: for every question, the mean log-probability per token of each choice's
// *text* after the question's answer marker; the highest is the model's answer. A second column next to the
// evaluator's generated letters, because a tiny model learns which option text is right long before it learns to
// answer with the option's letter (the quickstart's measurements, docs/quickstart.md).
//
//   standard:    render_user_turn(question, standard) + "\n答え:" + choice text
//   explanation: render_user_turn(question, explanation) + "\n" + the model's own explanation (its explanation-mode
//                completion from the evaluator's predictions.jsonl, cut before its last answer marker) +
//                "答え:" + choice text
// Prompts are 0-shot (no system line, no few-shot examples): five options per question cost five forward passes,
// and the 3-shot prefix would make each ten times longer. The generated explanations come from the evaluator's
// 3-shot explanation prompt.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/eval/igakuqa_data.h"

namespace medllm::eval {

// The model side: the mean log-probability per token of each continuation after `prefix` (one value per
// continuation, in order). generate::option_text_scorer implements it over a loaded model.
using OptionTextScorer =
    std::function<std::vector<double>(const std::string& prefix, const std::vector<std::string>& continuations)>;

struct OptionScoreOptions {
    std::filesystem::path predictions;  // the evaluator's predictions.jsonl ("" = no explanation column)
};

// {standard, explanation}: per mode the picks scored like the evaluator (summary_json: points, per year) plus
// `gold_margin` (mean over questions of the gold option's score minus the other options' average);
// {text_standard, text_explanation}: the evaluator's generated answers read as option text
// (eval::choice_named_by_text) and scored the same way. Throws medllm::Error for an unreadable file.
nlohmann::json score_options(const std::vector<Question>& questions, const OptionTextScorer& scorer,
                             const OptionScoreOptions& options);

// The explanation text a completion gives before its last answer marker ("" when it gives none).
std::string explanation_before_answer(const std::string& raw_output);

}  // namespace medllm::eval

// Option-text log-likelihood scoring (include/medllm/eval/igakuqa_option_scores.h).
#include "medllm/eval/igakuqa_option_scores.h"

#include <map>

#include "medllm/core/error.h"
#include "medllm/core/progress.h"
#include "medllm/eval/igakuqa_answer.h"
#include "medllm/eval/igakuqa_predictions.h"
#include "medllm/eval/igakuqa_prompt.h"
#include "medllm/eval/igakuqa_report.h"
#include "medllm/eval/igakuqa_scoring.h"

namespace medllm::eval {
namespace {

constexpr char kLetters[] = "abcdefgh";

nlohmann::json mode_json(const std::vector<eval::Question>& questions, const std::vector<std::string>& picks) {
    std::vector<eval::ScoredItems> items;
    for (const auto& p : picks) items.push_back(p.empty() ? eval::ScoredItems{} : eval::ScoredItems{{p}});
    auto summary = eval::score_questions(questions, items);
    auto j       = eval::summary_json(summary);
    j["picks"]   = picks;
    return j;
}

}  // namespace

std::string explanation_before_answer(const std::string& raw_output) {
    // The evaluator's markers (答え:, 答えは, 答:, 解答:) all contain 答; the explanation ends before the last one.
    const std::string normalized = eval::official_prediction(raw_output);
    const bool has_marker        = eval::find_after_last_answer_marker(normalized) != std::string::npos;
    const size_t cut             = raw_output.rfind("答");
    std::string text             = has_marker && cut != std::string::npos ? raw_output.substr(0, cut) : raw_output;
    if (text.size() >= 3 && text.compare(text.size() - 3, 3, "解") == 0) text.resize(text.size() - 3);  // 解答:
    if (text.empty() || text.back() != '\n') text += "\n";
    return text;
}

nlohmann::json score_options(const std::vector<Question>& questions, const OptionTextScorer& scorer,
                             const OptionScoreOptions& options) {
    std::map<std::string, std::string> explanations, answers;  // problem_id -> raw completion, per mode
    if (!options.predictions.empty()) {
        const auto records = eval::read_jsonl(options.predictions);
        for (size_t i = 0; i < records.size(); ++i) {
            const auto r = eval::PredictionRecord::from_json(
                records[i], options.predictions.string() + ":" + std::to_string(i + 1));
            (r.mode == eval::PromptMode::explanation ? explanations : answers)[r.problem_id] = r.raw_output;
        }
    }
    // The generated answers read as option text (eval::choice_named_by_text), per mode.
    auto text_answers = [&](const std::map<std::string, std::string>& raw) {
        std::vector<std::string> picks;
        for (const auto& q : questions) {
            auto it = raw.find(q.problem_id);
            picks.push_back(it == raw.end() || q.is_numeric() ? std::string()
                                                              : eval::choice_named_by_text(it->second, q.choices));
        }
        return picks;
    };
    std::vector<std::string> standard, explained;
    double margin[2] = {0, 0};
    int margins[2]   = {0, 0};
    ProgressLog progress("option scoring", static_cast<int64_t>(questions.size()), "questions");
    for (size_t qi = 0; qi < questions.size(); ++qi) {
        const auto& q = questions[qi];
        if (q.is_numeric()) {  // no option text to score
            standard.emplace_back();
            explained.emplace_back();
            continue;
        }
        // The gold option's score minus the mean of the others: how much the model prefers the right text, a
        // continuous measure (the picks are its argmax).
        const int gold = q.answer.size() == 1 && q.answer[0].size() == 1 ? q.answer[0][0] - 'a' : -1;
        auto pick      = [&](const std::string& prefix, double& margin_sum, int& margin_count) {
            const auto s = scorer(prefix, q.choices);
            size_t best  = 0;
            for (size_t i = 1; i < s.size(); ++i)
                if (s[i] > s[best]) best = i;
            if (gold >= 0 && gold < static_cast<int>(s.size()) && s.size() > 1) {
                double others = 0;
                for (size_t i = 0; i < s.size(); ++i)
                    if (static_cast<int>(i) != gold) others += s[i];
                margin_sum += s[gold] - others / static_cast<double>(s.size() - 1);
                ++margin_count;
            }
            return std::string(1, kLetters[best]);
        };
        const size_t count = q.answer.size();
        // The standard user turn ends with "\n答え:", as the corpus' practice questions do.
        standard.push_back(pick(eval::render_user_turn(q.problem_text, q.choices, count, eval::PromptMode::standard),
                                margin[0], margins[0]));
        auto it = explanations.find(q.problem_id);
        if (it == explanations.end()) {
            explained.emplace_back();
        } else {
            explained.push_back(
                pick(eval::render_user_turn(q.problem_text, q.choices, count, eval::PromptMode::explanation) + "\n" +
                         explanation_before_answer(it->second) + eval::kAnswerMarker,
                     margin[1], margins[1]));
        }
        progress.update(static_cast<int64_t>(qi + 1));
    }
    nlohmann::json out;
    out["method"]   = "option-text log-likelihood (mean per token), 0-shot";
    out["standard"] = mode_json(questions, standard);
    if (!explanations.empty()) out["explanation"] = mode_json(questions, explained);
    // Mean over questions of (gold option's mean log-prob per token) - (the other options' average).
    out["standard"]["gold_margin"] = margins[0] ? margin[0] / margins[0] : 0.0;
    if (out.contains("explanation")) out["explanation"]["gold_margin"] = margins[1] ? margin[1] / margins[1] : 0.0;
    if (!answers.empty()) out["text_standard"] = mode_json(questions, text_answers(answers));
    if (!explanations.empty()) out["text_explanation"] = mode_json(questions, text_answers(explanations));
    return out;
}

}  // namespace medllm::eval

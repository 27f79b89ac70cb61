// The official IgakuQA scoring rule and the MHLW pass criteria.
#include "medllm/eval/igakuqa_scoring.h"

#include <algorithm>
#include <set>
#include <stdexcept>

namespace medllm::eval {

std::vector<std::string> official_split(const std::string& prediction) {
    std::vector<std::string> parts;
    size_t start = 0;
    while (true) {
        const size_t comma = prediction.find(',', start);
        if (comma == std::string::npos) {
            parts.push_back(prediction.substr(start));
            return parts;
        }
        parts.push_back(prediction.substr(start, comma - start));
        start = comma + 1;
    }
}

bool official_is_correct(const std::string& problem_id, std::vector<std::string> items, std::vector<std::string> gold) {
    std::sort(items.begin(), items.end());
    std::sort(gold.begin(), gold.end());
    // MHLW credited everyone for 116A71; the official scorer hard-codes it.
    if (problem_id == "116A71") return true;
    // 112B30's gold is stored as ["a or d"]: either answer is accepted.
    if (problem_id == "112B30" && (items == std::vector<std::string>{"a"} || items == std::vector<std::string>{"d"}))
        return true;
    return items == gold;
}

std::optional<PassThresholds> pass_thresholds(int year) {
    switch (year) {
        case 2018:
            return PassThresholds{160, 208, 3};
        case 2019:
            return PassThresholds{160, 209, 3};
        case 2020:
            return PassThresholds{158, 217, 3};
        case 2021:
            return PassThresholds{160, 209, 3};
        case 2022:
            return PassThresholds{158, 214, 3};
        default:
            return std::nullopt;
    }
}

std::string YearScore::no_verdict_reason() const {
    if (passed) return "";
    if (!thresholds) return "no pass criteria for " + std::to_string(year);
    if (!complete)
        return "incomplete: " + std::to_string(total.count) + " of " + std::to_string(expected_questions) +
               " questions";
    return "points possible " + std::to_string(total.possible) + ", the exam has " + std::to_string(expected_points);
}

void Tally::add(bool is_correct, int question_points) {
    ++count;
    possible += question_points;
    if (is_correct) {
        ++correct;
        points += question_points;
    }
}

ScoreSummary score_questions(const std::vector<Question>& questions, const std::vector<ScoredItems>& items) {
    if (questions.size() != items.size())
        throw std::invalid_argument("score_questions: " + std::to_string(items.size()) + " predictions for " +
                                    std::to_string(questions.size()) + " questions");
    ScoreSummary summary;
    std::map<int, YearScore> years;
    for (size_t i = 0; i < questions.size(); ++i) {
        const Question& q = questions[i];
        YearScore& year   = years[q.year];
        year.year         = q.year;
        year.exam         = q.exam;

        bool correct = false;
        if (!items[i]) {
            summary.missing.push_back(q.problem_id);
        } else {
            correct               = official_is_correct(q.problem_id, *items[i], q.answer);
            const auto& chosen    = *items[i];
            const bool hits_kinki = std::any_of(chosen.begin(), chosen.end(), [&](const std::string& c) {
                return std::find(q.kinki.begin(), q.kinki.end(), c) != q.kinki.end();
            });
            if (hits_kinki) {
                ++year.kinki_selected;
                year.kinki_questions.push_back(q.problem_id);
            }
        }
        if (!correct) summary.incorrect.push_back(q.problem_id);
        summary.correct.push_back(correct);

        year.sections[q.section].add(correct, q.points);
        year.total.add(correct, q.points);
        (q.is_required_section() ? year.required : year.general).add(correct, q.points);
        summary.total.add(correct, q.points);
        summary.categories[q.category].add(correct, q.points);
    }
    double normalized_sum = 0.0;
    for (auto& [y, year] : years) {
        year.thresholds = pass_thresholds(y);
        if (const ExamSize* exam = known_exam_size(y)) {
            year.expected_questions = exam->total_questions();
            year.expected_points    = exam->total_points();
            year.complete           = true;
            for (char section : kSections) {
                auto it = year.sections.find(section);
                if ((it == year.sections.end() ? 0 : it->second.count) != exam->questions[section_index(section)])
                    year.complete = false;
            }
        }
        if (year.thresholds && year.complete && year.total.possible == year.expected_points) {
            year.passed = year.required.points >= year.thresholds->required_min &&
                          year.general.points >= year.thresholds->general_min &&
                          year.kinki_selected <= year.thresholds->max_kinki;
        }
        normalized_sum += year.total.normalized();
        summary.years.push_back(year);
    }
    if (!years.empty()) summary.year_mean_normalized = normalized_sum / static_cast<double>(years.size());
    return summary;
}

}  // namespace medllm::eval

// IgakuQA scoring: the official rule of scripts/evaluate_main.py, exactly, plus the MHLW pass criteria.
// docs/reference/igakuqa.md §4-5.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "medllm/eval/igakuqa_data.h"

namespace medllm::eval {

// Python `prediction.split(',')`: no strip, no lower-case; "" gives {""}.
std::vector<std::string> official_split(const std::string& prediction);

// The official correctness rule on already-split items: 116A71 is always credited; 112B30 accepts exactly
// {"a"} or {"d"}; otherwise sorted(items) == sorted(gold).
bool official_is_correct(const std::string& problem_id, std::vector<std::string> items, std::vector<std::string> gold);

// Pass thresholds of one exam year (official MHLW announcements).
struct PassThresholds {
    int required_min = 0;  // 必修 (B+E) points
    int general_min  = 0;  // 一般・臨床 (A+C+D+F) points
    int max_kinki    = 3;  // at most this many prohibited choices selected
};
std::optional<PassThresholds> pass_thresholds(int year);

// One question's prediction for scoring: nullopt = no prediction at all (counts as wrong and is listed);
// otherwise the answer items (official: the ',' split; lenient: extracted letters, empty when unparseable).
using ScoredItems = std::optional<std::vector<std::string>>;

struct Tally {
    int correct  = 0;
    int count    = 0;
    int points   = 0;  // earned
    int possible = 0;
    double normalized() const { return possible ? static_cast<double>(points) / possible : 0.0; }
    double accuracy() const { return count ? static_cast<double>(correct) / count : 0.0; }
    void add(bool is_correct, int question_points);
};

struct YearScore {
    int year = 0;
    int exam = 0;
    std::map<char, Tally> sections;  // 'A'..'F'
    Tally total;
    Tally required;  // B+E
    Tally general;   // A+C+D+F
    int kinki_selected = 0;
    std::vector<std::string> kinki_questions;
    std::optional<PassThresholds> thresholds;
    // The exam's size (known_exam_size; 0 for an unknown year). `complete`: every section holds the exam's question
    // count. pass/fail is given only for a complete exam whose points possible are the exam's, since the MHLW
    // thresholds are points out of exactly those totals.
    int expected_questions = 0;
    int expected_points    = 0;
    bool complete          = false;
    std::optional<bool> passed;
    // Why `passed` is not given: "incomplete: 12 of 400 questions", "points possible 510, the exam has
    // 499", "no pass criteria for 2017"; "" when it is.
    std::string no_verdict_reason() const;
};

struct ScoreSummary {
    std::vector<YearScore> years;
    Tally total;
    double year_mean_normalized = 0.0;  // mean over years of points/possible
    std::map<std::string, Tally> categories;
    std::vector<std::string> missing;    // problem_ids without a prediction
    std::vector<std::string> incorrect;  // problem_ids scored wrong (missing ones included)
    std::vector<bool> correct;           // per question, aligned with the questions scored
};

// Scores `items[i]` against `questions[i]` (same length; throws std::invalid_argument otherwise).
// A question counts toward the prohibited-choice tally when its items intersect its normalised kinki letters.
ScoreSummary score_questions(const std::vector<Question>& questions, const std::vector<ScoredItems>& items);

}  // namespace medllm::eval

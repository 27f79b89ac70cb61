// IgakuQA data: questions with their metadata, the few-shot examples, and year selection.
// Layout and field meanings: docs/reference/igakuqa.md §1-3.
#pragma once

#include <array>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace medllm::eval {

inline constexpr char kSections[] = {'A', 'B', 'C', 'D', 'E', 'F'};

// 2018 = 第112回 ... 2022 = 第116回.
inline int exam_number_for_year(int year) {
    return year - 1906;
}

// The size of one exam as the IgakuQA data ships it: questions and points possible in each section A-F.
struct ExamSize {
    int year = 0;
    std::array<int, 6> questions{};  // sections A..F
    std::array<int, 6> points{};
    int total_questions() const;
    int total_points() const;
};

// The exam's size for 2018..2022, nullptr for any other year. The table is derived from the data files of
// jungokasai/IgakuQA commit 2bc4c3d (../shared/igakuqa_data; scripts/igakuqa_exam_sizes.py prints it again) and
// agrees with docs/reference/igakuqa.md §3. A data directory whose sections hold other counts is incomplete:
// its scores are reported, its pass/fail is not.
const ExamSize* known_exam_size(int year);

// 'A'..'F' -> 0..5; -1 for anything else.
int section_index(char section);

struct Question {
    std::string problem_id;  // "112A1"
    int year     = 0;
    int exam     = 0;    // 112
    char section = 'A';  // 'A'..'F'
    std::string problem_text;
    std::vector<std::string> choices;  // unlabeled; empty for numeric-entry questions
    bool text_only = true;
    std::vector<std::string> answer;  // gold, as stored (sorted letters, a number string, or "a or d")
    int points = 0;
    std::string category;            // specialty from the metadata
    std::vector<std::string> kinki;  // prohibited choices, normalised to single sorted letters (§3.1)

    bool is_numeric() const { return choices.empty(); }
    bool is_required_section() const { return section == 'B' || section == 'E'; }  // 必修
};

struct FewShotExample {
    std::string problem_id;
    std::string problem_text;
    std::vector<std::string> choices;
    std::vector<std::string> answer;
    std::string explanation;
};

// "2018-2022", "2019", "2018,2020-2021" -> sorted unique years; each must be 2018..2022. Throws UsageError.
std::vector<int> parse_years(const std::string& spec);

// Reads every section of the given years from `data_dir`/data/<year>/<exam>-<S>.jsonl and the aligned
// *_metadata.jsonl (same length, same problem_id at every position, like the original check_jsonls).
// Questions come back in year, section, file order. Throws medllm::Error naming file, line and problem_id for a
// bad record, also for an answer that is not one of the question's choices (letters a.. for its choice count,
// no duplicates; the one stored "a or d" of 112B30 excepted) and for empty `choices` on a question whose answer
// is not a number (only numeric-entry questions have no choices).
// Warns (does not throw) when a year's sections do not hold the exam's question counts (known_exam_size), and
// when a file differs from the data's MANIFEST.tsv (records or bytes), when the directory has one.
std::vector<Question> load_questions(const std::filesystem::path& data_dir, const std::vector<int>& years);

// `eval igakuqa --limit N` (a smoke run): the first `limit` questions of every year and section, in the order
// given; every question when limit <= 0. A later run with a larger limit resumes the questions already done.
std::vector<Question> first_questions_per_section(std::vector<Question> questions, int64_t limit);

// The few-shot examples (scripts/prompts/prompt.jsonl), in file order; answers are validated against the choices
// as in load_questions.
std::vector<FewShotExample> load_few_shot_examples(const std::filesystem::path& prompt_file);
std::filesystem::path default_prompt_file(const std::filesystem::path& data_dir);

// Warns when `file` (inside `data_dir`) is listed in `data_dir`/MANIFEST.tsv with another byte size or record
// count (`records`); silent when there is no manifest or it does not list the file.
void check_against_manifest(const std::filesystem::path& data_dir, const std::filesystem::path& file, size_t records);

// The identity of what the prompts are built from, for resume checks: the XXH3 of every question file
// data/<year>/<exam>-<S>.jsonl of 2018..2022 present in `data_dir` (not the metadata, which only scoring reads;
// scores are recomputed on every run). Independent of the years selected, so a rerun may add years.
nlohmann::json data_identity(const std::filesystem::path& data_dir);

// Prohibited-choice normalisation: zen_to_han, lower-case, every a-h character is one choice ("cde", "ｂ", " e").
std::vector<std::string> normalize_kinki(const std::vector<std::string>& raw);

// One JSON object per non-empty line. Throws medllm::Error "<file>:<line>: ..." on unreadable files or bad JSON.
std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& file);

}  // namespace medllm::eval

// IgakuQA data: questions with their metadata, the few-shot examples, and year selection.
// Layout and field meanings: ../shared/reference/igakuqa.md §1-3.
#pragma once

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
// Questions come back in year, section, file order. Throws medllm::Error naming file and line.
std::vector<Question> load_questions(const std::filesystem::path& data_dir, const std::vector<int>& years);

// The few-shot examples (scripts/prompts/prompt.jsonl), in file order.
std::vector<FewShotExample> load_few_shot_examples(const std::filesystem::path& prompt_file);
std::filesystem::path default_prompt_file(const std::filesystem::path& data_dir);

// Prohibited-choice normalisation: zen_to_han, lower-case, every a-h character is one choice ("cde", "ｂ", " e").
std::vector<std::string> normalize_kinki(const std::vector<std::string>& raw);

// One JSON object per non-empty line. Throws medllm::Error "<file>:<line>: ..." on unreadable files or bad JSON.
std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& file);

}  // namespace medllm::eval

#include "medllm/eval/igakuqa_data.h"

#include <algorithm>
#include <fstream>
#include <set>

#include "medllm/core/error.h"
#include "medllm/eval/answer.h"

namespace medllm::eval {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kFirstYear = 2018;
constexpr int kLastYear  = 2022;

std::string where(const fs::path& file, size_t line) {
    return file.string() + ":" + std::to_string(line);
}

const json& require(const json& record, const char* key, const fs::path& file, size_t line) {
    auto it = record.find(key);
    if (it == record.end()) throw Error(where(file, line) + ": missing key '" + key + "'");
    return *it;
}

std::string require_string(const json& record, const char* key, const fs::path& file, size_t line) {
    const json& value = require(record, key, file, line);
    if (!value.is_string()) throw Error(where(file, line) + ": key '" + key + "' must be a string");
    return value.get<std::string>();
}

std::vector<std::string> require_string_list(const json& record, const char* key, const fs::path& file, size_t line) {
    const json& value = require(record, key, file, line);
    if (!value.is_array()) throw Error(where(file, line) + ": key '" + key + "' must be a list of strings");
    std::vector<std::string> out;
    for (const auto& item : value) {
        if (!item.is_string()) throw Error(where(file, line) + ": key '" + key + "' must be a list of strings");
        out.push_back(item.get<std::string>());
    }
    return out;
}

int parse_year(const std::string& text, const std::string& spec) {
    size_t used = 0;
    int year    = 0;
    try {
        year = std::stoi(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used == 0 || used != text.size())
        throw UsageError("--years '" + spec + "': '" + text + "' is not a year (expected e.g. 2018-2022)");
    if (year < kFirstYear || year > kLastYear)
        throw UsageError("--years '" + spec + "': " + text + " is outside the IgakuQA data (2018-2022)");
    return year;
}

}  // namespace

std::vector<json> read_jsonl(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw Error(file.string() + ": cannot open file");
    std::vector<json> records;
    std::string text;
    size_t line = 0;
    while (std::getline(in, text)) {
        ++line;
        if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
        try {
            records.push_back(json::parse(text));
        } catch (const json::exception& e) {
            throw Error(where(file, line) + ": invalid JSON (" + e.what() + ")");
        }
        if (!records.back().is_object()) throw Error(where(file, line) + ": expected a JSON object");
    }
    return records;
}

std::vector<int> parse_years(const std::string& spec) {
    std::set<int> years;
    size_t start = 0;
    while (start <= spec.size()) {
        size_t comma            = spec.find(',', start);
        const std::string token = spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        const size_t dash       = token.find('-');
        if (dash == std::string::npos) {
            years.insert(parse_year(token, spec));
        } else {
            const int first = parse_year(token.substr(0, dash), spec);
            const int last  = parse_year(token.substr(dash + 1), spec);
            if (first > last) throw UsageError("--years '" + spec + "': range " + token + " is reversed");
            for (int y = first; y <= last; ++y) years.insert(y);
        }
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return {years.begin(), years.end()};
}

std::vector<std::string> normalize_kinki(const std::vector<std::string>& raw) {
    std::set<std::string> letters;
    for (const auto& entry : raw) {
        for (char c : official_prediction(entry)) {
            if (c >= 'a' && c <= 'h') letters.insert(std::string(1, c));
        }
    }
    return {letters.begin(), letters.end()};
}

std::vector<Question> load_questions(const fs::path& data_dir, const std::vector<int>& years) {
    if (!fs::is_directory(data_dir / "data"))
        throw Error(data_dir.string() + ": not an IgakuQA data directory (no data/ folder inside)");
    std::vector<Question> questions;
    std::set<std::string> seen_ids;
    for (int year : years) {
        const int exam = exam_number_for_year(year);
        for (char section : kSections) {
            const std::string stem = std::to_string(exam) + "-" + section;
            const fs::path qfile   = data_dir / "data" / std::to_string(year) / (stem + ".jsonl");
            const fs::path mfile   = data_dir / "data" / std::to_string(year) / (stem + "_metadata.jsonl");
            const auto qrecords    = read_jsonl(qfile);
            const auto mrecords    = read_jsonl(mfile);
            if (qrecords.size() != mrecords.size())
                throw Error(mfile.string() + ": " + std::to_string(mrecords.size()) + " records but " + qfile.string() +
                            " has " + std::to_string(qrecords.size()));
            const std::string id_prefix = std::to_string(exam) + section;
            for (size_t i = 0; i < qrecords.size(); ++i) {
                const json& q = qrecords[i];
                const json& m = mrecords[i];
                Question question;
                question.problem_id = require_string(q, "problem_id", qfile, i + 1);
                if (question.problem_id.rfind(id_prefix, 0) != 0)
                    throw Error(where(qfile, i + 1) + ": problem_id '" + question.problem_id +
                                "' does not belong to section " + id_prefix);
                if (!seen_ids.insert(question.problem_id).second)
                    throw Error(where(qfile, i + 1) + ": duplicate problem_id '" + question.problem_id + "'");
                const std::string meta_id = require_string(m, "problem_id", mfile, i + 1);
                if (meta_id != question.problem_id)
                    throw Error(where(mfile, i + 1) + ": problem_id '" + meta_id + "' but " + qfile.string() +
                                " has '" + question.problem_id + "' at this position");
                question.year         = year;
                question.exam         = exam;
                question.section      = section;
                question.problem_text = require_string(q, "problem_text", qfile, i + 1);
                question.choices      = require_string_list(q, "choices", qfile, i + 1);
                if (question.choices.size() > 8)
                    throw Error(where(qfile, i + 1) + ": " + std::to_string(question.choices.size()) +
                                " choices (at most 8 supported)");
                const json& text_only = require(q, "text_only", qfile, i + 1);
                if (!text_only.is_boolean()) throw Error(where(qfile, i + 1) + ": key 'text_only' must be a bool");
                question.text_only = text_only.get<bool>();
                question.answer    = require_string_list(q, "answer", qfile, i + 1);
                if (question.answer.empty()) throw Error(where(qfile, i + 1) + ": key 'answer' is empty");
                // `points` is a string in the data ("1", "3", "0"); the official scorer does int(points).
                const json& points      = require(q, "points", qfile, i + 1);
                std::string points_text = points.is_string() ? points.get<std::string>() : points.dump();
                size_t used             = 0;
                try {
                    question.points = std::stoi(points_text, &used);
                } catch (const std::exception&) {
                    used = 0;
                }
                if (used == 0 || used != points_text.size() || question.points < 0)
                    throw Error(where(qfile, i + 1) + ": key 'points' is not a non-negative integer: " + points_text);
                question.category = require_string(m, "category", mfile, i + 1);
                question.kinki    = normalize_kinki(require_string_list(m, "kinki", mfile, i + 1));
                questions.push_back(std::move(question));
            }
        }
    }
    return questions;
}

fs::path default_prompt_file(const fs::path& data_dir) {
    return data_dir / "scripts" / "prompts" / "prompt.jsonl";
}

std::vector<FewShotExample> load_few_shot_examples(const fs::path& prompt_file) {
    const auto records = read_jsonl(prompt_file);
    if (records.empty()) throw Error(prompt_file.string() + ": no few-shot examples");
    std::vector<FewShotExample> examples;
    for (size_t i = 0; i < records.size(); ++i) {
        const json& r = records[i];
        FewShotExample ex;
        ex.problem_id   = require_string(r, "problem_id", prompt_file, i + 1);
        ex.problem_text = require_string(r, "problem_text", prompt_file, i + 1);
        ex.choices      = require_string_list(r, "choices", prompt_file, i + 1);
        ex.answer       = require_string_list(r, "answer", prompt_file, i + 1);
        if (ex.answer.empty()) throw Error(where(prompt_file, i + 1) + ": key 'answer' is empty");
        auto it = r.find("explanation");
        if (it != r.end() && it->is_string()) ex.explanation = it->get<std::string>();
        examples.push_back(std::move(ex));
    }
    return examples;
}

}  // namespace medllm::eval

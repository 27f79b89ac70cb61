// Reading IgakuQA questions, metadata and few-shot examples, and selecting years.
#include "medllm/eval/igakuqa_data.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/eval/igakuqa_answer.h"

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

// A question's gold answer must be answerable: letters of its own choices, or one number when it has no choices.
void validate_answer(const std::string& problem_id, const std::vector<std::string>& choices,
                     const std::vector<std::string>& answer, const std::string& at) {
    const std::string id = at + ": problem_id " + problem_id;
    if (answer.empty()) throw Error(id + ": key 'answer' is empty");
    if (choices.empty()) {
        // Numeric entry (12 questions, e.g. 112C66 "26", 113F84 "7.20"): one number, digits with at most one '.'.
        static const std::regex number(R"([0-9]+(\.[0-9]+)?)");
        if (answer.size() != 1 || !std::regex_match(answer[0], number))
            throw Error(id + ": key 'choices' is empty (a numeric-entry question) but the answer " + dump_json(answer) +
                        " is not one number; a multiple-choice question needs its choices");
        return;
    }
    const char last         = static_cast<char>('a' + choices.size() - 1);
    const std::string range = std::string("a-") + last;
    auto is_letter = [&](const std::string& item) { return item.size() == 1 && item[0] >= 'a' && item[0] <= last; };
    std::set<std::string> seen;
    for (const auto& item : answer) {
        // 112B30's gold is stored as "a or d"; the official scorer accepts either letter for that id only.
        static const std::regex either(R"(([a-h]) or ([a-h]))");
        std::smatch m;
        const bool stored_either = problem_id == "112B30" && std::regex_match(item, m, either) &&
                                   is_letter(m[1].str()) && is_letter(m[2].str());
        if (!is_letter(item) && !stored_either)
            throw Error(id + ": answer " + dump_json(item) + " is not one of its " + std::to_string(choices.size()) +
                        " choices (" + range + ")");
        if (!seen.insert(item).second) throw Error(id + ": answer lists " + dump_json(item) + " twice");
    }
}

// <path relative to the data directory> -> (bytes, records), from the data's MANIFEST.tsv (path, bytes, lines,
// git_blob_sha1 with a header line); empty when there is none.
struct ManifestEntry {
    uint64_t bytes = 0;
    size_t lines   = 0;
};
std::map<std::string, ManifestEntry> read_manifest(const fs::path& data_dir) {
    std::map<std::string, ManifestEntry> entries;
    const fs::path file = data_dir / "MANIFEST.tsv";
    std::error_code ec;
    if (!fs::is_regular_file(file, ec)) return entries;
    std::istringstream in(read_text_file(file));
    std::string line;
    size_t line_no = 0;
    while (std::getline(in, line)) {
        ++line_no;
        if (line_no == 1 || line.empty()) continue;  // header
        std::istringstream fields(line);
        std::string path, bytes, lines;
        if (!std::getline(fields, path, '\t') || !std::getline(fields, bytes, '\t') ||
            !std::getline(fields, lines, '\t'))
            continue;
        try {
            entries[path] = {std::stoull(bytes), static_cast<size_t>(std::stoull(lines))};
        } catch (const std::exception&) {
            spdlog::warn("{}:{}: not a manifest row (path, bytes, lines); ignored", file.string(), line_no);
        }
    }
    return entries;
}

void check_manifest_entry(const std::map<std::string, ManifestEntry>& manifest, const fs::path& data_dir,
                          const fs::path& file, size_t records) {
    if (manifest.empty()) return;
    const std::string rel = file.lexically_relative(data_dir).generic_string();
    auto it               = manifest.find(rel);
    if (it == manifest.end()) return;
    std::error_code ec;
    const uint64_t bytes = fs::file_size(file, ec);
    if (ec) return;
    if (bytes != it->second.bytes || records != it->second.lines)
        spdlog::warn(
            "{}: {} records, {} bytes; {} lists {} records, {} bytes: the data differ from the published IgakuQA "
            "files, so scores are not comparable with published ones",
            file.string(), records, bytes, (data_dir / "MANIFEST.tsv").string(), it->second.lines, it->second.bytes);
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

// A cut or padded data set still scores, but says so: pass/fail is then not reported (scoring.cpp).
void warn_if_not_the_exam(int year, const std::array<int, 6>& found, const std::array<int, 6>& points) {
    const ExamSize* exam = known_exam_size(year);
    if (!exam) return;
    int total = 0, total_points = 0;
    std::string detail;
    for (size_t s = 0; s < found.size(); ++s) {
        total += found[s];
        total_points += points[s];
        if (found[s] != exam->questions[s])
            detail += std::string(detail.empty() ? "" : ", ") + kSections[s] + " " + std::to_string(found[s]) + " of " +
                      std::to_string(exam->questions[s]);
    }
    if (!detail.empty()) {
        spdlog::warn("igakuqa {} (exam {}): incomplete: {} of {} questions ({}); its pass/fail is not reported", year,
                     exam_number_for_year(year), total, exam->total_questions(), detail);
    } else if (total_points != exam->total_points()) {
        spdlog::warn("igakuqa {} (exam {}): {} points possible, the exam has {}; its pass/fail is not reported", year,
                     exam_number_for_year(year), total_points, exam->total_points());
    }
}

}  // namespace

int ExamSize::total_questions() const {
    int n = 0;
    for (int q : questions) n += q;
    return n;
}

int ExamSize::total_points() const {
    int n = 0;
    for (int p : points) n += p;
    return n;
}

const ExamSize* known_exam_size(int year) {
    // Derived from ../shared/igakuqa_data/data/<year>/<exam>-<S>.jsonl (jungokasai/IgakuQA 2bc4c3d) by
    // scripts/igakuqa_exam_sizes.py: records and the sum of `points` per section A..F.
    static const ExamSize kExams[] = {
        {2018, {75, 49, 66, 75, 51, 84}, {74, 99, 66, 75, 101, 84}},
        {2019, {75, 49, 66, 75, 51, 84}, {74, 99, 65, 75, 101, 82}},
        {2020, {75, 50, 75, 75, 50, 75}, {75, 100, 75, 75, 97, 74}},
        {2021, {75, 50, 75, 75, 50, 75}, {75, 100, 75, 75, 100, 75}},
        {2022, {75, 50, 75, 75, 50, 75}, {74, 97, 74, 74, 100, 75}},
    };
    for (const auto& e : kExams)
        if (e.year == year) return &e;
    return nullptr;
}

int section_index(char section) {
    return section >= 'A' && section <= 'F' ? section - 'A' : -1;
}

void check_against_manifest(const fs::path& data_dir, const fs::path& file, size_t records) {
    check_manifest_entry(read_manifest(data_dir), data_dir, file, records);
}

json data_identity(const fs::path& data_dir) {
    json files = json::object();
    for (int year = kFirstYear; year <= kLastYear; ++year) {
        for (char section : kSections) {
            const std::string rel = "data/" + std::to_string(year) + "/" + std::to_string(exam_number_for_year(year)) +
                                    "-" + section + ".jsonl";
            std::error_code ec;
            if (fs::is_regular_file(data_dir / rel, ec)) files[rel] = hash_file(data_dir / rel);
        }
    }
    return {{"question_files_xxh3", files}};
}

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
    const auto manifest = read_manifest(data_dir);
    std::vector<Question> questions;
    std::set<std::string> seen_ids;
    for (int year : years) {
        const int exam = exam_number_for_year(year);
        std::array<int, 6> found{};
        std::array<int, 6> points_found{};
        for (char section : kSections) {
            const std::string stem = std::to_string(exam) + "-" + section;
            const fs::path qfile   = data_dir / "data" / std::to_string(year) / (stem + ".jsonl");
            const fs::path mfile   = data_dir / "data" / std::to_string(year) / (stem + "_metadata.jsonl");
            const auto qrecords    = read_jsonl(qfile);
            const auto mrecords    = read_jsonl(mfile);
            check_manifest_entry(manifest, data_dir, qfile, qrecords.size());
            check_manifest_entry(manifest, data_dir, mfile, mrecords.size());
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
                validate_answer(question.problem_id, question.choices, question.answer, where(qfile, i + 1));
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
                ++found[section_index(section)];
                points_found[section_index(section)] += question.points;
                questions.push_back(std::move(question));
            }
        }
        warn_if_not_the_exam(year, found, points_found);
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
        validate_answer(ex.problem_id, ex.choices, ex.answer, where(prompt_file, i + 1));
        auto it = r.find("explanation");
        if (it != r.end() && it->is_string()) ex.explanation = it->get<std::string>();
        examples.push_back(std::move(ex));
    }
    return examples;
}

std::vector<Question> first_questions_per_section(std::vector<Question> questions, int64_t limit) {
    if (limit <= 0) return questions;
    std::map<std::pair<int, char>, int64_t> taken;
    std::vector<Question> kept;
    for (auto& q : questions)
        if (taken[{q.year, q.section}]++ < limit) kept.push_back(std::move(q));
    return kept;
}

}  // namespace medllm::eval

// An inconsistent IgakuQA data directory (finding 7): cut sections are scored but reported incomplete, with no
// pass/fail; gold answers that are not among a question's choices, and empty choices on a letter question, are
// refused naming file:line and problem_id. The data directories here are temporary copies of ../shared data,
// edited per test; nothing is copied into the tree.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/eval/igakuqa_data.h"
#include "medllm/eval/igakuqa_evaluator.h"
#include "medllm/eval/igakuqa_report.h"
#include "medllm/eval/igakuqa_scoring.h"
#include "support/run_medllm.h"
#include "support/shared_data.h"

namespace medllm::eval {
namespace {
namespace fs = std::filesystem;

fs::path igakuqa_dir() {
    return shared_path("igakuqa_data");
}

std::vector<std::string> read_lines(const fs::path& file) {
    std::vector<std::string> lines;
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

void write_lines(const fs::path& file, const std::vector<std::string>& lines) {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    for (const auto& l : lines) out << l << '\n';
}

// A copy of 2018's data (and the few-shot file, and the manifest) in a temporary folder; `keep` records per
// section (0 = all); `edit` may change any question file's records before they are written.
fs::path make_data(const std::string& name, size_t keep = 0,
                   const std::function<void(const std::string& stem, std::vector<nlohmann::json>&)>& edit = {}) {
    const fs::path dir = fs::path(testing::TempDir()) / ("igakuqa_data_" + name);
    fs::remove_all(dir);
    fs::create_directories(dir / "data" / "2018");
    fs::create_directories(dir / "scripts" / "prompts");
    fs::copy_file(igakuqa_dir() / "scripts" / "prompts" / "prompt.jsonl", dir / "scripts" / "prompts" / "prompt.jsonl");
    fs::copy_file(igakuqa_dir() / "MANIFEST.tsv", dir / "MANIFEST.tsv");
    for (char section : kSections) {
        const std::string stem = std::string("112-") + section;
        for (const std::string suffix : {"", "_metadata"}) {
            auto lines = read_lines(igakuqa_dir() / "data" / "2018" / (stem + suffix + ".jsonl"));
            if (keep) lines.resize(keep);
            if (suffix.empty() && edit) {
                std::vector<nlohmann::json> records;
                for (const auto& l : lines) records.push_back(nlohmann::json::parse(l));
                const auto before = records;
                edit(stem, records);
                for (size_t i = 0; i < records.size(); ++i)
                    if (records[i] != before[i]) lines[i] = records[i].dump();
            }
            write_lines(dir / "data" / "2018" / (stem + suffix + ".jsonl"), lines);
        }
    }
    return dir;
}

std::string load_error(const fs::path& dir) {
    try {
        load_questions(dir, {2018});
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

ScoreSummary score_all_wrong(const std::vector<Question>& qs) {
    return score_questions(qs, std::vector<ScoredItems>(qs.size(), std::vector<std::string>{"x"}));
}

TEST(ExamSizes, TableMatchesTheSharedData) {
    const auto qs = load_questions(igakuqa_dir(), parse_years("2018-2022"));
    std::map<int, ExamSize> found;
    for (const auto& q : qs) {
        found[q.year].questions[section_index(q.section)]++;
        found[q.year].points[section_index(q.section)] += q.points;
    }
    const int published_points[] = {499, 496, 496, 500, 494};  // docs/reference/igakuqa.md §3
    for (int year = 2018; year <= 2022; ++year) {
        SCOPED_TRACE(year);
        const ExamSize* exam = known_exam_size(year);
        ASSERT_NE(exam, nullptr);
        EXPECT_EQ(exam->questions, found[year].questions);
        EXPECT_EQ(exam->points, found[year].points);
        EXPECT_EQ(exam->total_questions(), 400);
        EXPECT_EQ(exam->total_points(), published_points[year - 2018]);
    }
    EXPECT_EQ(known_exam_size(2017), nullptr);
    EXPECT_EQ(section_index('F'), 5);
    EXPECT_EQ(section_index('G'), -1);
}

TEST(IncompleteExam, CutSectionsAreScoredWithoutPassFail) {
    const fs::path dir = make_data("cut", 2);
    const auto qs      = load_questions(dir, {2018});
    ASSERT_EQ(qs.size(), 12u);
    // Every answer right (the gold as prediction): points would pass any threshold ratio, but not the exam.
    std::vector<ScoredItems> items;
    for (const auto& q : qs) items.push_back(q.answer);
    const ScoreSummary s = score_questions(qs, items);
    ASSERT_EQ(s.years.size(), 1u);
    const YearScore& y = s.years[0];
    EXPECT_FALSE(y.complete);
    EXPECT_FALSE(y.passed.has_value());
    EXPECT_EQ(y.expected_questions, 400);
    EXPECT_EQ(y.no_verdict_reason(), "incomplete: 12 of 400 questions");

    EvalResult result;
    result.model = "m";
    result.years = {2018};
    result.modes.push_back(score_mode(qs, PromptMode::standard, false,
                                      std::vector<std::optional<ScoredPrediction>>(qs.size(), ScoredPrediction{"a"})));
    const std::string md = report_markdown(result);
    EXPECT_NE(md.find("| incomplete: 12 of 400 questions |"), std::string::npos) << md;
    EXPECT_EQ(md.find("| pass |"), std::string::npos);
    EXPECT_EQ(md.find("| fail |"), std::string::npos);
    const auto report = report_json(result, qs);
    const auto& yj    = report["modes"]["standard"]["official"]["years"][0];
    EXPECT_EQ(yj["passed"], nullptr);
    EXPECT_EQ(yj["complete"], false);
    EXPECT_EQ(yj["no_verdict"], "incomplete: 12 of 400 questions");

    // The complete exam gets its verdict.
    const auto full = score_all_wrong(load_questions(igakuqa_dir(), {2018}));
    EXPECT_TRUE(full.years[0].complete);
    ASSERT_TRUE(full.years[0].passed.has_value());
    EXPECT_FALSE(*full.years[0].passed);
    EXPECT_EQ(full.years[0].no_verdict_reason(), "");
}

TEST(IncompleteExam, OtherPointsThanTheExamGiveNoPassFail) {
    const fs::path dir = make_data("points", 0, [](const std::string& stem, std::vector<nlohmann::json>& records) {
        if (stem == "112-A") records[0]["points"] = "5";  // 112A1: 1 point in the exam
    });
    const auto s       = score_all_wrong(load_questions(dir, {2018}));
    EXPECT_TRUE(s.years[0].complete);
    EXPECT_FALSE(s.years[0].passed.has_value());
    EXPECT_EQ(s.years[0].no_verdict_reason(), "points possible 503, the exam has 499");
}

TEST(IncompleteExam, TheCliWarnsAndPrintsNoVerdict) {
    const fs::path dir = make_data("cli_cut", 2);
    const fs::path out = fs::path(testing::TempDir()) / "igakuqa_cli_cut_out";
    fs::remove_all(out);
    const CliRun run =
        run_medllm("eval igakuqa --data-dir " + dir.string() + " --predictions " +
                   (igakuqa_dir() / "baseline_results").string() + " --years 2018 --output " + out.string());
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("incomplete: 12 of 400 questions (A 2 of 75, B 2 of 49, C 2 of 66, D 2 of 75, E 2 of "
                              "51, F 2 of 84)"),
              std::string::npos)
        << run.output;
    EXPECT_NE(run.output.find("2018: no pass/fail (incomplete: 12 of 400 questions)"), std::string::npos) << run.output;
    // The copied manifest lists the full files.
    EXPECT_NE(run.output.find("112-A.jsonl: 2 records"), std::string::npos) << run.output;
    EXPECT_NE(run.output.find("MANIFEST.tsv lists 75 records"), std::string::npos) << run.output;
    const auto report = nlohmann::json::parse(std::ifstream(out / "report.json"));
    EXPECT_EQ(report["modes"]["standard"]["official"]["years"][0]["passed"], nullptr);

    // The shipped data: no warning.
    const CliRun full =
        run_medllm("eval igakuqa --data-dir " + igakuqa_dir().string() + " --predictions " +
                   (igakuqa_dir() / "baseline_results").string() + " --years 2018 --output " + out.string());
    ASSERT_EQ(full.exit_code, 0) << full.output;
    EXPECT_EQ(full.output.find("incomplete"), std::string::npos) << full.output;
    EXPECT_EQ(full.output.find("MANIFEST.tsv"), std::string::npos) << full.output;
    EXPECT_EQ(full.output.find("no pass/fail"), std::string::npos) << full.output;
}

TEST(AnswerValidation, ALetterOutsideTheChoicesIsRefused) {
    const fs::path dir  = make_data("z", 0, [](const std::string& stem, std::vector<nlohmann::json>& records) {
        if (stem == "112-A") records[2]["answer"] = {"z"};
    });
    const std::string e = load_error(dir);
    EXPECT_NE(e.find("112-A.jsonl:3: problem_id 112A3: answer \"z\" is not one of its 5 choices (a-e)"),
              std::string::npos)
        << e;
}

TEST(AnswerValidation, ALetterPastTheLastChoiceIsRefused) {
    const fs::path dir = make_data("f", 0, [](const std::string& stem, std::vector<nlohmann::json>& records) {
        if (stem == "112-C") records[0]["answer"] = {"a", "f"};
    });
    EXPECT_NE(load_error(dir).find("112C1: answer \"f\" is not one of its 5 choices"), std::string::npos);
}

TEST(AnswerValidation, DuplicateAnswerIsRefused) {
    const fs::path dir = make_data("dup", 0, [](const std::string& stem, std::vector<nlohmann::json>& records) {
        if (stem == "112-D") records[1]["answer"] = {"b", "b"};
    });
    EXPECT_NE(load_error(dir).find("112-D.jsonl:2: problem_id 112D2: answer lists \"b\" twice"), std::string::npos);
}

TEST(AnswerValidation, EmptyChoicesOnALetterQuestionAreRefused) {
    const fs::path dir  = make_data("nochoices", 0, [](const std::string& stem, std::vector<nlohmann::json>& records) {
        if (stem == "112-B") records[0]["choices"] = nlohmann::json::array();
    });
    const std::string e = load_error(dir);
    EXPECT_NE(e.find("112-B.jsonl:1: problem_id 112B1: key 'choices' is empty"), std::string::npos) << e;
    EXPECT_NE(e.find("but the answer [\"b\"] is not one number"), std::string::npos) << e;
}

TEST(AnswerValidation, NumericAndTheStoredEitherAnswerAreAccepted) {
    // 112C66 (numeric "26", no choices) and 112B30 ("a or d") load; "a or d" on any other question does not,
    // since the scorer accepts it for 112B30 only.
    const auto qs = load_questions(igakuqa_dir(), {2018});
    EXPECT_EQ(std::count_if(qs.begin(), qs.end(), [](const Question& q) { return q.is_numeric(); }), 2);
    const fs::path dir = make_data("either", 0, [](const std::string& stem, std::vector<nlohmann::json>& records) {
        if (stem == "112-A") records[0]["answer"] = {"a or d"};
    });
    EXPECT_NE(load_error(dir).find("112A1: answer \"a or d\" is not one of its 5 choices"), std::string::npos);
    const fs::path text = make_data("numtext", 0, [](const std::string& stem, std::vector<nlohmann::json>& records) {
        if (stem == "112-C") records[65]["answer"] = {"twenty-six"};  // 112C66
    });
    EXPECT_NE(load_error(text).find("112C66: key 'choices' is empty"), std::string::npos);
}

TEST(AnswerValidation, FewShotExamplesAreCheckedToo) {
    const fs::path dir = fs::path(testing::TempDir()) / "igakuqa_fewshot_bad";
    fs::create_directories(dir);
    auto lines      = read_lines(igakuqa_dir() / "scripts" / "prompts" / "prompt.jsonl");
    auto first      = nlohmann::json::parse(lines[0]);
    first["answer"] = {"q"};
    lines[0]        = first.dump();
    write_lines(dir / "prompt.jsonl", lines);
    try {
        load_few_shot_examples(dir / "prompt.jsonl");
        FAIL() << "accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("prompt.jsonl:1: problem_id 100E5: answer \"q\""), std::string::npos)
            << e.what();
    }
}

}  // namespace
}  // namespace medllm::eval

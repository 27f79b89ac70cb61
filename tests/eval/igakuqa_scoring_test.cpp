// Official IgakuQA scoring: crafted cases for each rule, and the ChatGPT baseline reproduction against the
// independent Python scorer (scripts/igakuqa_reference_score.py ->
// tests/fixtures/eval/chatgpt_baseline_reference.json).
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/eval/igakuqa_data.h"
#include "medllm/eval/igakuqa_predictions.h"
#include "medllm/eval/igakuqa_scoring.h"
#include "support/shared_data.h"

namespace medllm::eval {
namespace {

std::string igakuqa_dir() {
    return shared_path("igakuqa_data").string();
}
using Items = std::vector<std::string>;

TEST(OfficialSplit, BehavesLikePythonSplit) {
    EXPECT_EQ(official_split(""), Items{""});
    EXPECT_EQ(official_split("a"), Items{"a"});
    EXPECT_EQ(official_split("b, c"), (Items{"b", " c"}));
    EXPECT_EQ(official_split("a,"), (Items{"a", ""}));
    EXPECT_EQ(official_split(",,"), (Items{"", "", ""}));
}

TEST(OfficialIsCorrect, SortedSetEqualityWithoutCleanup) {
    EXPECT_TRUE(official_is_correct("112C57", official_split("b,c"), {"b", "c"}));
    EXPECT_TRUE(official_is_correct("112C57", official_split("c,b"), {"b", "c"}));
    EXPECT_FALSE(official_is_correct("112C57", official_split("b, c"), {"b", "c"}));  // the shipped ChatGPT case
    EXPECT_FALSE(official_is_correct("112C57", official_split("b"), {"b", "c"}));     // no partial credit
    EXPECT_FALSE(official_is_correct("112C57", official_split("b,c,d"), {"b", "c"}));
    EXPECT_FALSE(official_is_correct("112A1", official_split("e,e"), {"e"}));  // duplicates matter
    EXPECT_FALSE(official_is_correct("112A1", official_split("E"), {"e"}));
    EXPECT_FALSE(official_is_correct("112A1", official_split("e\n"), {"e"}));
    EXPECT_TRUE(official_is_correct("113F84", official_split("7.20"), {"7.20"}));
    EXPECT_FALSE(official_is_correct("113F84", official_split("7.2"), {"7.20"}));
    EXPECT_TRUE(official_is_correct("112A5", official_split("a,c,e"), {"a", "c", "e"}));
}

TEST(OfficialIsCorrect, HardCodedExceptions) {
    // 116A71: everyone is credited, even an empty or absurd prediction.
    EXPECT_TRUE(official_is_correct("116A71", official_split(""), {"e"}));
    EXPECT_TRUE(official_is_correct("116A71", official_split("zz"), {"e"}));
    // 112B30: gold ["a or d"]; exactly "a" or exactly "d" is correct, the literal gold also matches.
    EXPECT_TRUE(official_is_correct("112B30", official_split("a"), {"a or d"}));
    EXPECT_TRUE(official_is_correct("112B30", official_split("d"), {"a or d"}));
    EXPECT_TRUE(official_is_correct("112B30", official_split("a or d"), {"a or d"}));
    EXPECT_FALSE(official_is_correct("112B30", official_split("a,d"), {"a or d"}));
    EXPECT_FALSE(official_is_correct("112B30", official_split("b"), {"a or d"}));
    EXPECT_FALSE(official_is_correct("112B30", official_split(" a"), {"a or d"}));
    // The exceptions are tied to those ids only.
    EXPECT_FALSE(official_is_correct("116A70", official_split(""), {"e"}));
    EXPECT_FALSE(official_is_correct("112B31", official_split("a"), {"a or d"}));
}

Question make_question(const std::string& id, int year, char section, Items answer, int points, Items kinki = {}) {
    Question q;
    q.problem_id = id;
    q.year       = year;
    q.exam       = exam_number_for_year(year);
    q.section    = section;
    q.choices    = {"1", "2", "3", "4", "5"};
    q.answer     = std::move(answer);
    q.points     = points;
    q.category   = section == 'B' ? "公衆衛生" : "循環器";
    q.kinki      = std::move(kinki);
    return q;
}

TEST(ScoreQuestions, PointsSectionsKinkiAndMissing) {
    const std::vector<Question> qs = {
        make_question("112A1", 2018, 'A', {"e"}, 1, {"a"}), make_question("112A2", 2018, 'A', {"b", "c"}, 1),
        make_question("112B1", 2018, 'B', {"a"}, 3, {"c"}), make_question("112B30", 2018, 'B', {"a or d"}, 3),
        make_question("112E1", 2018, 'E', {"d"}, 0),        make_question("112F1", 2018, 'F', {"a"}, 1),
    };
    const std::vector<ScoredItems> items = {
        Items{"a"},       // wrong, and a prohibited choice
        Items{"c", "b"},  // correct (order-insensitive)
        Items{"c"},       // wrong, prohibited
        Items{"d"},       // correct via the 112B30 exception: 3 points
        Items{"d"},       // correct, 0 points, still counted
        std::nullopt,     // missing: wrong and listed
    };
    const ScoreSummary s = score_questions(qs, items);
    EXPECT_EQ(s.total.points, 1 + 3 + 0);
    EXPECT_EQ(s.total.possible, 1 + 1 + 3 + 3 + 0 + 1);
    EXPECT_EQ(s.total.correct, 3);
    EXPECT_EQ(s.total.count, 6);
    EXPECT_EQ(s.missing, Items{"112F1"});
    EXPECT_EQ(s.incorrect, (Items{"112A1", "112B1", "112F1"}));
    ASSERT_EQ(s.years.size(), 1u);
    const YearScore& y = s.years[0];
    EXPECT_EQ(y.required.points, 3);
    EXPECT_EQ(y.required.possible, 6);
    EXPECT_EQ(y.general.points, 1);
    EXPECT_EQ(y.general.possible, 3);
    EXPECT_EQ(y.kinki_selected, 2);
    EXPECT_EQ(y.kinki_questions, (Items{"112A1", "112B1"}));
    EXPECT_EQ(y.sections.at('B').points, 3);
    EXPECT_FALSE(y.complete);  // sections C and D absent: no pass/fail verdict
    EXPECT_FALSE(y.passed.has_value());
    EXPECT_EQ(s.categories.at("公衆衛生").points, 3);
    EXPECT_THROW(score_questions(qs, {}), std::invalid_argument);
}

TEST(Kinki, NormalisesConcatenatedFullWidthAndSpaced) {
    EXPECT_EQ(normalize_kinki({"cde"}), (Items{"c", "d", "e"}));
    EXPECT_EQ(normalize_kinki({"ｂ"}), Items{"b"});
    EXPECT_EQ(normalize_kinki({"d", " e"}), (Items{"d", "e"}));
    EXPECT_EQ(normalize_kinki({}), Items{});
}

TEST(Years, ParsesRangesAndLists) {
    EXPECT_EQ(parse_years("2018-2022"), (std::vector<int>{2018, 2019, 2020, 2021, 2022}));
    EXPECT_EQ(parse_years("2020"), std::vector<int>{2020});
    EXPECT_EQ(parse_years("2021,2018-2019"), (std::vector<int>{2018, 2019, 2021}));
    EXPECT_THROW(parse_years("2017"), UsageError);
    EXPECT_THROW(parse_years("2022-2018"), UsageError);
    EXPECT_THROW(parse_years("20x8"), UsageError);
    EXPECT_THROW(parse_years(""), UsageError);
}

TEST(LoadQuestions, MatchesTheDocumentedCounts) {
    const auto qs = load_questions(igakuqa_dir(), parse_years("2018-2022"));
    ASSERT_EQ(qs.size(), 2000u);
    int points = 0, numeric = 0, multi = 0, kinki = 0;
    for (const auto& q : qs) {
        points += q.points;
        numeric += q.is_numeric();
        multi += q.answer.size() > 1;
        kinki += !q.kinki.empty();
    }
    EXPECT_EQ(points, 2485);
    EXPECT_EQ(numeric, 12);
    EXPECT_EQ(multi, 298);
    EXPECT_EQ(kinki, 135);
}

TEST(LoadQuestions, RejectsMissingDataDir) {
    EXPECT_THROW(load_questions("/nonexistent", {2018}), Error);
}

std::vector<ScoredItems> official_items(const std::vector<Question>& qs, const ExternalPredictions& preds) {
    std::vector<ScoredItems> items;
    const auto& by_id = preds.by_mode.at("");
    for (const auto& q : qs) {
        auto it = by_id.find(q.problem_id);
        items.push_back(it == by_id.end() ? ScoredItems{} : ScoredItems{official_split(it->second.prediction)});
    }
    return items;
}

// The scorer acceptance test: the shipped ChatGPT predictions, scored per section, year and pool, must equal
// the independent Python scorer's output (and the published 1366 / 2485 = 0.5497).
TEST(ChatGptBaseline, ReproducesTheReferenceScorerExactly) {
    std::ifstream in(std::string(MEDLLM_FIXTURES_DIR) + "/eval/chatgpt_baseline_reference.json");
    ASSERT_TRUE(in) << "missing fixture; run scripts/igakuqa_reference_score.py";
    const nlohmann::json ref = nlohmann::json::parse(in);

    const auto qs    = load_questions(igakuqa_dir(), parse_years("2018-2022"));
    const auto preds = load_external_predictions(igakuqa_dir() + "/baseline_results");
    EXPECT_EQ(preds.model_name, "chatgpt");
    EXPECT_EQ(preds.files.size(), 30u);
    const ScoreSummary s = score_questions(qs, official_items(qs, preds));

    EXPECT_EQ(s.total.points, 1366);
    EXPECT_EQ(s.total.possible, 2485);
    EXPECT_NEAR(s.total.normalized(), 0.5497, 5e-5);
    EXPECT_TRUE(s.missing.empty());
    EXPECT_EQ(s.total.points, ref["total"]["points"].get<int>());
    EXPECT_EQ(s.total.possible, ref["total"]["possible"].get<int>());
    EXPECT_EQ(s.total.correct, ref["total"]["correct"].get<int>());
    EXPECT_EQ(s.total.count, ref["total"]["count"].get<int>());
    EXPECT_DOUBLE_EQ(s.year_mean_normalized, ref["total"]["year_mean_normalized_score"].get<double>());

    ASSERT_EQ(s.years.size(), ref["years"].size());
    for (size_t i = 0; i < s.years.size(); ++i) {
        const YearScore& y = s.years[i];
        const auto& r      = ref["years"][i];
        SCOPED_TRACE(y.year);
        EXPECT_EQ(y.year, r["year"].get<int>());
        EXPECT_EQ(y.total.points, r["points"].get<int>());
        EXPECT_EQ(y.total.possible, r["possible"].get<int>());
        EXPECT_EQ(y.total.correct, r["correct"].get<int>());
        EXPECT_EQ(y.required.points, r["required_points"].get<int>());
        EXPECT_EQ(y.required.possible, r["required_possible"].get<int>());
        EXPECT_EQ(y.general.points, r["general_points"].get<int>());
        EXPECT_EQ(y.general.possible, r["general_possible"].get<int>());
        EXPECT_EQ(y.kinki_selected, r["kinki_selected"].get<int>());
        ASSERT_TRUE(y.passed.has_value());
        EXPECT_EQ(*y.passed, r["passed"].get<bool>());
        for (char section : kSections) {
            const auto& rs = r["sections"][std::string(1, section)];
            EXPECT_EQ(y.sections.at(section).points, rs["score"].get<int>()) << section;
            EXPECT_EQ(y.sections.at(section).possible, rs["total"].get<int>()) << section;
            EXPECT_EQ(y.sections.at(section).correct, rs["correct"].get<int>()) << section;
        }
    }
}

TEST(ExternalPredictions, MissingQuestionsCountAsWrongAndAreListed) {
    const auto dir = std::filesystem::path(testing::TempDir()) / "igakuqa_partial";
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir / "2018");
    std::ofstream(dir / "2018" / "112-A_mymodel.jsonl") << "{\"problem_id\": \"112A1\", \"prediction\": \"e\"}\n";
    const auto qs    = load_questions(igakuqa_dir(), {2018});
    const auto preds = load_external_predictions(dir);
    EXPECT_EQ(preds.model_name, "mymodel");
    const ScoreSummary s = score_questions(qs, official_items(qs, preds));
    EXPECT_EQ(s.total.points, 1);  // 112A1 gold is e
    EXPECT_EQ(s.missing.size(), 399u);
    EXPECT_EQ(s.missing.front(), "112A2");
}

TEST(ExternalPredictions, RejectsBadInput) {
    const auto dir = std::filesystem::path(testing::TempDir()) / "igakuqa_bad";
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    const auto file = dir / "preds.jsonl";
    std::ofstream(file)
        << "{\"problem_id\": \"112A1\", \"prediction\": \"e\"}\n{\"problem_id\": \"112A1\", \"prediction\": \"a\"}\n";
    try {
        load_external_predictions(file);
        FAIL() << "duplicate accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("preds.jsonl:2"), std::string::npos) << e.what();
    }
    std::ofstream(file) << "{\"problem_id\": \"112A1\"}\n";
    EXPECT_THROW(load_external_predictions(file), Error);
    std::ofstream(file) << "{\"problem_id\": \"112A1\", \"prediction\": \n";
    EXPECT_THROW(load_external_predictions(file), Error);
    std::filesystem::remove(file);
    std::filesystem::create_directories(dir / "2018");
    std::ofstream(dir / "2018" / "112-A_m.jsonl") << "{\"problem_id\": \"112B1\", \"prediction\": \"e\"}\n";
    EXPECT_THROW(load_external_predictions(dir), Error);  // id from another section
    std::ofstream(dir / "2018" / "112-A_m.jsonl") << "{\"problem_id\": \"112A1\", \"prediction\": \"e\"}\n";
    std::ofstream(dir / "2018" / "112-B_other.jsonl") << "{\"problem_id\": \"112B1\", \"prediction\": \"e\"}\n";
    EXPECT_THROW(load_external_predictions(dir), UsageError);  // two models in one folder
    EXPECT_THROW(load_external_predictions(dir / "nope"), UsageError);
}

}  // namespace
}  // namespace medllm::eval

// build-prefs library: question loading, few-shot drawing, the evaluation guard, the template, answer checking
// on realistic outputs, and pair construction with caps (no model).
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "medllm/core/error.h"
#include "medllm/prefs/build_prefs.h"
#include "support/shared_data.h"

namespace {

namespace fs = std::filesystem;
using namespace medllm::prefs;
using nlohmann::json;

fs::path fixture(const std::string& name) {
    return fs::path(MEDLLM_FIXTURES_DIR) / "train" / name;
}

std::vector<PrefQuestion> fixture_questions() {
    return load_pref_questions({fixture("prefs_questions.jsonl")}, {});
}

const PrefQuestion& by_id(const std::vector<PrefQuestion>& qs, const std::string& id) {
    for (const auto& q : qs)
        if (q.question.problem_id == id) return q;
    throw std::runtime_error("no " + id);
}

fs::path write_temp(const std::string& name, const std::string& content) {
    const fs::path p = fs::path(::testing::TempDir()) / (std::to_string(::getpid()) + "_" + name);
    std::ofstream(p) << content;
    return p;
}

// ---------------------------------------------------------------- loading

TEST(PrefsQuestions, FixtureLoadsWithNormalisedAnswersAndCaseGroups) {
    const auto qs = fixture_questions();
    ASSERT_EQ(qs.size(), 8u);
    EXPECT_EQ(by_id(qs, "105A2").question.answer, (std::vector<std::string>{"b", "c"}));
    EXPECT_TRUE(by_id(qs, "105B10").question.is_numeric());
    EXPECT_EQ(by_id(qs, "105A1").question.exam, 105);
    EXPECT_EQ(by_id(qs, "105A1").line, 1u);
    // The leader "次の文を読み、20〜21の問いに答えよ" and its follow-up share a case group; others have none.
    EXPECT_EQ(by_id(qs, "105C20").case_group, "105C20-21");
    EXPECT_EQ(by_id(qs, "105C21").case_group, "105C20-21");
    EXPECT_EQ(by_id(qs, "105A1").case_group, "");
}

TEST(PrefsQuestions, MissingFieldIsReportedWithFileLineAndFieldThenSkippedOrRefused) {
    const auto p = write_temp(
        "prefs_bad.jsonl",
        "{\"problem_id\": \"104A1\", \"problem_text\": \"q\", \"choices\": [\"x\", \"y\"], \"answer\": [\"a\"], "
        "\"explanation\": \"e\"}\n"
        "\n"
        "{\"problem_id\": \"104A2\", \"problem_text\": \"q\", \"choices\": [\"x\", \"y\"], \"answer\": [\"b\"]}\n"
        "{\"problem_id\": \"104A3\", \"problem_text\": \"q\", \"choices\": [\"x\", \"y\"], \"answer\": [\"c\"], "
        "\"explanation\": \"e\"}\n");
    QuestionLoadReport report;
    const auto qs = load_pref_questions({p}, {}, &report);
    ASSERT_EQ(qs.size(), 1u);
    EXPECT_EQ(report.records, 3u);
    ASSERT_EQ(report.problems.size(), 2u);
    EXPECT_NE(report.problems[0].find("prefs_bad.jsonl:3: problem_id 104A2: missing field 'explanation'"),
              std::string::npos)
        << report.problems[0];
    EXPECT_NE(report.problems[1].find(":4: problem_id 104A3: field 'answer': 'c' is not one of the 2 choices"),
              std::string::npos)
        << report.problems[1];
    try {
        load_pref_questions({p}, {true});
        FAIL() << "refuse_bad_records did not refuse";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find(":3: problem_id 104A2: missing field 'explanation'"), std::string::npos)
            << e.what();
    }
}

TEST(PrefsQuestions, DuplicateIdsAndBadJsonAreErrors) {
    const std::string rec =
        "{\"problem_id\": \"104A1\", \"problem_text\": \"q\", \"choices\": [], \"answer\": [\"12\"], "
        "\"explanation\": \"e\"}\n";
    EXPECT_THROW(load_pref_questions({write_temp("prefs_dup.jsonl", rec + rec)}, {}), medllm::Error);
    EXPECT_THROW(load_pref_questions({write_temp("prefs_json.jsonl", rec + "{oops\n")}, {}), medllm::Error);
    EXPECT_THROW(load_pref_questions(
                     {fs::path(::testing::TempDir()) / ("no_such_" + std::to_string(::getpid()) + ".jsonl")}, {}),
                 medllm::UsageError);
}

// ---------------------------------------------------------------- few-shot

TEST(PrefsFewShot, NeverTheTargetNorItsCaseAndSeeded) {
    const auto qs      = fixture_questions();
    const auto& leader = by_id(qs, "105C20");
    std::set<std::string> seen;
    for (uint64_t seed = 0; seed < 20; ++seed) {
        const auto ex = draw_few_shot(qs, leader, 3, seed);
        ASSERT_EQ(ex.size(), 3u);
        std::set<std::string> ids;
        for (const auto* e : ex) {
            EXPECT_NE(e->question.problem_id, "105C20");
            EXPECT_NE(e->question.problem_id, "105C21");  // shares the case
            ids.insert(e->question.problem_id);
            seen.insert(e->question.problem_id);
        }
        EXPECT_EQ(ids.size(), 3u);  // no repeats
        const auto again = draw_few_shot(qs, leader, 3, seed);
        for (int i = 0; i < 3; ++i) EXPECT_EQ(ex[i], again[i]);
    }
    EXPECT_EQ(seen.size(), 6u);  // over 20 seeds every allowed question is drawn at least once
    // A pool too small for k names the target.
    try {
        draw_few_shot(qs, leader, 7, 0);
        FAIL();
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("105C20 needs 7 few-shot examples"), std::string::npos) << e.what();
    }
}

TEST(PrefsFewShot, AFixedFileNeverGivesAQuestionItsOwnExplanationAndKeepsK) {
    // The few-shot file is the question file itself: every target is in it, so each must skip itself (and its
    // linked case) and still get k examples, the first ones of the file in order.
    const auto qs    = fixture_questions();
    const fs::path f = fixture("prefs_questions.jsonl");
    for (const auto& target : qs) {
        const auto ex = fixed_few_shot(qs, f, target, 3);
        ASSERT_EQ(ex.size(), 3u) << target.question.problem_id;
        for (const auto* e : ex) {
            EXPECT_NE(e->question.problem_id, target.question.problem_id);
            if (!target.case_group.empty()) EXPECT_NE(e->case_group, target.case_group);
            EXPECT_EQ(PrefPrompt(template_preset("paper")).base_prompt(target, ex).find(target.explanation),
                      std::string::npos)
                << target.question.problem_id << " sees its own explanation";
        }
    }
    EXPECT_EQ(fixed_few_shot(qs, f, by_id(qs, "105A2"), 2)[0]->question.problem_id, "105A1");
    EXPECT_EQ(fixed_few_shot(qs, f, by_id(qs, "105A1"), 2)[0]->question.problem_id, "105A2");

    // The same question under another id (a copy in another file) is the question too.
    auto copy                = by_id(qs, "105A1");
    copy.question.problem_id = "90A1";
    std::vector<PrefQuestion> shots{copy, by_id(qs, "105A2"), by_id(qs, "105A3")};
    EXPECT_EQ(fixed_few_shot(shots, f, by_id(qs, "105A1"), 2).size(), 2u);
    try {
        fixed_few_shot(shots, f, by_id(qs, "105A1"), 3);
        FAIL() << "k = 3 became 2 without a word";
    } catch (const medllm::UsageError& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("few_shot.file " + f.string()), std::string::npos) << m;
        EXPECT_NE(m.find("question 105A1 ("), std::string::npos) << m;
        EXPECT_NE(m.find("needs 3 examples but only 2 remain"), std::string::npos) << m;
    }
}

// ---------------------------------------------------------------- guard

TEST(PrefsGuard, EvaluationExamNumbersAreFound) {
    auto qs                   = fixture_questions();
    qs[0].question.exam       = 112;  // as if its problem_id were 112A1
    qs[0].question.problem_id = "112A1";
    const auto overlap        = find_eval_overlap(qs, {});
    ASSERT_EQ(overlap.size(), 1u);
    EXPECT_EQ(overlap[0].problem_id, "112A1");
    EXPECT_NE(overlap[0].reason.find("exam 112"), std::string::npos);
    EXPECT_NE(overlap[0].where.find("prefs_questions.jsonl:1"), std::string::npos);
    EvalGuardOptions none;
    none.eval_exams.clear();
    EXPECT_TRUE(find_eval_overlap(qs, none).empty());
}

TEST(PrefsGuard, IgakuqaIdsAndCopiedTextAreFound) {
    const fs::path dir = shared_path("igakuqa_data");
    ASSERT_TRUE(fs::exists(dir / "data" / "2018" / "112-A.jsonl")) << dir;
    // An evaluation question's text under a pre-2018 id, read from ../shared at run time (never copied here).
    const auto eval_q           = medllm::eval::load_questions(dir, {2019}).at(10);
    auto qs                     = fixture_questions();
    qs[1].question.problem_text = eval_q.problem_text;
    qs[1].question.choices      = eval_q.choices;
    qs[2].question.problem_id   = "114A3";  // an id that is in the evaluation data
    qs[2].question.exam         = 0;        // not caught by the exam-number rule
    EvalGuardOptions opt;
    opt.igakuqa_dir    = dir;
    const auto overlap = find_eval_overlap(qs, opt);
    ASSERT_EQ(overlap.size(), 2u);  // the six other fixture questions are written for the tests: no overlap
    EXPECT_EQ(overlap[0].problem_id, "105A2");
    EXPECT_NE(overlap[0].reason.find("text overlaps evaluation question " + eval_q.problem_id), std::string::npos)
        << overlap[0].reason;
    EXPECT_EQ(overlap[1].problem_id, "114A3");
    EXPECT_NE(overlap[1].reason.find("problem_id is in"), std::string::npos);
}

// The guard reads the exam years it is given (guard.years), not always all of 2018-2022.
TEST(PrefsGuard, ItChecksTheYearsItIsGiven) {
    const fs::path dir          = shared_path("igakuqa_data");
    const auto eval_q           = medllm::eval::load_questions(dir, {2019}).at(10);
    auto qs                     = fixture_questions();
    qs[1].question.problem_text = eval_q.problem_text;
    qs[1].question.choices      = eval_q.choices;
    EvalGuardOptions opt;
    opt.igakuqa_dir = dir;
    opt.years       = {2019};
    const auto hit  = find_eval_overlap(qs, opt);
    ASSERT_EQ(hit.size(), 1u);
    EXPECT_NE(hit[0].reason.find(eval_q.problem_id), std::string::npos) << hit[0].reason;
    opt.years = {2021, 2022};  // a question of 2019 is no evaluation question then
    EXPECT_TRUE(find_eval_overlap(qs, opt).empty());
}

// ---------------------------------------------------------------- template

TEST(PrefsTemplate, PaperTemplateRendersTheBlocks) {
    const auto qs = fixture_questions();
    const PrefPrompt p(template_preset("paper"));
    const auto& q = by_id(qs, "105A2");
    EXPECT_EQ(p.head(q.question),
              "Question: ネフローゼ症候群の診断基準に含まれるのはどれか。2つ選べ。\na: 血尿\nb: 高度の蛋白尿\nc: "
              "低アルブミン血症\nd: 高血圧\ne: 腎機能低下\n Explanation:");
    EXPECT_EQ(p.response("X", q.question.answer), "X\n Answer:b,c");
    // Numeric questions have no empty options line.
    EXPECT_EQ(p.head(by_id(qs, "105B10").question).find("\n\n"), std::string::npos);
    const auto ex          = draw_few_shot(qs, q, 3, 0);
    const std::string base = p.base_prompt(q, ex);
    EXPECT_EQ(base.rfind(p.head(q.question)), base.size() - p.head(q.question).size());
    EXPECT_EQ(base.find(p.full_block(*ex[0]) + "\n\n" + p.full_block(*ex[1])), 0u);
    EXPECT_EQ(p.next_block_stop(), "\nQuestion:");
    const auto messages = p.chat_messages(q, ex);
    ASSERT_EQ(messages.size(), 7u);  // the paper preset has no system message
    EXPECT_EQ(messages[1]["role"], "assistant");
    EXPECT_EQ(messages[1]["content"], p.response(ex[0]->explanation, ex[0]->question.answer));
    const PrefPrompt ja(template_preset("ja"));
    EXPECT_EQ(ja.next_block_stop(), "\n問題:");
    EXPECT_EQ(ja.chat_messages(q, ex)[0]["content"], "医師国家試験を解きます。");
}

TEST(PrefsTemplate, BadTemplatesAreRefused) {
    PrefTemplate t = template_preset("paper");
    t.block        = "Question: {question}\n{options}\n Explanation:{explanation}\n Result:{answer}";
    EXPECT_THROW(PrefPrompt{t}, medllm::UsageError);  // "Result:" is no marker the evaluator reads
    t.block = "Question: {question}\n{options}\n{answer} Explanation:{explanation}";
    EXPECT_THROW(PrefPrompt{t}, medllm::UsageError);  // order
    t                  = template_preset("paper");
    t.answer_separator = ";";
    EXPECT_THROW(PrefPrompt{t}, medllm::UsageError);  // "a;d" is not read as two letters
    t        = template_preset("paper");
    t.labels = "ABCDEFGH";
    EXPECT_EQ(PrefPrompt(t).response("x", {"a", "d"}), "x\n Answer:A,D");
    EXPECT_THROW(template_preset("en"), medllm::UsageError);
}

// ---------------------------------------------------------------- answer checking

struct OutputCase {
    const char* id;
    const char* text;
    const char* finish;
    bool parsed, correct;
    SampleStatus status;
    const char* extracted;
};

TEST(PrefsCheck, RealisticOutputs) {
    const auto qs = fixture_questions();
    const PrefPrompt p(template_preset("paper"));
    const auto opt           = with_template_marker({}, p);
    const OutputCase cases[] = {
        {"105A1", " 鉄欠乏では小球性貧血となる。\n Answer:c", "stop", true, true, SampleStatus::chosen, "c"},
        // The answer repeated: the last marker counts.
        {"105A1", " まずeと考えたが誤り。\n Answer: e\n 見直した。\n Answer: c", "stop", true, true,
         SampleStatus::chosen, "c"},
        // Letters inside the explanation do not count.
        {"105A1", " a は高値になり、c が正しい。\n Answer: a", "stop", true, false, SampleStatus::rejected, "a"},
        {"105A2", " 蛋白尿と低アルブミン血症。\n Answer: b と c", "stop", true, true, SampleStatus::chosen, "b,c"},
        {"105A2", " 蛋白尿と低アルブミン血症。\n Answer: c, b", "stop", true, true, SampleStatus::chosen, "b,c"},
        {"105A2", " 蛋白尿のみ。\n Answer: b", "stop", true, false, SampleStatus::rejected, "b"},
        // Full-width letters and colon.
        {"105A2", " 全角で答える。\nＡｎｓｗｅｒ：ｂ、ｃ", "stop", true, true, SampleStatus::chosen, "b,c"},
        {"105D5", " 三つ選ぶ。\n Answer: a,c,d.", "stop", true, true, SampleStatus::chosen, "a,c,d"},
        // The evaluator reads "(a)(c)" as the label line "a)…": one letter, wrong for a three-answer key.
        {"105D5", " 三つ選ぶ。\n Answer: (a)(c)", "stop", true, false, SampleStatus::rejected, "a"},
        {"105B10", " 体重の13分の1。\n Answer: 5", "stop", true, true, SampleStatus::chosen, "5"},
        {"105B10", " 約4.6L。\n Answer: 4.6", "stop", true, false, SampleStatus::rejected, "4.6"},
        // "答えは" is a marker the evaluator reads too.
        {"105A1", " 小球性となるので答えは c", "eos", true, true, SampleStatus::chosen, "c"},
        // No answer marker: unparseable, rejected.
        {"105A1", " The correct choice is c", "eos", false, false, SampleStatus::rejected, ""},
        // A letter outside the choices.
        {"105A1", " 選択肢にない。\n Answer: g", "stop", false, false, SampleStatus::rejected, ""},
        // Right answer, but no explanation / cut by the token limit: flagged, rejected.
        {"105A1", "\n Answer:c", "stop", true, true, SampleStatus::rejected, "c"},
        {"105A1", " 鉄欠乏では小球性。\n Answer:c", "length", true, true, SampleStatus::rejected, "c"},
    };
    for (const auto& c : cases) {
        const auto s = check_sample(by_id(qs, c.id), c.text, c.finish, opt);
        EXPECT_EQ(s.parsed, c.parsed) << c.text;
        EXPECT_EQ(s.correct, c.correct) << c.text;
        EXPECT_EQ(s.status, c.status) << c.text;
        EXPECT_EQ(s.answer.as_prediction(), c.extracted) << c.text;
    }
    // Flagged samples can be dropped instead.
    auto drop         = opt;
    drop.drop_flagged = true;
    EXPECT_EQ(check_sample(by_id(qs, "105A1"), "\n Answer:c", "stop", drop).status, SampleStatus::dropped);
    EXPECT_EQ(check_sample(by_id(qs, "105A1"), " x\n Answer:c", "length", drop).status, SampleStatus::dropped);
    // An answer naming an option by its text: unparseable for the official letters, read as that option's letter
    // with answer_by_text (and then right or wrong as a letter would be). A letter, when there is one, decides.
    auto by_text           = opt;
    by_text.answer_by_text = true;
    const auto& q1         = by_id(qs, "105A1");  // c = 網赤血球数
    EXPECT_FALSE(check_sample(q1, " 鉄剤で最初に増える。\n Answer: 網赤血球数", "stop", opt).parsed);
    const auto right = check_sample(q1, " 鉄剤で最初に増える。\n Answer: 網赤血球数", "stop", by_text);
    EXPECT_TRUE(right.parsed && right.correct && right.by_text);
    EXPECT_EQ(right.status, SampleStatus::chosen);
    EXPECT_EQ(right.answer.as_prediction(), "c");
    const auto wrong = check_sample(q1, " 貯蔵鉄が先。\n Answer: 血清フェリチン", "stop", by_text);
    EXPECT_TRUE(wrong.parsed && !wrong.correct && wrong.by_text);
    EXPECT_EQ(wrong.status, SampleStatus::rejected);
    EXPECT_FALSE(check_sample(q1, " x\n Answer: 網赤血球数か血清フェリチン", "stop", by_text).parsed);  // two named
    EXPECT_FALSE(check_sample(q1, " 網赤血球数", "eos", by_text).parsed);  // no marker: still unparseable
    const auto letter = check_sample(q1, " x\n Answer: a", "stop", by_text);
    EXPECT_FALSE(letter.by_text);
    EXPECT_FALSE(letter.correct);
    // Without require_marker the first line is read.
    auto lenient           = opt;
    lenient.require_marker = false;
    EXPECT_TRUE(check_sample(by_id(qs, "105A1"), "c", "eos", lenient).parsed);
    // An empty sample (the model stopped at once) is never a rejected completion, even when flagged samples are kept.
    EXPECT_EQ(check_sample(by_id(qs, "105A1"), "", "eos", opt).status, SampleStatus::dropped);
    EXPECT_EQ(check_sample(by_id(qs, "105A1"), " \n\t", "stop", opt).status, SampleStatus::dropped);
    EXPECT_TRUE(check_sample(by_id(qs, "105A1"), " \n", "stop", opt).empty);
    EXPECT_FALSE(check_sample(by_id(qs, "105A1"), "c", "eos", opt).parsed);
    // Minimum explanation length counts code points without spaces and without the marker.
    auto longer                  = opt;
    longer.min_explanation_chars = 5;
    EXPECT_EQ(check_sample(by_id(qs, "105A1"), " 鉄 欠 乏 で\n Answer:c", "stop", longer).explanation_chars, 4);
    EXPECT_EQ(check_sample(by_id(qs, "105A1"), " 鉄 欠 乏 で\n Answer:c", "stop", longer).status,
              SampleStatus::rejected);
    EXPECT_EQ(check_sample(by_id(qs, "105A1"), " 鉄欠乏では\n Answer:c", "stop", longer).status, SampleStatus::chosen);
    // The Japanese preset's marker.
    const auto ja = with_template_marker({}, PrefPrompt(template_preset("ja")));
    EXPECT_EQ(check_sample(by_id(qs, "105A1"), "小球性となる。\n答え:c", "eos", ja).status, SampleStatus::chosen);
}

// ---------------------------------------------------------------- pairs

std::vector<CheckedSample> crafted(const PrefQuestion& q, const std::vector<std::string>& answers) {
    const auto opt = with_template_marker({}, PrefPrompt(template_preset("paper")));
    std::vector<CheckedSample> out;
    for (std::size_t i = 0; i < answers.size(); ++i) {
        auto s = check_sample(q, " 理由その" + std::to_string(i) + "。\n Answer:" + answers[i], "stop", opt);
        s.sample_index = static_cast<int64_t>(i);
        out.push_back(s);
    }
    return out;
}

int count(const std::vector<Pair>& pairs, PairType t) {
    int n = 0;
    for (const auto& p : pairs) n += p.type == t;
    return n;
}

TEST(PrefsPairs, HierarchyOnMixedSamples) {
    const auto qs    = fixture_questions();
    const auto& q    = by_id(qs, "105A1");
    const auto ss    = crafted(q, {"c", "a", "c", "zz", "b"});  // chosen 0, 2; rejected 1, 3 (unparseable), 4
    const auto pairs = build_pairs(q, ss, {});
    EXPECT_EQ(count(pairs, PairType::gt_chosen), 2);
    EXPECT_EQ(count(pairs, PairType::gt_rejected), 3);
    EXPECT_EQ(count(pairs, PairType::chosen_rejected), 6);
    ASSERT_EQ(pairs.size(), 11u);
    EXPECT_EQ(pairs[0].type, PairType::gt_chosen);
    EXPECT_EQ(pairs[0].chosen_sample, -1);
    EXPECT_EQ(pairs[0].rejected_sample, 0);
    EXPECT_EQ(pairs[2].type, PairType::gt_rejected);
    EXPECT_EQ(pairs[2].rejected_sample, 1);
    EXPECT_EQ(pairs[5].type, PairType::chosen_rejected);
    EXPECT_EQ(pairs[5].chosen_sample, 0);
    EXPECT_EQ(pairs[5].rejected_sample, 1);
    for (const auto& p : pairs) {
        if (p.chosen_sample >= 0) {
            EXPECT_EQ(ss[p.chosen_sample].status, SampleStatus::chosen);
        }
        if (p.type != PairType::gt_chosen) {
            EXPECT_EQ(ss[p.rejected_sample].status, SampleStatus::rejected);
        }
    }
    PairOptions only;
    only.types = {PairType::chosen_rejected};
    EXPECT_EQ(build_pairs(q, ss, only).size(), 6u);
}

TEST(PrefsPairs, AllRightAndAllWrongQuestions) {
    const auto qs        = fixture_questions();
    const auto& q        = by_id(qs, "105A2");
    const auto all_right = build_pairs(q, crafted(q, {"b,c", "c,b", "b と c"}), {});
    EXPECT_EQ(count(all_right, PairType::gt_chosen), 3);
    EXPECT_EQ(count(all_right, PairType::gt_rejected), 0);
    EXPECT_EQ(count(all_right, PairType::chosen_rejected), 0);
    const auto all_wrong = build_pairs(q, crafted(q, {"b", "a,b", "x"}), {});
    EXPECT_EQ(count(all_wrong, PairType::gt_chosen), 0);
    EXPECT_EQ(count(all_wrong, PairType::gt_rejected), 3);
    EXPECT_EQ(count(all_wrong, PairType::chosen_rejected), 0);

    // The summary names the questions that yielded no pair of a type.
    const PrefPrompt p(template_preset("paper"));
    const std::vector<PrefQuestion> two = {q, by_id(qs, "105A1")};
    const auto out                      = make_pairs_output(two, {json("P1"), json("P2")},
                                                            {crafted(q, {"b,c", "c,b"}), crafted(two[1], {"a", "b"})}, p, {});
    EXPECT_EQ(out.summary["questions_without_pair"]["gt_rejected"]["problem_ids"], json::array({"105A2"}));
    EXPECT_EQ(out.summary["questions_without_pair"]["gt_chosen"]["problem_ids"], json::array({"105A1"}));
    EXPECT_EQ(out.summary["questions_without_pair"]["chosen_rejected"]["count"], 2);
    EXPECT_EQ(out.summary["pairs"]["total"], 4);
    EXPECT_EQ(out.summary["chosen"], 2);
    EXPECT_EQ(out.summary["rejected"], 2);
    EXPECT_DOUBLE_EQ(out.summary["sample_accuracy"].get<double>(), 0.5);
    EXPECT_EQ(out.summary["accuracy_by_type"]["multi"]["correct"], 2);
    EXPECT_EQ(out.summary["accuracy_by_type"]["single"]["correct"], 0);
}

TEST(PrefsPairs, DedupAndDroppedSamples) {
    const auto qs = fixture_questions();
    const auto& q = by_id(qs, "105A1");
    auto ss       = crafted(q, {"c", "a", "a"});
    ss[2].text    = ss[1].text + "  ";  // the same response, trailing spaces aside
    EXPECT_EQ(count(build_pairs(q, ss, {}), PairType::gt_rejected), 1);
    PairOptions keep;
    keep.dedup = false;
    EXPECT_EQ(count(build_pairs(q, ss, keep), PairType::gt_rejected), 2);
    ss[0].status = SampleStatus::dropped;
    EXPECT_EQ(count(build_pairs(q, ss, {}), PairType::gt_chosen), 0);
}

TEST(PrefsPairs, CapsAreSeededAndBalanced) {
    const auto qs = fixture_questions();
    const auto& q = by_id(qs, "105A1");
    const auto ss = crafted(q, {"c", "a", "c", "b", "c", "d", "e"});  // 3 chosen, 4 rejected: 3 + 4 + 12 pairs
    PairOptions cap;
    cap.max_per_type  = 2;
    const auto capped = build_pairs(q, ss, cap);
    EXPECT_EQ(count(capped, PairType::gt_chosen), 2);
    EXPECT_EQ(count(capped, PairType::gt_rejected), 2);
    EXPECT_EQ(count(capped, PairType::chosen_rejected), 2);
    std::set<std::vector<int64_t>> choices;
    for (uint64_t seed = 0; seed < 10; ++seed) {
        cap.seed     = seed;
        const auto a = build_pairs(q, ss, cap);
        const auto b = build_pairs(q, ss, cap);
        std::vector<int64_t> key;
        for (std::size_t i = 0; i < a.size(); ++i) {
            EXPECT_EQ(a[i].chosen_sample, b[i].chosen_sample);
            EXPECT_EQ(a[i].rejected_sample, b[i].rejected_sample);
            key.push_back(a[i].chosen_sample * 100 + a[i].rejected_sample);
        }
        choices.insert(key);
    }
    EXPECT_GT(choices.size(), 1u);  // the seed changes which pairs stay

    PairOptions per_question;
    per_question.max_per_question = 4;  // types in turn: 2 + 1 + 1
    const auto pq                 = build_pairs(q, ss, per_question);
    ASSERT_EQ(pq.size(), 4u);
    EXPECT_EQ(count(pq, PairType::gt_chosen), 2);
    EXPECT_EQ(count(pq, PairType::gt_rejected), 1);
    EXPECT_EQ(count(pq, PairType::chosen_rejected), 1);
}

TEST(PrefsPairs, RecordsInTrlFormat) {
    const auto qs = fixture_questions();
    const auto& q = by_id(qs, "105A1");
    const PrefPrompt p(template_preset("paper"));
    const auto ss   = crafted(q, {"c", "a"});
    const auto base = make_pairs_output({q}, {json("PROMPT")}, {ss}, p, {});
    ASSERT_EQ(base.records.size(), 3u);
    const auto& gc = base.records[0];
    EXPECT_EQ(gc["prompt"], "PROMPT");
    EXPECT_EQ(gc["pair_type"], "gt_chosen");
    EXPECT_EQ(gc["chosen"], p.response(q.explanation, q.question.answer));
    EXPECT_EQ(gc["chosen_source"], "gt");
    EXPECT_EQ(gc["chosen_answer"], "c");
    EXPECT_EQ(gc["rejected"], ss[0].text);
    EXPECT_EQ(gc["rejected_answer"], "c");
    const auto& cr = base.records[2];
    EXPECT_EQ(cr["pair_type"], "chosen_rejected");
    EXPECT_EQ(cr["chosen"], ss[0].text);
    EXPECT_EQ(cr["rejected"], ss[1].text);
    EXPECT_EQ(cr["rejected_answer"], "a");
    EXPECT_EQ(cr["rejected_source"], "sample:1");
    // Chat: the prompt is the message list, the completions one assistant message each.
    const json messages = json::array({{{"role", "user"}, {"content", "Q"}}});
    const auto chat     = make_pairs_output({q}, {messages}, {ss}, p, {});
    EXPECT_EQ(chat.records[0]["prompt"], messages);
    EXPECT_EQ(chat.records[0]["chosen"],
              json::array({{{"role", "assistant"}, {"content", p.response(q.explanation, q.question.answer)}}}));
    EXPECT_EQ(chat.records[2]["rejected"][0]["content"], ss[1].text);
}

}  // namespace

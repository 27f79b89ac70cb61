// The whole eval loop end to end with a scripted stand-in for the generation engine:
// prompt rendering -> backend -> extraction -> scoring -> report -> resume.
// ScriptedTestBackend is test code only; the medllm binary never uses it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include "medllm/core/error.h"
#include "medllm/eval/evaluator.h"
#include "medllm/eval/report.h"

namespace medllm::eval {
namespace {
namespace fs = std::filesystem;

const std::string kData = std::string(MEDLLM_SHARED_DIR) + "/igakuqa_data";

int question_number(const Question& q) {
    return std::stoi(q.problem_id.substr(4));
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
    return out;
}

// Answers from a script: standard mode gives the gold answer verbatim for even-numbered questions and "z"
// otherwise; explanation mode reasons, then writes "答え: a, c" (lenient-only format) unless the number is a
// multiple of 3, where it gives up. It recognises the question by the prompt text it was rendered into.
class ScriptedTestBackend : public CompletionBackend {
public:
    ScriptedTestBackend(const std::vector<Question>& questions, const std::vector<FewShotExample>& examples,
                        PromptFormat format) {
        for (const auto& q : questions) {
            for (PromptMode mode : {PromptMode::standard, PromptMode::explanation})
                script_[render_prompt(q, examples, mode, format)] = respond(q, mode);
        }
    }
    std::vector<std::string> complete(const std::vector<std::string>& prompts,
                                      const GenerationParams& params) override {
        ++calls;
        last_params = params;
        if (fail_on_call == calls) throw Error("scripted failure");
        std::vector<std::string> out;
        for (const auto& p : prompts) {
            asked.push_back(p);
            auto it = script_.find(p);
            out.push_back(it == script_.end() ? "unknown prompt" : it->second);
        }
        if (drop_one) out.pop_back();
        return out;
    }
    bool has_chat_template() const override { return true; }
    std::string model_name() const override { return "scripted-test-model"; }

    static std::string respond(const Question& q, PromptMode mode) {
        const int n = question_number(q);
        if (mode == PromptMode::standard) return n % 2 == 0 ? join(q.answer, ",") : "z";
        if (n % 3 == 0) return "解説: 判断できない。";
        return "解説: 所見から考える。\n答え: " + join(q.answer, ", ");
    }

    int calls        = 0;
    int fail_on_call = 0;
    bool drop_one    = false;
    std::vector<std::string> asked;
    GenerationParams last_params;

private:
    std::map<std::string, std::string> script_;
};

class EvaluatorTest : public testing::Test {
protected:
    void SetUp() override {
        questions = load_questions(kData, {2018});
        examples  = load_few_shot_examples(default_prompt_file(kData));
        out_dir   = fs::path(testing::TempDir()) /
                  ("igakuqa_eval_" + std::string(testing::UnitTest::GetInstance()->current_test_info()->name()));
        fs::remove_all(out_dir);
        options.modes                             = {PromptMode::standard, PromptMode::explanation};
        options.format                            = PromptFormat::chat;
        options.batch_size                        = 50;
        options.explanation_params.max_new_tokens = 512;
        options.output_dir                        = out_dir;
    }
    std::vector<Question> questions;
    std::vector<FewShotExample> examples;
    fs::path out_dir;
    ModelEvalOptions options;
};

TEST_F(EvaluatorTest, BothModesEndToEnd) {
    ScriptedTestBackend backend(questions, examples, PromptFormat::chat);
    const EvalResult result = evaluate_model(questions, examples, backend, options, {2018});
    EXPECT_EQ(backend.calls, 16);  // 400 questions / 50 per batch, two modes
    EXPECT_EQ(backend.last_params.max_new_tokens, 512);

    // Expected points from the data, by the script's rule.
    int even_points = 0, not_third_points = 0, possible = 0;
    std::set<std::string> expected_flips;
    for (const auto& q : questions) {
        const int n = question_number(q);
        possible += q.points;
        if (n % 2 == 0) even_points += q.points;
        if (n % 3 != 0) not_third_points += q.points;
        if ((n % 2 == 0) != (n % 3 != 0)) expected_flips.insert(q.problem_id);
    }
    const ModeResult* standard    = result.find(PromptMode::standard);
    const ModeResult* explanation = result.find(PromptMode::explanation);
    ASSERT_TRUE(standard && explanation);
    EXPECT_EQ(standard->official.total.possible, possible);
    EXPECT_EQ(standard->official.total.points, even_points);
    EXPECT_EQ(standard->primary_name(), std::string("official"));
    EXPECT_EQ(explanation->primary_name(), std::string("lenient"));
    EXPECT_EQ(explanation->lenient.total.points, not_third_points);
    // "答え: a, c" keeps its space after the marker, so the strict rule credits nothing.
    EXPECT_EQ(explanation->official.total.points, 0);

    const auto report = report_json(result, questions);
    EXPECT_EQ(report["modes"]["standard"]["points"], even_points);
    EXPECT_DOUBLE_EQ(report["stability_gap"]["overall"].get<double>(),
                     static_cast<double>(not_third_points - even_points) / possible);
    std::set<std::string> flips;
    for (const auto& f : report["stability_gap"]["flipped"]) flips.insert(f["problem_id"].get<std::string>());
    EXPECT_EQ(flips, expected_flips);
    // Unparseable outputs are recorded: every explanation answer for a multiple-of-3 question.
    EXPECT_EQ(report["modes"]["explanation"]["unparseable"].size(), 133u);  // 2018 sections: 25+16+22+25+17+28

    write_reports(out_dir, result, questions);
    for (const char* f : {"report.json", "report.md", "scored.jsonl", "predictions.jsonl", "run.json"})
        EXPECT_TRUE(fs::exists(out_dir / f)) << f;
    std::ifstream md_in(out_dir / "report.md");
    const std::string md((std::istreambuf_iterator<char>(md_in)), std::istreambuf_iterator<char>());
    char headline[64];
    std::snprintf(headline, sizeof headline, "| scripted-test-model | %.4f (%d/%d) |",
                  static_cast<double>(even_points) / possible, even_points, possible);
    EXPECT_NE(md.find(headline), std::string::npos) << md.substr(0, 400);
    EXPECT_NE(md.find("## Stability gap"), std::string::npos);
    EXPECT_NE(md.find("| 循環器 |"), std::string::npos);

    // The saved predictions rescore to the same numbers without a model.
    const auto saved    = load_external_predictions(out_dir / "predictions.jsonl");
    const auto rescored = evaluate_predictions(questions, saved, options.modes, false, {2018});
    EXPECT_EQ(report_json(rescored, questions)["modes"], report["modes"]);
}

TEST_F(EvaluatorTest, ResumesFromSavedPredictions) {
    ScriptedTestBackend reference(questions, examples, PromptFormat::chat);
    options.output_dir  = out_dir / "uninterrupted";
    const auto expected = report_json(evaluate_model(questions, examples, reference, options, {2018}), questions);

    options.output_dir = out_dir / "interrupted";
    ScriptedTestBackend crashing(questions, examples, PromptFormat::chat);
    crashing.fail_on_call = 3;  // two batches of standard mode are saved, then the "engine" fails
    EXPECT_THROW(evaluate_model(questions, examples, crashing, options, {2018}), Error);
    // A crash while writing leaves a partial last line; it is dropped on resume.
    std::ofstream(options.output_dir / "predictions.jsonl", std::ios::app) << "{\"problem_id\": \"112";

    ScriptedTestBackend resumed(questions, examples, PromptFormat::chat);
    const auto result = report_json(evaluate_model(questions, examples, resumed, options, {2018}), questions);
    EXPECT_EQ(resumed.asked.size(), 300u + 400u);  // 100 standard answers were already saved
    for (const auto& p : resumed.asked)
        EXPECT_EQ(std::count(crashing.asked.begin(), crashing.asked.begin() + 100, p), 0);
    EXPECT_EQ(result["modes"], expected["modes"]);
    EXPECT_EQ(result["stability_gap"], expected["stability_gap"]);

    // A third run has nothing left to generate.
    ScriptedTestBackend idle(questions, examples, PromptFormat::chat);
    evaluate_model(questions, examples, idle, options, {2018});
    EXPECT_EQ(idle.calls, 0);

    // Resuming under different settings is refused.
    options.format = PromptFormat::base;
    EXPECT_THROW(evaluate_model(questions, examples, idle, options, {2018}), UsageError);
}

TEST_F(EvaluatorTest, BaseFormatAddsStopStrings) {
    options.modes  = {PromptMode::standard};
    options.format = PromptFormat::base;
    ScriptedTestBackend backend(questions, examples, PromptFormat::base);
    const auto result = evaluate_model(questions, examples, backend, options, {2018});
    EXPECT_EQ(backend.last_params.stop, (std::vector<std::string>{"\n\n", "\n問題:"}));
    EXPECT_GT(result.find(PromptMode::standard)->official.total.points, 0);
    EXPECT_EQ(result.prompt_format, "base");
}

TEST_F(EvaluatorTest, RejectsABackendThatLosesCompletions) {
    ScriptedTestBackend backend(questions, examples, PromptFormat::chat);
    backend.drop_one = true;
    EXPECT_THROW(evaluate_model(questions, examples, backend, options, {2018}), Error);
    options.batch_size = 0;
    EXPECT_THROW(evaluate_model(questions, examples, backend, options, {2018}), UsageError);
}

TEST(EvaluatePredictions, ModeRules) {
    const auto questions = load_questions(kData, {2018});
    ExternalPredictions plain;
    plain.model_name           = "m";
    plain.by_mode[""]["112A1"] = {"e", std::nullopt};
    // Mode-less records are one mode only.
    EXPECT_THROW(evaluate_predictions(questions, plain, {PromptMode::standard, PromptMode::explanation}, false, {2018}),
                 UsageError);
    const auto r = evaluate_predictions(questions, plain, {PromptMode::standard}, false, {2018});
    EXPECT_EQ(r.modes[0].official.total.points, 1);
    EXPECT_EQ(r.modes[0].official.missing.size(), 399u);
    ExternalPredictions other_year;
    other_year.by_mode[""]["116A1"] = {"e", std::nullopt};
    EXPECT_THROW(evaluate_predictions(questions, other_year, {PromptMode::standard}, false, {2018}), UsageError);
}

}  // namespace
}  // namespace medllm::eval

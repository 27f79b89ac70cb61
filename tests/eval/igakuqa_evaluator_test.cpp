// The whole eval loop end to end with a scripted stand-in for the generation engine:
// prompt rendering -> backend -> extraction -> scoring -> report -> resume.
// ScriptedTestBackend is test code only; the medllm binary never uses it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/eval/igakuqa_evaluator.h"
#include "medllm/eval/igakuqa_report.h"
#include "support/file_limit.h"
#include "support/shared_data.h"
#include "support/text_files.h"
#include "support/thread_group.h"

namespace medllm::eval {
namespace {
namespace fs = std::filesystem;

std::string igakuqa_dir() {
    return shared_path("igakuqa_data").string();
}

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
    nlohmann::json identity() const override { return {{"name", model_name()}, {"weights", weights}}; }

    static std::string respond(const Question& q, PromptMode mode) {
        const int n = question_number(q);
        if (mode == PromptMode::standard) return n % 2 == 0 ? join(q.answer, ",") : "z";
        if (n % 3 == 0) return "解説: 判断できない。";
        return "解説: 所見から考える。\n答え: " + join(q.answer, ", ");
    }

    int calls           = 0;
    int fail_on_call    = 0;
    bool drop_one       = false;
    std::string weights = "v1";  // stands for the weight files' identity
    std::vector<std::string> asked;
    GenerationParams last_params;

private:
    std::map<std::string, std::string> script_;
};

class EvaluatorTest : public testing::Test {
protected:
    void SetUp() override {
        questions = load_questions(igakuqa_dir(), {2018});
        examples  = load_few_shot_examples(default_prompt_file(igakuqa_dir()));
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
    for (const char* f :
         {"report.json", "report.md", "scored.jsonl", "predictions.jsonl", "predictions.jsonl.run.json"})
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

    // Resuming under different settings is refused, naming the key.
    options.format = PromptFormat::base;
    try {
        evaluate_model(questions, examples, idle, options, {2018});
        FAIL() << "resumed under another prompt format";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("prompt_format"), std::string::npos) << e.what();
    }
}

// Three ranks (threads with a barrier, as torchrun's processes would be) share the questions: the merged
// predictions.jsonl is byte for byte the file one process writes, rank 0 scores the same report, and each rank
// asked only its share.
TEST_F(EvaluatorTest, ThreeRanksWriteWhatOneProcessWrites) {
    ScriptedTestBackend single(questions, examples, PromptFormat::chat);
    options.output_dir  = out_dir / "one";
    const auto expected = report_json(evaluate_model(questions, examples, single, options, {2018}), questions);

    ThreadGroup group(3);
    std::vector<std::unique_ptr<ScriptedTestBackend>> backends;
    for (int r = 0; r < 3; ++r)
        backends.push_back(std::make_unique<ScriptedTestBackend>(questions, examples, PromptFormat::chat));
    std::vector<EvalResult> results(3);
    const auto errors = group.run([&](int64_t rank) {
        ModelEvalOptions o = options;
        o.output_dir       = out_dir / "three";
        o.place            = group.place(rank);
        results[static_cast<size_t>(rank)] =
            evaluate_model(questions, examples, *backends[static_cast<size_t>(rank)], o, {2018});
    });
    for (const auto& e : errors) ASSERT_EQ(e, "");
    EXPECT_EQ(slurp(out_dir / "three" / "predictions.jsonl"), slurp(out_dir / "one" / "predictions.jsonl"));
    EXPECT_EQ(report_json(results[0], questions), expected);
    EXPECT_TRUE(results[1].modes.empty());           // only rank 0 scores
    EXPECT_EQ(backends[0]->asked.size(), 2u * 134);  // 400 questions: 134 / 133 / 133 per mode
    EXPECT_EQ(backends[1]->asked.size(), 2u * 133);
    EXPECT_TRUE(find_shards(out_dir / "three" / "predictions.jsonl").empty());
}

// A rank fails mid-run (the others stop too); one process resumes from the merged file and both shards, asks
// only what no rank finished, and scores what an uninterrupted run scores.
TEST_F(EvaluatorTest, AFailedRanksShardResumesInOneProcess) {
    ScriptedTestBackend reference(questions, examples, PromptFormat::chat);
    options.output_dir  = out_dir / "uninterrupted";
    const auto expected = report_json(evaluate_model(questions, examples, reference, options, {2018}), questions);

    options.output_dir = out_dir / "interrupted";
    ThreadGroup group(2);
    ScriptedTestBackend r0(questions, examples, PromptFormat::chat), r1(questions, examples, PromptFormat::chat);
    r1.fail_on_call   = 3;  // rank 1 saves two batches of standard mode, then its "engine" fails
    const auto errors = group.run([&](int64_t rank) {
        ModelEvalOptions o = options;
        o.place            = group.place(rank);
        evaluate_model(questions, examples, rank == 0 ? r0 : r1, o, {2018});
    });
    EXPECT_EQ(errors[1], "scripted failure");
    EXPECT_NE(errors[0], "");
    EXPECT_EQ(find_shards(options.output_dir / "predictions.jsonl").size(), 2u);

    ScriptedTestBackend resumed(questions, examples, PromptFormat::chat);
    const auto result = report_json(evaluate_model(questions, examples, resumed, options, {2018}), questions);
    EXPECT_EQ(resumed.asked.size() + r0.asked.size() + 100, 800u);  // rank 1 had saved 2 x 50 standard answers
    EXPECT_EQ(result, expected);
    EXPECT_TRUE(find_shards(options.output_dir / "predictions.jsonl").empty());
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

// The message of the Error `f` throws ("" when it throws nothing).
template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

std::vector<nlohmann::json> read_records(const fs::path& file) {
    std::vector<nlohmann::json> records;
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);) records.push_back(nlohmann::json::parse(line));
    return records;
}

// Finding 2: the identity is the model's files, not its folder's name.
TEST_F(EvaluatorTest, AnotherModelInAFolderOfTheSameNameIsRefused) {
    options.modes = {PromptMode::standard};
    ScriptedTestBackend first(questions, examples, PromptFormat::chat);
    first.fail_on_call = 2;  // one batch saved
    EXPECT_THROW(evaluate_model(questions, examples, first, options, {2018}), Error);

    ScriptedTestBackend other(questions, examples, PromptFormat::chat);
    other.weights             = "v2";  // same model_name(), other weights
    const std::string message = error_of([&] { evaluate_model(questions, examples, other, options, {2018}); });
    EXPECT_NE(message.find("model.weights"), std::string::npos) << message;
    EXPECT_NE(message.find("--overwrite"), std::string::npos) << message;
    EXPECT_EQ(other.calls, 0);

    // Each part of the identity is checked: decoding, data, few-shot examples.
    ScriptedTestBackend same(questions, examples, PromptFormat::chat);
    auto changed                           = options;
    changed.standard_params.max_new_tokens = 65;
    EXPECT_NE(error_of([&] {
                  evaluate_model(questions, examples, same, changed, {2018});
              }).find("decoding.standard.max_new_tokens"),
              std::string::npos);
    changed               = options;
    changed.data_identity = {{"question_files_xxh3", "other"}};
    EXPECT_NE(error_of([&] { evaluate_model(questions, examples, same, changed, {2018}); }).find("data"),
              std::string::npos);
    auto edited = examples;
    edited[0].problem_text += "。";
    EXPECT_NE(error_of([&] { evaluate_model(questions, edited, same, options, {2018}); }).find("few_shot.xxh3"),
              std::string::npos);
    EXPECT_EQ(same.calls, 0);

    // --overwrite starts over with the other model.
    options.overwrite = true;
    evaluate_model(questions, examples, other, options, {2018});
    EXPECT_EQ(other.asked.size(), questions.size());
    EXPECT_EQ(read_records(out_dir / "predictions.jsonl").size(), questions.size());
    EXPECT_EQ(read_json_file(out_dir / "predictions.jsonl.run.json")["model"]["weights"], "v2");
}

// Finding 9: every record carries the prompt that was sent, equal to the reference rendering.
TEST_F(EvaluatorTest, RecordsTheRenderedPrompt) {
    std::ifstream in(std::string(MEDLLM_FIXTURES_DIR) + "/eval/prompts_reference.json");
    ASSERT_TRUE(in);
    const auto cases = nlohmann::json::parse(in);
    const auto& ref  = cases[0];
    ASSERT_EQ(ref["problem_id"], "112A1");
    std::vector<ChatMessage> messages;
    for (const auto& m : ref["messages"]) messages.push_back({m["role"], m["content"]});

    for (PromptFormat format : {PromptFormat::chat, PromptFormat::base}) {
        SCOPED_TRACE(to_string(format));
        options.output_dir = out_dir / to_string(format);
        options.format     = format;
        options.modes      = {PromptMode::standard, PromptMode::explanation};
        ScriptedTestBackend backend(questions, examples, format);
        evaluate_model(questions, examples, backend, options, {2018});
        std::map<std::string, std::string> prompts;  // "<mode> <problem_id>" -> prompt
        for (const auto& r : read_records(options.output_dir / "predictions.jsonl"))
            prompts[r["mode"].get<std::string>() + " " + r["problem_id"].get<std::string>()] = r["prompt"];
        ASSERT_EQ(prompts.size(), 2 * questions.size());
        // The reference (original chatgpt.py messages; Qwen2.5 template for chat) for 112A1 in standard mode.
        const std::string expected = format == PromptFormat::chat ? ref["qwen_chat"].get<std::string>()
                                                                  : render_base(messages, false, PromptMode::standard);
        EXPECT_EQ(prompts["standard 112A1"], expected);
        EXPECT_EQ(
            prompts["standard 112A1"].rfind(format == PromptFormat::chat ? "<|im_start|>system\n" : kSystemMessage, 0),
            0u);
        // Every prompt recorded is the one the backend was asked.
        std::set<std::string> asked(backend.asked.begin(), backend.asked.end());
        for (const auto& [key, prompt] : prompts) EXPECT_TRUE(asked.count(prompt)) << key;
        const Question& q = questions.front();
        EXPECT_EQ(prompts["explanation " + q.problem_id], render_prompt(q, examples, PromptMode::explanation, format));
    }
}

// A saved record whose prompt is not the one this run would send (an edited file) is not silently reused.
TEST_F(EvaluatorTest, SavedRecordWithAnotherPromptIsRefused) {
    options.modes = {PromptMode::standard};
    ScriptedTestBackend backend(questions, examples, PromptFormat::chat);
    evaluate_model(questions, examples, backend, options, {2018});
    auto records         = read_records(out_dir / "predictions.jsonl");
    records[5]["prompt"] = "問題: something else";
    std::string text;
    for (const auto& r : records) text += r.dump() + "\n";
    std::ofstream(out_dir / "predictions.jsonl", std::ios::binary | std::ios::trunc) << text;
    const std::string message = error_of([&] { evaluate_model(questions, examples, backend, options, {2018}); });
    EXPECT_NE(message.find("predictions.jsonl:6: problem_id " + questions[5].problem_id), std::string::npos) << message;
}

// Finding 1: a full disk while appending predictions is an Error naming the file; the rerun resumes.
TEST_F(EvaluatorTest, FullDiskWhileAppendingPredictionsIsAnErrorAndResumes) {
    options.modes = {PromptMode::standard};
    ScriptedTestBackend reference(questions, examples, PromptFormat::chat);
    options.output_dir  = out_dir / "reference";
    const auto expected = report_json(evaluate_model(questions, examples, reference, options, {2018}), questions);

    options.output_dir = out_dir / "full";
    ScriptedTestBackend cut(questions, examples, PromptFormat::chat);
    std::string message;
    {
        ScopedFileSizeLimit limit(100000);  // about 30 records with their prompts
        message = error_of([&] { evaluate_model(questions, examples, cut, options, {2018}); });
    }
    EXPECT_NE(message.find("predictions.jsonl: write failed"), std::string::npos) << message;
    ScriptedTestBackend resumed(questions, examples, PromptFormat::chat);
    const auto result = report_json(evaluate_model(questions, examples, resumed, options, {2018}), questions);
    EXPECT_LT(resumed.asked.size(), questions.size());
    EXPECT_EQ(result["modes"], expected["modes"]);
    EXPECT_EQ(read_records(options.output_dir / "predictions.jsonl").size(), questions.size());
}

// Finding 1: reports are replaced atomically; a full disk leaves the previous report and names the file.
TEST_F(EvaluatorTest, FullDiskWhileWritingReportsLeavesNoCutReport) {
    options.modes = {PromptMode::standard};
    ScriptedTestBackend backend(questions, examples, PromptFormat::chat);
    const EvalResult result = evaluate_model(questions, examples, backend, options, {2018});
    write_reports(out_dir, result, questions);
    const std::string report = read_text_file(out_dir / "report.json");
    const std::string md     = read_text_file(out_dir / "report.md");
    const std::string scored = read_text_file(out_dir / "scored.jsonl");
    ASSERT_GT(report.size(), 2000u);
    {
        ScopedFileSizeLimit limit(1000);
        const std::string message = error_of([&] { write_reports(out_dir, result, questions); });
        EXPECT_NE(message.find("report.json"), std::string::npos) << message;
    }
    EXPECT_TRUE(read_text_file(out_dir / "report.json") == report) << "report.json was changed";
    EXPECT_FALSE(fs::exists(out_dir / "report.json.tmp"));

    // A limit that report.json and report.md fit under but scored.jsonl does not: the error names scored.jsonl.
    const size_t fits = std::max(report.size(), md.size()) + 16;
    ASSERT_GT(scored.size(), fits);
    fs::remove(out_dir / "scored.jsonl");
    {
        ScopedFileSizeLimit limit(fits);
        const std::string message = error_of([&] { write_reports(out_dir, result, questions); });
        EXPECT_NE(message.find("scored.jsonl"), std::string::npos) << message;
    }
    EXPECT_FALSE(fs::exists(out_dir / "scored.jsonl"));
    EXPECT_TRUE(read_text_file(out_dir / "report.json") == report) << "report.json was changed";
}

TEST(EvaluatePredictions, ModeRules) {
    const auto questions = load_questions(igakuqa_dir(), {2018});
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

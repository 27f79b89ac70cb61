// `eval mcqa` scoring without a model: lm-eval's acc / acc_norm on the fixture's numbers, generative answer
// extraction, the evaluation loop (batches, resume, identity) over a scripted backend, and the reports.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/eval/mcqa_evaluator.h"
#include "support/file_limit.h"

namespace {

namespace fs = std::filesystem;
using namespace medllm;
using namespace medllm::eval;

TEST(McqaMetrics, ArgmaxAndLengthAsLmEval) {
    EXPECT_EQ(argmax_first({-3.0, -1.0, -1.0, -2.0}), 1);  // np.argmax: first of equal maxima
    EXPECT_EQ(argmax_first({}), -1);
    EXPECT_EQ(codepoint_length("abc"), 3u);
    EXPECT_EQ(codepoint_length("ヘモグロビン"), 6u);  // Python len(str): code points, not 18 bytes
    // "yes" (3) at -6 beats "maybe" (5) at -9 by ll, but per character -9/5 > -6/3.
    const auto c = choose_by_loglik({-6.0, -7.0, -9.0}, {"yes", "no", "maybe"});
    EXPECT_EQ(c.pred, 0);
    EXPECT_EQ(c.pred_norm, 2);
    EXPECT_EQ(c.pred_norm_tokens, -1);  // no token counts given
    // JMedBench divides by the option's tokens instead: "maybe" as 1 token at -9 loses to "yes" as 2 tokens at -6
    // (-9 < -3), while per character it wins; "ヘモグロビン" (6 characters, 4 tokens) shows the two can disagree.
    const auto t = choose_by_loglik({-6.0, -7.0, -9.0}, {"yes", "no", "maybe"}, {2, 1, 1});
    EXPECT_EQ(t.pred_norm, 2);
    EXPECT_EQ(t.pred_norm_tokens, 0);
    EXPECT_EQ(choose_by_loglik({-12.0, -8.0}, {"ヘモグロビン", "鉄"}, {4, 1}).pred_norm_tokens, 0);  // -3 > -8
    EXPECT_EQ(choose_by_loglik({-12.0, -8.0}, {"ヘモグロビン", "鉄"}, {4, 1}).pred_norm, 0);         // -2 > -8
    EXPECT_EQ(choose_by_loglik({-12.0, -2.5}, {"ヘモグロビン", "鉄"}, {4, 1}).pred_norm_tokens, 1);  // -3 < -2.5
    EXPECT_EQ(choose_by_loglik({-12.0, -2.5}, {"ヘモグロビン", "鉄"}, {4, 1}).pred_norm, 0);         // -2 > -2.5
    EXPECT_THROW(choose_by_loglik({-1.0, -2.0}, {"a", "b"}, {1}), Error);
}

// The fixture's log-likelihoods (from transformers) through choose_by_loglik give the choices and the acc /
// acc_norm that scripts/make_mcqa_fixtures.py computed with lm-eval's formulas (numpy) on the same numbers, and
// acc_norm_tokens with JMedBench's (loss / the option's tokens).
TEST(McqaMetrics, MatchLmEvalOnFixtureNumbers) {
    const auto ref = read_json_file(fs::path(MEDLLM_FIXTURES_DIR) / "eval" / "mcqa" / "reference.json");
    int differing = 0, norms_differ = 0;
    for (const auto& c : ref["cases"]) {
        SCOPED_TRACE(c["name"].get<std::string>());
        int acc = 0, acc_norm = 0, acc_norm_tokens = 0, n = 0;
        for (const auto& q : c["questions"]) {
            std::vector<int64_t> tokens;
            for (const auto& ids : q["continuation_ids"]) tokens.push_back(static_cast<int64_t>(ids.size()));
            const auto choice = choose_by_loglik(q["logprobs"].get<std::vector<double>>(),
                                                 q["choices"].get<std::vector<std::string>>(), tokens);
            EXPECT_EQ(choice.pred, q["pred"].get<int>());
            EXPECT_EQ(choice.pred_norm, q["pred_norm"].get<int>());
            EXPECT_EQ(choice.pred_norm_tokens, q["pred_norm_tokens"].get<int>());
            differing += choice.pred != choice.pred_norm;
            norms_differ += choice.pred_norm != choice.pred_norm_tokens;
            acc += choice.pred == q["gold"].get<int>();
            acc_norm += choice.pred_norm == q["gold"].get<int>();
            acc_norm_tokens += choice.pred_norm_tokens == q["gold"].get<int>();
            ++n;
        }
        EXPECT_DOUBLE_EQ(static_cast<double>(acc) / n, c["acc"].get<double>());
        EXPECT_DOUBLE_EQ(static_cast<double>(acc_norm) / n, c["acc_norm"].get<double>());
        EXPECT_DOUBLE_EQ(static_cast<double>(acc_norm_tokens) / n, c["acc_norm_tokens"].get<double>());
    }
    EXPECT_GT(differing, 0) << "the fixture should exercise acc_norm choosing differently from acc";
    EXPECT_GT(norms_differ, 0) << "the fixture should exercise the two normalizations choosing differently";
}

TEST(McqaMetrics, GeneratedChoice) {
    const McqaTask medqa = builtin_mcqa_task("medqa-jp");
    McqaQuestion q;
    q.options = {"感染", "骨折", "貧血", "脱水"};
    EXPECT_EQ(generated_choice(medqa, q, "C"), 2);
    EXPECT_EQ(generated_choice(medqa, q, " b. 骨折です"), 1);
    EXPECT_EQ(generated_choice(medqa, q, "答え：Ｄ"), 3);  // full-width label
    EXPECT_EQ(generated_choice(medqa, q, "貧血"), 2);      // the option's text
    EXPECT_EQ(generated_choice(medqa, q, "a,c"), -1);      // two answers to a one-answer question
    EXPECT_EQ(generated_choice(medqa, q, "わかりません"), -1);
    EXPECT_EQ(generated_choice(medqa, q, "E"), -1);  // no fifth option
    const McqaTask pubmed = builtin_mcqa_task("pubmedqa-jp");
    McqaQuestion p;
    p.options = pubmed.fixed_options;
    EXPECT_EQ(generated_choice(pubmed, p, "Maybe."), 2);
    EXPECT_EQ(generated_choice(pubmed, p, "no"), 1);
    EXPECT_EQ(generated_choice(pubmed, p, "B"), 1);
    EXPECT_EQ(generated_choice(pubmed, p, "nothing"), -1);  // "no" must end at a word boundary
}

TEST(McqaPrompt, ChatFormatDropsTheDelimiter) {
    McqaTask t = builtin_mcqa_task("medqa-jp");
    t.system   = "医師として答えてください。";
    McqaQuestion q;
    q.question = "Q";
    q.options  = {"x", "y"};
    EXPECT_EQ(format_mcqa_prompt(t, q, PromptFormat::base), "質問：Q\nA. x\nB. y\n答え：");
    EXPECT_EQ(format_mcqa_prompt(t, q, PromptFormat::chat),
              "<|im_start|>system\n医師として答えてください。<|im_end|>\n<|im_start|>user\n質問：Q\nA. x\nB. "
              "y\n答え：<|im_end|>\n<|im_start|>assistant\n");
    EXPECT_EQ(mcqa_continuation(t, q, 1, PromptFormat::base), " y");  // JMedBench's tasks score the option's text
    EXPECT_EQ(mcqa_continuation(t, q, 1, PromptFormat::chat), "y");
    t.choice = "label";
    EXPECT_EQ(mcqa_continuation(t, q, 1, PromptFormat::base), " B");
}

// A backend whose log-likelihood for option o of a question is a fixed function of the prompt and the option; it
// counts its calls so resumes can be checked.
class ScriptedBackend : public McqaBackend {
public:
    std::vector<std::vector<ContinuationScore>> loglikelihood(const std::vector<LoglikRequest>& requests) override {
        ++calls;
        std::vector<std::vector<ContinuationScore>> out;
        for (const auto& r : requests) {
            ++requests_seen;
            std::vector<ContinuationScore> s;
            for (size_t o = 0; o < r.continuations.size(); ++o) {
                // The option whose index is (prompt length mod options) wins.
                const bool best = o == r.context.size() % r.continuations.size();
                s.push_back({best ? -1.0 : -5.0 - static_cast<double>(o), 1, best});
            }
            out.push_back(s);
        }
        return out;
    }
    std::vector<std::string> complete(const std::vector<std::string>& prompts, const GenerationParams&) override {
        std::vector<std::string> out;
        for (const auto& p : prompts) out.push_back(p.size() % 2 ? "A" : "よくわからない");
        return out;
    }
    bool has_chat_template() const override { return false; }
    std::string model_name() const override { return "scripted"; }
    nlohmann::json identity() const override { return {{"backend", "scripted"}, {"version", version}}; }
    int calls = 0, requests_seen = 0, version = 1;
};

class McqaEval : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("medllm_mcqa_eval_" + std::to_string(getpid()));
        fs::remove_all(dir_);
        fs::create_directories(dir_);
        {
            std::ofstream data(dir_ / "q.jsonl");
            for (int i = 0; i < 7; ++i)
                data << "{\"id\": \"q" << i << "\", \"question\": \"Q" << std::string(static_cast<size_t>(i), 'x')
                     << "\", \"options\": [\"a\", \"b\", \"c\"], \"answer\": " << i % 3 << "}\n";
            data << "{\"id\": \"broken\"}\n";
        }
        task_ = builtin_mcqa_task("medmcqa-jp");
        data_ = load_mcqa_dataset(task_, dir_ / "q.jsonl");
    }
    void TearDown() override { fs::remove_all(dir_); }
    McqaOptions options(int batch) const {
        McqaOptions o;
        o.scoring    = McqaScoring::both;
        o.batch_size = batch;
        o.output_dir = dir_ / ("out" + std::to_string(batch));
        return o;
    }
    fs::path dir_;
    McqaTask task_;
    McqaDataset data_;
};

TEST_F(McqaEval, BatchSizeDoesNotChangeResultsAndRerunsResume) {
    ScriptedBackend b1, b3;
    const auto r1 = evaluate_mcqa_task(task_, data_, b1, options(1));
    const auto r3 = evaluate_mcqa_task(task_, data_, b3, options(3));
    EXPECT_EQ(b1.calls, 7);
    EXPECT_EQ(b3.calls, 3);
    EXPECT_EQ(r1.acc.correct, r3.acc.correct);
    EXPECT_EQ(r1.generate.correct, r3.generate.correct);
    EXPECT_EQ(r1.acc.n, 7);
    EXPECT_EQ(r1.skipped.size(), 1u);
    // predictions files equal line for line
    EXPECT_EQ(read_text_file(dir_ / "out1" / "predictions" / "medmcqa-jp.jsonl"),
              read_text_file(dir_ / "out3" / "predictions" / "medmcqa-jp.jsonl"));

    // A rerun computes nothing and reports the same.
    ScriptedBackend again;
    const auto r = evaluate_mcqa_task(task_, data_, again, options(3));
    EXPECT_EQ(again.calls, 0);
    EXPECT_EQ(r.acc.correct, r3.acc.correct);
    EXPECT_EQ(r.acc_norm.correct, r3.acc_norm.correct);
    EXPECT_EQ(r.generate_unparsed, r3.generate_unparsed);

    // Another model under the same output is refused naming the key; --overwrite starts over.
    ScriptedBackend other;
    other.version = 2;
    try {
        evaluate_mcqa_task(task_, data_, other, options(3));
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("backend.version"), std::string::npos) << e.what();
    }
    auto o      = options(3);
    o.overwrite = true;
    evaluate_mcqa_task(task_, data_, other, o);
    EXPECT_EQ(other.requests_seen, 7);
}

// A full disk while predictions are appended is an Error naming the file; the rerun resumes from the records that
// were written and ends with the same scores as a run that never failed. A report that does not fit is not left cut.
TEST_F(McqaEval, FullDiskIsAnErrorAndTheRerunResumes) {
    ScriptedBackend reference_run;
    const auto expected = evaluate_mcqa_task(task_, data_, reference_run, options(1));
    auto o              = options(2);
    std::string message;
    {
        ScopedFileSizeLimit limit(1500);  // a few records with their prompts
        ScriptedBackend cut;
        try {
            evaluate_mcqa_task(task_, data_, cut, o);
        } catch (const Error& e) {
            message = e.what();
        }
    }
    EXPECT_NE(message.find("medmcqa-jp.jsonl: write failed"), std::string::npos) << message;
    ScriptedBackend resumed;
    const auto r = evaluate_mcqa_task(task_, data_, resumed, o);
    EXPECT_GT(resumed.requests_seen, 0);
    EXPECT_LT(resumed.requests_seen, 7);
    EXPECT_EQ(r.acc.correct, expected.acc.correct);
    EXPECT_EQ(r.generate.correct, expected.generate.correct);

    McqaResult result;
    result.model = "scripted";
    result.tasks.push_back(r);
    std::string report_error;
    {
        ScopedFileSizeLimit limit(300);
        try {
            write_mcqa_reports(dir_ / "report", result);
        } catch (const Error& e) {
            report_error = e.what();
        }
    }
    EXPECT_NE(report_error.find("report.json"), std::string::npos) << report_error;
    EXPECT_FALSE(fs::exists(dir_ / "report" / "report.json"));
}

// --limit scores the first N questions; a run without it resumes them and scores only the rest.
TEST_F(McqaEval, LimitScoresAPrefixThatAFullRunResumes) {
    auto o  = options(2);
    o.limit = 3;
    ScriptedBackend first;
    const auto r3 = evaluate_mcqa_task(task_, data_, first, o);
    EXPECT_EQ(r3.questions, 3);
    EXPECT_EQ(r3.acc.n, 3);
    EXPECT_EQ(first.requests_seen, 3);
    o.limit = 0;
    ScriptedBackend rest;
    const auto all = evaluate_mcqa_task(task_, data_, rest, o);
    EXPECT_EQ(rest.requests_seen, 4);
    EXPECT_EQ(all.acc.n, 7);
}

TEST_F(McqaEval, EditedPromptInPredictionsIsRefused) {
    ScriptedBackend b;
    evaluate_mcqa_task(task_, data_, b, options(4));
    const fs::path file = dir_ / "out4" / "predictions" / "medmcqa-jp.jsonl";
    std::string text    = read_text_file(file);
    const size_t at     = text.find("質問：");
    ASSERT_NE(at, std::string::npos);
    text.replace(at, std::string("質問：").size(), "問題：");
    std::ofstream(file, std::ios::trunc) << text;
    ScriptedBackend again;
    try {
        evaluate_mcqa_task(task_, data_, again, options(4));
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("medmcqa-jp.jsonl:1: question q0: its saved prompt"), std::string::npos)
            << e.what();
    }
}

// What the model backend does with a prompt longer than the model's context (src/generate/loglik.cpp, engine.cpp):
// an error naming the request's position in the batch.
class ShortContextBackend : public ScriptedBackend {
public:
    std::vector<std::vector<ContinuationScore>> loglikelihood(const std::vector<LoglikRequest>& requests) override {
        for (size_t i = 0; i < requests.size(); ++i)
            if (requests[i].context.size() > 4096)
                throw Error("log-likelihood request " + std::to_string(i) + ": prompt + option is " +
                            std::to_string(requests[i].context.size()) + " tokens, the model's context is 4096");
        return ScriptedBackend::loglikelihood(requests);
    }
    std::vector<std::string> complete(const std::vector<std::string>& prompts, const GenerationParams& p) override {
        for (size_t i = 0; i < prompts.size(); ++i)
            if (prompts[i].size() > 4096)
                throw Error("prompt " + std::to_string(i) + " has " + std::to_string(prompts[i].size()) +
                            " tokens; the model's context is 4096");
        return ScriptedBackend::complete(prompts, p);
    }
};

TEST_F(McqaEval, AQuestionTooLongForTheModelIsNamedByFileLineAndId) {
    {
        std::ofstream data(dir_ / "long.jsonl");
        for (int i = 0; i < 4; ++i) {
            const std::string text = i == 2 ? std::string(100000, 'x') : "Q" + std::to_string(i);
            data << "{\"id\": \"q" << i << "\", \"question\": \"" << text
                 << "\", \"options\": [\"a\", \"b\", \"c\"], \"answer\": 0}\n";
        }
    }
    const auto data = load_mcqa_dataset(task_, dir_ / "long.jsonl");
    for (auto scoring : {McqaScoring::loglik, McqaScoring::generate}) {
        ShortContextBackend b;
        auto o    = options(4);
        o.scoring = scoring;
        try {
            evaluate_mcqa_task(task_, data, b, o);
            FAIL() << "a prompt longer than the context was scored";
        } catch (const Error& e) {
            const std::string m = e.what();
            EXPECT_EQ(m.rfind("long.jsonl:3: question q2: ", 0), 0u) << m;
            EXPECT_EQ(m.find("request"), std::string::npos) << m;
            EXPECT_EQ(m.find("prompt 2"), std::string::npos) << m;
            EXPECT_NE(m.find("the model's context is 4096"), std::string::npos) << m;
        }
    }
}

TEST_F(McqaEval, ReportsHaveTable3Shape) {
    ScriptedBackend b;
    McqaResult result;
    result.model         = "scripted";
    result.prompt_format = "base";
    result.scoring       = McqaScoring::both;
    result.tasks.push_back(evaluate_mcqa_task(task_, data_, b, options(2)));
    auto second = task_;
    second.name = "second";
    result.tasks.push_back(evaluate_mcqa_task(second, data_, b, options(2)));
    result.tasks[1].acc = {4, 4};  // a different accuracy, to see the macro average
    write_mcqa_reports(dir_ / "report", result);
    const auto j = read_json_file(dir_ / "report" / "report.json");
    ASSERT_EQ(j["tasks"].size(), 2u);
    const double a0 = j["tasks"][0]["acc"]["acc"].get<double>();
    EXPECT_DOUBLE_EQ(j["average"]["acc"].get<double>(), (a0 + 1.0) / 2);
    EXPECT_EQ(j["tasks"][0]["skipped"][0].get<std::string>().rfind("q.jsonl:8:", 0), 0u);
    const std::string md = read_text_file(dir_ / "report" / "report.md");
    EXPECT_NE(md.find("| Model | Metric | medmcqa-jp | second | Average |"), std::string::npos) << md;
    EXPECT_NE(md.find("| scripted | acc_norm |"), std::string::npos) << md;
    EXPECT_NE(md.find("| scripted | acc_norm_tokens |"), std::string::npos) << md;
    EXPECT_NE(md.find("(lm-evaluation-harness)"), std::string::npos) << md;
    EXPECT_NE(md.find("(JMedBench's own scorer)"), std::string::npos) << md;
    EXPECT_NE(md.find("| scripted | generate |"), std::string::npos) << md;
    // Both normalizations, named, in report.json; the scripted backend gives every option 1 token, so per token
    // is plain acc here, and per character the same with one-character options.
    EXPECT_NE(j["metrics"]["acc_norm"].get<std::string>().find("code points (lm-evaluation-harness"),
              std::string::npos);
    EXPECT_NE(j["metrics"]["acc_norm_tokens"].get<std::string>().find("JMedBench"), std::string::npos);
    EXPECT_EQ(j["tasks"][0]["acc_norm_tokens"]["correct"], j["tasks"][0]["acc"]["correct"]);
    EXPECT_TRUE(j["average"].contains("acc_norm_tokens"));
}

}  // namespace

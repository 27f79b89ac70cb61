// `eval mcqa` on the fixture model: option log-likelihoods against transformers (scripts/make_mcqa_fixtures.py),
// batch invariance, resume, and the command end to end.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "generate_test_util.h"
#include "mcqa_test_util.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/eval/mcqa_evaluator.h"
#include "medllm/generate/loglik.h"
#include "support/run_medllm.h"

namespace {

namespace fs = std::filesystem;
using namespace medllm;

fs::path fixture_dir() {
    return eval::testing::mcqa_fixture_dir();
}

nlohmann::json reference() {
    return read_json_file(fixture_dir() / "reference.json");
}

fs::path scratch(const std::string& name) {
    return eval::testing::mcqa_scratch(name);
}

const fs::path& model_dir() {
    return eval::testing::mcqa_model_dir();
}

generate::McqaEngineBackend& backend() {
    static generate::McqaEngineBackend b(model_dir(), [] {
        generate::LoadOptions o;
        o.device = "cpu";
        o.dtype  = "fp32";
        return o;
    }());
    return b;
}

eval::McqaTask case_task(const nlohmann::json& c) {
    eval::McqaTask t = eval::builtin_mcqa_task(c["task"].get<std::string>());
    if (c["overrides"].contains("choice")) t.choice = c["overrides"]["choice"].get<std::string>();
    return t;
}

eval::PromptFormat case_format(const nlohmann::json& c) {
    return c["prompt_format"] == "chat" ? eval::PromptFormat::chat : eval::PromptFormat::base;
}

// Every case of the fixture: the loader reads the same questions, the prompts render to the same text, the
// tokenization follows lm-eval's _encode_pair, and the option log-likelihoods match transformers.
TEST(McqaParity, LoglikMatchesTransformers) {
    const auto ref       = reference();
    const auto tokenizer = text::Tokenizer::from_dir(model_dir());
    auto model           = model::Qwen2ForCausalLM::from_pretrained(model_dir().string(), at::kFloat);
    for (const auto& c : ref["cases"]) {
        SCOPED_TRACE(c["name"].get<std::string>());
        const auto task = case_task(c);
        const auto data = eval::load_mcqa_dataset(task, fixture_dir() / c["data"].get<std::string>());
        const auto& qs  = c["questions"];
        ASSERT_EQ(data.questions.size(), qs.size());
        std::vector<generate::LoglikRequestIds> requests;
        for (size_t i = 0; i < qs.size(); ++i) {
            const auto& q = data.questions[i];
            EXPECT_EQ(q.id, qs[i]["id"].get<std::string>());
            EXPECT_EQ(q.answer, qs[i]["gold"].get<int>());
            const std::string prompt = eval::format_mcqa_prompt(task, q, case_format(c));
            ASSERT_EQ(prompt, qs[i]["prompt"].get<std::string>());
            std::vector<std::string> conts;
            for (size_t o = 0; o < q.options.size(); ++o)
                conts.push_back(eval::mcqa_continuation(task, q, o, case_format(c)));
            EXPECT_EQ(nlohmann::json(conts), qs[i]["continuations"]);
            auto ids = generate::encode_loglik_request(*tokenizer, prompt, conts);
            EXPECT_EQ(nlohmann::json(ids.context), qs[i]["context_ids"]);
            EXPECT_EQ(nlohmann::json(ids.continuations), qs[i]["continuation_ids"]);
            requests.push_back(std::move(ids));
        }
        const auto scores = generate::score_continuations(*model, requests);
        for (size_t i = 0; i < qs.size(); ++i) {
            std::vector<double> lls;
            for (size_t o = 0; o < scores[i].size(); ++o) {
                // fp32 forward and log-softmax on both sides; sums of up to ~30 token log-probs: 1e-4.
                EXPECT_NEAR(scores[i][o].logprob, qs[i]["logprobs"][o].get<double>(), 1e-4) << "question " << i;
                EXPECT_EQ(scores[i][o].greedy, qs[i]["greedy"][o].get<bool>());
                EXPECT_EQ(scores[i][o].tokens, static_cast<int64_t>(qs[i]["continuation_ids"][o].size()));
                lls.push_back(scores[i][o].logprob);
            }
            const auto choice = eval::choose_by_loglik(lls, qs[i]["choices"].get<std::vector<std::string>>());
            EXPECT_EQ(choice.pred, qs[i]["pred"].get<int>()) << "question " << i;
            EXPECT_EQ(choice.pred_norm, qs[i]["pred_norm"].get<int>()) << "question " << i;
        }
    }
}

// The same scores, bit for bit, whatever the batch size: requests are never padded against each other, and the
// options-per-forward split does not change a row's numbers beyond float noise either.
TEST(McqaBatch, ScoresDoNotDependOnBatchSize) {
    const auto ref  = reference();
    const auto& c   = ref["cases"][1];  // medqa, options as text: multi-token continuations
    const auto task = case_task(c);
    const auto data = eval::load_mcqa_dataset(task, fixture_dir() / "medqa.jsonl");
    std::vector<nlohmann::json> runs;
    for (int batch : {1, 3, 16}) {
        const fs::path out = scratch("batch" + std::to_string(batch));
        fs::remove_all(out);
        eval::McqaOptions o;
        o.batch_size = batch;
        o.output_dir = out;
        const auto r = eval::evaluate_mcqa_task(task, data, backend(), o);
        EXPECT_DOUBLE_EQ(r.acc.acc(), c["acc"].get<double>());
        EXPECT_DOUBLE_EQ(r.acc_norm.acc(), c["acc_norm"].get<double>());
        EXPECT_DOUBLE_EQ(r.acc_norm_tokens.acc(), c["acc_norm_tokens"].get<double>());
        nlohmann::json lls = nlohmann::json::array();
        {
            JsonlRecordFile saved(out / "predictions" / "medqa-jp.jsonl", nullptr);
            for (const auto& line : saved.existing()) lls.push_back(line["logprobs"]);
        }
        runs.push_back(lls);
        fs::remove_all(out);
    }
    EXPECT_EQ(runs[0], runs[1]);
    EXPECT_EQ(runs[0], runs[2]);

    // Options split over several continuation forwards: equal to float rounding.
    auto tokenizer = text::Tokenizer::from_dir(model_dir());
    auto model     = model::Qwen2ForCausalLM::from_pretrained(model_dir().string(), at::kFloat);
    std::vector<generate::LoglikRequestIds> reqs;
    for (const auto& q : c["questions"])
        reqs.push_back(generate::encode_loglik_request(*tokenizer, q["prompt"].get<std::string>(),
                                                       q["continuations"].get<std::vector<std::string>>()));
    generate::LoglikOptions one_by_one;
    one_by_one.max_option_rows = 1;
    one_by_one.chunk_rows      = 3;
    const auto a               = generate::score_continuations(*model, reqs);
    const auto b               = generate::score_continuations(*model, reqs, one_by_one);
    for (size_t i = 0; i < a.size(); ++i)
        for (size_t o = 0; o < a[i].size(); ++o) EXPECT_NEAR(a[i][o].logprob, b[i][o].logprob, 1e-5);
}

// A rerun resumes from predictions/<task>.jsonl (nothing recomputed: a record edited on disk is what the report
// then uses), a run under another prompt format is refused naming the key.
TEST(McqaResume, RerunResumesAndOtherRunIsRefused) {
    const auto task    = eval::builtin_mcqa_task("mmmlu-medical");
    const auto data    = eval::load_mcqa_dataset(task, fixture_dir() / "mmmlu.csv");
    const fs::path out = scratch("resume");
    fs::remove_all(out);
    eval::McqaOptions o;
    o.output_dir        = out;
    o.batch_size        = 2;
    const auto first    = eval::evaluate_mcqa_task(task, data, backend(), o);
    const fs::path file = out / "predictions" / "mmmlu-medical.jsonl";
    // Keep the first record only, so the rerun scores the other two and reports the same as the first run.
    {
        std::ifstream in(file);
        std::string line;
        std::getline(in, line);
        in.close();
        std::ofstream(file, std::ios::trunc) << line << "\n";
    }
    const auto second = eval::evaluate_mcqa_task(task, data, backend(), o);
    EXPECT_EQ(second.acc.correct, first.acc.correct);
    EXPECT_EQ(second.acc_norm.correct, first.acc_norm.correct);
    EXPECT_EQ(JsonlRecordFile(file, nullptr).existing().size(), 3u);

    o.format = eval::PromptFormat::chat;
    try {
        eval::evaluate_mcqa_task(task, data, backend(), o);
        FAIL() << "a resume under another prompt format must be refused";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("prompt_format"), std::string::npos) << e.what();
    }
    o.overwrite = true;
    EXPECT_NO_THROW(eval::evaluate_mcqa_task(task, data, backend(), o));
    fs::remove_all(out);
}

// lm-eval's _encode_pair moves the context's trailing whitespace (str.rstrip: also U+3000 and U+00A0) to the
// continuation, and the continuation's ids are the tail of encode(context + continuation).
TEST(McqaLoglik, TrailingWhitespaceMovesToTheContinuation) {
    const auto tok = text::Tokenizer::from_dir(model_dir());
    for (const std::string space : {" ", "\n", "\xE3\x80\x80", "\xC2\xA0 "}) {
        const auto r = generate::encode_loglik_request(*tok, "答え：" + space, {"A", " the"});
        EXPECT_EQ(r.context, tok->encode("答え："));
        for (const std::string cont : {"A", " the"}) {
            const auto whole = tok->encode("答え：" + space + cont);
            const std::vector<text::TokenId> tail(whole.begin() + static_cast<long>(r.context.size()), whole.end());
            EXPECT_EQ(r.continuations[cont == "A" ? 0 : 1], tail);
        }
    }
    EXPECT_THROW(generate::encode_loglik_request(*tok, " \n", {"A"}), Error);
}

// A prompt longer than the model's context is an Error naming the request, not an index error.
TEST(McqaLoglik, TooLongPromptIsRefused) {
    auto model = model::Qwen2ForCausalLM::from_pretrained(model_dir().string(), at::kFloat);
    generate::LoglikRequestIds r;
    r.context.assign(300, 10);
    r.continuations = {{11}, {12, 13}};
    try {
        generate::score_continuations(*model, {r});
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("context is 256"), std::string::npos) << e.what();
    }
}

// Through the evaluator, such a question (100,000 characters among short ones) is named by file, line and id, for
// both scorings, instead of "request 0" of a batch.
TEST(McqaLoglik, ALongQuestionIsNamedByFileLineAndId) {
    const fs::path dir = scratch("long");
    fs::remove_all(dir);
    fs::create_directories(dir);
    {
        std::ofstream data(dir / "long.jsonl");
        for (int i = 0; i < 3; ++i)
            data << "{\"id\": \"q" << i << "\", \"question\": \"" << (i == 1 ? std::string(100000, 'x') : "Q")
                 << "\", \"options\": [\"a\", \"b\"], \"answer\": 0}\n";
    }
    const auto task = eval::builtin_mcqa_task("medqa-jp");
    const auto data = eval::load_mcqa_dataset(task, dir / "long.jsonl");
    for (auto scoring : {eval::McqaScoring::loglik, eval::McqaScoring::generate}) {
        eval::McqaOptions o;
        o.scoring    = scoring;
        o.batch_size = 3;
        o.output_dir = dir / "out";
        o.overwrite  = true;
        try {
            eval::evaluate_mcqa_task(task, data, backend(), o);
            FAIL() << "a question longer than the context was scored";
        } catch (const Error& e) {
            const std::string m = e.what();
            EXPECT_EQ(m.rfind("long.jsonl:2: question q1: ", 0), 0u) << m;
            EXPECT_EQ(m.find("request"), std::string::npos) << m;
        }
    }
    fs::remove_all(dir);
}

// The command end to end: a tasks config with the three formats, both scorings, the reports and a resume.
TEST(McqaCli, TasksConfigEndToEnd) {
    const fs::path dir = scratch("cli");
    fs::remove_all(dir);
    fs::create_directories(dir);
    const fs::path cfg = dir / "tasks.yaml";
    std::ofstream(cfg) << "tasks:\n"
                       << "  - {task: medqa-jp, data: " << (fixture_dir() / "medqa.jsonl").string() << "}\n"
                       << "  - {task: pubmedqa-jp, data: " << (fixture_dir() / "pubmedqa.jsonl").string() << "}\n"
                       << "  - {task: mmmlu-medical, name: mmmlu-anatomy, subjects: [anatomy], data: "
                       << (fixture_dir() / "mmmlu.csv").string() << "}\n";
    const std::string args = "eval mcqa --tasks-config " + cfg.string() + " --model " + model_dir().string() +
                             " --output " + (dir / "out").string() + " --scoring both --batch-size 2 --device cpu";
    auto run = run_medllm(args);
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("average over 3 tasks"), std::string::npos) << run.output;
    const auto report = read_json_file(dir / "out" / "report.json");
    ASSERT_EQ(report["tasks"].size(), 3u);
    const auto ref = reference();
    EXPECT_DOUBLE_EQ(report["tasks"][0]["acc"]["acc"].get<double>(), ref["cases"][1]["acc"].get<double>());
    EXPECT_DOUBLE_EQ(report["tasks"][0]["acc_norm"]["acc"].get<double>(), ref["cases"][1]["acc_norm"].get<double>());
    EXPECT_DOUBLE_EQ(report["tasks"][1]["acc_norm"]["acc"].get<double>(), ref["cases"][4]["acc_norm"].get<double>());
    EXPECT_EQ(report["tasks"][0]["skipped_rows"], 1);  // the medqa fixture's row without options
    EXPECT_NE(report["tasks"][0]["skipped"][0].get<std::string>().find("medqa.jsonl:3"), std::string::npos);
    EXPECT_EQ(report["tasks"][2]["questions"], 1);  // anatomy only
    EXPECT_TRUE(report["average"].contains("generate"));
    const std::string md = read_text_file(dir / "out" / "report.md");
    EXPECT_NE(md.find("| medqa-jp | pubmedqa-jp | mmmlu-anatomy | Average |"), std::string::npos) << md;
    EXPECT_EQ(JsonlRecordFile(dir / "out" / "predictions" / "medqa-jp.jsonl", nullptr).existing().size(), 8u);

    // Rerun: everything resumes, same report.
    auto again = run_medllm(args);
    ASSERT_EQ(again.exit_code, 0) << again.output;
    EXPECT_NE(again.output.find("4 saved, 0 to score"), std::string::npos) << again.output;
    EXPECT_EQ(read_json_file(dir / "out" / "report.json"), report);

    // Bad input: one line, exit 2.
    auto bad = run_medllm("eval mcqa --task nosuch --data " + (fixture_dir() / "medqa.jsonl").string() + " --model " +
                          model_dir().string() + " --output " + (dir / "o2").string());
    EXPECT_EQ(bad.exit_code, 2) << bad.output;
    EXPECT_NE(bad.output.find("unknown task 'nosuch'"), std::string::npos) << bad.output;
    auto both = run_medllm("eval mcqa --task medqa-jp --tasks-config " + cfg.string() + " --model " +
                           model_dir().string() + " --output " + (dir / "o3").string());
    EXPECT_EQ(both.exit_code, 2) << both.output;
    auto missing = run_medllm("eval mcqa --task medqa-jp --data " + (dir / "missing.jsonl").string() + " --model " +
                              model_dir().string() + " --output " + (dir / "o4").string());
    EXPECT_EQ(missing.exit_code, 2) << missing.output;
    EXPECT_NE(missing.output.find("missing.jsonl: no such file or folder"), std::string::npos) << missing.output;
    auto no_data =
        run_medllm("eval mcqa --task medqa-jp --model " + model_dir().string() + " --output " + (dir / "o5").string());
    EXPECT_EQ(no_data.exit_code, 2) << no_data.output;
    EXPECT_NE(no_data.output.find("--task needs --data"), std::string::npos) << no_data.output;
    // The device is checked before the process group is joined, named as the flag it came from.
    auto device =
        run_medllm("eval mcqa --task medqa-jp --data " + (fixture_dir() / "medqa.jsonl").string() + " --model " +
                   model_dir().string() + " --output " + (dir / "o6").string() + " --device bogus");
    EXPECT_EQ(device.exit_code, 2) << device.output;
    EXPECT_NE(device.output.find("--device bogus: expected auto, cpu, cuda or cuda:N"), std::string::npos)
        << device.output;
    auto help = run_medllm("eval mcqa --help");
    EXPECT_EQ(help.exit_code, 0) << help.output;
    EXPECT_NE(help.output.find("--tasks-config"), std::string::npos) << help.output;
    EXPECT_NE(help.output.find("loglik | generate | both"), std::string::npos) << help.output;
    EXPECT_NE(help.output.find("--world-size"), std::string::npos) << help.output;
    EXPECT_NE(help.output.find("medllm eval mcqa"), std::string::npos) << help.output;  // the torchrun example
    fs::remove_all(dir);
}

}  // namespace

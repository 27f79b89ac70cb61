// build-prefs end to end on the tiny fixture model (tests/generate/generate_test_util.h: printable-ASCII lm_head,
// byte-level tokenizer) with the fixture questions: the library run, the CLI, resume after SIGKILL, refusals.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "generate/generate_test_util.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/eval/igakuqa_data.h"
#include "medllm/generate/load.h"
#include "medllm/prefs/build_prefs.h"
#include "support/run_medllm.h"
#include "support/shared_data.h"
#include "support/text_files.h"

namespace {

namespace fs = std::filesystem;
namespace gt = medllm::generate::testing;
using namespace medllm::prefs;
using nlohmann::json;

const fs::path kQuestions = fs::path(MEDLLM_FIXTURES_DIR) / "train" / "prefs_questions.jsonl";

class PrefsRun : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        model_ = new fs::path(gt::make_printable_model_dir(
            fs::path(::testing::TempDir()) / ("prefs_model_" + std::to_string(::getpid())), 8192));
    }
    static void TearDownTestSuite() {
        fs::remove_all(*model_);
        delete model_;
    }
    static fs::path* model_;
    static fs::path out(const std::string& name) {
        const fs::path p = fs::path(::testing::TempDir()) / ("prefs_" + std::to_string(::getpid()) + "_" + name);
        fs::remove_all(p);
        return p;
    }
    static BuildPrefsOptions options(const fs::path& output) {
        BuildPrefsOptions o;
        o.questions       = {kQuestions};
        o.model           = *model_;
        o.device          = "cpu";
        o.prompt_format   = "base";
        o.prompt_template = template_preset("paper");
        o.num_samples     = 4;
        o.max_new_tokens  = 24;
        o.seed            = 1;
        o.batch_size      = 8;
        o.output          = output;
        o.log_progress    = false;
        return o;
    }
    std::string cli_args(const fs::path& output, const std::string& extra = "") const {
        return "build-prefs --questions " + kQuestions.string() + " --model " + model_->string() + " --output " +
               output.string() + " --device cpu --prompt-format base -n 4 --max-new-tokens 48 --seed 3 " +
               "--batch-size 4 " + extra;
    }
};
fs::path* PrefsRun::model_ = nullptr;

TEST_F(PrefsRun, EndToEndWritesConsistentPairsAndSummary) {
    const fs::path dir = out("e2e");
    const auto result  = build_prefs(options(dir));
    const auto& s      = result.summary;
    EXPECT_EQ(s["questions"], 8);
    EXPECT_EQ(s["samples"], 32);
    EXPECT_EQ(s["sampled_now"], 32);
    EXPECT_EQ(s["chosen"].get<int>() + s["rejected"].get<int>() + s["dropped"].get<int>(), 32);
    EXPECT_EQ(json::parse(slurp(dir / "summary.json")), s);
    EXPECT_NE(result.table.find("pairs gt_rejected"), std::string::npos) << result.table;

    // samples.jsonl: one record per question with 4 completions; the prompts are the rendered few-shot prompts.
    const auto qs = load_pref_questions({kQuestions}, {});
    std::map<std::string, std::vector<std::string>> sample_texts;
    for (const auto& line : lines_of(dir / "samples.jsonl")) {
        const auto r = json::parse(line);
        ASSERT_EQ(r["completions"].size(), 4u);
        for (const auto& c : r["completions"]) sample_texts[r["id"]].push_back(c["text"]);
    }
    ASSERT_EQ(sample_texts.size(), 8u);

    const PrefPrompt prompt(template_preset("paper"));
    std::map<std::string, int> by_type;
    const auto pair_lines = lines_of(dir / "pairs.jsonl");
    for (const auto& line : pair_lines) {
        const auto r = json::parse(line);
        ASSERT_TRUE(r["prompt"].is_string());
        ASSERT_TRUE(r["chosen"].is_string());
        ASSERT_TRUE(r["rejected"].is_string());
        const std::string id  = r["problem_id"];
        const PrefQuestion* q = nullptr;
        for (const auto& x : qs)
            if (x.question.problem_id == id) q = &x;
        ASSERT_NE(q, nullptr) << id;
        const auto examples = draw_few_shot(qs, *q, 3, 0);
        EXPECT_EQ(r["prompt"], prompt.base_prompt(*q, examples));
        const std::string type = r["pair_type"];
        ++by_type[type];
        const auto& texts = sample_texts[id];
        EXPECT_NE(std::find(texts.begin(), texts.end(), r["rejected"].get<std::string>()), texts.end());
        if (type == "gt_chosen" || type == "gt_rejected") {
            EXPECT_EQ(r["chosen"], prompt.response(q->explanation, q->question.answer));
            EXPECT_EQ(r["chosen_source"], "gt");
        } else {
            EXPECT_EQ(type, "chosen_rejected");
        }
    }
    int total = 0;
    for (const auto& [type, n] : by_type) {
        EXPECT_EQ(s["pairs"][type], n) << type;
        total += n;
    }
    EXPECT_EQ(s["pairs"]["total"], total);
    EXPECT_EQ(static_cast<int>(pair_lines.size()), total);
    EXPECT_GT(total, 0);

    // A rerun resumes everything and writes the same pairs.
    const std::string first = slurp(dir / "pairs.jsonl");
    const auto again        = build_prefs(options(dir));
    EXPECT_EQ(again.summary["resumed_questions"], 8);
    EXPECT_EQ(again.summary["sampled_now"], 0);
    EXPECT_EQ(slurp(dir / "pairs.jsonl"), first);
    // Pair options do not change the samples: a rerun re-pairs without sampling.
    auto capped               = options(dir);
    capped.pairs.max_per_type = 1;
    const auto recapped       = build_prefs(capped);
    EXPECT_EQ(recapped.summary["sampled_now"], 0);
    EXPECT_EQ(recapped.summary["pairs"]["gt_rejected"], 8);  // one per question (every sample here is rejected)
    EXPECT_EQ(lines_of(dir / "pairs.jsonl").size(), 8u);
    // Another seed is refused (the run identity names the decoding key).
    auto other = options(dir);
    other.seed = 2;
    try {
        build_prefs(other);
        FAIL() << "a resume under another seed was accepted";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("seed"), std::string::npos) << e.what();
    }
}

TEST_F(PrefsRun, ChatFormatWritesMessageLists) {
    const fs::path dir = out("chat");
    auto o             = options(dir);
    o.prompt_format    = "chat";
    o.num_samples      = 2;
    o.prompt_template  = template_preset("ja");
    const auto result  = build_prefs(o);
    EXPECT_EQ(result.summary["prompt_format"], "chat");
    const auto lines = lines_of(dir / "pairs.jsonl");
    ASSERT_FALSE(lines.empty());
    const auto r = json::parse(lines.front());
    ASSERT_TRUE(r["prompt"].is_array());
    EXPECT_EQ(r["prompt"][0]["role"], "system");
    EXPECT_EQ(r["prompt"][0]["content"], "医師国家試験を解きます。");
    EXPECT_EQ(r["prompt"].size(), 8u);  // system + 3 × (user, assistant) + user
    EXPECT_EQ(r["prompt"].back()["role"], "user");
    ASSERT_TRUE(r["chosen"].is_array());
    EXPECT_EQ(r["chosen"][0]["role"], "assistant");
    EXPECT_EQ(r["rejected"][0]["role"], "assistant");
}

// Starts the CLI, kills it with `sig` once samples.jsonl holds at least one record, and returns how many
// records the file held (complete lines) when it was killed; -1 when the run finished first. Its stdout and stderr go
// to `log`.
int run_and_kill(const std::string& args, const fs::path& samples, int sig = SIGKILL,
                 const std::string& log = "/dev/null", int* exit_status = nullptr) {
    const std::string cmd = std::string(MEDLLM_BINARY) + " " + args + " >" + log + " 2>&1";
    const pid_t pid       = fork();
    if (pid == 0) {
        setpgid(0, 0);
        execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < deadline) {
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid) return -1;
        if (fs::exists(samples) && !lines_of(samples).empty()) {
            kill(pid, sig);
            waitpid(pid, &status, 0);
            if (exit_status) *exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            const std::string content = slurp(samples);
            return static_cast<int>(std::count(content.begin(), content.end(), '\n'));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return -2;
}

TEST_F(PrefsRun, ResumeAfterSigkillGivesTheSamePairs) {
    const fs::path whole = out("whole"), killed = out("killed");
    const auto a = run_medllm(cli_args(whole));
    ASSERT_EQ(a.exit_code, 0) << a.output;
    const int done_when_killed = run_and_kill(cli_args(killed), killed / "samples.jsonl");
    ASSERT_GE(done_when_killed, 1) << "the run was not killed mid-way";
    ASSERT_LT(done_when_killed, 8);
    const auto b = run_medllm(cli_args(killed));
    ASSERT_EQ(b.exit_code, 0) << b.output;
    EXPECT_NE(b.output.find("resuming"), std::string::npos) << b.output;
    EXPECT_EQ(slurp(killed / "pairs.jsonl"), slurp(whole / "pairs.jsonl"));
    // samples.jsonl is in finishing order; as a set of records it is the same.
    auto sa = lines_of(whole / "samples.jsonl"), sb = lines_of(killed / "samples.jsonl");
    std::sort(sa.begin(), sa.end());
    std::sort(sb.begin(), sb.end());
    EXPECT_EQ(sa, sb);
    const auto sum = json::parse(slurp(killed / "summary.json"));
    EXPECT_EQ(sum["resumed_questions"], done_when_killed);
}

// SIGTERM ends build-prefs at once (samples.jsonl keeps what finished) but no longer silently: it prints the command
// that resumes, on stderr and in medllm.log, and that command, pasted into a shell, resumes the run. (That a resumed
// run writes the uninterrupted run's pairs is ResumeAfterSigkillGivesTheSamePairs.)
TEST_F(PrefsRun, SigtermSaysHowToResume) {
    const fs::path stopped = out("term_stopped");
    // An argument a shell must see quoted.
    const std::string kTypes = "--set 'pairs.types=[gt_chosen, gt_rejected, chosen_rejected]'";
    const fs::path log       = fs::path(::testing::TempDir()) / ("prefs_term_" + std::to_string(::getpid()) + ".log");
    int status               = 0;
    const int done = run_and_kill(cli_args(stopped, kTypes), stopped / "samples.jsonl", SIGTERM, log.string(), &status);
    ASSERT_GE(done, 1) << "the run was not stopped mid-way";
    ASSERT_LT(done, 8);
    EXPECT_EQ(status, 128 + SIGTERM);  // ends by the signal, as before
    const std::string said = slurp(log);
    const std::string hint =
        "build-prefs: interrupted by SIGTERM; samples.jsonl keeps every question sampled so far; "
        "run the same command again to resume: ";
    const size_t at = said.find(hint);
    ASSERT_NE(at, std::string::npos) << said;
    const std::string again = said.substr(at + hint.size(), said.find('\n', at) - at - hint.size());
    EXPECT_EQ(again, std::string(MEDLLM_BINARY) + " " + cli_args(stopped, kTypes));  // quoted where it must be
    EXPECT_NE(slurp(stopped / "medllm.log").find("fatal: " + hint), std::string::npos);
    // The printed line, pasted into a shell, resumes the run.
    const auto resumed = run_shell(again + " 2>&1 </dev/null");
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    EXPECT_NE(resumed.output.find("resuming"), std::string::npos) << resumed.output;
    EXPECT_EQ(json::parse(slurp(stopped / "summary.json"))["resumed_questions"], done);
    fs::remove(log);
}

TEST_F(PrefsRun, CliRefusals) {
    const auto help = run_medllm("build-prefs --help");
    EXPECT_EQ(help.exit_code, 0);
    for (const char* s : {"--questions", "--allow-eval-overlap", "pairs.max_per_type", "gt_chosen", "=8", "few_shot.k",
                          "naming the key that differs"})
        EXPECT_NE(help.output.find(s), std::string::npos) << s;

    const auto none = run_medllm("build-prefs --model " + model_->string() + " --output " + out("none").string());
    EXPECT_EQ(none.exit_code, 2) << none.output;
    EXPECT_NE(none.output.find("questions"), std::string::npos) << none.output;

    const fs::path flag_dir = out("flag");
    for (const char* flag : {"--temperature nan", "-n 0", "--seed -1"}) {
        const auto r = run_medllm("build-prefs --questions " + kQuestions.string() + " --model " + model_->string() +
                                  " --output " + flag_dir.string() + " " + flag);
        EXPECT_EQ(r.exit_code, 2) << flag << ": " << r.output;
        EXPECT_NE(r.output.find(std::string(flag).substr(0, std::string(flag).find(' '))), std::string::npos)
            << r.output;
        EXPECT_FALSE(fs::exists(flag_dir));  // refused before the output folder is made
    }

    // An evaluation-exam question is refused before the model loads.
    const fs::path eval_q = fs::path(::testing::TempDir()) / ("prefs_eval_q_" + std::to_string(::getpid()) + ".jsonl");
    std::string content   = slurp(kQuestions);
    content.replace(content.find("105A3"), 5, "112A3");
    std::ofstream(eval_q) << content;
    const auto overlap = run_medllm("build-prefs --questions " + eval_q.string() + " --model " + model_->string() +
                                    " --output " + out("overlap").string());
    EXPECT_EQ(overlap.exit_code, 2) << overlap.output;
    EXPECT_NE(overlap.output.find("112A3: exam 112 is an evaluation exam"), std::string::npos) << overlap.output;
    EXPECT_NE(overlap.output.find("--allow-eval-overlap"), std::string::npos) << overlap.output;

    // A record missing its explanation, with on_bad_record=refuse: exit 1 naming file, line and field.
    const fs::path bad = fs::path(::testing::TempDir()) / ("prefs_bad_q_" + std::to_string(::getpid()) + ".jsonl");
    std::string b      = slurp(kQuestions);
    const auto at      = b.find(", \"explanation\"", b.find("105A2"));
    b.erase(at, b.find('}', at) - at);
    std::ofstream(bad) << b;
    const auto refused = run_medllm("build-prefs --questions " + bad.string() + " --model " + model_->string() +
                                    " --output " + out("bad").string() + " --set on_bad_record=refuse");
    EXPECT_EQ(refused.exit_code, 1) << refused.output;
    EXPECT_NE(refused.output.find(bad.filename().string() + ":2: problem_id 105A2: missing field 'explanation'"),
              std::string::npos)
        << refused.output;

    // A missing few-shot file is named by its own key, not as one of the questions.
    const auto no_shots = run_medllm(cli_args(out("shots"), "--few-shot-file /nonexistent/shots.jsonl"));
    EXPECT_EQ(no_shots.exit_code, 2) << no_shots.output;
    EXPECT_NE(no_shots.output.find("few_shot.file: /nonexistent/shots.jsonl: no such file or directory"),
              std::string::npos)
        << no_shots.output;
    EXPECT_EQ(no_shots.output.find("questions:"), std::string::npos) << no_shots.output;

    const auto bad_type =
        run_medllm("build-prefs --questions " + kQuestions.string() + " --model " + model_->string() + " --output " +
                   out("type").string() + " --set 'pairs.types=[gt_chosen, best_worst]'");
    EXPECT_EQ(bad_type.exit_code, 2) << bad_type.output;
    EXPECT_NE(bad_type.output.find("best_worst"), std::string::npos) << bad_type.output;
}

TEST_F(PrefsRun, AFewShotFileHoldingTheQuestionIsRefusedOrExcluded) {
    // A few-shot file of three records, one of them the target question 105A1: with k = 3 that question would see
    // its own explanation and answer (or get 2 shots): refused before the model loads, naming the file and the id.
    const fs::path three = fs::path(::testing::TempDir()) / ("prefs_shots3_" + std::to_string(::getpid()) + ".jsonl");
    const auto all       = lines_of(kQuestions);
    std::ofstream(three) << all[0] << "\n" << all[1] << "\n" << all[2] << "\n";
    auto o          = options(out("shots3"));
    o.few_shot_file = three;
    try {
        build_prefs(o);
        FAIL() << "a few-shot file holding the question was used";
    } catch (const medllm::UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("few_shot.file " + three.string() + ": question 105A1"), std::string::npos)
            << e.what();
    }
    EXPECT_FALSE(fs::exists(out("shots3") / "samples.jsonl"));
    // The CLI: exit 2 with the same line.
    const auto cli = run_medllm(cli_args(out("shots3cli"), "--few-shot-file " + three.string()));
    EXPECT_EQ(cli.exit_code, 2) << cli.output;
    EXPECT_NE(cli.output.find("question 105A1"), std::string::npos) << cli.output;

    // Four records: every question still gets 3 shots, never itself.
    const fs::path four = fs::path(::testing::TempDir()) / ("prefs_shots4_" + std::to_string(::getpid()) + ".jsonl");
    std::ofstream(four) << all[0] << "\n" << all[1] << "\n" << all[2] << "\n" << all[3] << "\n";
    const fs::path dir = out("shots4");
    o                  = options(dir);
    o.few_shot_file    = four;
    build_prefs(o);
    const auto qs    = load_pref_questions({kQuestions}, {});
    const auto shots = load_pref_questions({four}, {});
    const PrefPrompt prompt(template_preset("paper"));
    std::set<std::string> seen;
    for (const auto& line : lines_of(dir / "pairs.jsonl")) {
        const auto r = json::parse(line);
        for (const auto& q : qs) {
            if (q.question.problem_id != r["problem_id"]) continue;
            const std::string p = r["prompt"];
            EXPECT_EQ(p.find(q.explanation), std::string::npos) << q.question.problem_id << " sees its explanation";
            EXPECT_EQ(p, prompt.base_prompt(q, fixed_few_shot(shots, four, q, 3)));
            seen.insert(q.question.problem_id);
        }
    }
    EXPECT_GE(seen.size(), 4u) << "pairs of most questions are checked";
}

TEST_F(PrefsRun, ShippedConfigRuns) {
    const fs::path dir = out("config");
    const auto r       = run_medllm(std::string("build-prefs --config ") + MEDLLM_SOURCE_DIR +
                                    "/configs/qwen2.5-72b/build_prefs.yaml --set model=" + model_->string() +
                                    " --set 'questions=[" + kQuestions.string() + "]' --set output=" + dir.string() +
                                    " --set device=cpu --set sampling.n=2 --set sampling.max_new_tokens=8" +
                                    " --set guard.igakuqa_dir=" + shared_path("igakuqa_data").string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("build-prefs summary"), std::string::npos) << r.output;
    const auto s = json::parse(slurp(dir / "summary.json"));
    EXPECT_EQ(s["samples"], 16);
    EXPECT_EQ(s["prompt_format"], "chat");  // the tiny tokenizer has a chat template
    EXPECT_TRUE(fs::exists(dir / "config.resolved.yaml"));
}

// guard.years picks the exam years of guard.igakuqa_dir: the quickstart's exam folder holds 2021 and 2022 only, which
// the guard could not read before (it had no years key and read all of 2018-2022).
TEST_F(PrefsRun, GuardYearsFitAFolderOfSomeYears) {
    const std::string exams = std::string(MEDLLM_SOURCE_DIR) + "/configs/quickstart/igakuqa";
    const auto all_years    = run_medllm(cli_args(out("years_all"), "--igakuqa-dir " + exams));
    EXPECT_EQ(all_years.exit_code, 2) << all_years.output;
    EXPECT_NE(all_years.output.find("has no data/2018; set guard.years"), std::string::npos) << all_years.output;
    const fs::path dir = out("years_two");
    const auto two     = run_medllm(cli_args(dir, "--igakuqa-dir " + exams + " --set guard.years=2021-2022"));
    ASSERT_EQ(two.exit_code, 0) << two.output;
    EXPECT_NE(slurp(dir / "config.resolved.yaml").find("years: 2021-2022"), std::string::npos);
    const auto bad = run_medllm(cli_args(out("years_bad"), "--set guard.years=2017"));
    EXPECT_EQ(bad.exit_code, 2) << bad.output;
    EXPECT_NE(bad.output.find("guard.years '2017': 2017 is outside the IgakuQA data"), std::string::npos) << bad.output;
}

TEST_F(PrefsRun, PromptLongerThanTheContextNamesTheQuestion) {
    const fs::path model = gt::make_printable_model_dir(
        fs::path(::testing::TempDir()) / ("prefs_model_short_" + std::to_string(::getpid())), 256);
    const fs::path dir = out("short");
    auto o             = options(dir);
    o.model            = model;
    try {
        build_prefs(o);
        FAIL() << "a prompt longer than the context was accepted";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("prefs_questions.jsonl:1: problem_id 105A1: the few-shot prompt has"),
                  std::string::npos)
            << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "samples.jsonl"));  // refused before anything is written
    fs::remove_all(model);
}

}  // namespace

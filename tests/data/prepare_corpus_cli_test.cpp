// `medllm prepare-corpus` as a user runs it: summary on stdout, reuse, the guard's three actions, bad inputs.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "data_test_util.h"
#include "medllm/eval/igakuqa_data.h"
#include "support/run_medllm.h"
#include "support/shared_data.h"

namespace {

namespace fs = std::filesystem;

class PrepareCorpusCli : public test::TempDir {
protected:
    std::string config(const std::string& extra_data = "", const std::string& guard = "action: refuse") {
        // cpt.yaml's other sections (lora, optim, training) are cpt's: read as keys, not used here.
        const std::string text =
            "model:\n  path: " + test::tokenizer_dir().string() + "\n" + "output: " + (dir / "run").string() + "\n" +
            "lora:\n  r: 8\noptim:\n  lr: 1e-4\n"
            "data:\n  sources:\n    - {path: " +
            (dir / "corpus").string() +
            "}\n  eos_token: '<|endoftext|>'\n  seq_len: 32\n  validation:\n    fraction: 0.25\n" + extra_data +
            "eval_guard:\n  igakuqa_dir: " + shared_path("igakuqa_data").string() + "\n  " + guard + "\n";
        write("cpt.yaml", text);
        return (dir / "cpt.yaml").string();
    }
    void corpus(bool planted) {
        write("corpus/notes.txt", "急性虫垂炎では心窩部から右下腹部へ痛みが移動することが多い。\n");
        std::string j =
            "{\"text\": \"高アンモニア血症は尿素サイクル異常症で生じる。\"}\n"
            "{\"text\": \"血液培養は抗菌薬投与前に2セット採取する。\"}\n"
            "{\"text\": \"インシデントレポートは再発防止のために書く。\"}\n";
        if (planted) {
            const auto qs = medllm::eval::load_questions(shared_path("igakuqa_data"), {2022});
            std::string q = qs[9].problem_text;
            for (const auto& c : qs[9].choices) q += " " + c;
            j += nlohmann::json({{"text", "過去問メモ：" + q}}).dump() + "\n";
        }
        write("corpus/docs.jsonl", j);
    }
};

TEST_F(PrepareCorpusCli, BuildsThenReusesAndPrintsTheSummary) {
    corpus(false);
    const auto cfg = config();
    auto run       = run_medllm("prepare-corpus --config " + cfg, false);
    ASSERT_EQ(run.exit_code, 0) << run.output;
    auto s = nlohmann::json::parse(run.output);
    EXPECT_EQ(s["documents"], 4);
    EXPECT_FALSE(s["reused"].get<bool>());
    EXPECT_EQ(s["split"]["validation_documents"], 1);
    EXPECT_EQ(s["guard"]["flagged"], 0);
    EXPECT_GT(s["packing"]["train_rows_per_epoch"].get<int64_t>(), 0);
    EXPECT_TRUE(fs::exists(dir / "run" / "corpus_cache" / "summary.json"));
    EXPECT_TRUE(fs::exists(dir / "run" / "corpus_cache" / "manifest.json"));
    auto again = run_medllm("prepare-corpus --config " + cfg, false);
    ASSERT_EQ(again.exit_code, 0) << again.output;
    EXPECT_TRUE(nlohmann::json::parse(again.output)["reused"].get<bool>());
}

TEST_F(PrepareCorpusCli, GuardRefusesDropsOrWarns) {
    corpus(true);
    auto refuse = run_medllm("prepare-corpus --config " + config());
    EXPECT_EQ(refuse.exit_code, 2) << refuse.output;
    EXPECT_NE(refuse.output.find("contamination guard: 1 documents"), std::string::npos) << refuse.output;
    EXPECT_NE(refuse.output.find("docs.jsonl:4: 116A10"), std::string::npos) << refuse.output;
    EXPECT_NE(refuse.output.find("guard_report.json"), std::string::npos) << refuse.output;
    EXPECT_FALSE(fs::exists(dir / "run" / "corpus_cache" / "manifest.json"));
    const auto report = nlohmann::json::parse(std::ifstream(dir / "run" / "corpus_cache" / "guard_report.json"));
    ASSERT_EQ(report["documents"].size(), 1u);
    EXPECT_EQ(report["documents"][0]["line"], 4);
    EXPECT_EQ(report["documents"][0]["matches"][0]["problem_id"], "116A10");

    auto drop = run_medllm("prepare-corpus --config " + config("", "action: drop"), false);
    ASSERT_EQ(drop.exit_code, 0) << drop.output;
    auto s = nlohmann::json::parse(drop.output);
    EXPECT_EQ(s["documents"], 4);
    EXPECT_EQ(s["guard"]["dropped"], 1);

    auto warn = run_medllm("prepare-corpus --config " + config("", "action: warn"), false);
    ASSERT_EQ(warn.exit_code, 0) << warn.output;
    s = nlohmann::json::parse(warn.output);
    EXPECT_EQ(s["documents"], 5);
    EXPECT_EQ(s["guard"]["flagged"], 1);
    EXPECT_EQ(s["guard"]["dropped"], 0);
}

TEST_F(PrepareCorpusCli, BadInputsGiveOneClearLine) {
    corpus(false);
    EXPECT_EQ(run_medllm("prepare-corpus --help").exit_code, 0);
    auto none = run_medllm("prepare-corpus");
    EXPECT_EQ(none.exit_code, 2);
    EXPECT_NE(none.output.find("--config cpt.yaml is required"), std::string::npos) << none.output;
    auto typo = run_medllm("prepare-corpus --config " + config("  seq_lne: 8\n"));
    EXPECT_EQ(typo.exit_code, 2);
    EXPECT_NE(typo.output.find("unknown key 'data.seq_lne'"), std::string::npos) << typo.output;
    auto missing = run_medllm("prepare-corpus --config " + config() + " --set 'data.sources=[{path: nope.jsonl}]'");
    EXPECT_EQ(missing.exit_code, 2);
    EXPECT_NE(missing.output.find("nope.jsonl"), std::string::npos) << missing.output;
    write("corpus/bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": \"typo\"}\n");
    auto strict = run_medllm("prepare-corpus --config " + config("  on_invalid: error\n"));
    EXPECT_EQ(strict.exit_code, 1);
    EXPECT_NE(strict.output.find("bad.jsonl:2: missing text field"), std::string::npos) << strict.output;
    auto noguard = run_medllm("prepare-corpus --config " + config() + " --set eval_guard.igakuqa_dir=");
    EXPECT_EQ(noguard.exit_code, 2);
    EXPECT_NE(noguard.output.find("eval_guard.igakuqa_dir is required"), std::string::npos) << noguard.output;
}

// SIGTERM ends prepare-corpus at once, as before (the cache counts only once its manifest is written, last), but no
// longer silently: it says the cache is unfinished and which command builds it, on stderr and in medllm.log.
TEST_F(PrepareCorpusCli, SigtermSaysHowToBuildTheCache) {
    corpus(false);
    // Enough text (about 24 MB) to be still tokenizing and guarding when the signal comes.
    std::string big;
    for (int i = 0; i < 40000; ++i)
        big += nlohmann::json(
                   {{"text", "症例" + std::to_string(i) + "：" + std::string(200, 'a' + static_cast<char>(i % 26)) +
                                 "。発熱と咳嗽が続き、胸部エックス線写真で浸潤影を認めた。抗菌薬で改善した。"}})
                   .dump() +
               "\n";
    write("corpus/big.jsonl", big);
    const std::string cfg = config();
    const fs::path log = dir / "stderr.txt", cache = dir / "run" / "corpus_cache";
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::execl(MEDLLM_BINARY, MEDLLM_BINARY, "prepare-corpus", "--config", cfg.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    // start_run writes config.resolved.yaml just before the command starts its work.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!fs::exists(cache / "config.resolved.yaml") && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::kill(pid, SIGTERM);
    int status = 0;
    ::waitpid(pid, &status, 0);
    std::ifstream in(log);
    const std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_TRUE(WIFSIGNALED(status)) << "it was not stopped mid-way:\n" << said;
    EXPECT_EQ(WTERMSIG(status), SIGTERM);  // ends by the signal, as before
    const std::string hint =
        "prepare-corpus: interrupted by SIGTERM; the token cache is unfinished (no manifest), so nothing reads it "
        "half-built; run the same command again to build it: " +
        std::string(MEDLLM_BINARY) + " prepare-corpus --config " + cfg + "\n";
    EXPECT_NE(said.find(hint), std::string::npos) << said;
    EXPECT_FALSE(fs::exists(cache / "manifest.json"));
    std::ifstream log_file(cache / "medllm.log");
    const std::string logged((std::istreambuf_iterator<char>(log_file)), std::istreambuf_iterator<char>());
    EXPECT_NE(logged.find("fatal: " + hint), std::string::npos) << logged;
}

}  // namespace

// `medllm eval igakuqa` through the built binary: scoring saved predictions, and the exit codes of bad
// arguments.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include "support/file_limit.h"
#include "support/run_medllm.h"
#include "support/shared_data.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

namespace {
namespace fs = std::filesystem;

std::string igakuqa_dir() {
    return shared_path("igakuqa_data").string();
}

TEST(EvalIgakuqaCli, ScoresTheChatGptBaselineFolder) {
    const fs::path out = fs::path(testing::TempDir()) / "igakuqa_cli_chatgpt";
    fs::remove_all(out);
    const CliRun run = run_medllm("eval igakuqa --data-dir " + igakuqa_dir() + " --predictions " + igakuqa_dir() +
                                  "/baseline_results --output " + out.string());
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("IgakuQA chatgpt standard (official): 1366 / 2485 = 0.5497"), std::string::npos)
        << run.output;
    std::ifstream in(out / "report.json");
    const auto report = nlohmann::json::parse(in);
    EXPECT_EQ(report["modes"]["standard"]["points"], 1366);
    EXPECT_EQ(report["modes"]["standard"]["official"]["years"][0]["points"], 266);
    EXPECT_EQ(report["modes"]["standard"]["official"]["years"][0]["kinki_selected"], 4);
    EXPECT_EQ(report["modes"]["standard"]["official"]["years"][0]["passed"], false);
    EXPECT_TRUE(fs::exists(out / "report.md"));
    EXPECT_TRUE(fs::exists(out / "scored.jsonl"));
}

TEST(EvalIgakuqaCli, ScoresOneJsonlFileAndListsMissingQuestions) {
    const fs::path dir = fs::path(testing::TempDir()) / "igakuqa_cli_file";
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::ofstream(dir / "gpt4o.jsonl") << "{\"problem_id\": \"115A1\", \"prediction\": \"x\"}\n"
                                          "{\"problem_id\": \"115A2\", \"prediction\": \"y\"}\n";
    const CliRun run = run_medllm("eval igakuqa --data-dir " + igakuqa_dir() + " --predictions " +
                                  (dir / "gpt4o.jsonl").string() + " --years 2021 --output " + (dir / "out").string());
    ASSERT_EQ(run.exit_code, 0) << run.output;
    std::ifstream in(dir / "out" / "report.json");
    const auto report = nlohmann::json::parse(in);
    EXPECT_EQ(report["model"], "gpt4o");
    EXPECT_EQ(report["modes"]["standard"]["official"]["missing"].size(), 398u);
    EXPECT_EQ(report["modes"]["standard"]["possible"], 500);
}

TEST(EvalIgakuqaCli, ReadsAConfigFileAndFlagsWin) {
    const fs::path dir = fs::path(testing::TempDir()) / "igakuqa_cli_config";
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::ofstream(dir / "eval.yaml") << "data_dir: " << igakuqa_dir() << "\npredictions: " << igakuqa_dir()
                                     << "/baseline_results\nyears: 2018-2019\noutput: " << (dir / "ignored").string()
                                     << "\n";
    const CliRun run = run_medllm("eval igakuqa --config " + (dir / "eval.yaml").string() + " --years 2022 --output " +
                                  (dir / "out").string());
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("287 / 494 = 0.5810"), std::string::npos) << run.output;  // 2022 only
    EXPECT_TRUE(fs::exists(dir / "out" / "report.json"));
    EXPECT_FALSE(fs::exists(dir / "ignored"));
    // An unknown key is named.
    std::ofstream(dir / "bad.yaml") << "data_dri: x\n";
    const CliRun bad = run_medllm("eval igakuqa --config " + (dir / "bad.yaml").string());
    EXPECT_EQ(bad.exit_code, 2);
    EXPECT_NE(bad.output.find("data_dri"), std::string::npos) << bad.output;
}

TEST(EvalIgakuqaCli, MissingModelDirectoryIsAUsageError) {
    // (A run on a real model folder is tested in tests/generate/generate_cli_test.cpp.)
    const CliRun run = run_medllm("eval igakuqa --data-dir " + igakuqa_dir() + " --model /nonexistent --output " +
                                  (fs::path(testing::TempDir()) / "igakuqa_cli_model").string());
    EXPECT_EQ(run.exit_code, 2) << run.output;
    EXPECT_NE(run.output.find("/nonexistent: no such model directory"), std::string::npos) << run.output;
    EXPECT_EQ(std::count(run.output.begin(), run.output.end(), '\n'), 1) << run.output;
}

// Scoring saved predictions is one process's work: under torchrun (or --world-size) it says so before writing.
TEST(EvalIgakuqaCli, PredictionsUnderSeveralProcessesAreRefused) {
    const fs::path out = fs::path(testing::TempDir()) / "igakuqa_cli_ranked";
    fs::remove_all(out);
    for (const std::string launch : {std::string("WORLD_SIZE=2 RANK=1 "), std::string("")}) {
        const CliRun run = run_shell(launch + MEDLLM_BINARY + " eval igakuqa --data-dir " + igakuqa_dir() +
                                     " --predictions " + igakuqa_dir() + "/baseline_results --output " + out.string() +
                                     (launch.empty() ? " --world-size 2 --rank 1" : "") + " 2>&1 </dev/null");
        EXPECT_EQ(run.exit_code, 2) << run.output;
        EXPECT_NE(run.output.find("--predictions scores saved predictions in one process"), std::string::npos)
            << run.output;
        EXPECT_FALSE(fs::exists(out / "report.json"));
    }
}

TEST(EvalIgakuqaCli, BadArgumentsExitTwo) {
    const std::string base = "eval igakuqa --data-dir " + igakuqa_dir() + " --output " +
                             (fs::path(testing::TempDir()) / "igakuqa_cli_bad").string();
    EXPECT_EQ(run_medllm(base).exit_code, 2);  // neither --model nor --predictions
    EXPECT_EQ(run_medllm(base + " --predictions " + igakuqa_dir() + "/baseline_results --years 2017").exit_code, 2);
    EXPECT_EQ(run_medllm(base + " --predictions " + igakuqa_dir() + "/baseline_results --mode sometimes").exit_code, 2);
    EXPECT_EQ(run_medllm(base + " --predictions /nonexistent").exit_code, 2);
}

// Finding 1 through the binary: a full disk while writing the reports exits 1 naming the file, and leaves no cut
// report under its final name.
TEST(EvalIgakuqaCli, FullDiskExitsOneNamingTheReport) {
    const fs::path out = fs::path(testing::TempDir()) / "igakuqa_cli_full";
    fs::remove_all(out);
    CliRun run;
    {
        ScopedFileSizeLimit limit(8192);  // the log and config.resolved.yaml fit; report.json (~30 KB) does not
        run = run_medllm("eval igakuqa --data-dir " + igakuqa_dir() + " --predictions " + igakuqa_dir() +
                         "/baseline_results --output " + out.string());
    }
    EXPECT_EQ(run.exit_code, 1) << run.output;
    EXPECT_NE(run.output.find("report.json: write failed"), std::string::npos) << run.output;
    EXPECT_FALSE(fs::exists(out / "report.json"));
    EXPECT_FALSE(fs::exists(out / "report.json.tmp"));
}

// Item 5: the output folder may not be an input. (A temporary copy of 2018's data stands for the data folder, so a
// regression writes into the copy, not into ../shared.)
TEST(EvalIgakuqaCli, OutputThatIsAnInputIsRefused) {
    const fs::path dir = fs::path(testing::TempDir()) / "igakuqa_cli_out_is_in";
    fs::remove_all(dir);
    fs::create_directories(dir / "preds");
    fs::create_directories(dir / "data" / "data");
    fs::copy(fs::path(igakuqa_dir()) / "data" / "2018", dir / "data" / "data" / "2018", fs::copy_options::recursive);
    std::ofstream(dir / "preds" / "m.jsonl") << "{\"problem_id\": \"112A1\", \"prediction\": \"e\"}\n";
    const std::string base = "eval igakuqa --data-dir " + (dir / "data").string() + " --years 2018";
    // --output is the data folder (also through a symlink), the predictions folder or the predictions file.
    fs::create_directory_symlink(dir / "data", dir / "data-link");
    for (const std::string& output : {(dir / "data").string(), (dir / "data-link").string() + "/"}) {
        const CliRun run =
            run_medllm(base + " --predictions " + (dir / "preds" / "m.jsonl").string() + " --output " + output);
        EXPECT_EQ(run.exit_code, 2) << run.output;
        EXPECT_NE(run.output.find("is the input"), std::string::npos) << run.output;
    }
    for (const fs::path& output : {dir / "preds", dir / "preds" / "m.jsonl"}) {
        const CliRun run = run_medllm(base + " --predictions " + output.string() + " --output " + output.string());
        EXPECT_EQ(run.exit_code, 2) << run.output;
        EXPECT_NE(run.output.find("is the input"), std::string::npos) << run.output;
    }
    EXPECT_FALSE(fs::exists(dir / "data" / "report.json"));
    EXPECT_FALSE(fs::exists(dir / "data" / "config.resolved.yaml"));
    EXPECT_FALSE(fs::exists(dir / "preds" / "report.json"));
    // A folder beside the predictions is fine.
    const CliRun ok = run_medllm(base + " --predictions " + (dir / "preds" / "m.jsonl").string() + " --output " +
                                 (dir / "out").string());
    EXPECT_EQ(ok.exit_code, 0) << ok.output;
}

TEST(EvalIgakuqaCli, HelpDescribesResumeAndOverwrite) {
    const CliRun run = run_medllm("eval igakuqa --help");
    EXPECT_EQ(run.exit_code, 0);
    EXPECT_NE(run.output.find("--overwrite"), std::string::npos) << run.output;
    EXPECT_NE(run.output.find("predictions.jsonl.run.json"), std::string::npos) << run.output;
    EXPECT_NE(run.output.find("incomplete: N of M"), std::string::npos) << run.output;
    // --overwrite is for model runs.
    const CliRun bad = run_medllm("eval igakuqa --data-dir " + igakuqa_dir() + " --predictions " + igakuqa_dir() +
                                  "/baseline_results --overwrite --output " +
                                  (fs::path(testing::TempDir()) / "igakuqa_cli_ow").string());
    EXPECT_EQ(bad.exit_code, 2) << bad.output;
}

}  // namespace

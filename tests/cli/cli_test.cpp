// The binary's contract: --help for every subcommand, exit codes 0/1/2, one-line errors on stderr.
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "support/run_medllm.h"
#include "support/shared_data.h"

namespace {

const char* kSubcommands[] = {"cpt",      "build-prefs", "rpo",      "eval", "eval igakuqa", "generate",
                              "quantize", "merge",       "tokenize", "info", "version"};

TEST(Cli, TopLevelHelpListsEverySubcommand) {
    auto r = run_medllm("--help");
    EXPECT_EQ(r.exit_code, 0);
    for (const char* sub : kSubcommands) {
        std::string name = sub;
        if (name.find(' ') != std::string::npos) continue;
        EXPECT_NE(r.output.find("  " + name + " "), std::string::npos) << "missing " << name << " in\n" << r.output;
    }
    EXPECT_NE(r.output.find("--threads INT:0.."), std::string::npos) << r.output;
}

TEST(Cli, EverySubcommandHasHelpThatExitsZero) {
    for (const char* sub : kSubcommands) {
        auto r = run_medllm(std::string(sub) + " --help");
        EXPECT_EQ(r.exit_code, 0) << sub << ":\n" << r.output;
        EXPECT_NE(r.output.find("Usage:"), std::string::npos) << sub;
        EXPECT_NE(r.output.find("--help"), std::string::npos) << sub;
    }
}

TEST(Cli, NoSubcommandOrUnknownOnesAreUsageErrors) {
    EXPECT_EQ(run_medllm("").exit_code, 2);
    EXPECT_EQ(run_medllm("frobnicate").exit_code, 2);
    EXPECT_EQ(run_medllm("version --no-such-flag").exit_code, 2);
    EXPECT_EQ(run_medllm("--threads -3 version").exit_code, 2);
    auto r = run_medllm("--log-level loud version");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("--log-level 'loud'"), std::string::npos) << r.output;
}

TEST(Cli, AbsurdThreadCountsAreRefusedNotHung) {
    // 100000 OpenMP workers used to hang every subcommand at start-up.
    for (const char* n : {"100000", "99999999999999999999", "1e3", "nan", "4x"}) {
        auto r = run_medllm(std::string("--threads ") + n + " version");
        EXPECT_EQ(r.exit_code, 2) << n << ": " << r.output;
        EXPECT_NE(r.output.find("--threads"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("must be an integer between 0 (all cores) and"), std::string::npos) << r.output;
        EXPECT_LT(r.output.size(), 300u) << r.output;
        EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << "one line:\n" << r.output;
    }
    EXPECT_EQ(run_medllm("version --threads 2").exit_code, 0);
}

TEST(Cli, MisspelledSubcommandGetsASuggestion) {
    auto r = run_medllm("quantise --model x");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("unknown command 'quantise'; did you mean 'quantize'?"), std::string::npos) << r.output;
    r = run_medllm("--threads 1 --log-level warn generat");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("did you mean 'generate'?"), std::string::npos) << r.output;
}

TEST(Cli, OutputToAFullDiskIsAFailure) {
    for (const char* args : {"version", "--help", "info --model " MEDLLM_SOURCE_DIR "/configs/models/qwen2.5-0.5b"}) {
        auto r = run_medllm_stdout_to(args, "/dev/full");
        EXPECT_EQ(r.exit_code, 1) << args << ": " << r.output;
        EXPECT_NE(r.output.find("error: standard output: write failed: No space left on device"), std::string::npos)
            << args << ": " << r.output;
    }
}

TEST(Cli, VersionReportsLibTorchAndCuda) {
    auto r = run_medllm("version");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("medllm 0."), std::string::npos);
    EXPECT_NE(r.output.find("LibTorch 2."), std::string::npos);
    EXPECT_NE(r.output.find("CUDA available: "), std::string::npos);
    EXPECT_NE(r.output.find("CUDA kernels compiled: "), std::string::npos);
    // --threads reaches LibTorch.
    EXPECT_NE(run_medllm("--threads 1 version").output.find("intra-op threads 1"), std::string::npos);
}

TEST(Cli, RpoWithoutConfigExitsTwoWithOneLine) {
    // Every stage is built (rpo was the last "not built yet" one); a stage without its config is one line, exit 2.
    auto r = run_medllm("rpo");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("--config rpo.yaml is required"), std::string::npos) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
}

}  // namespace

namespace {

// Every shipped stage config parses; the eval one scores the ChatGPT baseline through the config path.
TEST(Cli, ShippedEvalConfigRuns) {
    std::string out_dir    = "/tmp/medllm_cli_cfg_" + std::to_string(::getpid());
    const std::string data = shared_path("igakuqa_data").string();
    auto r                 = run_medllm(std::string("eval igakuqa --config ") + MEDLLM_SOURCE_DIR +
                                        "/configs/qwen2.5-72b/eval_igakuqa.yaml" + " --set data_dir=" + data +
                                        " --set mode=standard --set model=" + " --set predictions=" + data +
                                        "/baseline_results --set output=" + out_dir);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("1366 / 2485"), std::string::npos) << r.output;
    std::system(("rm -rf " + out_dir).c_str());
    auto bad = run_medllm(std::string("eval igakuqa --config ") + MEDLLM_SOURCE_DIR +
                          "/configs/qwen2.5-72b/eval_igakuqa.yaml --set mdoe=both");
    EXPECT_EQ(bad.exit_code, 2) << bad.output;
    EXPECT_NE(bad.output.find("did you mean 'mode'?"), std::string::npos) << bad.output;
}

}  // namespace

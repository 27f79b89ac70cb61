// The binary's contract: --help for every subcommand, exit codes 0/1/2, one-line errors on stderr.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

namespace {

struct Run {
    int code;
    std::string out;  // stdout and stderr together
};

Run run_medllm(const std::string& args) {
    std::string cmd = std::string(MEDLLM_BINARY) + " " + args + " 2>&1 </dev/null";
    FILE* pipe      = popen(cmd.c_str(), "r");
    if (!pipe) return {-1, ""};
    std::string out;
    std::array<char, 4096> buf;
    while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
    int status = pclose(pipe);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

const char* kSubcommands[] = {"cpt",      "build-prefs", "rpo",      "eval",    "eval igakuqa", "generate",
                              "quantize", "merge",       "tokenize", "info",    "version"};

TEST(Cli, TopLevelHelpListsEverySubcommand) {
    auto r = run_medllm("--help");
    EXPECT_EQ(r.code, 0);
    for (const char* sub : kSubcommands) {
        std::string name = sub;
        if (name.find(' ') != std::string::npos) continue;
        EXPECT_NE(r.out.find("  " + name + " "), std::string::npos) << "missing " << name << " in\n" << r.out;
    }
    EXPECT_NE(r.out.find("--threads INT:NONNEGATIVE=0"), std::string::npos) << r.out;
}

TEST(Cli, EverySubcommandHasHelpThatExitsZero) {
    for (const char* sub : kSubcommands) {
        auto r = run_medllm(std::string(sub) + " --help");
        EXPECT_EQ(r.code, 0) << sub << ":\n" << r.out;
        EXPECT_NE(r.out.find("Usage:"), std::string::npos) << sub;
        EXPECT_NE(r.out.find("--help"), std::string::npos) << sub;
    }
}

TEST(Cli, NoSubcommandOrUnknownOnesAreUsageErrors) {
    EXPECT_EQ(run_medllm("").code, 2);
    EXPECT_EQ(run_medllm("frobnicate").code, 2);
    EXPECT_EQ(run_medllm("version --no-such-flag").code, 2);
    EXPECT_EQ(run_medllm("--threads -3 version").code, 2);
    auto r = run_medllm("--log-level loud version");
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("--log-level 'loud'"), std::string::npos) << r.out;
}

TEST(Cli, VersionReportsLibTorchAndCuda) {
    auto r = run_medllm("version");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("medllm 0."), std::string::npos);
    EXPECT_NE(r.out.find("LibTorch 2."), std::string::npos);
    EXPECT_NE(r.out.find("CUDA available: "), std::string::npos);
    EXPECT_NE(r.out.find("CUDA kernels compiled: "), std::string::npos);
    // --threads reaches LibTorch.
    EXPECT_NE(run_medllm("--threads 1 version").out.find("intra-op threads 1"), std::string::npos);
}

TEST(Cli, CommandsNotBuiltYetExitTwoWithOneLine) {
    // Keep this list in step with what is built: a stage that runs must leave it.
    for (const char* sub : {"cpt", "build-prefs", "rpo"}) {
        auto r = run_medllm(sub);
        EXPECT_EQ(r.code, 2) << sub << ": " << r.out;
        EXPECT_NE(r.out.find("not built yet"), std::string::npos) << r.out;
        EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    }
}

}  // namespace

namespace {

// Every shipped stage config parses; the eval one scores the ChatGPT baseline through the config path.
TEST(Cli, ShippedEvalConfigRuns) {
    std::string out_dir = "/tmp/medllm_cli_cfg_" + std::to_string(::getpid());
    auto r = run_medllm(std::string("eval igakuqa --config ") + MEDLLM_SOURCE_DIR + "/configs/qwen2.5-72b/eval_igakuqa.yaml" +
                        " --set data_dir=" + MEDLLM_SHARED_DIR + "/igakuqa_data --set mode=standard --set model=" +
                        " --set predictions=" + MEDLLM_SHARED_DIR + "/igakuqa_data/baseline_results --set output=" +
                        out_dir);
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("1366 / 2485"), std::string::npos) << r.out;
    std::system(("rm -rf " + out_dir).c_str());
    auto bad = run_medllm(std::string("eval igakuqa --config ") + MEDLLM_SOURCE_DIR +
                          "/configs/qwen2.5-72b/eval_igakuqa.yaml --set mdoe=both");
    EXPECT_EQ(bad.code, 2) << bad.out;
    EXPECT_NE(bad.out.find("did you mean 'mode'?"), std::string::npos) << bad.out;
}

}  // namespace

// `medllm tokenize` and its files: an output that is the input is refused, and a full disk or a full stdout is an
// error naming the file instead of a cut output with exit 0.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "support/file_limit.h"
#include "support/run_medllm.h"
#include "text/test_util.h"

namespace medllm::text {
namespace {
namespace fs = std::filesystem;

class TokenizeFiles : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("medllm_tokenize_files_" + std::to_string(::getpid()));
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }
    fs::path file(const std::string& name, const std::string& content) {
        std::ofstream(dir_ / name, std::ios::binary) << content;
        return dir_ / name;
    }
    static CliRun tokenize(const std::string& args) {
        return run_medllm("tokenize --model " + qwen_dir().string() + " " + args);
    }
    fs::path dir_;
};

// Finding 3: `tokenize -i x.txt -o x.txt` used to truncate x.txt to 0 bytes and exit 0.
TEST_F(TokenizeFiles, OutputThatIsTheInputIsRefused) {
    const std::string text = "Hello world\nsecond line\n";
    const auto input       = file("x.txt", text);
    fs::create_symlink(input, dir_ / "link.txt");
    for (const fs::path& output : {input, dir_ / "link.txt", dir_ / "." / "x.txt"}) {
        const auto r = tokenize("-i " + input.string() + " -o " + output.string());
        EXPECT_EQ(r.exit_code, 2) << r.output;
        EXPECT_NE(r.output.find("is the input"), std::string::npos) << r.output;
        EXPECT_EQ(read_text(input), text) << output;
    }
    // The tokenizer's own files are inputs too.
    const auto r = tokenize("-i " + input.string() + " -o " + (qwen_dir() / "tokenizer.json").string());
    EXPECT_EQ(r.exit_code, 2) << r.output;
}

// Finding 1: a full disk (RLIMIT_FSIZE here) is exit 1 naming the output, and no cut file is left under its name.
TEST_F(TokenizeFiles, FullDiskIsAnErrorAndLeavesNoCutFile) {
    std::string text;
    for (int i = 0; i < 2000; ++i) text += "line number " + std::to_string(i) + " of the corpus\n";
    const auto input = file("corpus.txt", text);
    CliRun r;
    {
        ScopedFileSizeLimit limit(16 * 1024);  // the ids need ~60 KB
        r = tokenize("-i " + input.string() + " -o " + (dir_ / "ids.jsonl").string());
    }
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("ids.jsonl: write failed"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(dir_ / "ids.jsonl"));
    EXPECT_FALSE(fs::exists(dir_ / "ids.jsonl.tmp"));
    // Without the limit the same command writes the whole file; a device such as /dev/null is written in place.
    r = tokenize("-i " + input.string() + " -o " + (dir_ / "ids.jsonl").string());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_GT(fs::file_size(dir_ / "ids.jsonl"), 16u * 1024);
    r = tokenize("--stats -i " + input.string() + " -o /dev/null");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("documents 2000"), std::string::npos) << r.output;
}

// Finding 1: `tokenize ... > /dev/full` is exit 1, not 0.
TEST_F(TokenizeFiles, FullStdoutIsAnError) {
    const auto input = file("x.txt", "Hello world\n");
    const auto r =
        run_medllm_stdout_to("tokenize --model " + qwen_dir().string() + " -i " + input.string(), "/dev/full");
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("standard output: write failed"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace medllm::text

// `medllm tokenize` end to end on the shared Qwen2.5 files: encode, JSONL --field, --decode, --stats, errors.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "support/run_medllm.h"
#include "text/test_util.h"

namespace medllm::text {
namespace {
namespace fs = std::filesystem;

// `medllm tokenize --model <shared Qwen2.5 files> ARGS`; stdout only unless stderr_too.
CliRun run(const std::string& args, bool stderr_too = false) {
    return run_medllm("tokenize --model " + qwen_dir().string() + " " + args, stderr_too);
}

class TokenizeCli : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("medllm_tokenize_cli_" + std::to_string(::getpid()));
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }
    fs::path file(const std::string& name, const std::string& content) {
        std::ofstream(dir_ / name, std::ios::binary) << content;
        return dir_ / name;
    }
    fs::path dir_;
};

TEST_F(TokenizeCli, EncodesLinesAndJsonlFieldAndDecodesBack) {
    const auto docs = file("docs.txt", "Hello world\n58歳の男性。\n<|im_start|>user\n");
    const auto r    = run("-i " + docs.string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::istringstream lines(r.output);
    std::vector<std::vector<TokenId>> ids;
    for (std::string line; std::getline(lines, line);) ids.push_back(nlohmann::json::parse(line)["ids"]);
    ASSERT_EQ(ids.size(), 3u);
    EXPECT_EQ(ids[0], (std::vector<TokenId>{9707, 1879}));
    EXPECT_EQ(ids[1], qwen().encode("58歳の男性。"));
    EXPECT_EQ(ids[2], (std::vector<TokenId>{151644, 872}));

    const auto jsonl = file("docs.jsonl", "{\"text\": \"Hello world\", \"id\": 1}\n{\"text\": \"a\\nb\"}\n");
    const auto r2    = run("--field text -i " + jsonl.string());
    ASSERT_EQ(r2.exit_code, 0) << r2.output;
    EXPECT_EQ(r2.output, "{\"ids\":[9707,1879]}\n{\"ids\":[64,198,65]}\n");

    const auto idfile = file("ids.jsonl", r2.output + "[151644, 872]\n");
    const auto r3     = run("--decode -i " + idfile.string());
    ASSERT_EQ(r3.exit_code, 0) << r3.output;
    EXPECT_EQ(r3.output, "{\"text\":\"Hello world\"}\n{\"text\":\"a\\nb\"}\n{\"text\":\"<|im_start|>user\"}\n");
    const auto r4 = run("--decode --skip-special-tokens -i " + idfile.string());
    EXPECT_NE(r4.output.find("{\"text\":\"user\"}"), std::string::npos) << r4.output;
}

TEST_F(TokenizeCli, StatsAndErrors) {
    const auto docs = file("docs.txt", "Hello world\nHello world\n");
    const auto r    = run("--stats -o " + (dir_ / "out.jsonl").string() + " -i " + docs.string(), true);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("documents 2\n"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("tokens 4\n"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("tokens_per_char 0.1818"), std::string::npos) << r.output;

    const auto bad = file("bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": 1}\n");
    const auto e1  = run("--field text -i " + bad.string(), true);
    EXPECT_EQ(e1.exit_code, 1);
    EXPECT_NE(e1.output.find("bad.jsonl:2"), std::string::npos) << e1.output;
    const auto badids = file("badids.jsonl", "[1, \"x\"]\n");
    const auto e2     = run("--decode -i " + badids.string(), true);
    EXPECT_EQ(e2.exit_code, 1);
    EXPECT_NE(e2.output.find("badids.jsonl:1"), std::string::npos) << e2.output;
    EXPECT_EQ(run("--decode --field text", true).exit_code, 2);
    EXPECT_EQ(run("-i " + (dir_ / "missing.txt").string(), true).exit_code, 1);
}

}  // namespace
}  // namespace medllm::text

// `medllm tokenize` end to end on the shared Qwen2.5 files: encode, JSONL --field, --decode, --stats, errors.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "text/test_util.h"

namespace medllm::text {
namespace {
namespace fs = std::filesystem;

struct Result {
    int rc;
    std::string out;
};

Result run(const std::string& args) {
    const std::string cmd = std::string(MEDLLM_BINARY) + " tokenize --model " + qwen_dir().string() + " " + args;
    Result r{-1, {}};
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return r;
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.out.append(buf, n);
    const int status = ::pclose(p);
    r.rc             = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

class TokenizeCli : public ::testing::Test {
protected:
    void SetUp() override {
        if (!fs::exists(MEDLLM_BINARY)) GTEST_SKIP() << "medllm binary not built";
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
    ASSERT_EQ(r.rc, 0) << r.out;
    std::istringstream lines(r.out);
    std::vector<std::vector<TokenId>> ids;
    for (std::string line; std::getline(lines, line);) ids.push_back(nlohmann::json::parse(line)["ids"]);
    ASSERT_EQ(ids.size(), 3u);
    EXPECT_EQ(ids[0], (std::vector<TokenId>{9707, 1879}));
    EXPECT_EQ(ids[1], qwen().encode("58歳の男性。"));
    EXPECT_EQ(ids[2], (std::vector<TokenId>{151644, 872}));

    const auto jsonl = file("docs.jsonl", "{\"text\": \"Hello world\", \"id\": 1}\n{\"text\": \"a\\nb\"}\n");
    const auto r2    = run("--field text -i " + jsonl.string());
    ASSERT_EQ(r2.rc, 0) << r2.out;
    EXPECT_EQ(r2.out, "{\"ids\":[9707,1879]}\n{\"ids\":[64,198,65]}\n");

    const auto idfile = file("ids.jsonl", r2.out + "[151644, 872]\n");
    const auto r3     = run("--decode -i " + idfile.string());
    ASSERT_EQ(r3.rc, 0) << r3.out;
    EXPECT_EQ(r3.out, "{\"text\":\"Hello world\"}\n{\"text\":\"a\\nb\"}\n{\"text\":\"<|im_start|>user\"}\n");
    const auto r4 = run("--decode --skip-special-tokens -i " + idfile.string());
    EXPECT_NE(r4.out.find("{\"text\":\"user\"}"), std::string::npos) << r4.out;
}

TEST_F(TokenizeCli, StatsAndErrors) {
    const auto docs = file("docs.txt", "Hello world\nHello world\n");
    const auto r    = run("--stats -o " + (dir_ / "out.jsonl").string() + " -i " + docs.string() + " 2>&1");
    ASSERT_EQ(r.rc, 0) << r.out;
    EXPECT_NE(r.out.find("documents 2\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("tokens 4\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("tokens_per_char 0.1818"), std::string::npos) << r.out;

    const auto bad = file("bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": 1}\n");
    const auto e1  = run("--field text -i " + bad.string() + " 2>&1");
    EXPECT_EQ(e1.rc, 1);
    EXPECT_NE(e1.out.find("bad.jsonl:2"), std::string::npos) << e1.out;
    const auto badids = file("badids.jsonl", "[1, \"x\"]\n");
    const auto e2     = run("--decode -i " + badids.string() + " 2>&1");
    EXPECT_EQ(e2.rc, 1);
    EXPECT_NE(e2.out.find("badids.jsonl:1"), std::string::npos) << e2.out;
    EXPECT_EQ(run("--decode --field text 2>&1 </dev/null").rc, 2);
    EXPECT_EQ(run("-i " + (dir_ / "missing.txt").string() + " 2>&1").rc, 1);
}

}  // namespace
}  // namespace medllm::text

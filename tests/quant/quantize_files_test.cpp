// `medllm quantize` and its files: the model's side files (chat template included) are carried over, the output
// may not be the input, and a full disk is an error naming the file.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "support/file_limit.h"
#include "support/run_medllm.h"

namespace fs = std::filesystem;

namespace {

const fs::path kModel = fs::path(MEDLLM_FIXTURES_DIR) / "model" / "qwen2-tiny-untied";

std::string read_all(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class QuantizeFiles : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("medllm_quantize_files_" + std::to_string(::getpid()));
        fs::remove_all(dir_);
        fs::create_directories(dir_ / "model");
        for (const char* name : {"config.json", "model.safetensors"})
            fs::copy_file(kModel / name, dir_ / "model" / name);
    }
    void TearDown() override { fs::remove_all(dir_); }
    fs::path dir_;
};

// transformers 5 writes the chat template to chat_template.jinja; quantize used to drop it (its own list of files
// to copy lacked it), so the 4-bit model chatted with the base prompt format.
TEST_F(QuantizeFiles, KeepsTheChatTemplateAndTokenizerFiles) {
    const std::string jinja =
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
    std::ofstream(dir_ / "model" / "chat_template.jinja") << jinja;
    std::ofstream(dir_ / "model" / "chat_template.json") << R"({"chat_template": "x"})";
    std::ofstream(dir_ / "model" / "generation_config.json") << R"({"eos_token_id": 2})";
    const auto r = run_medllm("quantize --model " + (dir_ / "model").string() + " --output " + (dir_ / "q4").string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(read_all(dir_ / "q4" / "chat_template.jinja"), jinja);
    EXPECT_TRUE(fs::exists(dir_ / "q4" / "chat_template.json"));
    EXPECT_EQ(read_all(dir_ / "q4" / "generation_config.json"), R"({"eos_token_id": 2})");
}

// Finding 3: an output that is the model folder (also through a symlink) is refused before anything is written.
TEST_F(QuantizeFiles, OutputThatIsTheModelIsRefused) {
    const std::string weights = read_all(dir_ / "model" / "model.safetensors");
    fs::create_directory_symlink(dir_ / "model", dir_ / "link");
    for (const fs::path& out : {dir_ / "model", dir_ / "link", dir_ / "link" / "."}) {
        const auto r = run_medllm("quantize --model " + (dir_ / "model").string() + " --output " + out.string());
        EXPECT_EQ(r.exit_code, 2) << r.output;
        EXPECT_EQ(read_all(dir_ / "model" / "model.safetensors"), weights) << out;
    }
}

// Finding 1: a full disk (RLIMIT_FSIZE here) is exit 1 naming the file, with no cut file under a final name.
TEST_F(QuantizeFiles, FullDiskIsAnErrorNamingTheFile) {
    CliRun r;
    {
        ScopedFileSizeLimit limit(2048);
        r = run_medllm("quantize --model " + (dir_ / "model").string() + " --output " + (dir_ / "q4").string());
    }
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("write failed"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(dir_ / "q4" / "model.safetensors"));
    EXPECT_FALSE(fs::exists(dir_ / "q4" / "config.json"));
}

}  // namespace

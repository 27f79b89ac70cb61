// The list of model side files a derived checkpoint copies, and a model directory's identity for resume checks.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <fstream>

#include "medllm/core/error.h"
#include "medllm/io/model_files.h"

namespace fs = std::filesystem;
using namespace medllm::io;

namespace {

class ModelFiles : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("medllm_model_files_" + std::to_string(::getpid()));
        fs::remove_all(dir_);
        fs::create_directories(dir_ / "src");
    }
    void TearDown() override { fs::remove_all(dir_); }
    void write(const fs::path& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }
    fs::path dir_;
};

// transformers 5 keeps the chat template in chat_template.jinja; a derived checkpoint that dropped it chatted as
// a base model.
TEST_F(ModelFiles, CopiesTokenizerChatTemplateAndGenerationConfig) {
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                             "generation_config.json", "vocab.json", "merges.txt"})
        write(dir_ / "src" / name, std::string("content of ") + name);
    write(dir_ / "src" / "config.json", "{}");  // each command writes its own
    write(dir_ / "src" / "README.md", "not a model file");
    const auto copied = copy_model_side_files(dir_ / "src", dir_ / "dst");
    EXPECT_EQ(copied.size(), 7u);
    for (const auto& name : copied) {
        std::ifstream in(dir_ / "dst" / name);
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        EXPECT_EQ(text, "content of " + name);
    }
    EXPECT_TRUE(fs::exists(dir_ / "dst" / "chat_template.jinja"));
    EXPECT_FALSE(fs::exists(dir_ / "dst" / "config.json"));
    EXPECT_FALSE(fs::exists(dir_ / "dst" / "README.md"));
}

TEST_F(ModelFiles, IdentityChangesWithConfigTokenizerAndWeightsButNotTheFolder) {
    const fs::path m = dir_ / "src";
    write(m / "config.json", R"({"hidden_size": 8})");
    write(m / "tokenizer.json", "{}");
    write(m / "model.safetensors", "weights");
    write(m / "README.md", "notes");
    const auto first = model_dir_identity(m);
    EXPECT_EQ(model_dir_identity(m), first);
    // Not part of it: unrelated files and where the folder lives.
    write(m / "README.md", "other notes");
    EXPECT_EQ(model_dir_identity(m), first);
    fs::rename(m, dir_ / "moved");
    EXPECT_EQ(model_dir_identity(dir_ / "moved"), first);
    fs::rename(dir_ / "moved", m);

    write(m / "config.json", R"({"hidden_size": 16})");  // same size, other content
    const auto config_changed = model_dir_identity(m);
    EXPECT_NE(config_changed, first);
    write(m / "tokenizer.json", "[]");
    const auto tokenizer_changed = model_dir_identity(m);
    EXPECT_NE(tokenizer_changed, config_changed);
    fs::last_write_time(m / "model.safetensors", fs::last_write_time(m / "model.safetensors") - std::chrono::hours(1));
    const auto weights_touched = model_dir_identity(m);
    EXPECT_NE(weights_touched, tokenizer_changed);
    write(m / "model-00002-of-00002.safetensors", "");
    EXPECT_NE(model_dir_identity(m), weights_touched);
    EXPECT_THROW(model_dir_identity(dir_ / "absent"), medllm::Error);
}

}  // namespace

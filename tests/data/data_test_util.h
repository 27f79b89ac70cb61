// Helpers for the data tests: a temporary folder, the shared Qwen2.5 tokenizer, cache build options.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "medllm/data/token_cache.h"
#include "medllm/text/tokenizer.h"
#include "support/shared_data.h"

namespace test {

inline std::filesystem::path tokenizer_dir() {
    return shared_path("qwen_tokenizer");
}

inline const medllm::text::Tokenizer& tokenizer() {
    static const auto t = medllm::text::Tokenizer::from_dir(tokenizer_dir());
    return *t;
}

class TempDir : public ::testing::Test {
protected:
    std::filesystem::path dir;
    void SetUp() override {
        dir =
            std::filesystem::temp_directory_path() / ("medllm_data_" + std::to_string(::getpid()) + "_" +
                                                      ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::remove_all(dir);
        std::filesystem::create_directories(dir);
    }
    void TearDown() override { std::filesystem::remove_all(dir); }
    void write(const std::string& name, const std::string& text) {
        std::filesystem::create_directories((dir / name).parent_path());
        std::ofstream(dir / name, std::ios::binary) << text;
    }
};

inline medllm::data::CacheBuildOptions options(const std::filesystem::path& base,
                                               std::vector<medllm::data::SourceSpec> sources) {
    medllm::data::CacheBuildOptions o;
    o.sources       = std::move(sources);
    o.base_dir      = base;
    o.tokenizer_dir = tokenizer_dir();
    o.threads       = 2;
    o.eos_token     = "<|endoftext|>";  // the shared tokenizer folder has no tokenizer_config.json
    o.tokenizer     = &tokenizer();
    return o;
}

}  // namespace test

// Shared setup of the `eval mcqa` tests (mcqa_test.cpp, mcqa_shard_test.cpp): the committed fixtures, scratch
// folders named by process, and one tiny model folder per test process.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "generate_test_util.h"

namespace medllm::eval::testing {

namespace fs = std::filesystem;

inline fs::path mcqa_fixture_dir() {
    return fs::path(MEDLLM_FIXTURES_DIR) / "eval" / "mcqa";
}

inline fs::path mcqa_scratch(const std::string& name) {
    return fs::temp_directory_path() / ("medllm_mcqa_" + name + "_" + std::to_string(getpid()));
}

// The fixture model plus the tiny tokenizer, built once per process, removed at exit.
inline const fs::path& mcqa_model_dir() {
    struct ScratchModel {
        fs::path dir;
        ~ScratchModel() {
            std::error_code ec;
            fs::remove_all(dir, ec);
        }
    };
    static const ScratchModel model{generate::testing::make_model_dir("qwen2-tiny-untied", mcqa_scratch("model"))};
    return model.dir;
}

}  // namespace medllm::eval::testing

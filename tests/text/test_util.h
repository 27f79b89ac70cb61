// Shared helpers for the text tests: paths and one Qwen2.5 tokenizer loaded once per process.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "medllm/text/tokenizer.h"
#include "support/shared_data.h"

namespace medllm::text {

inline std::filesystem::path qwen_dir() {
    return shared_path("qwen_tokenizer");
}
inline std::filesystem::path fixtures_dir() {
    return std::filesystem::path(MEDLLM_FIXTURES_DIR) / "text";
}

inline std::string read_text(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline const Tokenizer& qwen() {
    static const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::from_dir(qwen_dir());
    return *tokenizer;
}

}  // namespace medllm::text

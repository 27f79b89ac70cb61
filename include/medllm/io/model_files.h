// The files of a model directory besides its weights, and a model directory's identity for resume checks.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace medllm::io {

// Files a derived checkpoint (`medllm quantize`, `medllm merge`) copies from its source so it loads and chats the
// same way: tokenizer (every format we read), chat template (tokenizer_config.json's, or transformers 5's
// chat_template.jinja / chat_template.json) and generation_config.json. config.json is not in the list: each
// command writes its own.
inline const std::vector<std::string> kModelSideFiles = {
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
};

// Copies the kModelSideFiles that exist in `src` into `dst` (each written atomically, a failed write naming the
// file); returns the names copied.
std::vector<std::string> copy_model_side_files(const std::filesystem::path& src, const std::filesystem::path& dst);

// What a model or adapter directory holds, for a resume check that must notice "another model": the content hash
// (XXH3) of its small files (config.json, adapter_config.json, *.safetensors.index.json and the kModelSideFiles)
// and the name, size and modification time of every weight file (*.safetensors), without reading the weights.
// The directory's path is not part of it, so a moved folder still resumes. Throws Error naming an unreadable file.
nlohmann::json model_dir_identity(const std::filesystem::path& dir);

}  // namespace medllm::io

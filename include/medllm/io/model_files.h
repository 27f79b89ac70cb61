// The files of a model directory besides its weights, and a model directory's identity for resume checks.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/files.h"

namespace medllm::io {

// kModelSideFiles, the files beside a model's weights, are in core (include/medllm/core/files.h): `medllm
// tokenize`, in text, keeps its output off them too.

// Copies the kModelSideFiles that exist in `src` into `dst` (each written atomically, a failed write naming the
// file); returns the names copied.
std::vector<std::string> copy_model_side_files(const std::filesystem::path& src, const std::filesystem::path& dst);

// What a model or adapter directory holds, for a resume check that must notice "another model": the content hash
// (XXH3) of its small files (config.json, adapter_config.json, *.safetensors.index.json and the kModelSideFiles)
// and the name, size and modification time of every weight file (*.safetensors), without reading the weights.
// The directory's path is not part of it, so a moved folder still resumes. Throws Error naming an unreadable file.
nlohmann::json model_dir_identity(const std::filesystem::path& dir);

}  // namespace medllm::io

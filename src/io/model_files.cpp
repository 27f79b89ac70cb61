// A model folder's non-weight files and its identity for resume checks.
#include "medllm/io/model_files.h"

#include <algorithm>
#include <chrono>

#include "medllm/core/error.h"
#include "medllm/core/files.h"

namespace medllm::io {
namespace fs = std::filesystem;

std::vector<std::string> copy_model_side_files(const fs::path& src, const fs::path& dst) {
    std::vector<std::string> copied;
    for (const auto& name : kModelSideFiles) {
        std::error_code ec;
        if (!fs::is_regular_file(src / name, ec)) continue;
        write_file_atomic(dst / name, read_text_file(src / name));
        copied.push_back(name);
    }
    return copied;
}

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

nlohmann::json model_dir_identity(const fs::path& dir) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) throw Error(dir.string() + ": not a directory");
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(dir, ec))
        if (entry.is_regular_file(ec)) files.push_back(entry.path());
    if (ec) throw Error(dir.string() + ": cannot list: " + ec.message());
    std::sort(files.begin(), files.end());
    nlohmann::json hashed = nlohmann::json::object(), weights = nlohmann::json::object();
    for (const auto& path : files) {
        const std::string name = path.filename().string();
        const bool small       = name == "config.json" || name == "adapter_config.json" ||
                           ends_with(name, ".safetensors.index.json") ||
                           std::find(kModelSideFiles.begin(), kModelSideFiles.end(), name) != kModelSideFiles.end();
        if (small) {
            hashed[name] = hash_file(path);
        } else if (ends_with(name, ".safetensors")) {
            const auto id = file_identity(path, /*content_hash=*/false);
            weights[name] = {{"size", id["size"]}, {"mtime_ns", id["mtime_ns"]}};
        }
    }
    return {{"files", hashed}, {"weights", weights}};
}

}  // namespace medllm::io

// Folder content checksums (include/medllm/core/checksums.h).
#include "medllm/core/checksums.h"

#include <algorithm>

#include "medllm/core/error.h"
#include "medllm/core/files.h"

namespace fs = std::filesystem;

namespace medllm {

nlohmann::json write_checksums(const fs::path& dir, const std::vector<std::string>& skip) {
    nlohmann::json files = nlohmann::json::object();
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
        if (!e.is_regular_file()) continue;
        const std::string rel = fs::relative(e.path(), dir).generic_string();
        if (rel == kChecksumsFile || std::find(skip.begin(), skip.end(), rel) != skip.end()) continue;
        files[rel] = {{"size", static_cast<int64_t>(e.file_size())}, {"xxh3", hash_file(e.path())}};
    }
    const nlohmann::json manifest = {{"format", "medllm-checksums-1"}, {"files", files}};
    write_file_atomic(dir / kChecksumsFile, dump_json(manifest, 2) + "\n");
    return manifest;
}

ChecksumCheck verify_checksums(const fs::path& dir) {
    ChecksumCheck check;
    const fs::path path = dir / kChecksumsFile;
    std::error_code ec;
    if (!fs::exists(path, ec)) return check;
    check.has_manifest = true;
    nlohmann::json manifest;
    try {
        manifest = read_json_file(path);
    } catch (const Error& e) {
        check.problem = std::string(kChecksumsFile) + " cannot be read (" + e.what() + ")";
        return check;
    }
    if (!manifest.contains("files") || !manifest["files"].is_object()) {
        check.problem = std::string(kChecksumsFile) + " lists no files";
        return check;
    }
    for (const auto& [rel, want] : manifest["files"].items()) {
        const fs::path file = dir / rel;
        if (!fs::is_regular_file(file, ec)) {
            check.problem = rel + " is missing";
            return check;
        }
        const auto size = static_cast<int64_t>(fs::file_size(file, ec));
        if (!want.contains("size") || !want.contains("xxh3") || want["size"] != size) {
            check.problem = rel + " has changed size (" + std::to_string(size) + " bytes, checksums.json says " +
                            (want.contains("size") ? want["size"].dump() : std::string("nothing")) + ")";
            return check;
        }
        if (hash_file(file) != want["xxh3"].get<std::string>()) {
            check.problem = rel + " has changed content (its checksum differs from checksums.json)";
            return check;
        }
    }
    return check;
}

std::string checksums_digest(const nlohmann::json& manifest) {
    return hash_bytes(manifest.value("files", nlohmann::json::object()).dump());
}

}  // namespace medllm

// Content checksums of a folder's files (checksums.json: relative path -> size and XXH3-64), written after the files
// they cover, so that a reader can tell an intact folder from a damaged one: a flipped byte, a truncated file, a
// hand-edited one. Checkpoints, caches and stage outputs carry one; a resume or a reuse verifies it first.
// Cost: one streamed read of every covered file (XXH3 runs at memory speed; the disk decides: ~1 s per GB).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace medllm {

inline constexpr const char* kChecksumsFile = "checksums.json";

// Hashes every regular file below `dir` (but the manifest itself and the relative paths in `skip`) and writes
// <dir>/checksums.json atomically. Returns the manifest ({"files": {"<relative path>": {"size", "xxh3"}}}).
nlohmann::json write_checksums(const std::filesystem::path& dir, const std::vector<std::string>& skip = {});

struct ChecksumCheck {
    bool has_manifest = false;  // false: the folder was written before checksums (nothing to verify)
    std::string problem;        // "" when every covered file is intact, else one line naming the first bad file
    bool ok() const { return problem.empty(); }
};

// Verifies the files <dir>/checksums.json covers: present, the same size, the same content. Files the manifest
// does not name are not looked at. A manifest that cannot be read is a problem too.
ChecksumCheck verify_checksums(const std::filesystem::path& dir);

// The manifest's own hash (of its sorted entries): one value that names the folder's content, for identities.
std::string checksums_digest(const nlohmann::json& manifest);

}  // namespace medllm

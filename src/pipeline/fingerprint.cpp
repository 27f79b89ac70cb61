// Output records and input identities for the pipeline's rebuild rule (include/medllm/pipeline/fingerprint.h).
#include "medllm/pipeline/fingerprint.h"

#include <glob.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "medllm/core/error.h"
#include "medllm/core/files.h"

namespace fs = std::filesystem;

namespace medllm::pipeline {
namespace {

constexpr uint64_t kSmallInput = 1 << 20;  // inputs up to this size are identified by content

bool starts_with(const std::string& s, const std::string& p) {
    return s.rfind(p, 0) == 0;
}
bool ends_with(const std::string& s, const std::string& p) {
    return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// Files of a stage folder that are not its outputs (top level only; `name` is the first path component).
bool is_bookkeeping(const std::string& name, bool is_dir) {
    if (is_dir)
        return starts_with(name, "checkpoint-") || name == "corpus_cache" || name == "ref_cache" ||
               name == "init_merged";
    return name == "done" || name == "started.json" || name == "stage.yaml" || starts_with(name, "stdout") ||
           starts_with(name, "medllm.log") || name == "config.resolved.yaml" ||
           starts_with(name, "events.out.tfevents");
}

struct Stat {
    bool exists      = false;
    uint64_t size    = 0;
    int64_t mtime_ns = 0;
};

Stat stat_file(const fs::path& p) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) return {};
        throw Error(p.string() + ": cannot stat: " + std::strerror(errno));
    }
    return {true, static_cast<uint64_t>(st.st_size),
            static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec};
}

// Regular files under `dir` as sorted relative paths (generic form), skipping what `skip` says at the top level.
std::vector<std::string> list_files(const fs::path& dir, bool outputs) {
    std::vector<std::string> out;
    std::error_code ec;
    auto it = fs::recursive_directory_iterator(dir, ec);
    if (ec) throw Error(dir.string() + ": cannot list: " + ec.message());
    for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (ec) throw Error(dir.string() + ": cannot list: " + ec.message());
        const fs::path rel = it->path().lexically_relative(dir);
        const bool is_dir  = it->is_directory(ec);
        if (outputs && it.depth() == 0 && (is_bookkeeping(rel.string(), is_dir) || ends_with(rel.string(), ".tmp"))) {
            if (is_dir) it.disable_recursion_pending();
            continue;
        }
        if (it->is_regular_file(ec)) out.push_back(rel.generic_string());
    }
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace

int64_t unix_mtime_ns(const fs::path& path) {
    const auto s = stat_file(path);
    if (!s.exists) throw Error(path.string() + ": no such file");
    return s.mtime_ns;
}

nlohmann::json record_outputs(const fs::path& dir) {
    nlohmann::json rec = nlohmann::json::object();
    if (!fs::is_directory(dir)) return rec;
    for (const auto& rel : list_files(dir, true)) {
        const auto s = stat_file(dir / rel);
        rec[rel]     = {{"size", s.size}, {"mtime_ns", s.mtime_ns}, {"xxh3", hash_file(dir / rel)}};
    }
    return rec;
}

std::string outputs_hash(const nlohmann::json& record, const std::vector<std::string>& only) {
    std::string text;
    for (const auto& [rel, f] : record.items()) {
        bool wanted = only.empty();
        for (const auto& p : only) wanted = wanted || starts_with(rel, p);
        if (wanted)
            text += rel + "\t" + std::to_string(f["size"].get<uint64_t>()) + "\t" + f["xxh3"].get<std::string>() + "\n";
    }
    return hash_bytes(text);
}

std::string check_outputs(const fs::path& dir, nlohmann::json& record, bool* refreshed) {
    if (refreshed) *refreshed = false;
    for (auto& [rel, f] : record.items()) {
        const auto s = stat_file(dir / rel);
        if (!s.exists) return rel + " is missing";
        if (s.size != f["size"].get<uint64_t>()) return rel + " changed (size)";
        if (s.mtime_ns == f["mtime_ns"].get<int64_t>()) continue;
        // Touched or copied: the content decides.
        if (hash_file(dir / rel) != f["xxh3"].get<std::string>()) return rel + " changed";
        f["mtime_ns"] = s.mtime_ns;
        if (refreshed) *refreshed = true;
    }
    if (fs::is_directory(dir))
        for (const auto& rel : list_files(dir, true))
            if (!record.contains(rel)) return rel + " is new";
    return "";
}

std::string input_identity(const fs::path& path) {
    if (path.string().find_first_of("*?[") != std::string::npos) {
        // A glob (corpus sources): what it matches, each by its identity.
        glob_t g{};
        std::string text;
        if (::glob(path.c_str(), 0, nullptr, &g) == 0)
            for (size_t i = 0; i < g.gl_pathc; ++i)
                text += std::string(g.gl_pathv[i]) + "\t" + input_identity(g.gl_pathv[i]) + "\n";
        globfree(&g);
        return text.empty() ? "" : hash_bytes(text);
    }
    const auto top = stat_file(path);
    if (!top.exists) return "";
    std::string text;
    auto add = [&](const fs::path& file, const std::string& rel) {
        const auto s = stat_file(file);
        text += rel + "\t" + std::to_string(s.size) + "\t";
        text += s.size <= kSmallInput ? hash_file(file) : std::to_string(s.mtime_ns);
        text += "\n";
    };
    if (fs::is_directory(path)) {
        for (const auto& rel : list_files(path, false)) add(path / rel, rel);
    } else {
        add(path, ".");
    }
    return hash_bytes(text);
}

}  // namespace medllm::pipeline

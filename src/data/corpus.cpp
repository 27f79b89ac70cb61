// Expanding corpus sources (files, folders, globs) and reading their documents.
#include "medllm/data/corpus.h"

#include <glob.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/text/unicode.h"

namespace medllm::data {
namespace fs = std::filesystem;

namespace {

constexpr int kLoggedSkipsPerReason = 5;  // the rest are only counted (the summary has the totals)

std::string lower_extension(const fs::path& p) {
    std::string ext = p.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    return ext;
}

bool is_corpus_extension(const fs::path& p) {
    const auto ext = lower_extension(p);
    return ext == ".jsonl" || ext == ".json" || ext == ".txt" || ext == ".md";
}

std::string resolve_format(const SourceSpec& s, const fs::path& file) {
    if (s.format != "auto") return s.format;
    const auto ext = lower_extension(file);
    if (ext == ".jsonl" || ext == ".json") return "jsonl";
    if (ext == ".txt" || ext == ".md") return "text";
    throw UsageError("data source '" + s.path + "': cannot tell the format of " + file.string() +
                     " from its extension; set format: jsonl, text or lines");
}

bool is_blank(const std::string& s) {
    // ASCII whitespace and U+3000 (ideographic space), the blanks Japanese text pads with.
    for (size_t i = 0; i < s.size(); ++i) {
        const unsigned char c = s[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') continue;
        if (c == 0xE3 && i + 2 < s.size() && (unsigned char)s[i + 1] == 0x80 && (unsigned char)s[i + 2] == 0x80) {
            i += 2;
            continue;
        }
        return false;
    }
    return true;
}

}  // namespace

InvalidPolicy parse_invalid_policy(const std::string& name) {
    if (name == "skip") return InvalidPolicy::skip;
    if (name == "error") return InvalidPolicy::error;
    throw UsageError("invalid-record policy must be skip or error, got '" + name + "'");
}

std::vector<CorpusFile> expand_sources(const std::vector<SourceSpec>& sources, const fs::path& base_dir) {
    if (sources.empty()) throw UsageError("data.sources is empty: list at least one file, folder or glob");
    std::vector<CorpusFile> out;
    std::map<std::string, uint32_t> seen;
    for (uint32_t si = 0; si < sources.size(); ++si) {
        const auto& s = sources[si];
        if (s.format != "auto" && s.format != "jsonl" && s.format != "text" && s.format != "lines")
            throw UsageError("data source '" + s.path + "': format must be auto, jsonl, text or lines, got '" +
                             s.format + "'");
        if (s.path.empty()) throw UsageError("data source " + std::to_string(si) + ": path is empty");
        fs::path p = s.path;
        if (p.is_relative()) p = base_dir / p;
        std::vector<fs::path> files;
        if (s.path.find_first_of("*?[") != std::string::npos) {
            glob_t g{};
            const int rc = ::glob(p.string().c_str(), 0, nullptr, &g);
            if (rc == 0)
                for (size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
            globfree(&g);
            std::vector<fs::path> expanded;
            for (const auto& f : files) {
                if (fs::is_directory(f)) {
                    for (const auto& e : fs::recursive_directory_iterator(f))
                        if (e.is_regular_file() && is_corpus_extension(e.path())) expanded.push_back(e.path());
                } else if (fs::is_regular_file(f)) {
                    expanded.push_back(f);
                }
            }
            files = std::move(expanded);
        } else if (fs::is_directory(p)) {
            std::error_code ec;
            for (auto it = fs::recursive_directory_iterator(p, ec); !ec && it != fs::recursive_directory_iterator();
                 it.increment(ec))
                if (it->is_regular_file() && is_corpus_extension(it->path())) files.push_back(it->path());
            if (ec) throw Error("data source '" + s.path + "': cannot list " + p.string() + ": " + ec.message());
        } else if (fs::is_regular_file(p)) {
            files.push_back(p);
        } else {
            throw UsageError("data source '" + s.path + "': no such file or folder (" + p.string() + ")");
        }
        if (files.empty())
            throw UsageError("data source '" + s.path + "' matches no .jsonl/.json/.txt/.md file (" + p.string() + ")");
        for (auto& f : files) f = fs::absolute(f).lexically_normal();
        std::sort(files.begin(), files.end());
        files.erase(std::unique(files.begin(), files.end()), files.end());
        for (const auto& f : files) {
            auto [it, inserted] = seen.emplace(f.string(), si);
            if (!inserted)
                throw UsageError("data sources '" + sources[it->second].path + "' and '" + s.path + "' both include " +
                                 f.string() + "; a file may belong to one source only");
            out.push_back({f, si, resolve_format(s, f)});
        }
    }
    return out;
}

DocumentReader::DocumentReader(std::vector<CorpusFile> files, std::vector<SourceSpec> sources, InvalidPolicy policy)
    : files_(std::move(files)), sources_(std::move(sources)), policy_(policy) {}

DocumentReader::~DocumentReader() = default;

void DocumentReader::reject(const std::string& reason, uint64_t line) {
    const std::string where = files_[file_].path.string() + (line ? ":" + std::to_string(line) : "");
    if (policy_ == InvalidPolicy::error) throw Error(where + ": " + reason + " (data.on_invalid: error)");
    const int64_t n = ++skipped_[reason];
    if (n <= kLoggedSkipsPerReason)
        spdlog::warn("skipping {}: {}{}", where, reason,
                     n == kLoggedSkipsPerReason ? " (further ones only counted)" : "");
}

bool DocumentReader::next_document(RawDocument& doc) {
    while (file_ < files_.size()) {
        const auto& f = files_[file_];
        if (f.format == "text") {
            std::string text = read_text_file(f.path);
            bytes_read_ += text.size();
            if (text.size() >= 3 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // BOM
            const uint32_t fi = static_cast<uint32_t>(file_);
            bool ok           = true;
            if (!text::is_valid_utf8(text)) {
                reject("invalid UTF-8", 0);
                ok = false;
            } else if (is_blank(text)) {
                reject("empty document", 0);
                ok = false;
            }
            ++file_;
            if (!ok) continue;
            doc.file = fi;
            doc.line = 0;
            doc.text = std::move(text);
            return true;
        }
        if (!in_) {
            in_ = std::make_unique<std::ifstream>(f.path, std::ios::binary);
            if (!*in_) throw Error(f.path.string() + ": cannot open: " + std::strerror(errno));
            line_ = 0;
        }
        std::string line;
        while (std::getline(*in_, line)) {
            ++line_;
            bytes_read_ += line.size() + 1;
            if (!line.empty() && line.back() == '\r') line.pop_back();
            if (line_ == 1 && line.size() >= 3 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);
            if (f.format == "lines") {
                if (is_blank(line)) continue;  // blank lines separate documents; they are not records
                if (!text::is_valid_utf8(line)) {
                    reject("invalid UTF-8", line_);
                    continue;
                }
                doc.file = static_cast<uint32_t>(file_);
                doc.line = line_;
                doc.text = std::move(line);
                return true;
            }
            // jsonl
            if (is_blank(line)) continue;
            if (!text::is_valid_utf8(line)) {
                reject("invalid UTF-8", line_);
                continue;
            }
            auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
            if (j.is_discarded()) {
                reject("malformed JSON", line_);
                continue;
            }
            if (!j.is_object()) {
                reject("not a JSON object", line_);
                continue;
            }
            const auto& field = sources_[f.source].text_field;
            auto it           = j.find(field);
            if (it == j.end()) {
                reject("missing text field", line_);
                continue;
            }
            if (!it->is_string()) {
                reject("text field is not a string", line_);
                continue;
            }
            std::string text = it->get<std::string>();
            if (is_blank(text)) {
                reject("empty document", line_);
                continue;
            }
            doc.file = static_cast<uint32_t>(file_);
            doc.line = line_;
            doc.text = std::move(text);
            return true;
        }
        if (in_->bad()) throw Error(f.path.string() + ": read failed: " + std::strerror(errno));
        in_.reset();
        ++file_;
    }
    return false;
}

bool DocumentReader::next_batch(std::vector<RawDocument>& out, std::size_t max_bytes) {
    std::size_t bytes = 0;
    bool any          = false;
    RawDocument doc;
    while (bytes < max_bytes && next_document(doc)) {
        bytes += doc.text.size();
        out.push_back(std::move(doc));
        doc = RawDocument{};
        any = true;
    }
    return any;
}

}  // namespace medllm::data

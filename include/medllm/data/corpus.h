// Corpus inputs for continued pretraining: sources (files, folders, globs) expanded to files, and documents read
// from them with validation. No tokenization here (token_cache.h) and no LibTorch.
//
// Formats: `jsonl` (one JSON object per line, the document in `text_field`), `text` (a whole .txt/.md file is one
// document), `lines` (every non-blank line of a text file is one document). `auto` picks jsonl for .jsonl/.json and
// text for .txt/.md. A folder is searched recursively for those extensions; a path with * ? [ is a glob.
//
// Validation: a malformed JSONL line, a line that is not an object, a missing or non-string text field, invalid
// UTF-8 and an empty (blank) document are each a named reason. Policy `skip` counts them (and logs the first few
// with file:line); policy `error` throws medllm::Error "<file>:<line>: <reason>" at the first one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace medllm::data {

struct SourceSpec {
    std::string path;              // file, folder or glob (relative paths are relative to the config's folder)
    double weight          = 1.0;  // times each document is seen per epoch (fractions: a seeded share of them)
    std::string format     = "auto";
    std::string text_field = "text";
};

enum class InvalidPolicy { skip, error };
InvalidPolicy parse_invalid_policy(const std::string& name);  // "skip" | "error"

struct CorpusFile {
    std::filesystem::path path;  // absolute, lexically normal
    uint32_t source = 0;         // index into the sources
    std::string format;          // resolved: jsonl | text | lines
};

// Files of every source, in source order, each source's files sorted by path. A source that matches no file,
// an unknown format, or a file listed by two sources is a UsageError naming the source.
std::vector<CorpusFile> expand_sources(const std::vector<SourceSpec>& sources, const std::filesystem::path& base_dir);

struct RawDocument {
    uint32_t file = 0;  // index into the files
    uint64_t line = 0;  // 1-based line for jsonl/lines, 0 for a whole-file document
    std::string text;
};

// Skip reasons, in the order the summary lists them.
inline const char* const kSkipReasons[] = {"malformed JSON",     "not a JSON object",
                                           "missing text field", "text field is not a string",
                                           "invalid UTF-8",      "empty document"};

// Streams the documents of `files` in order, in batches.
class DocumentReader {
public:
    DocumentReader(std::vector<CorpusFile> files, std::vector<SourceSpec> sources, InvalidPolicy policy);
    ~DocumentReader();

    // Appends documents until their text reaches `max_bytes` (at least one document); false when none is left.
    bool next_batch(std::vector<RawDocument>& out, std::size_t max_bytes);

    const std::map<std::string, int64_t>& skipped() const { return skipped_; }
    uint64_t bytes_read() const { return bytes_read_; }  // input bytes consumed so far (for MB/s)
    const std::vector<CorpusFile>& files() const { return files_; }

private:
    bool next_document(RawDocument& doc);
    void reject(const std::string& reason, uint64_t line);

    std::vector<CorpusFile> files_;
    std::vector<SourceSpec> sources_;
    InvalidPolicy policy_;
    std::size_t file_ = 0;
    std::unique_ptr<std::ifstream> in_;  // the open jsonl/lines file
    uint64_t line_ = 0;
    std::map<std::string, int64_t> skipped_;
    uint64_t bytes_read_ = 0;
};

}  // namespace medllm::data

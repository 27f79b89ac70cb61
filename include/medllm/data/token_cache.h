// The token cache: a corpus tokenized once, on a CPU node, before any GPU time is spent.
//
// Layout of a cache folder:
//   tokens-00000.u32 ...  flat little-endian uint32 token ids (Qwen's vocabulary exceeds 65,535); a document never
//                         straddles two shards; memory-mapped when read
//   documents.idx         one DocEntry (24 bytes) per document: shard, offset, length, corpus file, line
//   manifest.json         written last, atomically: format version, the identity (every source file's path,
//                         size, mtime and XXH3, the tokenizer files' hash, the settings that change tokens), the
//                         shards and their token counts, the statistics. No manifest = no cache.
//   guard_report.json     the contamination guard's findings (when the guard ran)
//
// Reuse: a rerun whose identity matches reuses the cache without reading the corpus (a file whose mtime changed
// but whose size did not is re-hashed: touching a file does not rebuild). Any difference rebuilds the whole cache
// (the log names the first difference); shards are not reused piecemeal. A rebuild removes the old manifest
// first, so an interrupted build never leaves a cache that looks complete.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/data/corpus.h"
#include "medllm/data/guard.h"

namespace medllm::text {
class Tokenizer;
}

namespace medllm::data {

inline constexpr int kCacheFormatVersion = 1;

struct DocEntry {
    uint64_t offset = 0;  // in tokens, within the shard
    uint32_t length = 0;  // tokens (EOS included when appended)
    uint16_t shard  = 0;
    uint16_t flags  = 0;  // bit 0: flagged by the guard (action warn)
    uint32_t file   = 0;  // index into the manifest's files
    uint32_t line   = 0;  // 1-based line, 0 for whole-file documents
};
static_assert(sizeof(DocEntry) == 24, "DocEntry is a file format");
inline constexpr uint16_t kDocFlagged = 1;

enum class GuardAction { refuse, drop, warn };
GuardAction parse_guard_action(const std::string& name);  // refuse | drop | warn
const char* to_string(GuardAction a);

struct CacheBuildOptions {
    std::vector<SourceSpec> sources;
    std::filesystem::path base_dir;  // relative source paths start here (the config file's folder)
    std::filesystem::path tokenizer_dir;
    InvalidPolicy on_invalid = InvalidPolicy::skip;
    bool append_eos          = true;
    std::string eos_token;  // "" = the tokenizer's EOS (tokenizer_config.json); else this token's id
    const text::Tokenizer* tokenizer = nullptr;  // preloaded tokenizer of tokenizer_dir (null = load it)
    int threads                      = 0;        // encode_batch threads; 0 = all cores
    std::size_t batch_bytes          = 8u << 20;
    uint64_t shard_tokens            = uint64_t(1) << 28;  // 1 GiB shards
    bool force_rebuild               = false;
    // Contamination guard (null = off). Its identity (data folder hash, years, n, threshold, action) is part of
    // the cache identity, because `drop` changes which documents are in it.
    const ContaminationGuard* guard = nullptr;
    nlohmann::json guard_identity;
    GuardAction guard_action = GuardAction::refuse;
    // Progress: (input bytes done, total input bytes).
    std::function<void(uint64_t, uint64_t)> progress;
    // Hold the cache folder's lock (TokenCacheLock) while checking and building; false when the caller holds it.
    bool lock = true;
};

// An exclusive lock on a cache folder (flock on `<cache_dir>/.lock`, creating the folder): two processes (or two
// threads) sharing one data.cache_dir take turns, so the second one waits (logging "waiting for the token cache
// lock held by pid N") and then reuses the finished cache instead of colliding with the first one's temp files.
// Released by the destructor or when the process dies (the kernel drops flock locks with the file descriptor).
class TokenCacheLock {
public:
    explicit TokenCacheLock(const std::filesystem::path& cache_dir);
    ~TokenCacheLock();
    TokenCacheLock(const TokenCacheLock&)            = delete;
    TokenCacheLock& operator=(const TokenCacheLock&) = delete;
    bool waited() const { return waited_; }  // another holder was there first

private:
    int fd_      = -1;
    bool waited_ = false;
};

struct CacheBuildReport {
    bool reused = false;
    std::string rebuild_reason;  // why it was (re)built: "no cache", "file changed: ..."
    int64_t documents    = 0;
    int64_t tokens       = 0;
    int64_t characters   = 0;  // Unicode code points of the documents' text
    uint64_t input_bytes = 0;
    std::map<std::string, int64_t> skipped;
    int64_t flagged      = 0;  // documents the guard flagged
    int64_t dropped      = 0;  // ... and left out (action drop)
    int64_t files        = 0;
    double seconds       = 0;
    double guard_seconds = 0;
    std::filesystem::path guard_report;
    std::vector<std::string> first_hits;  // "file:line: 116A1 (0.93)" for the refuse message
};

// Builds the cache in `cache_dir`, or reuses it when its identity matches (under the folder's TokenCacheLock unless
// options.lock is false). With the guard's action `refuse` and
// any hit, no cache is written (the report is) and UsageError names the report and the first hits.
CacheBuildReport build_token_cache(const std::filesystem::path& cache_dir, const CacheBuildOptions& options);

// Hash of the tokenizer's files in a model folder (tokenizer.json, vocab.json, merges.txt, tokenizer.model,
// tokenizer_config.json, added_tokens.json, special_tokens_map.json).
std::string tokenizer_hash(const std::filesystem::path& dir);

// A read-only, memory-mapped view of a complete cache.
class TokenCache {
public:
    // Throws Error naming the folder when the manifest is missing (an incomplete build), unreadable, of another
    // format version, or when a shard or the index does not have the size or the XXH3 checksum the manifest records
    // (every open hashes the whole cache once: a changed token is caught even when it is still a valid id).
    explicit TokenCache(const std::filesystem::path& dir);
    ~TokenCache();
    TokenCache(const TokenCache&)            = delete;
    TokenCache& operator=(const TokenCache&) = delete;

    std::size_t num_documents() const { return num_docs_; }
    const DocEntry& document(std::size_t i) const { return docs_[i]; }
    // The document's tokens (valid while the cache lives).
    const uint32_t* tokens(std::size_t i) const;
    uint64_t num_tokens() const { return num_tokens_; }
    // Source index of a corpus file (for the sampling weights).
    uint32_t file_source(uint32_t file) const { return file_source_.at(file); }
    std::size_t num_sources() const { return num_sources_; }
    const nlohmann::json& manifest() const { return manifest_; }
    // Changes whenever the cache's contents change (for the trainer's resume check).
    const std::string& fingerprint() const { return fingerprint_; }
    const std::filesystem::path& dir() const { return dir_; }

private:
    struct Mapping;
    std::filesystem::path dir_;
    nlohmann::json manifest_;
    std::vector<std::unique_ptr<Mapping>> shards_;
    std::unique_ptr<Mapping> index_;
    const DocEntry* docs_ = nullptr;
    std::size_t num_docs_ = 0;
    uint64_t num_tokens_  = 0;
    std::vector<uint32_t> file_source_;
    std::size_t num_sources_ = 0;
    std::string fingerprint_;
};

}  // namespace medllm::data

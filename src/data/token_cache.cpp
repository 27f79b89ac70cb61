// The token cache: builds it from the corpus (guarded, sharded, resumable by identity) and maps it for reading.
#include "medllm/data/token_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/text/tokenizer.h"

namespace medllm::data {
namespace fs = std::filesystem;

namespace {

constexpr char kManifest[] = "manifest.json";
constexpr char kIndex[]    = "documents.idx";
constexpr char kReport[]   = "guard_report.json";
constexpr int kFirstHits   = 5;

std::string shard_name(std::size_t i) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "tokens-%05zu.u32", i);
    return buf;
}

int64_t count_code_points(const std::string& s) {
    int64_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

int thread_count(int requested) {
    if (requested > 0) return requested;
    return std::max(1u, std::thread::hardware_concurrency());
}

// Runs fn(i) for i in [0, n) on `threads` threads (contiguous chunks).
template <class Fn>
void parallel_for_each(std::size_t n, int threads, Fn fn) {
    threads = static_cast<int>(std::min<std::size_t>(std::max(1, threads), std::max<std::size_t>(1, n)));
    if (threads <= 1) {
        for (std::size_t i = 0; i < n; ++i) fn(i);
        return;
    }
    std::atomic<std::size_t> next{0};
    std::vector<std::thread> pool;
    std::exception_ptr failure;
    std::mutex failure_mutex;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&] {
            try {
                for (std::size_t i; (i = next.fetch_add(1)) < n;) fn(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(failure_mutex);
                if (!failure) failure = std::current_exception();
                next = n;
            }
        });
    }
    for (auto& t : pool) t.join();
    if (failure) std::rethrow_exception(failure);
}

// A shard being written: tokens are appended through an AtomicFileWriter (temp file + rename on commit).
struct ShardWriter {
    std::unique_ptr<AtomicFileWriter> out;
    uint64_t tokens = 0;
};

// The file part of the identity without mtime and hash (compared exactly); mtime and hash are compared by rule.
nlohmann::json file_entry(const CorpusFile& f) {
    auto id      = file_identity(f.path, /*content_hash=*/false);
    id["source"] = f.source;
    id["format"] = f.format;
    return id;
}

std::string where_of(const nlohmann::json& files, uint32_t file, uint32_t line) {
    std::string s = files.at(file).at("path").get<std::string>();
    return line ? s + ":" + std::to_string(line) : s;
}

// Why the cache in `dir` cannot be reused with `identity` ("" = it can).
std::string stale_reason(const fs::path& dir, const nlohmann::json& identity, std::vector<CorpusFile>& files,
                         nlohmann::json& hashes) {
    const auto manifest_path = dir / kManifest;
    if (!fs::exists(manifest_path)) return fs::exists(dir / kIndex) ? "an earlier build did not finish" : "no cache";
    nlohmann::json m;
    try {
        m = read_json_file(manifest_path);
    } catch (const Error& e) {
        return std::string("manifest unreadable (") + e.what() + ")";
    }
    if (!m.is_object() || m.value("version", 0) != kCacheFormatVersion || !m.contains("identity"))
        return "manifest of another format version";
    const auto& old = m["identity"];
    for (const char* key : {"tokenizer", "settings", "guard"}) {
        const auto diff = describe_json_difference(old.value(key, nlohmann::json()), identity[key]);
        if (!diff.empty()) return std::string(key) + " changed: " + diff;
    }
    const auto& old_files = old.value("files", nlohmann::json::array());
    const auto& new_files = identity["files"];
    if (old_files.size() != new_files.size())
        return "the corpus files changed (" + std::to_string(old_files.size()) + " before, " +
               std::to_string(new_files.size()) + " now)";
    for (std::size_t i = 0; i < new_files.size(); ++i) {
        const auto& a          = old_files[i];
        const auto& b          = new_files[i];
        const std::string path = b["path"].get<std::string>();
        if (a.value("path", "") != path) return "file list changed at " + path;
        if (a.value("size", int64_t(-1)) != b["size"].get<int64_t>()) return "file changed (size): " + path;
        if (a.value("format", "") != b["format"].get<std::string>() || a.value("source", -1) != b["source"].get<int>())
            return "file's source or format changed: " + path;
        if (a.value("mtime_ns", int64_t(-1)) != b["mtime_ns"].get<int64_t>()) {
            // Touched but maybe not changed: the content hash decides.
            const auto h           = hash_file(files[i].path);
            const auto& old_hashes = m.value("hashes", nlohmann::json::array());
            if (i >= old_hashes.size() || !old_hashes[i].is_string() || h != old_hashes[i].get<std::string>())
                return "file changed (content): " + path;
        }
    }
    try {
        TokenCache check(dir);  // shards and index present, of the recorded sizes and checksums
    } catch (const Error& e) {
        return e.what();
    }
    hashes = m["hashes"];
    return "";
}

}  // namespace

// ---------------------------------------------------------------- the folder lock

TokenCacheLock::TokenCacheLock(const fs::path& cache_dir) {
    std::error_code ec;
    fs::create_directories(cache_dir, ec);
    if (ec) throw Error(cache_dir.string() + ": cannot create the token cache folder: " + ec.message());
    const fs::path path = cache_dir / ".lock";
    fd_                 = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error(path.string() + ": cannot open the token cache lock: " + std::strerror(errno));
    const auto take = [this](int op) {
        int rc;
        do rc = ::flock(fd_, op);
        while (rc != 0 && errno == EINTR);
        return rc == 0;
    };
    const auto fail = [&] {
        const std::string why = std::strerror(errno);
        ::close(fd_);
        throw Error(path.string() + ": cannot lock the token cache: " + why);
    };
    if (!take(LOCK_EX | LOCK_NB)) {
        if (errno != EWOULDBLOCK) fail();
        char buf[32]    = {};
        const auto n    = ::pread(fd_, buf, sizeof buf - 1, 0);
        std::string pid = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "";
        while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
        spdlog::info("{}: waiting for the token cache lock held by pid {}", cache_dir.string(),
                     pid.empty() ? "(unknown)" : pid);
        waited_ = true;
        if (!take(LOCK_EX)) fail();
    }
    // The holder's pid, for the waiting message of the next one (informational: a failed write changes nothing).
    const std::string me = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, me.data(), me.size(), 0);
}

TokenCacheLock::~TokenCacheLock() {
    if (fd_ < 0) return;
    (void)!::ftruncate(fd_, 0);
    ::close(fd_);  // releases the lock
}

GuardAction parse_guard_action(const std::string& name) {
    if (name == "refuse") return GuardAction::refuse;
    if (name == "drop") return GuardAction::drop;
    if (name == "warn") return GuardAction::warn;
    throw UsageError("eval_guard.action must be refuse, drop or warn, got '" + name + "'");
}

const char* to_string(GuardAction a) {
    return a == GuardAction::refuse ? "refuse" : a == GuardAction::drop ? "drop" : "warn";
}

std::string tokenizer_hash(const fs::path& dir) {
    std::string all;
    for (const char* name : {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "tokenizer_config.json",
                             "added_tokens.json", "special_tokens_map.json"}) {
        if (fs::exists(dir / name)) all += std::string(name) + "=" + hash_file(dir / name) + ";";
    }
    if (all.empty()) throw UsageError("no tokenizer files in " + dir.string());
    return hash_bytes(all);
}

namespace {

std::vector<fs::path> paths_of(const std::vector<CorpusFile>& files) {
    std::vector<fs::path> p;
    for (const auto& f : files) p.push_back(f.path);
    return p;
}

// The id appended after every document (data.append_eos): data.eos_token's, else the tokenizer's EOS.
std::optional<text::TokenId> eos_to_append(const text::Tokenizer& tokenizer, const CacheBuildOptions& o) {
    if (!o.append_eos) return std::nullopt;
    std::optional<text::TokenId> eos;
    if (!o.eos_token.empty()) {
        eos = tokenizer.token_to_id(o.eos_token);
        if (!eos)
            throw UsageError("data.eos_token '" + o.eos_token + "' is not a token of " + o.tokenizer_dir.string());
    } else {
        eos = tokenizer.eos_id();
        if (!eos)
            throw UsageError("data.append_eos: the tokenizer in " + o.tokenizer_dir.string() +
                             " names no EOS token (no tokenizer_config.json); set data.eos_token, e.g. "
                             "'<|endoftext|>' for Qwen2.5");
    }
    return eos;
}

// What a cache is the result of (the manifest's identity): tokenizer, settings, guard and corpus files.
nlohmann::json cache_identity(const CacheBuildOptions& o, const text::Tokenizer& tokenizer,
                              std::optional<text::TokenId> eos, const std::vector<CorpusFile>& files) {
    nlohmann::json identity;
    identity["tokenizer"] = {{"hash", tokenizer_hash(o.tokenizer_dir)},
                             {"vocab_size", tokenizer.vocab_size()},
                             {"eos", eos ? nlohmann::json(*eos) : nlohmann::json()}};
    nlohmann::json src    = nlohmann::json::array();
    for (const auto& s : o.sources)
        src.push_back({{"path", s.path}, {"format", s.format}, {"text_field", s.text_field}});
    identity["settings"] = {{"append_eos", o.append_eos},
                            {"on_invalid", o.on_invalid == InvalidPolicy::skip ? "skip" : "error"},
                            {"sources", src}};
    identity["guard"]    = o.guard ? o.guard_identity : nlohmann::json();
    if (o.guard) identity["guard"]["action"] = to_string(o.guard_action);
    identity["files"] = nlohmann::json::array();
    for (const auto& f : files) identity["files"].push_back(file_entry(f));
    return identity;
}

uint64_t total_input_bytes(const nlohmann::json& identity) {
    uint64_t total = 0;
    for (const auto& f : identity["files"]) total += f["size"].get<uint64_t>();
    return total;
}

// The report of a cache reused as it is: its manifest's stats.
CacheBuildReport reused_report(const fs::path& cache_dir, CacheBuildReport report,
                               std::chrono::steady_clock::time_point start) {
    const auto m       = read_json_file(cache_dir / kManifest);
    const auto& st     = m["stats"];
    report.reused      = true;
    report.documents   = st.value("documents", int64_t(0));
    report.tokens      = st.value("tokens", int64_t(0));
    report.characters  = st.value("characters", int64_t(0));
    report.input_bytes = st.value("input_bytes", uint64_t(0));
    report.flagged     = st.value("flagged", int64_t(0));
    report.dropped     = st.value("dropped", int64_t(0));
    report.skipped     = st.value("skipped", std::map<std::string, int64_t>{});
    if (fs::exists(cache_dir / kReport)) report.guard_report = cache_dir / kReport;
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
}

// Removes the old cache: manifest first, so nothing half-written ever looks complete.
void clear_cache(const fs::path& cache_dir) {
    fs::create_directories(cache_dir);
    fs::remove(cache_dir / kManifest);
    for (const auto& e : fs::directory_iterator(cache_dir)) {
        const auto name = e.path().filename().string();
        if (name.rfind("tokens-", 0) == 0 && e.path().extension() == ".u32") fs::remove(e.path());
    }
    fs::remove(cache_dir / kReport);
}

// The guard over every `format: lines` file, where each line is a document but a question may be written over
// several (stem, then one choice per line): the lines are streamed through a LineWindow in blocks, their postings
// computed in parallel. Returns (file, line) -> hits for the flagged lines; the main pass takes these instead of
// checking each line alone. Lines are numbered as DocumentReader numbers them (every physical line).
std::map<std::pair<uint32_t, uint64_t>, std::vector<GuardHit>> guard_line_files(const std::vector<CorpusFile>& files,
                                                                                const ContaminationGuard& guard,
                                                                                int threads) {
    std::map<std::pair<uint32_t, uint64_t>, std::vector<GuardHit>> out;
    // Blocks of ~1 MB: the next block's postings (the n-gram lookups, parallel) are computed while this block's
    // lines go through the window (in order, one thread), so the two overlap.
    constexpr std::size_t kBlockBytes = 1u << 20;
    struct Block {
        uint64_t first_line = 0;
        std::vector<std::string> lines;
    };
    auto postings_of = [&](std::shared_ptr<Block> b) {
        std::vector<ContaminationGuard::LinePostings> p(b->lines.size());
        parallel_for_each(b->lines.size(), std::max(1, threads - 1),
                          [&](std::size_t i) { p[i] = guard.line_postings(b->lines[i]); });
        return p;
    };
    for (uint32_t fi = 0; fi < files.size(); ++fi) {
        if (files[fi].format != "lines") continue;
        std::ifstream in(files[fi].path, std::ios::binary);
        if (!in) throw Error(files[fi].path.string() + ": cannot open: " + std::strerror(errno));
        LineWindow window(guard);
        uint64_t line_no = 0;
        auto read_block  = [&] {
            auto b            = std::make_shared<Block>();
            b->first_line     = line_no + 1;
            std::size_t bytes = 0;
            for (std::string line; bytes < kBlockBytes && std::getline(in, line);) {
                ++line_no;
                bytes += line.size() + 1;
                b->lines.push_back(std::move(line));
            }
            if (in.bad()) throw Error(files[fi].path.string() + ": read failed: " + std::strerror(errno));
            return b;
        };
        auto block   = read_block();
        auto pending = std::async(std::launch::async, postings_of, block);
        while (!block->lines.empty()) {
            auto postings = pending.get();
            auto next     = read_block();
            pending       = std::async(std::launch::async, postings_of, next);
            for (std::size_t i = 0; i < postings.size(); ++i)
                window.push(block->first_line + i, std::move(postings[i]));
            for (auto& [line, hits] : window.take()) out[{fi, line}] = std::move(hits);
            block = std::move(next);
        }
        pending.get();
        window.finish();
        for (auto& [line, hits] : window.take()) out[{fi, line}] = std::move(hits);
    }
    return out;
}

// A rebuild in progress: the shards and the index being written (each file appears under its name only when
// committed), the guard's findings and the report's counts.
class CacheBuilder {
public:
    CacheBuilder(const fs::path& dir, const CacheBuildOptions& o, const std::vector<CorpusFile>& files,
                 const nlohmann::json& identity, const text::Tokenizer& tokenizer, std::optional<text::TokenId> eos,
                 CacheBuildReport& report)
        : dir_(dir),
          o_(o),
          files_(files),
          identity_(identity),
          tokenizer_(tokenizer),
          eos_(eos),
          report_(report),
          threads_(thread_count(o.threads)),
          index_(dir / kIndex) {
        if (o.guard) {
            const auto g0 = std::chrono::steady_clock::now();
            line_hits_    = guard_line_files(files, *o.guard, threads_);
            report_.guard_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - g0).count();
        }
        open_shard();
    }

    // One batch: the guard's check, then (unless a hit made the build refuse) the kept documents' tokens.
    void add_batch(std::vector<RawDocument>& batch) {
        checked_ += static_cast<int64_t>(batch.size());
        const auto hits = check_guard(batch);
        const auto keep = screen(batch, hits);
        if (!refusing_) append(batch, keep, hits);
    }

    // Writes guard_report.json; after a hit under action refuse writes nothing else and throws UsageError, else
    // commits the shards, the index and then the manifest.
    void finish(std::chrono::steady_clock::time_point start) {
        if (o_.guard) write_guard_report();
        if (refusing_) refuse();
        close_shard();
        index_.commit();
        write_manifest(start);
    }

private:
    std::vector<std::vector<GuardHit>> check_guard(const std::vector<RawDocument>& batch) {
        std::vector<std::vector<GuardHit>> hits(batch.size());
        if (!o_.guard) return hits;
        const auto g0 = std::chrono::steady_clock::now();
        parallel_for_each(batch.size(), threads_, [&](std::size_t i) {
            if (files_[batch[i].file].format != "lines") {
                hits[i] = o_.guard->check(batch[i].text);
            } else if (auto it = line_hits_.find({batch[i].file, batch[i].line}); it != line_hits_.end()) {
                hits[i] = it->second;
            }
        });
        report_.guard_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - g0).count();
        return hits;
    }

    // Records each flagged document (report, guard_report.json) and returns the indices to keep: all but the ones
    // the guard drops.
    std::vector<std::size_t> screen(const std::vector<RawDocument>& batch,
                                    const std::vector<std::vector<GuardHit>>& hits) {
        std::vector<std::size_t> keep;
        for (std::size_t i = 0; i < batch.size(); ++i) {
            if (!hits[i].empty()) {
                record_hit(batch[i], hits[i]);
                if (o_.guard_action == GuardAction::refuse) refusing_ = true;
                if (o_.guard_action == GuardAction::drop) {
                    ++report_.dropped;
                    continue;
                }
            }
            keep.push_back(i);
        }
        return keep;
    }

    void record_hit(const RawDocument& doc, const std::vector<GuardHit>& hits) {
        ++report_.flagged;
        nlohmann::json matches = nlohmann::json::array();
        for (const auto& h : hits)
            matches.push_back({{"problem_id", h.problem_id}, {"overlap", h.overlap}, {"language", h.language}});
        const auto where = where_of(identity_["files"], doc.file, static_cast<uint32_t>(doc.line));
        flagged_docs_.push_back({{"file", identity_["files"][doc.file]["path"]},
                                 {"line", doc.line},
                                 {"source", files_[doc.file].source},
                                 {"matches", matches}});
        if (report_.first_hits.size() < kFirstHits) {
            char buf[32];
            std::snprintf(buf, sizeof buf, "%.2f", hits[0].overlap);
            report_.first_hits.push_back(where + ": " + hits[0].problem_id +
                                         (hits[0].language == "en" ? " in English" : "") + " (" + buf + ")");
        }
    }

    // Tokenizes the kept documents (in parallel) and appends each with its index entry.
    void append(std::vector<RawDocument>& batch, const std::vector<std::size_t>& keep,
                const std::vector<std::vector<GuardHit>>& hits) {
        std::vector<std::string> texts;
        texts.reserve(keep.size());
        for (std::size_t i : keep) texts.push_back(std::move(batch[i].text));
        const auto ids = tokenizer_.encode_batch(texts, false, threads_);
        for (std::size_t k = 0; k < keep.size(); ++k) {
            const auto& d      = batch[keep[k]];
            const uint64_t len = ids[k].size() + (eos_ ? 1 : 0);
            if (len > UINT32_MAX) throw Error(where_of(identity_["files"], d.file, 0) + ": document too long");
            if (shard_.tokens > 0 && shard_.tokens + len > o_.shard_tokens) {
                close_shard();
                open_shard();
            }
            buffer_.assign(ids[k].begin(), ids[k].end());
            if (eos_) buffer_.push_back(static_cast<uint32_t>(*eos_));
            DocEntry e;
            e.offset = shard_.tokens;
            e.length = static_cast<uint32_t>(len);
            e.shard  = static_cast<uint16_t>(shards_.size());
            e.flags  = hits[keep[k]].empty() ? 0 : kDocFlagged;
            e.file   = d.file;
            e.line   = static_cast<uint32_t>(std::min<uint64_t>(d.line, UINT32_MAX));
            if (shards_.size() > UINT16_MAX) throw Error("token cache: more than 65535 shards; raise shard size");
            shard_.out->write(buffer_.data(), buffer_.size() * sizeof(uint32_t));
            index_.write(&e, sizeof e);
            shard_.tokens += len;
            report_.tokens += static_cast<int64_t>(len);
            report_.characters += count_code_points(texts[k]);
            ++report_.documents;
        }
    }

    void open_shard() {
        shard_.out    = std::make_unique<AtomicFileWriter>(dir_ / shard_name(shards_.size()));
        shard_.tokens = 0;
    }
    void close_shard() {
        shard_.out->commit();
        const std::string name = shard_name(shards_.size());
        shards_.push_back({{"file", name}, {"tokens", shard_.tokens}, {"xxh3", hash_file(dir_ / name)}});
        shard_.out.reset();
    }

    void write_guard_report() {
        nlohmann::json r     = {{"guard", identity_["guard"]},
                                {"documents_checked", checked_},
                                {"flagged", report_.flagged},
                                {"dropped", report_.dropped},
                                {"documents", flagged_docs_}};
        report_.guard_report = dir_ / kReport;
        write_file_atomic(report_.guard_report, dump_json(r, 2) + "\n");
    }

    [[noreturn]] void refuse() {
        shard_.out.reset();  // removes the temporary; no manifest is written
        std::string first;
        for (const auto& h : report_.first_hits) first += (first.empty() ? "" : "; ") + h;
        throw UsageError("contamination guard: " + std::to_string(report_.flagged) +
                         " documents contain evaluation questions (" + first +
                         "); report: " + report_.guard_report.string() +
                         " (eval_guard.action: drop trains without them, warn keeps them)");
    }

    void write_manifest(std::chrono::steady_clock::time_point start) {
        nlohmann::json hashes = nlohmann::json::array();
        for (const auto& f : files_) hashes.push_back(hash_file(f.path));
        report_.seconds         = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        nlohmann::json stats    = {{"documents", report_.documents},   {"tokens", report_.tokens},
                                   {"characters", report_.characters}, {"input_bytes", report_.input_bytes},
                                   {"flagged", report_.flagged},       {"dropped", report_.dropped},
                                   {"skipped", report_.skipped},       {"build_seconds", report_.seconds}};
        nlohmann::json manifest = {
            {"format", "medllm-token-cache"},
            {"version", kCacheFormatVersion},
            {"identity", identity_},
            {"hashes", hashes},
            {"shards", shards_},
            {"index", {{"file", kIndex}, {"documents", report_.documents}, {"xxh3", hash_file(dir_ / kIndex)}}},
            {"stats", stats}};
        write_file_atomic(dir_ / kManifest, dump_json(manifest, 1) + "\n");
    }

    const fs::path dir_;
    const CacheBuildOptions& o_;
    const std::vector<CorpusFile>& files_;
    const nlohmann::json& identity_;
    const text::Tokenizer& tokenizer_;
    const std::optional<text::TokenId> eos_;
    CacheBuildReport& report_;
    const int threads_;
    // format: lines files, checked as runs of lines before the main pass: (file, line) -> hits of flagged lines
    std::map<std::pair<uint32_t, uint64_t>, std::vector<GuardHit>> line_hits_;
    AtomicFileWriter index_;
    ShardWriter shard_;
    nlohmann::json shards_       = nlohmann::json::array();
    nlohmann::json flagged_docs_ = nlohmann::json::array();
    bool refusing_               = false;  // refuse + a hit: stop tokenizing, keep checking to report every hit
    int64_t checked_             = 0;
    std::vector<uint32_t> buffer_;
};

}  // namespace

CacheBuildReport build_token_cache(const fs::path& cache_dir, const CacheBuildOptions& o) {
    const auto start = std::chrono::steady_clock::now();
    auto files       = expand_sources(o.sources, o.base_dir);
    check_output_not_input(cache_dir / kManifest, paths_of(files));
    std::unique_ptr<text::Tokenizer> owned;
    if (!o.tokenizer) owned = text::Tokenizer::from_dir(o.tokenizer_dir);
    const text::Tokenizer& tokenizer = o.tokenizer ? *o.tokenizer : *owned;
    const auto eos                   = eos_to_append(tokenizer, o);
    const auto identity              = cache_identity(o, tokenizer, eos, files);

    // One builder at a time per folder; a waiter then finds the finished cache below and reuses it.
    std::optional<TokenCacheLock> lock;
    if (o.lock) lock.emplace(cache_dir);

    CacheBuildReport report;
    report.files = static_cast<int64_t>(files.size());
    if (o.force_rebuild) {
        report.rebuild_reason = "rebuild forced";
    } else {
        nlohmann::json hashes;
        report.rebuild_reason = stale_reason(cache_dir, identity, files, hashes);
        if (report.rebuild_reason.empty()) return reused_report(cache_dir, std::move(report), start);
    }
    clear_cache(cache_dir);

    DocumentReader reader(files, o.sources, o.on_invalid);
    CacheBuilder builder(cache_dir, o, files, identity, tokenizer, eos, report);
    const uint64_t total_bytes = total_input_bytes(identity);
    std::vector<RawDocument> batch, next;
    auto read_next = [&] {
        next.clear();
        return reader.next_batch(next, o.batch_bytes);
    };
    for (bool have = read_next(); have;) {
        std::swap(batch, next);
        auto pending = std::async(std::launch::async, read_next);  // read ahead while this batch is encoded
        builder.add_batch(batch);
        if (o.progress) o.progress(reader.bytes_read(), total_bytes);
        have = pending.get();
    }
    report.skipped     = reader.skipped();
    report.input_bytes = reader.bytes_read();
    builder.finish(start);
    return report;
}

// ---------------------------------------------------------------- reading

struct TokenCache::Mapping {
    void* data       = nullptr;
    std::size_t size = 0;
    Mapping(const fs::path& path, std::size_t expected) {
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw Error(path.string() + ": cannot open: " + std::strerror(errno));
        struct stat st {};
        if (::fstat(fd, &st) != 0 || static_cast<std::size_t>(st.st_size) != expected) {
            ::close(fd);
            throw Error(path.string() + ": has " + std::to_string(st.st_size) + " bytes, the manifest says " +
                        std::to_string(expected) + " (damaged cache; rebuild it)");
        }
        size = expected;
        if (size > 0) {
            data = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
            if (data == MAP_FAILED) {
                const int err = errno;
                ::close(fd);
                throw Error(path.string() + ": mmap failed: " + std::strerror(err));
            }
        }
        ::close(fd);
    }
    ~Mapping() {
        if (data && size) ::munmap(data, size);
    }
};

TokenCache::TokenCache(const fs::path& dir) : dir_(dir) {
    const auto mpath = dir / kManifest;
    if (!fs::exists(mpath))
        throw Error(dir.string() + ": no token cache (no " + kManifest + "; an interrupted build leaves none)");
    manifest_ = read_json_file(mpath);
    try {
        if (manifest_.at("version").get<int>() != kCacheFormatVersion)
            throw Error(mpath.string() + ": cache format version " + manifest_.at("version").dump() + ", expected " +
                        std::to_string(kCacheFormatVersion));
        for (const auto& s : manifest_.at("shards")) {
            const uint64_t t = s.at("tokens").get<uint64_t>();
            shards_.push_back(std::make_unique<Mapping>(dir / s.at("file").get<std::string>(), t * sizeof(uint32_t)));
            num_tokens_ += t;
        }
        num_docs_ = manifest_.at("index").at("documents").get<std::size_t>();
        index_    = std::make_unique<Mapping>(dir / manifest_.at("index").at("file").get<std::string>(),
                                           num_docs_ * sizeof(DocEntry));
        docs_     = static_cast<const DocEntry*>(index_->data);
        for (const auto& f : manifest_.at("identity").at("files")) {
            file_source_.push_back(f.at("source").get<uint32_t>());
            num_sources_ = std::max<std::size_t>(num_sources_, file_source_.back() + 1);
        }
        num_sources_ = std::max(num_sources_, manifest_.at("identity").at("settings").at("sources").size());
    } catch (const nlohmann::json::exception& e) {
        throw Error(mpath.string() + ": malformed manifest: " + e.what());
    }
    // The content must be what the build wrote: every shard and the index hash to the XXH3 the manifest recorded after
    // writing them, so a changed token (still a valid id, sizes right) is caught. Hashed from the mappings, which
    // the reads below then find in the page cache (the cost is in docs/cpt.md).
    auto verify = [&](const nlohmann::json& entry, const Mapping& map) {
        const std::string file = entry.at("file").get<std::string>(), want = entry.value("xxh3", "");
        if (want.empty())
            throw Error(dir.string() + ": token cache built without checksums (by an older medllm); rebuild it " +
                        "(medllm prepare-corpus, or delete the folder)");
        if (hash_bytes(std::string_view(static_cast<const char*>(map.data), map.size)) != want)
            throw Error((dir / file).string() + ": content does not match the manifest's checksum (damaged cache; " +
                        "rebuild it: medllm prepare-corpus rebuilds a damaged cache)");
    };
    for (std::size_t k = 0; k < shards_.size(); ++k) verify(manifest_.at("shards")[k], *shards_[k]);
    verify(manifest_.at("index"), *index_);
    for (std::size_t i = 0; i < num_docs_; ++i) {
        const auto& d = docs_[i];
        if (d.shard >= shards_.size() || d.offset + d.length > shards_[d.shard]->size / sizeof(uint32_t) ||
            d.file >= file_source_.size())
            throw Error(dir.string() + "/" + kIndex + ": document " + std::to_string(i) +
                        " points outside the shards (damaged cache; rebuild it)");
    }
    fingerprint_ = hash_bytes(manifest_.at("identity").dump() + manifest_.at("shards").dump());
}

TokenCache::~TokenCache() = default;

const uint32_t* TokenCache::tokens(std::size_t i) const {
    const auto& d = docs_[i];
    return static_cast<const uint32_t*>(shards_[d.shard]->data) + d.offset;
}

}  // namespace medllm::data

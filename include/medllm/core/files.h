// Checked file I/O shared by every command that writes or resumes something: atomic whole-file writes, a
// resumable JSONL record file with a run-identity sidecar, one JSON reader that names the file, content hashes for
// resume checks, and the guard that keeps an output from overwriting an input.
//
// Every write, flush, fsync and close is checked: a full disk or an I/O error throws medllm::Error naming the file
// and the reason ("out.jsonl: write failed: No space left on device"), never a silent short file.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace medllm {

// ---------------------------------------------------------------- reading

// The whole file as bytes. Throws Error "<path>: cannot open: <reason>" (also for a directory).
std::string read_text_file(const std::filesystem::path& path);

// Parses a JSON file. Throws Error naming the file, and the line and column of a syntax error.
nlohmann::json read_json_file(const std::filesystem::path& path);

// ---------------------------------------------------------------- writing

// Writes `path` through a temporary file in the same directory (`<path>.tmp`): data, fflush, fsync, close, rename,
// fsync of the directory. A crash or a full disk never leaves a cut file under the final name; on failure the
// temporary is removed and Error is thrown naming `path`. Parent directories are created.
class AtomicFileWriter {
public:
    explicit AtomicFileWriter(std::filesystem::path path);
    ~AtomicFileWriter();  // removes the temporary unless commit() succeeded
    AtomicFileWriter(const AtomicFileWriter&)            = delete;
    AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

    void write(const void* data, std::size_t size);
    void write(std::string_view text) { write(text.data(), text.size()); }
    void commit();  // flush + fsync + close + rename; throws on any failure

    const std::filesystem::path& path() const { return path_; }
    const std::filesystem::path& temp_path() const { return tmp_; }
    uint64_t bytes_written() const { return bytes_; }

private:
    std::filesystem::path path_, tmp_;
    std::FILE* f_   = nullptr;
    uint64_t bytes_ = 0;
};

// One-shot form of AtomicFileWriter.
void write_file_atomic(const std::filesystem::path& path, std::string_view content);

// JSON as text for files: dump() with invalid UTF-8 replaced (U+FFFD) instead of throwing.
std::string dump_json(const nlohmann::json& j, int indent = -1);

// Writes to standard output and checks it (stdout redirected to a full disk or /dev/full is an Error, not exit 0).
void write_stdout(std::string_view text);
// Flushes std::cout and stdout; throws Error "standard output: write failed: <reason>" when either has failed.
void check_stdout();

// ---------------------------------------------------------------- resumable JSONL

// A JSONL record file that a rerun resumes: one JSON object per line, each line flushed as it is appended, so a
// killed run loses at most the line it was writing. The run's identity (an object: input hashes, model identity,
// options that change the records) is kept in the sidecar `<path>.run.json`; reopening the file with a different
// identity is an Error naming the first key that differs, so records of different runs are never mixed.
//
//   JsonlRecordFile out(path, {{"input", hash}, {"model", ...}}, overwrite, "pass --overwrite to start over");
//   for (const auto& r : out.existing()) done.insert(r["index"]);
//   out.append(record);  ...  out.close();
class JsonlRecordFile {
public:
    // `identity` null: no identity check and no sidecar. `overwrite`: remove an existing file and sidecar first.
    // `hint` ends the mismatch error (how the user starts over). Opening reads and validates the existing records:
    // a complete line that is not a JSON object is an Error naming file and line; a cut last line (no newline, the
    // run was killed mid-write) is removed with a warning.
    JsonlRecordFile(std::filesystem::path path, nlohmann::json identity, bool overwrite = false,
                    std::string hint = "pass --overwrite to start over, or choose another output");
    ~JsonlRecordFile();
    JsonlRecordFile(const JsonlRecordFile&)            = delete;
    JsonlRecordFile& operator=(const JsonlRecordFile&) = delete;

    // The records that were in the file when it was opened (after repair), in file order, with their line numbers.
    const std::vector<nlohmann::json>& existing() const { return existing_; }
    const std::vector<std::size_t>& existing_lines() const { return existing_lines_; }
    bool repaired_cut_line() const { return repaired_; }

    void append(const nlohmann::json& record);  // one line + fflush, checked
    void sync();                                // fflush + fsync, checked (the records are on disk)
    void close();                               // fsync + close, checked (the destructor closes without throwing)

    // The records of a file another process owns, read without opening it for writing or repairing it: a damaged
    // line is an Error naming file and line; a cut last line (still being written) is left out. A missing file
    // has no records.
    static void read_records(const std::filesystem::path& path, std::vector<nlohmann::json>& records,
                             std::vector<std::size_t>& lines);

    const std::filesystem::path& path() const { return path_; }
    static std::filesystem::path sidecar_path(const std::filesystem::path& path);

private:
    void check_identity(const nlohmann::json& identity, const std::string& hint) const;
    void load_existing();

    std::filesystem::path path_;
    std::vector<nlohmann::json> existing_;
    std::vector<std::size_t> existing_lines_;
    bool repaired_ = false;
    std::FILE* f_  = nullptr;
};

// The first difference between two JSON values as "key: was X, now Y" (dotted keys), "" when equal.
std::string describe_json_difference(const nlohmann::json& before, const nlohmann::json& now);

// ---------------------------------------------------------------- identity

// XXH3-64 of bytes / of a file's contents (streamed), as 16 hex digits.
std::string hash_bytes(std::string_view data);
std::string hash_file(const std::filesystem::path& path);

// {"path": absolute path, "size": bytes, "mtime_ns": modification time} of an existing file, plus "xxh3" with
// `content_hash`. Throws Error naming the file when it cannot be read.
nlohmann::json file_identity(const std::filesystem::path& path, bool content_hash);

// A file's modification time as Unix time in nanoseconds (stat's st_mtim): the same number whatever standard
// library reads it (std::filesystem's file clock is libstdc++'s own epoch). Error naming the file.
int64_t unix_mtime_ns(const std::filesystem::path& path);

// Refuses an output that is the same file as one of the inputs (also through symlinks or hard links, or when the
// output does not exist yet but resolves to an input's path): UsageError naming both, before anything is written.
void check_output_not_input(const std::filesystem::path& output, const std::vector<std::filesystem::path>& inputs);

// ---------------------------------------------------------------- model folders

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

}  // namespace medllm

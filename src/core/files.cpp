// Checked file I/O: atomic writes, resumable JSONL, content hashes, and errors that name the file.
#include "medllm/core/files.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"

namespace medllm {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string reason() {
    return std::strerror(errno);
}

[[noreturn]] void fail_write(const fs::path& path) {
    throw Error(path.string() + ": write failed: " + reason());
}

// fsync of a directory makes a rename durable; filesystems that cannot sync directories are not an error.
void sync_directory(const fs::path& dir) {
    const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}

// Line and column (1-based) of byte offset `pos` in `text`.
std::pair<std::size_t, std::size_t> line_column(const std::string& text, std::size_t pos) {
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i < pos && i < text.size(); ++i) {
        if (text[i] == '\n') {
            ++line;
            col = 1;
        } else {
            ++col;
        }
    }
    return {line, col};
}

void close_checked(std::FILE*& f, const fs::path& path, bool sync) {
    std::FILE* file = f;
    f               = nullptr;
    bool ok         = std::fflush(file) == 0;
    if (ok && sync) ok = ::fsync(::fileno(file)) == 0 || errno == EINVAL || errno == EROFS;
    const int saved = errno;
    ok              = (std::fclose(file) == 0) && ok;
    if (!ok) {
        if (saved) errno = saved;
        fail_write(path);
    }
}

}  // namespace

// ---------------------------------------------------------------- reading

std::string read_text_file(const fs::path& path) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) throw Error(path.string() + ": cannot open: it is a directory");
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw Error(path.string() + ": cannot open: " + reason());
    std::string out;
    char buf[1 << 16];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
    const bool failed = std::ferror(f);
    std::fclose(f);
    if (failed) throw Error(path.string() + ": read failed: " + reason());
    return out;
}

json read_json_file(const fs::path& path) {
    const std::string text = read_text_file(path);
    try {
        return json::parse(text);
    } catch (const json::parse_error& e) {
        const auto [line, col] = line_column(text, e.byte == 0 ? 0 : e.byte - 1);
        std::string what       = e.what();
        // nlohmann's message: "[json.exception.parse_error.101] parse error at line 1, column 2: <detail>".
        const auto colon = what.find(": ");
        if (colon != std::string::npos) what = what.substr(colon + 2);
        throw Error(path.string() + ":" + std::to_string(line) + ":" + std::to_string(col) + ": invalid JSON (" + what +
                    ")");
    }
}

// ---------------------------------------------------------------- writing

AtomicFileWriter::AtomicFileWriter(fs::path path) : path_(std::move(path)), tmp_(path_.string() + ".tmp") {
    std::error_code ec;
    if (path_.has_parent_path()) fs::create_directories(path_.parent_path(), ec);
    if (ec) throw Error(path_.parent_path().string() + ": cannot create directory: " + ec.message());
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (!f_) throw Error(path_.string() + ": cannot create: " + reason());
}

AtomicFileWriter::~AtomicFileWriter() {
    if (f_) std::fclose(f_);
    if (!tmp_.empty()) {
        std::error_code ignored;
        fs::remove(tmp_, ignored);
    }
}

void AtomicFileWriter::write(const void* data, std::size_t size) {
    if (!f_) throw Error(path_.string() + ": write after commit");
    if (size && std::fwrite(data, 1, size, f_) != size) fail_write(path_);
    bytes_ += size;
}

void AtomicFileWriter::commit() {
    if (!f_) throw Error(path_.string() + ": committed twice");
    close_checked(f_, path_, /*sync=*/true);
    std::error_code ec;
    fs::rename(tmp_, path_, ec);
    if (ec) throw Error(path_.string() + ": cannot rename " + tmp_.filename().string() + ": " + ec.message());
    tmp_.clear();
    sync_directory(path_.parent_path());
}

void write_file_atomic(const fs::path& path, std::string_view content) {
    AtomicFileWriter out(path);
    out.write(content);
    out.commit();
}

std::string dump_json(const json& j, int indent) {
    return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

void write_stdout(std::string_view text) {
    if (!text.empty() && std::fwrite(text.data(), 1, text.size(), stdout) != text.size())
        throw Error(std::string("standard output: write failed: ") + reason());
}

void check_stdout() {
    errno = 0;
    std::cout.flush();
    const bool cout_failed = !std::cout;
    if (std::fflush(stdout) != 0 || std::ferror(stdout) || cout_failed)
        throw Error(std::string("standard output: write failed: ") +
                    (errno ? reason() : std::string("the stream reported an error")));
}

// ---------------------------------------------------------------- resumable JSONL

fs::path JsonlRecordFile::sidecar_path(const fs::path& path) {
    return fs::path(path.string() + ".run.json");
}

std::string describe_json_difference(const json& before, const json& now) {
    if (before == now) return "";
    if (before.is_object() && now.is_object()) {
        for (auto it = now.begin(); it != now.end(); ++it) {
            if (!before.contains(it.key())) return it.key() + ": not recorded before, now " + dump_json(it.value());
            const std::string inner = describe_json_difference(before[it.key()], it.value());
            if (!inner.empty()) return it.key() + (inner[0] == ':' ? "" : ".") + inner;
        }
        for (auto it = before.begin(); it != before.end(); ++it)
            if (!now.contains(it.key())) return it.key() + ": was " + dump_json(it.value()) + ", now not given";
    }
    std::string was = dump_json(before), is = dump_json(now);
    if (was.size() > 80) was = was.substr(0, 77) + "...";
    if (is.size() > 80) is = is.substr(0, 77) + "...";
    return ": was " + was + ", now " + is;
}

JsonlRecordFile::JsonlRecordFile(fs::path path, json identity, bool overwrite, std::string hint)
    : path_(std::move(path)) {
    const fs::path sidecar = sidecar_path(path_);
    std::error_code ec;
    if (fs::is_directory(path_, ec)) throw UsageError(path_.string() + ": is a directory, not a JSONL file");
    if (path_.has_parent_path()) fs::create_directories(path_.parent_path(), ec);
    // Opened (and locked) before anything is read or repaired, and kept: a second run on the same output would
    // interleave its records with this one's, or cut a line this one is writing as if it were a killed run's.
    const int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) throw Error(path_.string() + ": cannot open for writing: " + reason());
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
        ::close(fd);
        throw Error(path_.string() +
                    ": another process is writing it (a second run on the same output?); wait for it to finish or "
                    "choose another output");
    }  // other errors: a filesystem without flock, which goes on unlocked
    f_ = ::fdopen(fd, "ab");
    if (!f_) {
        ::close(fd);
        throw Error(path_.string() + ": cannot open for writing: " + reason());
    }
    try {
        if (overwrite) {
            if (::ftruncate(fd, 0) != 0) fail_write(path_);
            fs::remove(sidecar, ec);
        }
        const bool has_records = fs::file_size(path_, ec) > 0;
        if (!identity.is_null()) {
            if (has_records) {
                check_identity(identity, hint);
            } else {
                write_file_atomic(sidecar, dump_json(identity, 2) + "\n");
            }
        }
        if (has_records) load_existing();
    } catch (...) {
        std::fclose(f_);  // and the lock with it: the destructor does not run for a constructor that throws
        f_ = nullptr;
        throw;
    }
}

JsonlRecordFile::~JsonlRecordFile() {
    if (f_) std::fclose(f_);
}

void JsonlRecordFile::check_identity(const json& identity, const std::string& hint) const {
    const fs::path sidecar = sidecar_path(path_);
    std::error_code ec;
    if (!fs::exists(sidecar, ec))
        throw Error(path_.string() + ": has records but no run record " + sidecar.filename().string() +
                    ", so it cannot be resumed safely; " + hint);
    json before;
    try {
        before = read_json_file(sidecar);
    } catch (const Error& e) {
        throw Error(std::string(e.what()) + "; " + hint);
    }
    const std::string diff = describe_json_difference(before, identity);
    if (!diff.empty()) throw Error(path_.string() + ": was written by a different run (" + diff + "); " + hint);
}

namespace {

// Parses the complete lines of `content` (the records of `path`); returns the offset of a cut last line, or npos.
std::size_t parse_records(const fs::path& path, const std::string& content, std::vector<json>& records,
                          std::vector<std::size_t>& lines) {
    std::size_t pos = 0, line_no = 0;
    while (pos < content.size()) {
        const std::size_t nl = content.find('\n', pos);
        ++line_no;
        if (nl == std::string::npos) return pos;
        std::string_view line(content.data() + pos, nl - pos);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.find_first_not_of(" \t") != std::string_view::npos) {
            json j;
            try {
                j = json::parse(line);
            } catch (const json::exception& e) {
                throw Error(path.string() + ":" + std::to_string(line_no) + ": not a JSON record (" + e.what() +
                            "); the file is damaged");
            }
            if (!j.is_object())
                throw Error(path.string() + ":" + std::to_string(line_no) + ": not a JSON object; the file is damaged");
            records.push_back(std::move(j));
            lines.push_back(line_no);
        }
        pos = nl + 1;
    }
    return std::string::npos;
}

}  // namespace

void JsonlRecordFile::load_existing() {
    const std::string content = read_text_file(path_);
    const std::size_t cut     = parse_records(path_, content, existing_, existing_lines_);
    if (cut == std::string::npos) return;
    // Cut mid-write by a killed run.
    const std::size_t line_no = static_cast<std::size_t>(std::count(content.begin(), content.begin() + cut, '\n')) + 1;
    spdlog::warn("{}: removing a cut last line {} (the previous run stopped while writing it)", path_.string(),
                 line_no);
    std::error_code ec;
    fs::resize_file(path_, cut, ec);
    if (ec) throw Error(path_.string() + ": cannot remove the cut last line: " + ec.message());
    repaired_ = true;
}

void JsonlRecordFile::read_records(const fs::path& path, std::vector<json>& records, std::vector<std::size_t>& lines) {
    std::error_code ec;
    if (!fs::exists(path, ec)) return;
    parse_records(path, read_text_file(path), records, lines);
}

void JsonlRecordFile::append(const json& record) {
    if (!f_) throw Error(path_.string() + ": append after close");
    std::string line = dump_json(record);
    line.push_back('\n');
    if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0) fail_write(path_);
}

void JsonlRecordFile::sync() {
    if (!f_) throw Error(path_.string() + ": sync after close");
    if (std::fflush(f_) != 0 || (::fsync(::fileno(f_)) != 0 && errno != EINVAL && errno != EROFS)) fail_write(path_);
}

void JsonlRecordFile::close() {
    if (f_) close_checked(f_, path_, /*sync=*/true);
}

// ---------------------------------------------------------------- identity

namespace {
std::string hex64(uint64_t v) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    return buf;
}
}  // namespace

std::string hash_bytes(std::string_view data) {
    return hex64(XXH3_64bits(data.data(), data.size()));
}

std::string hash_file(const fs::path& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw Error(path.string() + ": cannot open: " + reason());
    XXH3_state_t* state = XXH3_createState();
    XXH3_64bits_reset(state);
    std::vector<char> buf(1 << 20);
    std::size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) XXH3_64bits_update(state, buf.data(), n);
    const bool failed  = std::ferror(f);
    const uint64_t sum = XXH3_64bits_digest(state);
    XXH3_freeState(state);
    std::fclose(f);
    if (failed) throw Error(path.string() + ": read failed: " + reason());
    return hex64(sum);
}

int64_t unix_mtime_ns(const fs::path& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw Error(path.string() + ": cannot read: " + std::strerror(errno));
    return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + static_cast<int64_t>(st.st_mtim.tv_nsec);
}

json file_identity(const fs::path& path, bool content_hash) {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) throw Error(path.string() + ": cannot read: " + ec.message());
    json j;
    j["path"]     = fs::absolute(path).lexically_normal().string();
    j["size"]     = size;
    j["mtime_ns"] = unix_mtime_ns(path);
    if (content_hash) j["xxh3"] = hash_file(path);
    return j;
}

void check_output_not_input(const fs::path& output, const std::vector<fs::path>& inputs) {
    std::error_code ec;
    const fs::path out_resolved = fs::weakly_canonical(output, ec);
    for (const auto& input : inputs) {
        if (input.empty()) continue;
        std::error_code e1;
        const bool same = fs::exists(output, e1) && fs::exists(input, e1) && fs::equivalent(output, input, e1);
        std::error_code e2;
        const fs::path in_resolved = fs::weakly_canonical(input, e2);
        if (same || (!ec && !e2 && out_resolved == in_resolved))
            throw UsageError("output " + output.string() + " is the input " + input.string() +
                             " (writing it would destroy the input); choose another output path");
    }
}

}  // namespace medllm

// `medllm tokenize`: reads lines, encodes or decodes them a batch at a time, writes JSONL, prints --stats.
#include "medllm/text/tokenize_command.h"

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>

#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/text/tokenizer.h"
#include "medllm/text/unicode.h"

namespace medllm::text {
namespace {

// Where the ids or texts go: standard output (every write checked, so a full or closed stdout stops the run), a
// file written through a temporary and renamed (a full disk never leaves a cut file under its name), or, for an
// existing device or pipe such as /dev/null, that file written in place. Errors name the file.
class Output {
public:
    explicit Output(const std::string& path) : path_(path) {
        if (path == "-") return;
        std::error_code ec;
        if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec)) {
            direct_ = std::fopen(path.c_str(), "wb");
            if (!direct_) throw Error(path + ": cannot open for writing: " + std::strerror(errno));
        } else {
            atomic_ = std::make_unique<AtomicFileWriter>(path);
        }
    }
    ~Output() {
        if (direct_) std::fclose(direct_);
    }
    Output(const Output&)            = delete;
    Output& operator=(const Output&) = delete;

    void write(std::string_view text) {
        if (atomic_) {
            atomic_->write(text);
        } else if (direct_) {
            if (std::fwrite(text.data(), 1, text.size(), direct_) != text.size()) fail();
        } else {
            write_stdout(text);
        }
    }
    // Flushes and closes (renames the file into place); throws when anything failed.
    void finish() {
        if (atomic_) {
            atomic_->commit();
        } else if (direct_) {
            std::FILE* f       = direct_;
            direct_            = nullptr;
            const bool flushed = std::fflush(f) == 0;
            if (std::fclose(f) != 0 || !flushed) fail();
        } else {
            check_stdout();
        }
    }

private:
    [[noreturn]] void fail() const { throw Error(path_ + ": write failed: " + std::strerror(errno)); }

    std::string path_;
    std::unique_ptr<AtomicFileWriter> atomic_;
    std::FILE* direct_ = nullptr;
};

std::size_t count_code_points(const std::string& s) {
    std::size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

nlohmann::json parse_json_line(const std::string& line, const std::string& where) {
    try {
        return nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
        throw Error(where + ": malformed JSON: " + e.what());
    }
}

std::vector<TokenId> parse_ids(const nlohmann::json& j, const std::string& where) {
    constexpr int64_t kMaxId  = std::numeric_limits<TokenId>::max();
    const nlohmann::json* ids = &j;
    if (j.is_object()) {
        if (!j.contains("ids")) throw Error(where + ": object has no \"ids\" field");
        ids = &j["ids"];
    }
    if (!ids->is_array()) throw Error(where + ": expected a JSON array of token ids");
    std::vector<TokenId> out;
    out.reserve(ids->size());
    for (const auto& v : *ids) {
        if (!v.is_number_integer()) throw Error(where + ": token id " + v.dump() + " is not an integer");
        // Negative ids used to be dropped silently and ids beyond 32 bits to wrap; HF refuses both.
        const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(kMaxId)
                                                     : v.get<int64_t>() >= 0 && v.get<int64_t>() <= kMaxId;
        if (!in_range)
            throw Error(where + ": token id " + v.dump() + " is out of range (ids are 0 to " + std::to_string(kMaxId) +
                        ")");
        out.push_back(static_cast<TokenId>(v.get<int64_t>()));
    }
    return out;
}

// An output that is the input, the model folder or one of its tokenizer files would destroy it: refused before
// anything is opened.
void check_output(const TokenizeConfig& opt) {
    if (opt.output == "-") return;
    std::vector<std::filesystem::path> inputs = {opt.model};
    if (opt.input != "-") inputs.push_back(opt.input);
    for (const auto& name : kModelSideFiles) inputs.push_back(std::filesystem::path(opt.model) / name);
    check_output_not_input(opt.output, inputs);
}

struct Stats {
    std::size_t documents = 0, tokens = 0, bytes = 0, chars = 0;
    double seconds = 0;  // encoding or decoding only
};

void print_stats(const Stats& s) {
    const double mb = static_cast<double>(s.bytes) / 1e6;
    std::fprintf(stderr,
                 "documents %zu\ntokens %zu\ncharacters %zu\nbytes %zu\ntokens_per_char %.4f\n"
                 "seconds %.4f\nMB_per_s %.2f\ntokens_per_s %.0f\n",
                 s.documents, s.tokens, s.chars, s.bytes, s.chars ? static_cast<double>(s.tokens) / s.chars : 0.0,
                 s.seconds, s.seconds > 0 ? mb / s.seconds : 0.0, s.seconds > 0 ? s.tokens / s.seconds : 0.0);
}

// The input's lines in batches of opt.batch, each encoded (in parallel) or decoded and written in input order.
class Batches {
public:
    Batches(const TokenizeConfig& opt, const Tokenizer& tokenizer, Output& out, std::string input_name)
        : opt_(opt), tokenizer_(tokenizer), out_(out), input_name_(std::move(input_name)) {}

    // The next input line: the document to encode (with --field, that field of a JSON object) or ids to decode.
    void add_line(std::string line) {
        ++line_no_;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (!opt_.decode && !opt_.field.empty()) {
            line = field_of(line);
        } else if (opt_.decode && line.empty()) {
            throw Error(input_name_ + ":" + std::to_string(line_no_) + ": empty line where token ids were expected");
        }
        batch_.push_back(std::move(line));
        if (batch_.size() >= opt_.batch) flush();
    }

    void flush() {
        if (batch_.empty()) return;
        if (opt_.decode)
            decode_batch();
        else
            encode_batch();
        stats_.documents += batch_.size();
        batch_.clear();
    }

    const Stats& stats() const { return stats_; }

private:
    std::string field_of(const std::string& line) const {
        const std::string where = input_name_ + ":" + std::to_string(line_no_);
        if (line.empty()) throw Error(where + ": empty line where a JSON object was expected");
        const nlohmann::json j = parse_json_line(line, where);
        if (!j.is_object() || !j.contains(opt_.field) || !j[opt_.field].is_string())
            throw Error(where + ": no string field \"" + opt_.field + "\"");
        return j[opt_.field].get<std::string>();
    }

    void decode_batch() {
        const auto start = std::chrono::steady_clock::now();
        std::vector<std::string> texts;
        texts.reserve(batch_.size());
        const std::size_t first_line = line_no_ - batch_.size() + 1;
        for (std::size_t i = 0; i < batch_.size(); ++i) {
            const std::string where = input_name_ + ":" + std::to_string(first_line + i);
            const auto ids          = parse_ids(parse_json_line(batch_[i], where), where);
            stats_.tokens += ids.size();
            texts.push_back(tokenizer_.decode(ids, opt_.skip_special_tokens));
        }
        stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        for (const auto& t : texts) {
            stats_.bytes += t.size();
            stats_.chars += count_code_points(t);
            buffer_.clear();
            buffer_ += "{\"text\":";
            buffer_ += nlohmann::json(t).dump();
            buffer_ += "}\n";
            out_.write(buffer_);
        }
    }

    void encode_batch() {
        const auto start   = std::chrono::steady_clock::now();
        const auto encoded = tokenizer_.encode_batch(batch_, opt_.add_special_tokens, opt_.jobs);
        stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        for (std::size_t i = 0; i < batch_.size(); ++i) {
            stats_.bytes += batch_[i].size();
            if (opt_.stats) stats_.chars += count_code_points(to_valid_utf8(batch_[i]));
            stats_.tokens += encoded[i].size();
            buffer_.assign("{\"ids\":[");
            for (std::size_t k = 0; k < encoded[i].size(); ++k) {
                if (k) buffer_ += ',';
                buffer_ += std::to_string(encoded[i][k]);
            }
            buffer_ += "]}\n";
            out_.write(buffer_);
        }
    }

    const TokenizeConfig& opt_;
    const Tokenizer& tokenizer_;
    Output& out_;
    const std::string input_name_;
    std::size_t line_no_ = 0;
    std::vector<std::string> batch_;
    std::string buffer_;
    Stats stats_;
};

}  // namespace

void run_tokenize(const TokenizeConfig& opt) {
    if (opt.decode && !opt.field.empty()) throw UsageError("--field applies to encoding, not to --decode");
    check_output(opt);
    const auto tokenizer = Tokenizer::from_dir(opt.model);

    std::ifstream file;
    std::istream* in             = &std::cin;
    const std::string input_name = opt.input == "-" ? std::string("<stdin>") : opt.input;
    if (opt.input != "-") {
        file.open(opt.input, std::ios::binary);
        if (!file) throw Error("cannot open input " + opt.input);
        in = &file;
    }
    Output out(opt.output);
    std::ios::sync_with_stdio(false);  // fast std::cin; output goes through C stdio (write_stdout)

    Batches batches(opt, *tokenizer, out, input_name);
    for (std::string line; std::getline(*in, line);) batches.add_line(std::move(line));
    if (in->bad()) throw Error("error reading " + input_name);
    batches.flush();
    out.finish();
    if (opt.stats) print_stats(batches.stats());
}

}  // namespace medllm::text

// `medllm tokenize`: encode text to ids (JSONL) or decode ids back to text, with a model's tokenizer.
//
//   medllm tokenize --model DIR [-i FILE] [-o FILE]            one document per input line -> {"ids": [...]}
//   medllm tokenize --model DIR --field text -i docs.jsonl     JSONL input, encode the "text" field
//   medllm tokenize --model DIR --decode -i ids.jsonl          [..] or {"ids": [..]} per line -> {"text": "..."}
//   medllm tokenize --model DIR --stats -o /dev/null           + documents, tokens, tokens/char, throughput
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/io/model_files.h"
#include "medllm/text/tokenizer.h"
#include "medllm/text/unicode.h"

namespace medllm::cli {
namespace {

struct TokenizeOptions {
    std::string model;
    std::string input  = "-";
    std::string output = "-";
    std::string field;
    bool decode              = false;
    bool stats               = false;
    bool add_special_tokens  = false;
    bool skip_special_tokens = false;
    int jobs                 = 0;
    std::size_t batch        = 8192;
};

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

std::vector<text::TokenId> parse_ids(const nlohmann::json& j, const std::string& where) {
    constexpr int64_t kMaxId  = std::numeric_limits<text::TokenId>::max();
    const nlohmann::json* ids = &j;
    if (j.is_object()) {
        if (!j.contains("ids")) throw Error(where + ": object has no \"ids\" field");
        ids = &j["ids"];
    }
    if (!ids->is_array()) throw Error(where + ": expected a JSON array of token ids");
    std::vector<text::TokenId> out;
    out.reserve(ids->size());
    for (const auto& v : *ids) {
        if (!v.is_number_integer()) throw Error(where + ": token id " + v.dump() + " is not an integer");
        // Negative ids used to be dropped silently and ids beyond 32 bits to wrap; HF refuses both.
        const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(kMaxId)
                                                     : v.get<int64_t>() >= 0 && v.get<int64_t>() <= kMaxId;
        if (!in_range)
            throw Error(where + ": token id " + v.dump() + " is out of range (ids are 0 to " + std::to_string(kMaxId) +
                        ")");
        out.push_back(static_cast<text::TokenId>(v.get<int64_t>()));
    }
    return out;
}

void run_tokenize(const TokenizeOptions& opt) {
    // Before anything is opened: an output that is the input (or a tokenizer file) would destroy it.
    if (opt.output != "-") {
        std::vector<std::filesystem::path> inputs = {opt.model};
        if (opt.input != "-") inputs.push_back(opt.input);
        for (const auto& name : io::kModelSideFiles) inputs.push_back(std::filesystem::path(opt.model) / name);
        check_output_not_input(opt.output, inputs);
    }
    const auto tokenizer = text::Tokenizer::from_dir(opt.model);

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

    std::size_t documents = 0, tokens = 0, bytes = 0, chars = 0, line_no = 0;
    double seconds = 0;
    std::vector<std::string> batch;
    std::string buffer;

    auto flush = [&] {
        if (batch.empty()) return;
        const auto start = std::chrono::steady_clock::now();
        if (opt.decode) {
            std::vector<std::string> texts;
            texts.reserve(batch.size());
            const std::size_t first_line = line_no - batch.size() + 1;
            for (std::size_t i = 0; i < batch.size(); ++i) {
                const std::string where = input_name + ":" + std::to_string(first_line + i);
                nlohmann::json j;
                try {
                    j = nlohmann::json::parse(batch[i]);
                } catch (const nlohmann::json::exception& e) {
                    throw Error(where + ": malformed JSON: " + e.what());
                }
                const auto ids = parse_ids(j, where);
                tokens += ids.size();
                texts.push_back(tokenizer->decode(ids, opt.skip_special_tokens));
            }
            seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            for (const auto& t : texts) {
                bytes += t.size();
                chars += count_code_points(t);
                buffer.clear();
                buffer += "{\"text\":";
                buffer += nlohmann::json(t).dump();
                buffer += "}\n";
                out.write(buffer);
            }
        } else {
            const auto encoded = tokenizer->encode_batch(batch, opt.add_special_tokens, opt.jobs);
            seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            for (std::size_t i = 0; i < batch.size(); ++i) {
                bytes += batch[i].size();
                if (opt.stats) chars += count_code_points(text::to_valid_utf8(batch[i]));
                tokens += encoded[i].size();
                buffer.assign("{\"ids\":[");
                for (std::size_t k = 0; k < encoded[i].size(); ++k) {
                    if (k) buffer += ',';
                    buffer += std::to_string(encoded[i][k]);
                }
                buffer += "]}\n";
                out.write(buffer);
            }
        }
        documents += batch.size();
        batch.clear();
    };

    for (std::string line; std::getline(*in, line);) {
        ++line_no;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (!opt.decode && !opt.field.empty()) {
            const std::string where = input_name + ":" + std::to_string(line_no);
            if (line.empty()) throw Error(where + ": empty line where a JSON object was expected");
            nlohmann::json j;
            try {
                j = nlohmann::json::parse(line);
            } catch (const nlohmann::json::exception& e) {
                throw Error(where + ": malformed JSON: " + e.what());
            }
            if (!j.is_object() || !j.contains(opt.field) || !j[opt.field].is_string())
                throw Error(where + ": no string field \"" + opt.field + "\"");
            line = j[opt.field].get<std::string>();
        } else if (opt.decode && line.empty()) {
            throw Error(input_name + ":" + std::to_string(line_no) + ": empty line where token ids were expected");
        }
        batch.push_back(std::move(line));
        if (batch.size() >= opt.batch) flush();
    }
    if (in->bad()) throw Error("error reading " + input_name);
    flush();
    out.finish();

    if (opt.stats) {
        const double mb = static_cast<double>(bytes) / 1e6;
        std::fprintf(stderr,
                     "documents %zu\ntokens %zu\ncharacters %zu\nbytes %zu\ntokens_per_char %.4f\n"
                     "seconds %.4f\nMB_per_s %.2f\ntokens_per_s %.0f\n",
                     documents, tokens, chars, bytes, chars ? static_cast<double>(tokens) / chars : 0.0, seconds,
                     seconds > 0 ? mb / seconds : 0.0, seconds > 0 ? tokens / seconds : 0.0);
    }
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
    auto opt  = std::make_shared<TokenizeOptions>();
    auto* cmd = app.add_subcommand("tokenize", "Encode text to token ids (JSONL) or decode ids back to text");
    cmd->add_option("--model,-m", opt->model,
                    "Model or tokenizer directory (tokenizer.json, vocab.json + merges.txt, or tokenizer.model)")
        ->required()
        ->check(CLI::ExistingDirectory);
    cmd->add_option("--input,-i", opt->input, "Input file, '-' for stdin: one document per line")
        ->capture_default_str();
    cmd->add_option("--output,-o", opt->output, "Output JSONL file, '-' for stdout")->capture_default_str();
    cmd->add_option("--field", opt->field, "Read JSONL input and encode this string field of each object");
    cmd->add_flag("--decode", opt->decode, "Decode: each line is [ids] or {\"ids\": [...]}; writes {\"text\": ...}");
    cmd->add_flag("--stats", opt->stats, "Print documents, tokens, tokens per character and throughput to stderr");
    cmd->add_flag("--add-special-tokens", opt->add_special_tokens,
                  "Add BOS/EOS where the tokenizer config asks for them (Qwen2.5 adds none)");
    cmd->add_flag("--skip-special-tokens", opt->skip_special_tokens, "Decode: drop special tokens");
    cmd->add_option("--jobs,-j", opt->jobs, "Encoding threads (0 = all cores)")
        ->capture_default_str()
        ->check(integer_in(0, 1024));
    cmd->add_option("--batch", opt->batch, "Documents encoded per parallel batch")
        ->capture_default_str()
        ->check(integer_in(1, int64_t{1} << 24));
    cmd->callback([opt] {
        if (opt->decode && !opt->field.empty()) throw UsageError("--field applies to encoding, not to --decode");
        run_tokenize(*opt);
    });
}

}  // namespace medllm::cli

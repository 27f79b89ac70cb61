// Choosing and loading the tokenizer a model folder holds.
#include "medllm/text/tokenizer.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/text/bpe.h"
#include "medllm/text/sentencepiece.h"
#include "medllm/text/unicode.h"

namespace medllm::text {
namespace fs = std::filesystem;

namespace {

// tokenizer_config.json writes special tokens as a string, {"content": ...}, or null.
std::optional<std::string> token_string(const nlohmann::json& config, const char* key) {
    if (!config.contains(key)) return std::nullopt;
    const auto& v = config[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
    return std::nullopt;
}

// Added tokens for a vocab.json + merges.txt directory: tokenizer_config.json `added_tokens_decoder` (with flags),
// else added_tokens.json ({content: id}); list-form files (`added_tokens*.json` holding [{id, content, special}])
// are accepted too. Later sources do not override ids already known.
std::vector<AddedToken> load_added_tokens(const fs::path& dir, const nlohmann::json& config) {
    std::vector<AddedToken> added;
    auto known = [&](TokenId id) {
        return std::any_of(added.begin(), added.end(), [&](const AddedToken& t) { return t.id == id; });
    };
    const fs::path config_path = dir / "tokenizer_config.json";
    if (config.contains("added_tokens_decoder") && config["added_tokens_decoder"].is_object()) {
        for (auto it = config["added_tokens_decoder"].begin(); it != config["added_tokens_decoder"].end(); ++it) {
            AddedToken t;
            try {
                t.id = static_cast<TokenId>(std::stol(it.key()));
            } catch (const std::exception&) {
                throw Error(config_path.string() + ": added_tokens_decoder key '" + it.key() + "' is not an id");
            }
            const auto& v = it.value();
            if (!v.is_object() || !v.contains("content") || !v["content"].is_string())
                throw Error(config_path.string() + ": added_tokens_decoder." + it.key() + " lacks a string content");
            t.content     = v["content"].get<std::string>();
            t.special     = v.value("special", false);
            t.lstrip      = v.value("lstrip", false);
            t.rstrip      = v.value("rstrip", false);
            t.single_word = v.value("single_word", false);
            t.normalized  = v.value("normalized", false);
            added.push_back(std::move(t));
        }
    }
    std::vector<std::string> specials;  // for dict-form files, which carry no flag
    if (config.contains("additional_special_tokens") && config["additional_special_tokens"].is_array())
        for (const auto& s : config["additional_special_tokens"])
            if (s.is_string()) specials.push_back(s.get<std::string>());
    for (const char* key : {"bos_token", "eos_token", "pad_token", "unk_token"})
        if (auto s = token_string(config, key)) specials.push_back(*s);

    std::vector<fs::path> files;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        const std::string name = entry.path().filename().string();
        if (name.rfind("added_tokens", 0) == 0 && entry.path().extension() == ".json") files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& path : files) {
        const nlohmann::json j = read_json_file(path);
        try {
            if (j.is_object()) {
                for (auto it = j.begin(); it != j.end(); ++it) {
                    const TokenId id = it.value().get<TokenId>();
                    if (known(id)) continue;
                    AddedToken t;
                    t.id      = id;
                    t.content = it.key();
                    t.special = std::find(specials.begin(), specials.end(), t.content) != specials.end();
                    added.push_back(std::move(t));
                }
            } else if (j.is_array()) {
                for (const auto& v : j) {
                    const TokenId id = v.at("id").get<TokenId>();
                    if (known(id)) continue;
                    AddedToken t;
                    t.id          = id;
                    t.content     = v.at("content").get<std::string>();
                    t.special     = v.value("special", false);
                    t.lstrip      = v.value("lstrip", false);
                    t.rstrip      = v.value("rstrip", false);
                    t.single_word = v.value("single_word", false);
                    t.normalized  = v.value("normalized", false);
                    added.push_back(std::move(t));
                }
            } else {
                throw Error(path.string() + ": expected {content: id} or a list of {id, content, special}");
            }
        } catch (const nlohmann::json::exception& e) {
            throw Error(path.string() + ": unexpected structure: " + e.what());
        }
    }
    return added;
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_dir(const fs::path& dir) {
    if (!fs::is_directory(dir)) throw Error("tokenizer directory " + dir.string() + " does not exist");
    nlohmann::json config = nlohmann::json::object();
    if (fs::exists(dir / "tokenizer_config.json")) {
        config = read_json_file(dir / "tokenizer_config.json");
        if (!config.is_object()) throw Error((dir / "tokenizer_config.json").string() + ": expected a JSON object");
    }
    auto flag = [&](const char* key, bool fallback) {
        return config.contains(key) && config[key].is_boolean() ? config[key].get<bool>() : fallback;
    };
    std::unique_ptr<Tokenizer> tokenizer;
    bool has_json      = fs::exists(dir / "tokenizer.json");
    const bool has_bpe = fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt");
    const bool has_sp  = fs::exists(dir / "tokenizer.model");
    if (has_json && has_sp) {
        // Llama-family repos ship both; their tokenizer.json is not byte-level BPE, so SentencePiece reads them.
        const nlohmann::json j = read_json_file(dir / "tokenizer.json");
        const std::string dump = j.value("pre_tokenizer", nlohmann::json()).dump();
        const bool byte_level  = j.contains("model") && j["model"].value("type", "") == "BPE" &&
                                dump.find("\"ByteLevel\"") != std::string::npos;
        if (!byte_level) has_json = false;
    }
    if (has_json || has_bpe) {
        BpeOptions options;
        options.add_bos   = flag("add_bos_token", false);
        options.add_eos   = flag("add_eos_token", false);
        options.bos_token = token_string(config, "bos_token");
        options.eos_token = token_string(config, "eos_token");
        options.pad_token = token_string(config, "pad_token");
        if (has_json) {
            tokenizer = BpeTokenizer::from_tokenizer_json(dir / "tokenizer.json", options);
        } else {
            tokenizer = BpeTokenizer::from_vocab_merges(dir / "vocab.json", dir / "merges.txt",
                                                        load_added_tokens(dir, config), options);
        }
    } else if (has_sp) {
        // Llama-family tokenizers add BOS by default.
        tokenizer = std::make_unique<SentencePieceTokenizer>(dir / "tokenizer.model", flag("add_bos_token", true),
                                                             flag("add_eos_token", false));
    } else {
        throw Error("no tokenizer in " + dir.string() +
                    " (expected tokenizer.json, vocab.json + merges.txt, or tokenizer.model)");
    }
    return tokenizer;
}

std::vector<std::vector<TokenId>> Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                                          bool add_special_tokens, int num_threads) const {
    std::vector<std::vector<TokenId>> out(texts.size());
    int threads = num_threads > 0 ? num_threads : static_cast<int>(std::thread::hardware_concurrency());
    threads     = std::max(1, std::min<int>(threads, static_cast<int>(texts.size())));
    if (threads <= 1) {
        for (std::size_t i = 0; i < texts.size(); ++i) out[i] = encode(texts[i], add_special_tokens);
        return out;
    }
    // Small chunks handed out dynamically keep threads busy when document lengths vary.
    constexpr std::size_t kChunk = 16;
    std::atomic<std::size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto worker = [&] {
        try {
            for (;;) {
                const std::size_t begin = next.fetch_add(kChunk);
                if (begin >= texts.size()) break;
                const std::size_t end = std::min(texts.size(), begin + kChunk);
                for (std::size_t i = begin; i < end; ++i) out[i] = encode(texts[i], add_special_tokens);
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) error = std::current_exception();
            next = texts.size();
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(threads - 1));
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
    worker();
    for (auto& t : pool) t.join();
    if (error) std::rethrow_exception(error);
    return out;
}

std::string Tokenizer::decode(const std::vector<TokenId>& ids, bool skip_special_tokens) const {
    std::string bytes;
    bool first = true;
    for (TokenId id : ids) {
        if (skip_special_tokens && is_special(id)) continue;
        bytes += token_bytes(id, first);
        first = false;
    }
    return to_valid_utf8(bytes);
}

StreamDecoder Tokenizer::stream_decoder(bool skip_special_tokens) const {
    return StreamDecoder(*this, skip_special_tokens);
}

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
    return render_chatml(messages, add_generation_prompt, default_system_prompt_);
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(&tokenizer), skip_special_(skip_special_tokens) {}

std::string StreamDecoder::push(TokenId id) {
    if (skip_special_ && tokenizer_->is_special(id)) return {};
    pending_ += tokenizer_->token_bytes(id, first_);
    first_                = false;
    const std::size_t end = utf8_settled_prefix(pending_);
    if (end == 0) return {};
    std::string out = to_valid_utf8(std::string_view(pending_).substr(0, end));
    pending_.erase(0, end);
    return out;
}

std::string StreamDecoder::finish() {
    std::string out = to_valid_utf8(pending_);
    pending_.clear();
    return out;
}

std::string render_chatml(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                          const std::string& default_system_prompt) {
    // Mirrors the Qwen2.5-Instruct template without tools: the first system message (or the default) forms the
    // header; later system messages are ordinary turns; consecutive tool messages share one user turn.
    std::string out;
    const bool leading_system = !messages.empty() && messages.front().role == "system";
    out += "<|im_start|>system\n";
    out += leading_system ? messages.front().content : default_system_prompt;
    out += "<|im_end|>\n";
    for (std::size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (i == 0 && leading_system) continue;
        if (m.role == "user" || m.role == "system" || m.role == "assistant") {
            out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
        } else if (m.role == "tool") {
            if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
            out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
            if (i + 1 == messages.size() || messages[i + 1].role != "tool") out += "<|im_end|>\n";
        } else {
            // The Jinja template silently drops unknown roles; refusing is safer than losing a turn.
            throw UsageError("chat message " + std::to_string(i) + " has unknown role '" + m.role +
                             "' (expected system, user, assistant or tool)");
        }
    }
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
}

}  // namespace medllm::text

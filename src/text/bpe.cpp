// The byte-level BPE tokenizer of Qwen2/Qwen2.5 vocabularies.
#include "medllm/text/bpe.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>

#include <utf8proc.h>
#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/text/unicode.h"

namespace medllm::text {
namespace {

std::string encode_utf8(std::uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
        s += static_cast<char>(cp);
    } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        s += static_cast<char>(0xF0 | (cp >> 18));
        s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
}

// Ids beyond the number of tokens by more than this are refused (the id tables are dense).
constexpr std::size_t kMaxIdGap = std::size_t{1} << 20;

// A token id from JSON: an integer in [0, 2^31); a float (3.5), a negative or a 64-bit value would otherwise be
// truncated or wrapped into another token's id.
TokenId checked_id(const nlohmann::json& v, const std::string& where, const std::string& token) {
    const bool ok = v.is_number_integer() &&
                    (v.is_number_unsigned() ? v.get<std::uint64_t>() <= std::uint64_t{0x7fffffff}
                                            : v.get<std::int64_t>() >= 0 && v.get<std::int64_t>() <= 0x7fffffff);
    if (!ok)
        throw Error(where + ": id of token '" + token + "' must be an integer in [0, 2147483647], got " + v.dump());
    return static_cast<TokenId>(v.get<std::int64_t>());
}

struct ByteSymbols {
    std::string symbol[256];
    std::unordered_map<std::uint32_t, unsigned char> code_point_to_byte;
    ByteSymbols() {
        int next = 0;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            const std::uint32_t cp =
                printable ? static_cast<std::uint32_t>(b) : 256u + static_cast<std::uint32_t>(next++);
            symbol[b]              = encode_utf8(cp);
            code_point_to_byte[cp] = static_cast<unsigned char>(b);
        }
    }
};

const ByteSymbols& byte_symbols() {
    static const ByteSymbols table;
    return table;
}

// HF ByteLevel decoder, per token: map every character back to its byte; a token with any character outside the
// 256 byte symbols (e.g. an added token with non-Latin-1 text) contributes its own UTF-8 bytes unchanged.
std::string byte_level_decode(const std::string& token) {
    const auto& table = byte_symbols().code_point_to_byte;
    std::string out;
    out.reserve(token.size());
    const auto* s = reinterpret_cast<const unsigned char*>(token.data());
    std::size_t i = 0;
    while (i < token.size()) {
        std::uint32_t cp;
        int len;
        const unsigned char b = s[i];
        if (b < 0x80) {
            cp = b, len = 1;
        } else if (b < 0xE0 && i + 1 < token.size()) {
            cp = ((b & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu), len = 2;
        } else {
            return token;  // three-byte and longer characters are never byte symbols
        }
        auto it = table.find(cp);
        if (it == table.end()) return token;
        out += static_cast<char>(it->second);
        i += static_cast<std::size_t>(len);
    }
    return out;
}

bool is_white_space_cp(std::uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Code points of valid UTF-8, for the rarely used lstrip/rstrip/single_word checks.
std::vector<std::pair<std::size_t, std::uint32_t>> code_points(std::string_view s) {
    std::vector<std::pair<std::size_t, std::uint32_t>> out;
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    std::size_t i = 0;
    while (i < s.size()) {
        const unsigned char b = p[i];
        int len               = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
        if (i + static_cast<std::size_t>(len) > s.size()) len = static_cast<int>(s.size() - i);
        std::uint32_t cp = len == 1 ? b : (b & (0x7Fu >> len));
        for (int k = 1; k < len; ++k) cp = (cp << 6) | (p[i + k] & 0x3Fu);
        out.emplace_back(i, cp);
        i += static_cast<std::size_t>(len);
    }
    return out;
}

bool is_word_cp(std::uint32_t cp) {
    // HF checks single_word boundaries with the Rust regex `\w`: Alphabetic, marks, decimal digits, connector
    // punctuation and the joiners. Other_Alphabetic symbols (circled/squared letters) are listed explicitly.
    if (cp == 0x200C || cp == 0x200D || (cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F149) ||
        (cp >= 0x1F150 && cp <= 0x1F169) || (cp >= 0x1F170 && cp <= 0x1F189))
        return true;
    switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
        case UTF8PROC_CATEGORY_LU:
        case UTF8PROC_CATEGORY_LL:
        case UTF8PROC_CATEGORY_LT:
        case UTF8PROC_CATEGORY_LM:
        case UTF8PROC_CATEGORY_LO:
        case UTF8PROC_CATEGORY_NL:
        case UTF8PROC_CATEGORY_MN:
        case UTF8PROC_CATEGORY_MC:
        case UTF8PROC_CATEGORY_ME:
        case UTF8PROC_CATEGORY_ND:
        case UTF8PROC_CATEGORY_PC:
            return true;
        default:
            return false;
    }
}

}  // namespace

const std::string& byte_symbol(unsigned char byte) {
    return byte_symbols().symbol[byte];
}

// ------------------------------------------------------------------------------------------------ merge table
// Open addressing over (left id, right id) -> (rank, merged id): the BPE inner loop's only lookup.
struct BpeTokenizer::MergeTable {
    struct Slot {
        std::uint64_t key = kEmpty;
        std::int32_t rank = 0;
        TokenId merged    = 0;
    };
    static constexpr std::uint64_t kEmpty = ~0ull;
    std::vector<Slot> slots;
    std::uint64_t mask = 0;
    int shift          = 0;

    explicit MergeTable(std::size_t count) {
        std::size_t cap = 16;
        int bits        = 4;
        while (cap < count * 2) cap <<= 1, ++bits;
        slots.assign(cap, Slot{});
        mask  = cap - 1;
        shift = 64 - bits;
    }
    static std::uint64_t key_of(TokenId a, TokenId b) {
        return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
    }
    std::size_t home(std::uint64_t key) const {
        return static_cast<std::size_t>((key * 0x9E3779B97F4A7C15ull) >> shift);
    }
    // Later duplicates overwrite earlier ones, as HF's HashMap collect does.
    void put(TokenId a, TokenId b, std::int32_t rank, TokenId merged) {
        const std::uint64_t key = key_of(a, b);
        for (std::size_t i = home(key);; i = (i + 1) & mask) {
            if (slots[i].key == kEmpty || slots[i].key == key) {
                slots[i] = Slot{key, rank, merged};
                return;
            }
        }
    }
    const Slot* find(TokenId a, TokenId b) const {
        const std::uint64_t key = key_of(a, b);
        for (std::size_t i = home(key);; i = (i + 1) & mask) {
            if (slots[i].key == key) return &slots[i];
            if (slots[i].key == kEmpty) return nullptr;
        }
    }
};

// ------------------------------------------------------------------------------------------------ word cache
// pre-token bytes -> ids. Open addressing with keys and values in flat arenas; cleared when full, which only
// costs speed (the cache never changes results).
class WordCache {
public:
    bool find(std::string_view word, std::size_t hash, std::vector<TokenId>& out) const {
        for (std::size_t i = hash & mask_;; i = (i + 1) & mask_) {
            const Entry& e = entries_[i];
            if (e.key_len == kEmptyLen) return false;
            if (e.hash == hash && e.key_len == word.size() &&
                std::memcmp(keys_.data() + e.key_off, word.data(), word.size()) == 0) {
                out.insert(out.end(), ids_.begin() + e.ids_off, ids_.begin() + e.ids_off + e.ids_len);
                return true;
            }
        }
    }
    void insert(std::string_view word, std::size_t hash, const TokenId* ids, std::size_t count) {
        if (word.size() > kMaxWordBytes) return;
        if (used_ + 1 > entries_.size() / 2 || keys_.size() > kMaxArena) clear();
        std::size_t i = hash & mask_;
        while (entries_[i].key_len != kEmptyLen) i = (i + 1) & mask_;
        entries_[i] = Entry{hash, keys_.size(), static_cast<std::uint32_t>(word.size()), ids_.size(),
                            static_cast<std::uint32_t>(count)};
        keys_.insert(keys_.end(), word.begin(), word.end());
        ids_.insert(ids_.end(), ids, ids + count);
        ++used_;
    }

private:
    static constexpr std::uint32_t kEmptyLen   = ~0u;
    static constexpr std::size_t kCapacity     = 1u << 17;  // 65536 words at half load
    static constexpr std::size_t kMaxWordBytes = 256;
    static constexpr std::size_t kMaxArena     = 4u << 20;  // bytes of cached words per thread
    struct Entry {
        std::size_t hash      = 0;
        std::size_t key_off   = 0;
        std::uint32_t key_len = kEmptyLen;
        std::size_t ids_off   = 0;
        std::uint32_t ids_len = 0;
    };
    void clear() {
        std::fill(entries_.begin(), entries_.end(), Entry{});
        keys_.clear();
        ids_.clear();
        used_ = 0;
    }
    std::vector<Entry> entries_ = std::vector<Entry>(kCapacity);
    std::size_t mask_           = kCapacity - 1;
    std::vector<char> keys_;
    std::vector<TokenId> ids_;
    std::size_t used_ = 0;
};

struct BpeTokenizer::Scratch {
    struct Symbol {
        TokenId id;
        std::int32_t prev, next, len;
    };
    struct Merge {
        std::int32_t rank, pos;
        TokenId merged;
        // std heap is a max-heap: "greater" means popped later (higher rank, then further right).
        bool operator<(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    WordCache cache;
    std::vector<Symbol> symbols;
    std::vector<Merge> heap;
    std::vector<std::string_view> pieces;
    std::vector<TokenId> word_ids;
};

// ------------------------------------------------------------------------------------------------ added tokens
// Finds added tokens in text the way HF's AddedVocabulary does: leftmost-longest matches scanned left to right,
// single_word matches that fail the boundary check are skipped, lstrip/rstrip widen a match over white space.
struct BpeTokenizer::AddedMatcher {
    struct Candidate {
        std::string text;
        const AddedToken* token;
    };
    std::vector<Candidate> by_first[256];  // longest first
    bool empty = true;

    void add(std::string text, const AddedToken* token) {
        if (text.empty()) return;
        auto& list = by_first[static_cast<unsigned char>(text[0])];
        list.push_back(Candidate{std::move(text), token});
        std::stable_sort(list.begin(), list.end(),
                         [](const Candidate& a, const Candidate& b) { return a.text.size() > b.text.size(); });
        empty = false;
    }

    // Calls on_text(segment) and on_token(id) for the pieces of `text` in order.
    template <class OnText, class OnToken>
    void split(std::string_view text, OnText on_text, OnToken on_token) const {
        if (empty) {
            on_text(text);
            return;
        }
        std::size_t emitted = 0, search = 0;
        while (search < text.size()) {
            // leftmost-longest match at or after `search`
            std::size_t start      = std::string_view::npos;
            const Candidate* found = nullptr;
            for (std::size_t i = search; i < text.size() && !found; ++i) {
                for (const Candidate& c : by_first[static_cast<unsigned char>(text[i])]) {
                    if (text.compare(i, c.text.size(), c.text) == 0) {
                        start = i;
                        found = &c;
                        break;
                    }
                }
            }
            if (!found) break;
            std::size_t stop      = start + found->text.size();
            search                = stop;
            const AddedToken& tok = *found->token;
            if (tok.single_word) {
                const auto before = code_points(text.substr(0, start));
                const auto after  = code_points(text.substr(stop));
                if ((!before.empty() && is_word_cp(before.back().second)) ||
                    (!after.empty() && is_word_cp(after.front().second)))
                    continue;
            }
            if (tok.lstrip) {
                std::size_t new_start = start;
                for (const auto& [off, cp] : code_points(text.substr(emitted, start - emitted)))
                    new_start = is_white_space_cp(cp) ? std::min(new_start, emitted + off) : start;
                start = std::max(new_start, emitted);
            }
            if (tok.rstrip) {
                stop = text.size();
                for (const auto& [off, cp] : code_points(text.substr(search))) {
                    if (!is_white_space_cp(cp)) {
                        stop = search + off;
                        break;
                    }
                }
                search = stop;
            }
            if (start < emitted) start = emitted;
            if (emitted < start) on_text(text.substr(emitted, start - emitted));
            on_token(tok.id);
            emitted = stop;
        }
        if (emitted < text.size() || text.empty()) on_text(text.substr(emitted));
    }
};

// ------------------------------------------------------------------------------------------------ construction
BpeTokenizer::BpeTokenizer(std::vector<std::pair<std::string, TokenId>> vocab,
                           const std::vector<std::pair<std::string, std::string>>& merges,
                           std::vector<AddedToken> added, BpeOptions options, const std::string& source)
    : added_(std::move(added)), options_(std::move(options)) {
    TokenId max_id = -1;
    vocab_storage_.reserve(vocab.size());
    vocab_.reserve(vocab.size() * 2);
    for (auto& [token, id] : vocab) {
        if (id < 0) throw Error(source + ": negative id " + std::to_string(id) + " for token '" + token + "'");
        max_id = std::max(max_id, id);
        vocab_storage_.push_back(std::move(token));
    }
    for (std::size_t i = 0; i < vocab.size(); ++i) vocab_[vocab_storage_[i]] = vocab[i].second;
    for (const auto& t : added_) {
        if (t.id < 0) throw Error(source + ": added token '" + t.content + "' has a negative id");
        max_id = std::max(max_id, t.id);
    }
    // The id tables below are dense: an id far beyond the number of tokens (e.g. 2^31 - 1 in a 10-token file)
    // would allocate gigabytes for nothing. Real vocabularies are dense up to a few unused ids.
    const std::size_t entries = vocab.size() + added_.size();
    if (max_id >= 0 && static_cast<std::size_t>(max_id) >= entries + kMaxIdGap) {
        std::string token;
        for (std::size_t i = 0; i < vocab.size(); ++i)
            if (vocab[i].second == max_id) token = vocab_storage_[i];
        for (const auto& t : added_)
            if (t.id == max_id) token = t.content;
        throw Error(source + ": id " + std::to_string(max_id) + " of token '" + token + "' is far beyond the " +
                    std::to_string(entries) + " tokens (ids must be below " + std::to_string(entries + kMaxIdGap) +
                    ")");
    }
    id_to_token_.assign(static_cast<std::size_t>(max_id + 1), std::nullopt);
    decoded_.assign(id_to_token_.size(), std::string());
    special_.assign(id_to_token_.size(), 0);
    for (std::size_t i = 0; i < vocab.size(); ++i) {
        const TokenId id = vocab[i].second;
        // Two tokens with one id: decoding would silently pick one of them (HF refuses such a vocabulary).
        if (id_to_token_[id])
            throw Error(source + ": tokens '" + *id_to_token_[id] + "' and '" + vocab_storage_[i] + "' both have id " +
                        std::to_string(id));
        id_to_token_[id] = vocab_storage_[i];
        decoded_[id]     = byte_level_decode(vocab_storage_[i]);
    }
    for (const auto& t : added_) {
        id_to_token_[t.id]           = t.content;
        decoded_[t.id]               = byte_level_decode(t.content);
        special_[t.id]               = t.special ? 1 : 0;
        added_by_content_[t.content] = t.id;
    }

    for (int b = 0; b < 256; ++b) {
        auto it      = vocab_.find(byte_symbol(static_cast<unsigned char>(b)));
        byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
    }

    merges_ = std::make_unique<MergeTable>(merges.size());
    std::string joined;
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
        const auto& [a, b] = merges[rank];
        auto ia            = vocab_.find(a);
        auto ib            = vocab_.find(b);
        if (ia == vocab_.end() || ib == vocab_.end())
            throw Error(source + ": merge " + std::to_string(rank + 1) + " ('" + a + " " + b +
                        "') uses a token that is not in the vocabulary");
        joined.assign(a).append(b);
        auto im = vocab_.find(joined);
        if (im == vocab_.end())
            throw Error(source + ": merge " + std::to_string(rank + 1) + " ('" + a + " " + b + "') produces '" +
                        joined + "', which is not in the vocabulary");
        merges_->put(ia->second, ib->second, static_cast<std::int32_t>(rank), im->second);
    }

    raw_matcher_        = std::make_unique<AddedMatcher>();
    normalized_matcher_ = std::make_unique<AddedMatcher>();
    for (const auto& t : added_) {
        if (t.normalized) {
            normalized_matcher_->add(nfc(to_valid_utf8(t.content)), &t);
        } else {
            raw_matcher_->add(t.content, &t);
        }
    }
    auto resolve = [&](const std::optional<std::string>& token) -> std::optional<TokenId> {
        if (!token) return std::nullopt;
        return token_to_id(*token);
    };
    bos_id_ = resolve(options_.bos_token);
    eos_id_ = resolve(options_.eos_token);
    pad_id_ = resolve(options_.pad_token);
}

BpeTokenizer::~BpeTokenizer() = default;

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_vocab_merges(const std::filesystem::path& vocab_json,
                                                              const std::filesystem::path& merges_txt,
                                                              std::vector<AddedToken> added, BpeOptions options) {
    const nlohmann::json vj = read_json_file(vocab_json);
    if (!vj.is_object()) throw Error(vocab_json.string() + ": expected a JSON object {token: id}");
    std::vector<std::pair<std::string, TokenId>> vocab;
    vocab.reserve(vj.size());
    for (auto it = vj.begin(); it != vj.end(); ++it) {
        vocab.emplace_back(it.key(), checked_id(it.value(), vocab_json.string(), it.key()));
    }

    const std::string text = read_text_file(merges_txt);
    std::vector<std::pair<std::string, std::string>> merges;
    std::size_t line_no = 0, pos = 0;
    while (pos < text.size()) {
        std::size_t eol = text.find('\n', pos);
        if (eol == std::string::npos) eol = text.size();
        std::string_view line(text.data() + pos, eol - pos);
        pos = eol + 1;
        ++line_no;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.empty() || line.rfind("#version", 0) == 0) continue;
        const std::size_t sp = line.find(' ');
        if (sp == std::string_view::npos || line.find(' ', sp + 1) != std::string_view::npos)
            throw Error(merges_txt.string() + ":" + std::to_string(line_no) +
                        ": expected two tokens separated by one space");
        merges.emplace_back(std::string(line.substr(0, sp)), std::string(line.substr(sp + 1)));
    }
    return std::make_unique<BpeTokenizer>(std::move(vocab), merges, std::move(added), std::move(options),
                                          vocab_json.string() + " + " + merges_txt.string());
}

namespace {
const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// medllm implements one pre-tokenizer; anything else must be refused rather than encoded differently.
void check_pipeline(const nlohmann::json& j, const std::string& where, BpeOptions& options) {
    const auto& norm = j.value("normalizer", nlohmann::json());
    if (!norm.is_null() && norm.value("type", "") != "NFC")
        throw Error(where + ": unsupported normalizer '" + norm.dump() + "' (only NFC or none)");
    const auto& pre = j.value("pre_tokenizer", nlohmann::json());
    bool has_split  = false;
    auto check_one  = [&](const nlohmann::json& p) {
        const std::string type = p.value("type", "");
        if (type == "Split") {
            const auto& pat         = p.value("pattern", nlohmann::json());
            const std::string regex = pat.is_object() ? pat.value("Regex", "") : "";
            if (regex != kQwen2Pattern || p.value("behavior", "") != "Isolated" || p.value("invert", false))
                throw Error(where + ": unsupported pre-tokenizer split " + p.dump() +
                             " (medllm implements the Qwen2 regex only)");
            has_split = true;
        } else if (type == "ByteLevel") {
            if (p.value("add_prefix_space", false) || p.value("use_regex", true))
                throw Error(where + ": unsupported ByteLevel pre-tokenizer settings " + p.dump());
        } else {
            throw Error(where + ": unsupported pre-tokenizer type '" + type + "'");
        }
    };
    if (pre.is_object() && pre.value("type", "") == "Sequence") {
        for (const auto& p : pre.at("pretokenizers")) check_one(p);
    } else if (pre.is_object()) {
        check_one(pre);
    }
    if (!has_split) throw Error(where + ": pre-tokenizer lacks the Qwen2 split regex");
    (void)options;
}
}  // namespace

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_tokenizer_json(const std::filesystem::path& path, BpeOptions options) {
    const nlohmann::json j  = read_json_file(path);
    const std::string where = path.string();
    try {
        const auto& model = j.at("model");
        if (model.value("type", "BPE") != "BPE")
            throw Error(where + ": model type '" + model.value("type", "") + "' is not BPE");
        if (model.contains("byte_fallback") && model["byte_fallback"].is_boolean() &&
            model["byte_fallback"].get<bool>())
            throw Error(where + ": byte_fallback BPE is not supported");
        for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
            if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty())
                throw Error(where + ": model." + key + " is not supported by the byte-level BPE");
        }
        if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0)
            throw Error(where + ": model.dropout is not supported (BPE dropout is for training only)");
        check_pipeline(j, where, options);
        options.ignore_merges = model.value("ignore_merges", false);

        std::vector<std::pair<std::string, TokenId>> vocab;
        const auto& vj = model.at("vocab");
        vocab.reserve(vj.size());
        for (auto it = vj.begin(); it != vj.end(); ++it)
            vocab.emplace_back(it.key(), checked_id(it.value(), where + ": model.vocab", it.key()));

        std::vector<std::pair<std::string, std::string>> merges;
        const auto& mj = model.at("merges");
        merges.reserve(mj.size());
        for (std::size_t i = 0; i < mj.size(); ++i) {
            const auto& m = mj[i];
            if (m.is_string()) {
                const std::string s  = m.get<std::string>();
                const std::size_t sp = s.find(' ');
                if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
                    throw Error(where + ": model.merges[" + std::to_string(i) +
                                "] is not two tokens separated by one space");
                merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
            } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
                merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
            } else {
                throw Error(where + ": model.merges[" + std::to_string(i) + "] is neither \"a b\" nor [\"a\", \"b\"]");
            }
        }

        std::vector<AddedToken> added;
        if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
            for (const auto& t : j["added_tokens"]) {
                AddedToken a;
                a.content     = t.at("content").get<std::string>();
                a.id          = checked_id(t.at("id"), where + ": added_tokens", a.content);
                a.special     = t.value("special", false);
                a.lstrip      = t.value("lstrip", false);
                a.rstrip      = t.value("rstrip", false);
                a.single_word = t.value("single_word", false);
                a.normalized  = t.value("normalized", false);
                added.push_back(std::move(a));
            }
        }
        return std::make_unique<BpeTokenizer>(std::move(vocab), merges, std::move(added), std::move(options), where);
    } catch (const nlohmann::json::exception& e) {
        throw Error(where + ": unexpected structure: " + e.what());
    }
}

// ------------------------------------------------------------------------------------------------ encoding
std::unique_ptr<BpeTokenizer::Scratch> BpeTokenizer::acquire_scratch() const {
    {
        std::lock_guard<std::mutex> lock(pool_mutex_);
        if (!pool_.empty()) {
            auto s = std::move(pool_.back());
            pool_.pop_back();
            return s;
        }
    }
    return std::make_unique<Scratch>();
}

void BpeTokenizer::release_scratch(std::unique_ptr<Scratch> scratch) const {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    pool_.push_back(std::move(scratch));
}

std::vector<TokenId> BpeTokenizer::encode(std::string_view text, bool add_special_tokens) const {
    std::string repaired;
    if (!is_valid_utf8(text)) {
        repaired = to_valid_utf8(text);
        text     = repaired;
    }
    std::vector<TokenId> out;
    out.reserve(text.size() / 3 + 4);
    if (add_special_tokens && options_.add_bos && bos_id_) out.push_back(*bos_id_);

    auto scratch = acquire_scratch();
    try {
        raw_matcher_->split(
            text, [&](std::string_view segment) { encode_normalized(segment, *scratch, out); },
            [&](TokenId id) { out.push_back(id); });
    } catch (...) {
        release_scratch(std::move(scratch));
        throw;
    }
    release_scratch(std::move(scratch));

    if (add_special_tokens && options_.add_eos && eos_id_) out.push_back(*eos_id_);
    return out;
}

void BpeTokenizer::encode_normalized(std::string_view raw_segment, Scratch& scratch, std::vector<TokenId>& out) const {
    if (raw_segment.empty()) return;
    if (nfc_quick_stable(raw_segment)) {
        normalized_matcher_->split(
            raw_segment, [&](std::string_view s) { encode_segment(s, scratch, out); },
            [&](TokenId id) { out.push_back(id); });
        return;
    }
    const std::string normalized = nfc(raw_segment);
    normalized_matcher_->split(
        normalized, [&](std::string_view s) { encode_segment(s, scratch, out); },
        [&](TokenId id) { out.push_back(id); });
}

void BpeTokenizer::encode_segment(std::string_view text, Scratch& scratch, std::vector<TokenId>& out) const {
    if (text.empty()) return;
    auto& pieces = scratch.pieces;
    pieces.clear();
    qwen2_pretokenize(text, pieces);
    for (std::string_view piece : pieces) bpe_word(piece, scratch, out);
}

void BpeTokenizer::bpe_word(std::string_view word, Scratch& scratch, std::vector<TokenId>& out) const {
    if (word.size() == 1) {
        const TokenId id = byte_ids_[static_cast<unsigned char>(word[0])];
        if (id >= 0) out.push_back(id);
        return;
    }
    const std::size_t hash = std::hash<std::string_view>{}(word);
    if (scratch.cache.find(word, hash, out)) return;

    auto& ids = scratch.word_ids;
    ids.clear();
    if (options_.ignore_merges) {
        std::string symbols;
        for (unsigned char b : word) symbols += byte_symbol(b);
        auto it = vocab_.find(symbols);
        if (it != vocab_.end()) {
            out.push_back(it->second);
            scratch.cache.insert(word, hash, &it->second, 1);
            return;
        }
    }

    auto& sym = scratch.symbols;
    sym.clear();
    for (unsigned char b : word) {
        const TokenId id = byte_ids_[b];
        if (id < 0) continue;  // HF drops characters missing from the vocab when there is no unk token
        const auto n = static_cast<std::int32_t>(sym.size());
        sym.push_back({id, n - 1, n + 1, 1});
    }
    if (!sym.empty()) sym.back().next = -1;

    auto& heap = scratch.heap;
    heap.clear();
    for (std::size_t i = 0; i + 1 < sym.size(); ++i) {
        if (const auto* m = merges_->find(sym[i].id, sym[i + 1].id))
            heap.push_back({m->rank, static_cast<std::int32_t>(i), m->merged});
    }
    std::make_heap(heap.begin(), heap.end());
    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end());
        const Scratch::Merge top = heap.back();
        heap.pop_back();
        auto& cur = sym[top.pos];
        if (cur.len == 0 || cur.next == -1) continue;
        const std::int32_t next_pos = cur.next;
        const auto* m               = merges_->find(cur.id, sym[next_pos].id);
        if (!m || m->merged != top.merged) continue;  // stale entry

        cur.id = top.merged;
        cur.len += sym[next_pos].len;
        cur.next          = sym[next_pos].next;
        sym[next_pos].len = 0;
        if (cur.next != -1) sym[cur.next].prev = top.pos;

        if (cur.prev != -1) {
            if (const auto* p = merges_->find(sym[cur.prev].id, cur.id)) {
                heap.push_back({p->rank, cur.prev, p->merged});
                std::push_heap(heap.begin(), heap.end());
            }
        }
        if (cur.next != -1) {
            if (const auto* p = merges_->find(cur.id, sym[cur.next].id)) {
                heap.push_back({p->rank, top.pos, p->merged});
                std::push_heap(heap.begin(), heap.end());
            }
        }
    }
    for (const auto& s : sym) {
        if (s.len > 0) ids.push_back(s.id);
    }
    out.insert(out.end(), ids.begin(), ids.end());
    scratch.cache.insert(word, hash, ids.data(), ids.size());
}

// ------------------------------------------------------------------------------------------------ lookups
std::optional<TokenId> BpeTokenizer::token_to_id(std::string_view token) const {
    if (auto it = added_by_content_.find(std::string(token)); it != added_by_content_.end()) return it->second;
    if (auto it = vocab_.find(token); it != vocab_.end()) return it->second;
    return std::nullopt;
}

std::optional<std::string> BpeTokenizer::id_to_token(TokenId id) const {
    if (id < 0 || static_cast<std::size_t>(id) >= id_to_token_.size()) return std::nullopt;
    return id_to_token_[id];
}

bool BpeTokenizer::is_special(TokenId id) const {
    return id >= 0 && static_cast<std::size_t>(id) < special_.size() && special_[id];
}

std::vector<TokenId> BpeTokenizer::special_token_ids() const {
    std::vector<TokenId> ids;
    for (const auto& t : added_)
        if (t.special) ids.push_back(t.id);
    return ids;
}

std::string BpeTokenizer::token_bytes(TokenId id, bool /*first*/) const {
    if (id < 0 || static_cast<std::size_t>(id) >= decoded_.size()) return {};
    return decoded_[id];
}

std::string BpeTokenizer::decode(const std::vector<TokenId>& ids, bool skip_special_tokens) const {
    std::string bytes;
    for (TokenId id : ids) {
        if (id < 0 || static_cast<std::size_t>(id) >= decoded_.size()) continue;
        if (skip_special_tokens && special_[id]) continue;
        bytes += decoded_[id];
    }
    return is_valid_utf8(bytes) ? bytes : to_valid_utf8(bytes);
}

}  // namespace medllm::text

// Byte-level BPE tokenizer (Qwen2 / Qwen2.5, GPT-2 style vocabularies). Semantics: see tokenizer.h.
#pragma once

#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "medllm/text/tokenizer.h"

namespace medllm::text {

struct AddedToken {
    std::string content;
    TokenId id       = -1;
    bool special     = false;  // dropped by decode(skip_special_tokens = true)
    bool lstrip      = false;
    bool rstrip      = false;
    bool single_word = false;
    bool normalized  = false;  // matched after NFC instead of on the raw text
};

struct BpeOptions {
    bool ignore_merges = false;  // whole pre-tokens found in the vocab skip the merges (Llama-3 style)
    bool add_bos       = false;  // honoured only by encode(..., add_special_tokens = true)
    bool add_eos       = false;
    std::optional<std::string> bos_token, eos_token, pad_token;
};

class BpeTokenizer final : public Tokenizer {
public:
    // `vocab` maps byte-symbol strings to ids; `merges` are (left, right) pairs in rank order. `source` names the
    // file(s) they came from, for error messages.
    BpeTokenizer(std::vector<std::pair<std::string, TokenId>> vocab,
                 const std::vector<std::pair<std::string, std::string>>& merges, std::vector<AddedToken> added,
                 BpeOptions options, const std::string& source);
    ~BpeTokenizer() override;

    // vocab.json + merges.txt (optional `#version` first line, CRLF tolerated) + optional added tokens.
    static std::unique_ptr<BpeTokenizer> from_vocab_merges(const std::filesystem::path& vocab_json,
                                                           const std::filesystem::path& merges_txt,
                                                           std::vector<AddedToken> added, BpeOptions options);
    // A Hugging Face tokenizer.json with a BPE model (merges as "a b" strings or ["a","b"] pairs).
    static std::unique_ptr<BpeTokenizer> from_tokenizer_json(const std::filesystem::path& path, BpeOptions options);

    std::string kind() const override { return "bpe"; }
    std::vector<TokenId> encode(std::string_view text, bool add_special_tokens = false) const override;
    std::optional<TokenId> token_to_id(std::string_view token) const override;
    std::optional<std::string> id_to_token(TokenId id) const override;
    std::size_t vocab_size() const override { return id_to_token_.size(); }
    bool is_special(TokenId id) const override;
    std::vector<TokenId> special_token_ids() const override;
    std::optional<TokenId> bos_id() const override { return bos_id_; }
    std::optional<TokenId> eos_id() const override { return eos_id_; }
    std::optional<TokenId> pad_id() const override { return pad_id_; }
    std::string token_bytes(TokenId id, bool first) const override;
    std::string decode(const std::vector<TokenId>& ids, bool skip_special_tokens = false) const override;

    const std::vector<AddedToken>& added_tokens() const { return added_; }

    struct Scratch;  // per-thread working memory and word cache

private:
    struct MergeTable;
    struct AddedMatcher;

    void encode_segment(std::string_view nfc_text, Scratch& scratch, std::vector<TokenId>& out) const;
    void encode_normalized(std::string_view raw_segment, Scratch& scratch, std::vector<TokenId>& out) const;
    void bpe_word(std::string_view word, Scratch& scratch, std::vector<TokenId>& out) const;
    std::unique_ptr<Scratch> acquire_scratch() const;
    void release_scratch(std::unique_ptr<Scratch> scratch) const;

    std::vector<std::string> vocab_storage_;               // owns the strings the map's keys point into
    std::unordered_map<std::string_view, TokenId> vocab_;  // byte-symbol string -> id (model vocab only)
    std::vector<std::optional<std::string>> id_to_token_;  // model + added tokens
    std::vector<std::string> decoded_;                     // id -> raw bytes for decode
    std::vector<char> special_;                            // id -> special flag
    std::vector<AddedToken> added_;
    std::unordered_map<std::string, TokenId> added_by_content_;
    std::unique_ptr<MergeTable> merges_;
    std::unique_ptr<AddedMatcher> raw_matcher_, normalized_matcher_;
    TokenId byte_ids_[256];  // byte -> id of its byte symbol, -1 if absent
    BpeOptions options_;
    std::optional<TokenId> bos_id_, eos_id_, pad_id_;

    mutable std::mutex pool_mutex_;
    mutable std::vector<std::unique_ptr<Scratch>> pool_;
};

// The GPT-2 bytes_to_unicode symbol (as UTF-8) of each byte.
const std::string& byte_symbol(unsigned char byte);

}  // namespace medllm::text

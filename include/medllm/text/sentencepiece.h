// SentencePiece models (`tokenizer.model`: Llama-2 family, Swallow, sarashina) behind the Tokenizer interface,
// through Debian's libsentencepiece. SentencePiece applies its own normalizer (stored in the model); invalid
// UTF-8 input is repaired to U+FFFD first, as for BPE.
#pragma once

#include <filesystem>
#include <memory>

#include "medllm/text/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace medllm::text {

class SentencePieceTokenizer final : public Tokenizer {
public:
    // add_bos / add_eos apply to encode(..., add_special_tokens = true).
    SentencePieceTokenizer(const std::filesystem::path& model_file, bool add_bos = true, bool add_eos = false);
    ~SentencePieceTokenizer() override;

    std::string kind() const override { return "sentencepiece"; }
    std::vector<TokenId> encode(std::string_view text, bool add_special_tokens = false) const override;
    std::string decode(const std::vector<TokenId>& ids, bool skip_special_tokens = false) const override;
    std::optional<TokenId> token_to_id(std::string_view token) const override;
    std::optional<std::string> id_to_token(TokenId id) const override;
    std::size_t vocab_size() const override;
    bool is_special(TokenId id) const override;
    std::vector<TokenId> special_token_ids() const override;
    std::optional<TokenId> bos_id() const override;
    std::optional<TokenId> eos_id() const override;
    std::optional<TokenId> pad_id() const override;
    std::string token_bytes(TokenId id, bool first) const override;

private:
    std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
    bool add_bos_, add_eos_;
};

}  // namespace medllm::text

// One tokenizer interface for every model family medllm reads.
//
// Backends (chosen by Tokenizer::from_dir from the files in the model directory):
//   * Byte-level BPE (Qwen2 / Qwen2.5 and other GPT-2 style vocabularies): `tokenizer.json`, or `vocab.json` +
//     `merges.txt`, plus added tokens from `tokenizer_config.json` (`added_tokens_decoder`), `added_tokens.json`
//     or a list-form `added_tokens*.json`.
//   * SentencePiece (`tokenizer.model`, Llama-2 family Japanese models such as Swallow or sarashina).
//
// Byte-level BPE encode order (identical to Hugging Face `tokenizers` for Qwen2.5):
//   1. Invalid UTF-8 in the input is replaced by U+FFFD, one replacement per maximal invalid subpart (the rule of
//      Python's `bytes.decode("utf-8", "replace")` and Rust's `String::from_utf8_lossy`). HF cannot receive invalid
//      UTF-8 at all (its API takes str), so this is medllm's documented extension; valid input is never altered.
//   2. Added tokens (special or not) are split out of the raw text first: leftmost match wins, the longest token
//      among those starting at the same byte; `lstrip`/`rstrip`/`single_word` are honoured. Tokens marked
//      `normalized: true` are matched after step 3 instead, on the normalized text.
//   3. Each remaining segment is NFC-normalized (utf8proc).
//   4. The Qwen2 pre-tokenizer regex splits it into pre-tokens, run by a hand-written scanner:
//        (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//      (`\p{N}` is a single digit; `\s` is Unicode White_Space as in Oniguruma.)
//   5. Each pre-token's UTF-8 bytes become byte symbols (GPT-2 bytes_to_unicode) and are merged by BPE rank,
//      lowest rank first, leftmost first on ties (HF's priority-queue order); results are cached per pre-token.
//   6. No BOS/EOS is added unless add_special_tokens is true *and* tokenizer_config.json asks for them
//      (`add_bos_token` / `add_eos_token`); Qwen2.5 asks for neither.
//
// Decode concatenates each token's bytes (byte symbols mapped back to bytes; added tokens verbatim) and replaces
// invalid UTF-8 with U+FFFD exactly as encode does. Ids without a string (e.g. Qwen's embedding padding rows
// 151665..151935) decode to nothing. StreamDecoder emits text only once a UTF-8 character is complete, and the
// concatenation of its output always equals decode() of the same ids.
//
// All methods are const and thread-safe; encode_batch spreads documents over threads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace medllm::text {

using TokenId = std::int32_t;

struct ChatMessage {
    std::string role;  // "system", "user", "assistant"
    std::string content;
};

class StreamDecoder;

class Tokenizer {
public:
    virtual ~Tokenizer() = default;

    // Loads the tokenizer of a model directory. Throws medllm::Error naming the missing or malformed file.
    static std::unique_ptr<Tokenizer> from_dir(const std::filesystem::path& dir);

    // "bpe" or "sentencepiece".
    virtual std::string kind() const = 0;

    virtual std::vector<TokenId> encode(std::string_view text, bool add_special_tokens = false) const = 0;
    // Encodes each document independently; num_threads <= 0 means all hardware threads.
    virtual std::vector<std::vector<TokenId>> encode_batch(const std::vector<std::string>& texts,
                                                           bool add_special_tokens = false, int num_threads = 0) const;

    virtual std::string decode(const std::vector<TokenId>& ids, bool skip_special_tokens = false) const;
    StreamDecoder stream_decoder(bool skip_special_tokens = false) const;

    virtual std::optional<TokenId> token_to_id(std::string_view token) const = 0;
    // The token's string as stored in the vocabulary (byte symbols for BPE, "▁" pieces for SentencePiece).
    virtual std::optional<std::string> id_to_token(TokenId id) const = 0;
    // Ids 0..vocab_size()-1, added tokens included (151665 for Qwen2.5).
    virtual std::size_t vocab_size() const                 = 0;
    virtual bool is_special(TokenId id) const              = 0;
    virtual std::vector<TokenId> special_token_ids() const = 0;

    virtual std::optional<TokenId> bos_id() const = 0;
    virtual std::optional<TokenId> eos_id() const = 0;
    virtual std::optional<TokenId> pad_id() const = 0;

    // The raw bytes one token contributes to decoded text (may be an incomplete UTF-8 sequence).
    // `first` is true for the first emitted token (SentencePiece drops the dummy-prefix space there).
    virtual std::string token_bytes(TokenId id, bool first) const = 0;

    // Qwen2.5-Instruct ChatML, rendered natively (same text as the official Jinja template without tools):
    // a default system turn is inserted when the first message is not a system message.
    std::string apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
    // The default system prompt used by apply_chat_template (Qwen2.5's unless set).
    void set_default_system_prompt(std::string prompt) { default_system_prompt_ = std::move(prompt); }
    const std::string& default_system_prompt() const { return default_system_prompt_; }

private:
    std::string default_system_prompt_ = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
};

// Incremental decoding for generation: push() ids one at a time and get back only complete UTF-8 text.
class StreamDecoder {
public:
    StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);
    // Returns the text that became complete with this token (possibly empty).
    std::string push(TokenId id);
    // Flushes what is left; an incomplete trailing sequence becomes U+FFFD.
    std::string finish();

private:
    const Tokenizer* tokenizer_;
    bool skip_special_;
    bool first_ = true;
    std::string pending_;  // bytes not yet emitted: at most an incomplete UTF-8 sequence
};

// Renders ChatML with an explicit default system prompt (what Tokenizer::apply_chat_template calls).
std::string render_chatml(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                          const std::string& default_system_prompt);

}  // namespace medllm::text

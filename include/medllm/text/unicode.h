// UTF-8 and Unicode helpers for the tokenizers: lossy UTF-8 repair, NFC, the Qwen2 pre-tokenizer split.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace medllm::text {

// True when `s` is well-formed UTF-8 (no surrogates, no overlongs, nothing above U+10FFFF).
bool is_valid_utf8(std::string_view s);

// Replaces each maximal invalid subpart with U+FFFD (Python's errors="replace", Rust's from_utf8_lossy).
std::string to_valid_utf8(std::string_view s);

// Length of the longest prefix of `s` that lossy decoding can already settle: everything except a trailing
// sequence that is a valid, still-incomplete start of a multi-byte character.
std::size_t utf8_settled_prefix(std::string_view s);

// NFC of valid UTF-8 (utf8proc). Returns the input unchanged, without calling utf8proc, when every code point is
// NFC-stable on its own (all ASCII, most CJK and kana).
std::string nfc(std::string_view valid_utf8);
// True when nfc(s) == s is guaranteed by the quick check (no combining or decomposable code points).
bool nfc_quick_stable(std::string_view valid_utf8);

// Splits valid, normalized UTF-8 into the pieces of the Qwen2 pre-tokenizer regex (see tokenizer.h).
// Pieces are views into `text` and cover it exactly, in order.
void qwen2_pretokenize(std::string_view text, std::vector<std::string_view>& pieces);

}  // namespace medllm::text

// UTF-8 repair, NFC and the Qwen2 pre-tokenizer split used by the tokenizers.
#include "medllm/text/unicode.h"

#include <utf8proc.h>

#include <cstdlib>
#include <cstring>
#include <memory>

#include "medllm/core/error.h"

namespace medllm::text {
namespace {

constexpr std::uint32_t kMaxCodePoint = 0x10FFFF;

// Per-code-point classes for the pre-tokenizer and the NFC quick check, built once from utf8proc's tables
// (1.1 MB; a lookup is one load, much cheaper than utf8proc_get_property's two-level walk on the hot path).
enum : std::uint8_t {
    kLetter    = 1,   // \p{L}: Lu Ll Lt Lm Lo
    kNumber    = 2,   // \p{N}: Nd Nl No
    kSpace     = 4,   // \s in Oniguruma = Unicode White_Space
    kNfcUnsafe = 8,   // NFC may change a string containing this code point
    kEnd       = 16,  // pseudo-class the scanner reports past the end of the text
};

bool is_white_space(std::uint32_t c) {
    // The Unicode White_Space property (PropList.txt); Oniguruma's \s for UTF-8.
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

class ClassTable {
public:
    ClassTable() : classes_(new std::uint8_t[kMaxCodePoint + 1]()) {
        for (std::uint32_t c = 0; c <= kMaxCodePoint; ++c) {
            const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(c));
            std::uint8_t v               = 0;
            switch (p->category) {
                case UTF8PROC_CATEGORY_LU:
                case UTF8PROC_CATEGORY_LL:
                case UTF8PROC_CATEGORY_LT:
                case UTF8PROC_CATEGORY_LM:
                case UTF8PROC_CATEGORY_LO:
                    v |= kLetter;
                    break;
                case UTF8PROC_CATEGORY_ND:
                case UTF8PROC_CATEGORY_NL:
                case UTF8PROC_CATEGORY_NO:
                    v |= kNumber;
                    break;
                default:
                    break;
            }
            if (is_white_space(c)) v |= kSpace;
            if (p->combining_class != 0) v |= kNfcUnsafe;
            classes_[c] |= v;
            // Hangul syllables compose algorithmically; jamo are marked below through their decompositions.
            if (p->decomp_seqindex != UINT16_MAX || (c >= 0xAC00 && c <= 0xD7A3)) mark_decomposable(c, p);
        }
    }

    std::uint8_t operator[](std::uint32_t c) const { return c <= kMaxCodePoint ? classes_[c] : 0; }

private:
    // A code point with a canonical decomposition is unsafe when NFC would not keep it (singletons, exclusions);
    // every non-first code point of its decomposition is unsafe, as it may compose with what precedes it.
    void mark_decomposable(std::uint32_t c, const utf8proc_property_t* p) {
        if (p->decomp_type != 0 && !(c >= 0xAC00 && c <= 0xD7A3)) return;  // compatibility-only: NFC leaves it
        utf8proc_int32_t buf[8];
        int last_boundclass = 0;
        utf8proc_ssize_t n =
            utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c), buf, 8, UTF8PROC_DECOMPOSE, &last_boundclass);
        if (n <= 0 || n > 8) return;
        for (utf8proc_ssize_t i = 1; i < n; ++i) classes_[static_cast<std::uint32_t>(buf[i])] |= kNfcUnsafe;
        if (c >= 0xAC00 && c <= 0xD7A3) return;  // precomposed Hangul syllables are NFC
        // Singletons (U+212B ANGSTROM SIGN, Greek oxia vowels) and composition exclusions: ask utf8proc itself.
        utf8proc_uint8_t encoded[8];
        const utf8proc_ssize_t len = utf8proc_encode_char(static_cast<utf8proc_int32_t>(c), encoded);
        utf8proc_uint8_t* composed = nullptr;
        const utf8proc_ssize_t clen =
            utf8proc_map(encoded, len, &composed, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
        if (clen != len || std::memcmp(composed, encoded, static_cast<std::size_t>(len)) != 0)
            classes_[c] |= kNfcUnsafe;
        std::free(composed);
        if (utf8proc_get_property(buf[0])->combining_class != 0) classes_[c] |= kNfcUnsafe;
    }

    std::unique_ptr<std::uint8_t[]> classes_;
};

const ClassTable& classes() {
    static const ClassTable table;
    return table;
}

// Decodes one code point of valid UTF-8 at s[i]; returns its byte length.
inline int decode_at(const unsigned char* s, std::size_t i, std::size_t n, std::uint32_t& cp) {
    const unsigned char b = s[i];
    if (b < 0x80) {
        cp = b;
        return 1;
    }
    if (b < 0xE0 && i + 1 < n) {
        cp = ((b & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
        return 2;
    }
    if (b < 0xF0 && i + 2 < n) {
        cp = ((b & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
        return 3;
    }
    if (i + 3 < n) {
        cp = ((b & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) | (s[i + 3] & 0x3Fu);
        return 4;
    }
    cp = 0xFFFD;  // truncated input: never produced by to_valid_utf8, but stay in bounds
    return static_cast<int>(n - i);
}

// Length of the well-formed sequence starting at s[i] (0 if the lead byte is invalid), and the length `bad`
// of the maximal invalid subpart otherwise (Unicode 3.9, "U+FFFD substitution of maximal subparts").
inline int valid_sequence_length(const unsigned char* s, std::size_t i, std::size_t n, int& bad) {
    const unsigned char b = s[i];
    if (b < 0x80) return 1;
    int need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        need = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 3;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 4;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
    } else {
        bad = 1;
        return 0;
    }
    for (int k = 1; k < need; ++k) {
        if (i + k >= n) {
            bad = -k;  // truncated at the end: a valid but incomplete prefix of k bytes
            return 0;
        }
        const unsigned char c = s[i + k];
        const bool ok         = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
        if (!ok) {
            bad = k;
            return 0;
        }
    }
    return need;
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

}  // namespace

bool is_valid_utf8(std::string_view s) {
    const auto* p       = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    std::size_t i       = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            ++i;
            continue;
        }
        int bad       = 0;
        const int len = valid_sequence_length(p, i, n, bad);
        if (len == 0) return false;
        i += static_cast<std::size_t>(len);
    }
    return true;
}

std::string to_valid_utf8(std::string_view s) {
    const auto* p       = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    std::string out;
    out.reserve(n + 8);
    std::size_t i = 0;
    while (i < n) {
        int bad       = 0;
        const int len = valid_sequence_length(p, i, n, bad);
        if (len > 0) {
            out.append(s.data() + i, static_cast<std::size_t>(len));
            i += static_cast<std::size_t>(len);
        } else {
            out.append(kReplacement);
            i += static_cast<std::size_t>(bad < 0 ? -bad : bad);
        }
    }
    return out;
}

std::size_t utf8_settled_prefix(std::string_view s) {
    const auto* p       = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    std::size_t i       = 0;
    while (i < n) {
        int bad       = 0;
        const int len = valid_sequence_length(p, i, n, bad);
        if (len > 0) {
            i += static_cast<std::size_t>(len);
        } else if (bad < 0) {
            return i;  // an incomplete but valid start: wait for more bytes
        } else {
            i += static_cast<std::size_t>(bad);
        }
    }
    return n;
}

bool nfc_quick_stable(std::string_view text) {
    const auto* p           = reinterpret_cast<const unsigned char*>(text.data());
    const std::size_t n     = text.size();
    const ClassTable* table = nullptr;
    std::size_t i           = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            ++i;
            continue;
        }
        if (!table) table = &classes();
        std::uint32_t cp;
        i += static_cast<std::size_t>(decode_at(p, i, n, cp));
        if ((*table)[cp] & kNfcUnsafe) return false;
    }
    return true;
}

std::string nfc(std::string_view text) {
    if (nfc_quick_stable(text)) return std::string(text);
    utf8proc_uint8_t* out = nullptr;
    // Explicit length (no NULLTERM): embedded NUL bytes are ordinary code points.
    const utf8proc_ssize_t len =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()), static_cast<utf8proc_ssize_t>(text.size()),
                     &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (len < 0) {
        std::free(out);
        throw Error(std::string("NFC normalization failed: ") + utf8proc_errmsg(len));
    }
    std::string result(reinterpret_cast<const char*>(out), static_cast<std::size_t>(len));
    std::free(out);
    return result;
}

void qwen2_pretokenize(std::string_view text, std::vector<std::string_view>& pieces) {
    const ClassTable& table = classes();
    const auto* s           = reinterpret_cast<const unsigned char*>(text.data());
    const std::size_t n     = text.size();

    // Class of the code point at byte i (and its length); past the end reads as "nothing".
    auto at = [&](std::size_t i, std::uint32_t& cp, int& len) -> std::uint8_t {
        if (i >= n) {
            cp  = 0xFFFFFFFFu;
            len = 0;
            return kEnd;
        }
        if (s[i] < 0x80) {
            cp  = s[i];
            len = 1;
            return table[cp];
        }
        len = decode_at(s, i, n, cp);
        return table[cp];
    };
    auto is_other = [](std::uint8_t cls) { return !(cls & (kLetter | kNumber | kSpace | kEnd)); };
    auto is_crlf  = [](std::uint32_t cp) { return cp == '\r' || cp == '\n'; };
    auto lower    = [](std::uint32_t cp) { return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp; };

    std::size_t pos = 0;
    while (pos < n) {
        std::uint32_t c0, c1;
        int l0, l1;
        const std::uint8_t k0 = at(pos, c0, l0);
        const std::uint8_t k1 = at(pos + l0, c1, l1);
        std::size_t end       = 0;

        // (?i:'s|'t|'re|'ve|'m|'ll|'d): case-insensitive by Unicode simple case folding, so U+017F (long s)
        // matches 's as well.
        if (c0 == '\'' && l1 > 0) {
            const std::uint32_t f1 = lower(c1);
            if (f1 == 's' || f1 == 't' || f1 == 'm' || f1 == 'd' || c1 == 0x017F) {
                end = pos + l0 + l1;
            } else if (f1 == 'r' || f1 == 'v' || f1 == 'l') {
                std::uint32_t c2;
                int l2 = 0;
                at(pos + l0 + l1, c2, l2);
                const std::uint32_t f2 = lower(c2);
                if ((f1 == 'r' && f2 == 'e') || (f1 == 'v' && f2 == 'e') || (f1 == 'l' && f2 == 'l'))
                    end = pos + l0 + l1 + l2;
            }
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if (!end && ((k0 & kLetter) || (!is_crlf(c0) && !(k0 & kNumber) && (k1 & kLetter)))) {
            std::size_t q = (k0 & kLetter) ? pos : pos + l0;
            std::uint32_t c;
            int l = 0;
            while (q < n && (at(q, c, l) & kLetter)) q += l;
            end = q;
        }
        // \p{N}
        if (!end && (k0 & kNumber)) end = pos + l0;
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        if (!end && ((c0 == ' ' && is_other(k1)) || is_other(k0))) {
            std::size_t q = is_other(k0) ? pos : pos + l0;
            std::uint32_t c;
            int l = 0;
            while (q < n && is_other(at(q, c, l))) q += l;
            while (q < n && (s[q] == '\r' || s[q] == '\n')) ++q;
            end = q;
        }
        // Whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+
        if (!end) {
            std::size_t q = pos, last_crlf_end = 0, last_start = pos;
            std::uint32_t c;
            int l = 0;
            while (q < n && (at(q, c, l) & kSpace)) {
                last_start = q;
                q += l;
                if (is_crlf(c)) last_crlf_end = q;
            }
            if (q == pos) {
                end = pos + (l0 > 0 ? l0 : 1);  // unreachable for valid input: every code point is in a class
            } else if (last_crlf_end) {
                end = last_crlf_end;
            } else if (q == n || last_start == pos) {
                end = q;  // run reaches the end, or a single space before a non-space (the \s+ fallback)
            } else {
                end = last_start;  // leave the last space to prefix the next word
            }
        }
        pieces.emplace_back(text.data() + pos, end - pos);
        pos = end;
    }
}

}  // namespace medllm::text

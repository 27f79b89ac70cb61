// Normalising and extracting IgakuQA answers (letters, numbers, option text) from model output.
#include "medllm/eval/igakuqa_answer.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <regex>
#include <set>

namespace medllm::eval {
namespace {

constexpr char32_t kDakuten    = 0xFF9E;  // half-width voiced sound mark
constexpr char32_t kHandakuten = 0xFF9F;  // half-width semi-voiced sound mark

struct HalfWidth {
    char32_t base = 0;  // 0 = not converted
    char32_t mark = 0;  // optional trailing (han)dakuten
};

// Full-width katakana U+30A1..U+30F4 -> half-width, in mojimoji's default kana table.
// Voiced forms become base + U+FF9E, semi-voiced base + U+FF9F; ヮ ヰ ヱ have no half-width form and stay.
std::array<HalfWidth, 0x30F5 - 0x30A1> build_katakana_table() {
    std::array<HalfWidth, 0x30F5 - 0x30A1> table{};
    auto set = [&](char32_t full, char32_t half, char32_t mark = 0) { table[full - 0x30A1] = {half, mark}; };
    // ァアィイゥウェエォオ alternate small/large.
    const char32_t small_vowels[] = {0xFF67, 0xFF68, 0xFF69, 0xFF6A, 0xFF6B};
    for (int i = 0; i < 5; ++i) {
        set(0x30A1 + 2 * i, small_vowels[i]);
        set(0x30A2 + 2 * i, 0xFF71 + i);
    }
    // カガ ... チヂ: 12 unvoiced/voiced pairs.
    for (int i = 0; i < 12; ++i) {
        set(0x30AB + 2 * i, 0xFF76 + i);
        set(0x30AC + 2 * i, 0xFF76 + i, kDakuten);
    }
    set(0x30C3, 0xFF6F);           // ッ
    for (int i = 0; i < 3; ++i) {  // ツヅ テデ トド
        set(0x30C4 + 2 * i, 0xFF82 + i);
        set(0x30C5 + 2 * i, 0xFF82 + i, kDakuten);
    }
    for (int i = 0; i < 5; ++i) set(0x30CA + i, 0xFF85 + i);  // ナ..ノ
    for (int i = 0; i < 5; ++i) {                             // ハバパ .. ホボポ
        set(0x30CF + 3 * i, 0xFF8A + i);
        set(0x30D0 + 3 * i, 0xFF8A + i, kDakuten);
        set(0x30D1 + 3 * i, 0xFF8A + i, kHandakuten);
    }
    for (int i = 0; i < 5; ++i) set(0x30DE + i, 0xFF8F + i);  // マ..モ
    const char32_t small_y[] = {0xFF6C, 0xFF6D, 0xFF6E};
    for (int i = 0; i < 3; ++i) {  // ャヤ ュユ ョヨ
        set(0x30E3 + 2 * i, small_y[i]);
        set(0x30E4 + 2 * i, 0xFF94 + i);
    }
    for (int i = 0; i < 5; ++i) set(0x30E9 + i, 0xFF97 + i);  // ラ..ロ
    set(0x30EF, 0xFF9C);                                      // ワ
    set(0x30F2, 0xFF66);                                      // ヲ
    set(0x30F3, 0xFF9D);                                      // ン
    set(0x30F4, 0xFF73, kDakuten);                            // ヴ
    return table;
}

HalfWidth to_half_width(char32_t cp) {
    static const auto katakana = build_katakana_table();
    // Full-width ASCII; mojimoji leaves ＂ ＇ ｀ alone and maps the curly quotes instead.
    if (cp >= 0xFF01 && cp <= 0xFF5E && cp != 0xFF02 && cp != 0xFF07 && cp != 0xFF40) return {cp - 0xFEE0, 0};
    if (cp >= 0x30A1 && cp <= 0x30F4) return katakana[cp - 0x30A1];
    switch (cp) {
        case 0x2018:
            return {U'`', 0};
        case 0x2019:
            return {U'\'', 0};
        case 0x201D:
            return {U'"', 0};
        case 0x3000:
            return {U' ', 0};
        case 0x3001:
            return {0xFF64, 0};  // 、
        case 0x3002:
            return {0xFF61, 0};  // 。
        case 0x300C:
            return {0xFF62, 0};  // 「
        case 0x300D:
            return {0xFF63, 0};  // 」
        case 0x309B:
            return {0xFF9E, 0};  // ゛
        case 0x309C:
            return {0xFF9F, 0};  // ゜
        case 0x30FB:
            return {0xFF65, 0};  // ・
        case 0x30FC:
            return {0xFF70, 0};  // ー
        case 0xFFE5:
            return {0x00A5, 0};  // ￥
        default:
            return {};
    }
}

void append_utf8(std::string& out, char32_t cp) {
    utf8proc_uint8_t buf[4];
    const auto n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(cp), buf);
    out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

// Calls fn(code_point) for each valid UTF-8 sequence and fn_raw(byte) for each invalid byte.
template <typename Fn, typename RawFn>
void for_each_code_point(std::string_view text, Fn fn, RawFn fn_raw) {
    const auto* data = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
    size_t pos       = 0;
    while (pos < text.size()) {
        utf8proc_int32_t cp = 0;
        const auto n        = utf8proc_iterate(data + pos, static_cast<utf8proc_ssize_t>(text.size() - pos), &cp);
        if (n <= 0) {
            fn_raw(text[pos]);
            ++pos;
            continue;
        }
        fn(static_cast<char32_t>(cp));
        pos += static_cast<size_t>(n);
    }
}

bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
    return s;
}

bool starts_with(std::string_view s, std::string_view p) {
    return s.substr(0, p.size()) == p;
}
bool ends_with(std::string_view s, std::string_view p) {
    return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

// Removes wrappers and trailing politeness/punctuation until nothing changes: "**(a)**。" -> "a".
std::string_view strip_decorations(std::string_view s) {
    static const std::string_view kWrapOpen[]  = {"**", "*", "(", "[", "｢", "【", "『", "\"", "'", "`", "<", "{"};
    static const std::string_view kWrapClose[] = {"**", "*", ")", "]", "｣", "】", "』", "\"", "'", "`", ">", "}"};
    static const std::string_view kTrailing[]  = {".", "｡", "!", "です", "である", "だ"};
    bool changed                               = true;
    while (changed) {
        changed = false;
        s       = trim(s);
        for (auto open : kWrapOpen) {
            if (starts_with(s, open)) {
                s.remove_prefix(open.size());
                changed = true;
            }
        }
        for (auto close : kWrapClose) {
            if (ends_with(s, close)) {
                s.remove_suffix(close.size());
                changed = true;
            }
        }
        for (auto tail : kTrailing) {
            if (ends_with(s, tail)) {
                s.remove_suffix(tail.size());
                changed = true;
            }
        }
    }
    return s;
}

// Splits off the first non-empty line of `s`; `rest` receives what follows it.
std::string_view first_nonempty_line(std::string_view s, std::string_view* rest) {
    while (true) {
        const size_t nl        = s.find('\n');
        std::string_view line  = s.substr(0, nl);
        std::string_view after = nl == std::string_view::npos ? std::string_view{} : s.substr(nl + 1);
        if (!trim(line).empty() || after.empty()) {
            if (rest) *rest = after;
            return trim(line);
        }
        s = after;
    }
}

// Separators between answer letters, after zen_to_han + lower-case (so 、 is ､ and ・ is ･).
const std::regex& letter_list_regex() {
    static const std::regex re("([a-h])((\\s*(,|､|･|と|/|&|\\+|and|および|及び)\\s*|\\s+)?[a-h])*",
                               std::regex::ECMAScript);
    return re;
}

// "e: オルニチン…", "c. 腎低形成", "a) 酸素欠乏症": a choice label followed by its text.
const std::regex& label_line_regex() {
    static const std::regex re("([a-h])\\s*[:.)､,]\\s*\\S.*", std::regex::ECMAScript);
    return re;
}

bool letters_in_range(const std::set<std::string>& letters, int num_choices) {
    return std::all_of(letters.begin(), letters.end(), [&](const std::string& l) { return l[0] - 'a' < num_choices; });
}

}  // namespace

std::string zen_to_han(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for_each_code_point(
        text,
        [&](char32_t cp) {
            const HalfWidth half = to_half_width(cp);
            if (half.base == 0) {
                append_utf8(out, cp);
                return;
            }
            append_utf8(out, half.base);
            if (half.mark != 0) append_utf8(out, half.mark);
        },
        [&](char byte) { out.push_back(byte); });
    return out;
}

std::string unicode_lower(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for_each_code_point(
        text,
        [&](char32_t cp) {
            append_utf8(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))));
        },
        [&](char byte) { out.push_back(byte); });
    return out;
}

std::string official_prediction(std::string_view raw_output) {
    return unicode_lower(zen_to_han(raw_output));
}

size_t find_after_last_answer_marker(std::string_view normalized) {
    static const std::string_view kMarkers[] = {"答え:", "答:", "答えは", "正解:", "正解は", "answer:"};
    size_t best_start                        = std::string_view::npos;
    size_t best_end                          = std::string_view::npos;
    for (auto marker : kMarkers) {
        const size_t pos = normalized.rfind(marker);
        if (pos == std::string_view::npos) continue;
        if (best_start == std::string_view::npos || pos > best_start) {
            best_start = pos;
            best_end   = pos + marker.size();
        }
    }
    return best_end;
}

std::string ExtractedAnswer::as_prediction() const {
    if (!parsed) return "";
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += ',';
        out += items[i];
    }
    return out;
}

ExtractedAnswer extract_answer(std::string_view raw_output, const AnswerSpec& spec) {
    ExtractedAnswer result;
    const std::string normalized = official_prediction(raw_output);
    std::string_view segment     = normalized;
    const size_t after_marker    = find_after_last_answer_marker(normalized);
    if (after_marker != std::string_view::npos) {
        result.marker_found = true;
        segment             = segment.substr(after_marker);
    }
    std::string_view rest;
    const std::string_view line = strip_decorations(first_nonempty_line(segment, &rest));
    if (line.empty()) return result;

    if (spec.numeric) {
        static const std::regex number_re("[0-9]+(\\.[0-9]+)?");
        std::cmatch m;
        if (std::regex_search(line.data(), line.data() + line.size(), m, number_re)) {
            result.items  = {m.str()};
            result.parsed = true;
        }
        return result;
    }

    std::set<std::string> letters;
    if (std::regex_match(line.begin(), line.end(), letter_list_regex())) {
        for (char c : line) {
            if (c >= 'a' && c <= 'h') letters.insert(std::string(1, c));
        }
        // "and" contains the letters a and d: re-read the letters with separator words removed.
        if (line.find("and") != std::string_view::npos) {
            std::string cleaned(line);
            for (size_t p; (p = cleaned.find("and")) != std::string::npos;) cleaned.replace(p, 3, " ");
            letters.clear();
            for (char c : cleaned) {
                if (c >= 'a' && c <= 'h') letters.insert(std::string(1, c));
            }
        }
    } else if (std::regex_match(line.begin(), line.end(), label_line_regex())) {
        letters.insert(std::string(1, line[0]));
        // Multi-answer questions: one "x: text" line per chosen answer.
        while (spec.expected_count > static_cast<int>(letters.size()) && !rest.empty()) {
            const std::string_view next = strip_decorations(first_nonempty_line(rest, &rest));
            if (!std::regex_match(next.begin(), next.end(), label_line_regex())) break;
            letters.insert(std::string(1, next[0]));
        }
    }
    if (letters.empty() || !letters_in_range(letters, spec.num_choices)) return result;
    result.items.assign(letters.begin(), letters.end());
    result.parsed = true;
    return result;
}

std::string choice_named_by_text(std::string_view raw_output, const std::vector<std::string>& choices) {
    const std::string normalized = official_prediction(raw_output);
    const size_t after_marker    = find_after_last_answer_marker(normalized);
    std::string_view rest(normalized);
    if (after_marker != std::string::npos) rest.remove_prefix(after_marker);
    std::string line(strip_decorations(first_nonempty_line(rest, &rest)));
    while (!line.empty() && (line.back() == ' ' || line.back() == '.')) line.pop_back();
    for (const char* tail : {"。", "｡", "です", "である"})
        if (line.size() >= std::strlen(tail) &&
            line.compare(line.size() - std::strlen(tail), std::string::npos, tail) == 0)
            line.resize(line.size() - std::strlen(tail));
    if (line.empty()) return "";
    int contained = -1, count = 0;
    for (size_t i = 0; i < choices.size() && i < 8; ++i) {
        const std::string choice = official_prediction(choices[i]);
        if (choice.empty()) continue;
        if (choice == line) return std::string(1, static_cast<char>('a' + i));
        if (line.find(choice) != std::string::npos) {
            contained = static_cast<int>(i);
            ++count;
        }
    }
    return count == 1 ? std::string(1, static_cast<char>('a' + contained)) : std::string();
}

}  // namespace medllm::eval

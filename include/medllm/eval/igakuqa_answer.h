// Answer normalisation and extraction for multiple-choice / numeric exam answers.
//
// Two rules live here, and every stage that reads a model's answer (eval igakuqa, build-prefs) uses them:
//  * the official IgakuQA rule (`official_prediction`): the raw output is converted full-width -> half-width
//    exactly like Python `mojimoji.zen_to_han` with its defaults, then lower-cased; nothing is stripped or
//    parsed. The scorer later splits it on ',' (see scoring.h). This is the only comparable rule.
//  * the lenient rule (`extract_answer`): find the final answer after the last answer marker (`答え:` ...),
//    accept the separators people and models write (`a,c`, `a, c`, `ac`, `a と c`, `a・c`, `a/c`), strip
//    brackets, markdown and a trailing period, and return sorted unique letters or one number. Anything
//    else is reported as unparseable instead of being guessed.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace medllm::eval {

// Python `mojimoji.zen_to_han(s)` with default flags (ascii, digit and kana all converted). Invalid UTF-8
// bytes are passed through unchanged.
std::string zen_to_han(std::string_view text);

// Unicode simple lower-case mapping of every code point (Python `str.lower()` for all but a few
// special-casing letters such as U+0130).
std::string unicode_lower(std::string_view text);

// The official generation-time post-processing: `zen_to_han(raw).lower()`, no strip.
std::string official_prediction(std::string_view raw_output);

// Position just past the last answer marker (`答え:`, `答:`, `解答:`, `答えは`, `answer:`) in `normalized`
// (the output of official_prediction), or std::string::npos when there is none.
size_t find_after_last_answer_marker(std::string_view normalized);

// What kind of answer a question expects.
struct AnswerSpec {
    bool numeric       = false;  // numeric entry (no choices): the answer is one number string
    int num_choices    = 5;      // letters a.. up to this many are valid
    int expected_count = 0;      // "choose exactly N" (0 = unknown); used to read one label line per answer
};

struct ExtractedAnswer {
    bool parsed = false;
    std::vector<std::string> items;  // sorted unique letters ("a", "c"), or a single number string ("7.20")
    bool marker_found = false;       // an answer marker was present in the output
    // The canonical prediction string the official scorer accepts ("a,c"), or "" when not parsed.
    std::string as_prediction() const;
};

// Lenient extraction. With an answer marker, reads the first non-empty line after the last marker;
// without one, reads the first non-empty line of the whole output.
ExtractedAnswer extract_answer(std::string_view raw_output, const AnswerSpec& spec);

// An answer given as the option's text instead of its letter (「答え:肺炎」, 「答えは肺炎です。」), mapped to the
// label: the first non-empty line after the last answer marker (of the whole output when there is none), normalized
// like official_prediction, names exactly one choice — it equals that choice's normalized text, or contains it
// and no other choice. Returns the letter ("c"), or "" when no choice or more than one is named. Used by the
// pipeline's option-text column (tiny models learn the text long before the letter); real models answer this way
// too.
std::string choice_named_by_text(std::string_view raw_output, const std::vector<std::string>& choices);

}  // namespace medllm::eval

// Stop strings matched on decoded text, across token boundaries. The text is fed piece by piece (each piece a
// run of complete UTF-8 characters, as StreamDecoder emits them); the earliest occurrence of any stop string
// ends the text there, and the stop string itself is not part of the output.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace medllm::generate {

class StopStringMatcher {
public:
    explicit StopStringMatcher(std::vector<std::string> stops);  // empty strings are ignored

    // Appends decoded text. Returns true when a stop string has now appeared (later pieces are ignored).
    bool feed(std::string_view piece);
    bool stopped() const { return matched_.has_value(); }
    const std::optional<std::string>& matched() const { return matched_; }

    // The output so far: all text, or the text before the stop string once one matched.
    const std::string& text() const { return text_; }
    // For streaming: output not handed out yet that can no longer turn into the start of a stop string.
    std::string take_safe();
    // Everything not handed out yet (call when the sequence ends).
    std::string take_rest();

private:
    std::size_t held_back() const;  // length of the longest text suffix that is a proper prefix of a stop string

    std::vector<std::string> stops_;
    std::size_t longest_ = 0;
    std::string text_;
    std::size_t handed_out_ = 0;
    std::optional<std::string> matched_;
};

}  // namespace medllm::generate

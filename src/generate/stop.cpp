// Stop strings matched on decoded text across token boundaries.
#include "medllm/generate/stop.h"

#include <algorithm>

namespace medllm::generate {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops) {
    for (auto& s : stops) {
        if (s.empty()) continue;
        longest_ = std::max(longest_, s.size());
        stops_.push_back(std::move(s));
    }
}

bool StopStringMatcher::feed(std::string_view piece) {
    if (matched_) return true;
    const std::size_t old_size = text_.size();
    text_.append(piece);
    if (stops_.empty() || piece.empty()) return false;
    // Only occurrences that end inside the new piece are new; start looking early enough to catch those
    // that began in earlier pieces.
    const std::size_t from = old_size >= longest_ ? old_size - (longest_ - 1) : 0;
    std::size_t best       = std::string::npos;
    const std::string* hit = nullptr;
    for (const auto& s : stops_) {
        std::size_t at = text_.find(s, from);
        if (at != std::string::npos && (at < best || (at == best && s.size() > hit->size()))) {
            best = at;
            hit  = &s;
        }
    }
    if (!hit) return false;
    matched_ = *hit;
    text_.resize(best);
    handed_out_ = std::min(handed_out_, text_.size());
    return true;
}

std::size_t StopStringMatcher::held_back() const {
    if (matched_) return 0;
    std::size_t held = 0;
    for (const auto& s : stops_) {
        std::size_t max_len = std::min(s.size() - 1, text_.size());
        for (std::size_t len = max_len; len > held; --len) {
            if (text_.compare(text_.size() - len, len, s, 0, len) == 0) {
                held = len;
                break;
            }
        }
    }
    return held;
}

std::string StopStringMatcher::take_safe() {
    std::size_t safe_end = text_.size() - held_back();
    if (safe_end <= handed_out_) return {};
    std::string out = text_.substr(handed_out_, safe_end - handed_out_);
    handed_out_     = safe_end;
    return out;
}

std::string StopStringMatcher::take_rest() {
    if (handed_out_ >= text_.size()) return {};
    std::string out = text_.substr(handed_out_);
    handed_out_     = text_.size();
    return out;
}

}  // namespace medllm::generate

// The contamination guard: n-gram overlap of training text with the evaluation exams (include/medllm/data/guard.h).
#include "medllm/data/guard.h"

#include <utf8proc.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iterator>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/eval/igakuqa_data.h"
#include "medllm/text/unicode.h"

namespace medllm::data {
namespace {

constexpr uint64_t kFilterBits = uint64_t(1) << 22;
// A question with fewer n-grams than this (a one-line stem with one-word choices) is too short to be evidence.
constexpr int64_t kMinUnitNgrams = 4;
// A window of lines never holds more lines than this (lines that normalize to nothing add no length).
constexpr std::size_t kMaxWindowLines = 4096;

bool dropped_category(utf8proc_int32_t c) {
    switch (utf8proc_category(c)) {
        case UTF8PROC_CATEGORY_ZS:
        case UTF8PROC_CATEGORY_ZL:
        case UTF8PROC_CATEGORY_ZP:
        case UTF8PROC_CATEGORY_CC:
        case UTF8PROC_CATEGORY_CF:
        case UTF8PROC_CATEGORY_PC:
        case UTF8PROC_CATEGORY_PD:
        case UTF8PROC_CATEGORY_PS:
        case UTF8PROC_CATEGORY_PE:
        case UTF8PROC_CATEGORY_PI:
        case UTF8PROC_CATEGORY_PF:
        case UTF8PROC_CATEGORY_PO:
            return true;
        default:
            return false;
    }
}

uint64_t mix(uint64_t h) {  // splitmix64 finalizer: spreads the rolling hash over all bits for the filter
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

// Distinct n-gram hashes of normalized text (sorted).
std::vector<uint64_t> ngram_hashes(const std::u32string& s, int n, bool distinct = true) {
    std::vector<uint64_t> out;
    if (s.size() < static_cast<size_t>(n)) return out;
    constexpr uint64_t B = 1000003;
    uint64_t top         = 1;  // B^(n-1)
    for (int i = 1; i < n; ++i) top *= B;
    uint64_t h = 0;
    for (int i = 0; i < n; ++i) h = h * B + s[i];
    out.reserve(s.size() - n + 1);
    out.push_back(mix(h));
    for (size_t i = n; i < s.size(); ++i) {
        h = (h - s[i - n] * top) * B + s[i];
        out.push_back(mix(h));
    }
    if (distinct) {
        std::sort(out.begin(), out.end());
        out.erase(std::unique(out.begin(), out.end()), out.end());
    }
    return out;
}

}  // namespace

std::u32string normalize_for_guard(std::string_view utf8) {
    const std::string valid  = text::is_valid_utf8(utf8) ? std::string(utf8) : text::to_valid_utf8(utf8);
    utf8proc_uint8_t* mapped = nullptr;
    const auto options       = static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT |
                                                        UTF8PROC_CASEFOLD | UTF8PROC_IGNORE);
    const auto len           = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(valid.data()),
                                            static_cast<utf8proc_ssize_t>(valid.size()), &mapped, options);
    if (len < 0) throw Error(std::string("guard normalization failed: ") + utf8proc_errmsg(len));
    std::u32string out;
    out.reserve(static_cast<size_t>(len) / 2);
    utf8proc_ssize_t pos = 0;
    while (pos < len) {
        utf8proc_int32_t c = 0;
        const auto step    = utf8proc_iterate(mapped + pos, len - pos, &c);
        if (step <= 0) break;
        pos += step;
        if (!dropped_category(c)) out.push_back(static_cast<char32_t>(c));
    }
    std::free(mapped);
    return out;
}

ContaminationGuard::ContaminationGuard(const std::vector<GuardQuestion>& questions, GuardOptions options)
    : options_(options), filter_(kFilterBits / 64, 0) {
    if (options_.ngram < 2 || options_.ngram > 64) throw UsageError("eval_guard.ngram must be between 2 and 64");
    if (!(options_.threshold > 0 && options_.threshold <= 1))
        throw UsageError("eval_guard.threshold must be in (0, 1]");
    // N-grams are taken within each field (the problem text, each choice), never across two: a question bank
    // prints labels ("a.", "ｂ", "1)") between the choices, which would break every n-gram spanning a boundary.
    uint64_t chars    = 0;  // normalized characters of the question's fields
    auto field_ngrams = [&](const std::string& text, std::vector<uint64_t>& out) {
        const auto norm = normalize_for_guard(text);
        chars += norm.size();
        auto h = ngram_hashes(norm, options_.ngram);
        out.insert(out.end(), h.begin(), h.end());
    };
    std::vector<std::pair<uint64_t, uint32_t>> pairs;  // (n-gram, unit)
    for (const auto& q : questions) {
        const uint32_t qi = static_cast<uint32_t>(question_ids_.size());
        question_ids_.push_back(q.id);
        question_language_.push_back(q.language);
        chars = 0;
        std::vector<uint64_t> alone;
        field_ngrams(q.problem_text, alone);
        const uint64_t alone_chars = chars;
        std::vector<uint64_t> full = alone;
        for (const auto& c : q.choices) field_ngrams(c, full);
        std::sort(full.begin(), full.end());
        full.erase(std::unique(full.begin(), full.end()), full.end());
        std::sort(alone.begin(), alone.end());
        alone.erase(std::unique(alone.begin(), alone.end()), alone.end());
        std::vector<std::pair<std::vector<uint64_t>, uint64_t>> units;  // (n-grams, normalized characters)
        if (static_cast<int64_t>(full.size()) >= kMinUnitNgrams) units.emplace_back(std::move(full), chars);
        const int64_t min_alone = q.language == "en" ? options_.min_ngrams_en : options_.min_ngrams;
        if (!units.empty() && static_cast<int64_t>(alone.size()) >= min_alone &&
            alone.size() < units.front().first.size())
            units.emplace_back(std::move(alone), alone_chars);
        for (auto& [u, c] : units) {
            const uint32_t ui = static_cast<uint32_t>(unit_question_.size());
            unit_question_.push_back(qi);
            unit_size_.push_back(static_cast<uint32_t>(u.size()));
            unit_chars_.push_back(static_cast<uint32_t>(std::min<uint64_t>(c, UINT32_MAX)));
            max_unit_chars_ = std::max(max_unit_chars_, c);
            for (uint64_t h : u) pairs.emplace_back(h, ui);
        }
    }
    std::sort(pairs.begin(), pairs.end());
    postings_index_.reserve(pairs.size());
    for (std::size_t i = 0; i < pairs.size(); ++i) {
        const uint64_t h = pairs[i].first;
        if (i == 0 || pairs[i - 1].first != h) {
            postings_index_.emplace(h, static_cast<uint32_t>(posting_begin_.size()));
            posting_begin_.push_back(static_cast<uint32_t>(postings_.size()));
            const uint64_t bit = h & (kFilterBits - 1);
            filter_[bit / 64] |= uint64_t(1) << (bit % 64);
        }
        postings_.push_back(pairs[i].second);
    }
    posting_begin_.push_back(static_cast<uint32_t>(postings_.size()));
}

ContaminationGuard ContaminationGuard::from_igakuqa(const std::filesystem::path& data_dir,
                                                    const std::vector<int>& years, GuardOptions options) {
    std::vector<GuardQuestion> qs;
    for (const auto& q : eval::load_questions(data_dir, years))
        qs.push_back({q.problem_id, q.problem_text, q.choices, "ja"});
    if (qs.empty()) throw UsageError("eval_guard: no questions found in " + data_dir.string());
    std::size_t missing = 0;
    auto english        = load_igakuqa_translations(data_dir, years, &missing);
    if (missing > 0)
        spdlog::warn(
            "contamination guard: {} of {} sections of {} have no English translation (*_translate.jsonl): "
            "English copies of those questions are not caught",
            missing, years.size() * std::size(eval::kSections), data_dir.string());
    qs.insert(qs.end(), std::make_move_iterator(english.begin()), std::make_move_iterator(english.end()));
    return ContaminationGuard(qs, options);
}

std::size_t ContaminationGuard::num_translations() const {
    return static_cast<std::size_t>(std::count(question_language_.begin(), question_language_.end(), "en"));
}

std::vector<GuardQuestion> load_igakuqa_translations(const std::filesystem::path& data_dir,
                                                     const std::vector<int>& years, std::size_t* missing_files) {
    std::vector<GuardQuestion> out;
    std::size_t missing = 0;
    for (int year : years) {
        for (char section : eval::kSections) {
            const auto file = data_dir / "data" / std::to_string(year) /
                              (std::to_string(eval::exam_number_for_year(year)) + "-" + section + "_translate.jsonl");
            if (!std::filesystem::exists(file)) {
                ++missing;
                continue;
            }
            const auto records = eval::read_jsonl(file);
            for (std::size_t i = 0; i < records.size(); ++i) {
                const auto& r           = records[i];
                const std::string where = file.string() + ":" + std::to_string(i + 1);
                GuardQuestion q;
                q.language = "en";
                if (!r.is_object() || !r.contains("problem_id") || !r["problem_id"].is_string() ||
                    !r.contains("problem_text_en") || !r["problem_text_en"].is_string())
                    throw Error(where + ": an English translation needs string fields problem_id and problem_text_en");
                q.id           = r["problem_id"].get<std::string>();
                q.problem_text = r["problem_text_en"].get<std::string>();
                if (r.contains("choices_en")) {
                    if (!r["choices_en"].is_array())
                        throw Error(where + ": problem_id " + q.id + ": choices_en must be a list of strings");
                    for (const auto& c : r["choices_en"]) {
                        if (!c.is_string())
                            throw Error(where + ": problem_id " + q.id + ": choices_en must be a list of strings");
                        q.choices.push_back(c.get<std::string>());
                    }
                }
                out.push_back(std::move(q));
            }
        }
    }
    if (missing_files) *missing_files = missing;
    return out;
}

std::vector<GuardHit> ContaminationGuard::check(std::string_view text) const {
    const auto norm = normalize_for_guard(text);
    auto hashes     = ngram_hashes(norm, options_.ngram, /*distinct=*/false);
    std::vector<uint32_t> hits;  // posting-list ids of the document's n-grams that occur in some question
    for (uint64_t h : hashes) {
        const uint64_t bit = h & (kFilterBits - 1);
        if (!(filter_[bit / 64] >> (bit % 64) & 1)) continue;
        auto it = postings_index_.find(h);
        if (it != postings_index_.end()) hits.push_back(it->second);
    }
    if (hits.empty()) return {};
    std::sort(hits.begin(), hits.end());
    hits.erase(std::unique(hits.begin(), hits.end()), hits.end());
    std::unordered_map<uint32_t, uint32_t> counts;  // unit -> distinct n-grams found
    for (uint32_t p : hits)
        for (uint32_t i = posting_begin_[p]; i < posting_begin_[p + 1]; ++i) ++counts[postings_[i]];
    std::unordered_map<uint32_t, double> best;  // question -> overlap
    for (const auto& [unit, n] : counts) {
        const double overlap = double(n) / unit_size_[unit];
        if (overlap + 1e-12 < options_.threshold) continue;
        double& b = best[unit_question_[unit]];
        b         = std::max(b, overlap);
    }
    return hits_of(best);
}

std::vector<GuardHit> ContaminationGuard::hits_of(const std::unordered_map<uint32_t, double>& best) const {
    std::vector<GuardHit> out;
    for (const auto& [q, overlap] : best) out.push_back({question_ids_[q], overlap, question_language_[q]});
    std::sort(out.begin(), out.end(), [](const GuardHit& a, const GuardHit& b) {
        if (a.overlap != b.overlap) return a.overlap > b.overlap;
        return a.problem_id != b.problem_id ? a.problem_id < b.problem_id : a.language < b.language;
    });
    return out;
}

// ---------------------------------------------------------------- lines

namespace {

// Posting lists of the index hit by `hashes` (prefilter, then the map), appended.
template <class Index>
void lookup(const std::vector<uint64_t>& hashes, const std::vector<uint64_t>& filter, const Index& index,
            std::vector<uint32_t>& out) {
    for (uint64_t h : hashes) {
        const uint64_t bit = h & (kFilterBits - 1);
        if (!(filter[bit / 64] >> (bit % 64) & 1)) continue;
        auto it = index.find(h);
        if (it != index.end()) out.push_back(it->second);
    }
}

void sort_unique(std::vector<uint32_t>& v) {
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
}

}  // namespace

ContaminationGuard::LinePostings ContaminationGuard::line_postings(std::string_view line) const {
    LinePostings p;
    const auto norm        = normalize_for_guard(line);
    p.chars                = norm.size();
    const std::size_t edge = static_cast<std::size_t>(options_.ngram - 1);
    p.head                 = norm.substr(0, edge);
    p.tail                 = norm.size() > edge ? norm.substr(norm.size() - edge) : norm;
    lookup(ngram_hashes(norm, options_.ngram), filter_, postings_index_, p.postings);
    sort_unique(p.postings);
    return p;
}

std::vector<std::vector<GuardHit>> ContaminationGuard::check_lines(const std::vector<std::string>& lines) const {
    std::vector<std::vector<GuardHit>> out(lines.size());
    LineWindow window(*this);
    for (std::size_t i = 0; i < lines.size(); ++i) window.push(i, line_postings(lines[i]));
    window.finish();
    for (auto& [i, hits] : window.take()) out[i] = std::move(hits);
    return out;
}

LineWindow::LineWindow(const ContaminationGuard& guard)
    : g_(guard),
      max_interior_(static_cast<uint64_t>(kLineSpanFactor) * guard.max_unit_chars_),
      posting_count_(guard.posting_begin_.empty() ? 0 : guard.posting_begin_.size() - 1, 0),
      unit_count_(guard.unit_size_.size(), 0),
      unit_need_(guard.unit_size_.size(), 0) {
    // The fewest distinct n-grams that make `threshold` of a unit (the comparison check() makes, with its tolerance).
    for (std::size_t u = 0; u < unit_need_.size(); ++u) {
        uint32_t need = static_cast<uint32_t>(std::ceil(guard.options_.threshold * guard.unit_size_[u]));
        while (need > 0 && double(need - 1) / guard.unit_size_[u] + 1e-12 >= guard.options_.threshold) --need;
        while (double(need) / guard.unit_size_[u] + 1e-12 < guard.options_.threshold) ++need;
        unit_need_[u] = need;
    }
}

void LineWindow::push(uint64_t id, ContaminationGuard::LinePostings p) {
    Line line;
    line.id       = id;
    line.chars    = p.chars;
    line.postings = std::move(p.postings);
    // The n-grams that start on earlier lines and end on this one: the stream is the lines' normalized text joined
    // (line breaks are whitespace, which normalization drops anyway).
    const std::size_t edge = static_cast<std::size_t>(g_.options_.ngram - 1);
    if (!tail_.empty() && !p.head.empty()) {
        std::u32string across = tail_ + p.head;
        std::vector<uint64_t> hashes;
        if (across.size() >= edge + 1) {
            hashes = ngram_hashes(across, g_.options_.ngram, /*distinct=*/false);
            // Only those that start in the tail: an n-gram inside the head would be the line's own, but the head is
            // shorter than n, so every n-gram of `across` starts in the tail.
            lookup(hashes, g_.filter_, g_.postings_index_, line.postings);
            sort_unique(line.postings);
        }
    }
    tail_ += p.chars > edge ? p.tail : p.head;
    if (tail_.size() > edge) tail_.erase(0, tail_.size() - edge);

    if (lines_.size() >= 2) interior_ += lines_.back().chars;  // the previous last line is now inside the window
    lines_.push_back(std::move(line));
    // Count the line's n-grams new to the window; the units that hold `threshold` of their n-grams in the window
    // and have n-grams on this line may now have a qualifying run ending here.
    std::vector<uint32_t> hot;
    for (uint32_t post : lines_.back().postings) {
        const bool fresh = posting_count_[post]++ == 0;
        for (uint32_t i = g_.posting_begin_[post]; i < g_.posting_begin_[post + 1]; ++i) {
            const uint32_t unit = g_.postings_[i];
            if (fresh) ++unit_count_[unit];
            if (unit_count_[unit] >= unit_need_[unit]) hot.push_back(unit);
        }
    }
    while (lines_.size() > 1 && (interior_ > max_interior_ || lines_.size() > kMaxWindowLines)) drop_left();
    sort_unique(hot);
    for (uint32_t unit : hot)
        if (unit_count_[unit] >= unit_need_[unit]) locate(unit);
}

void LineWindow::drop_left() {
    Line& first = lines_.front();
    for (uint32_t post : first.postings) {
        if (--posting_count_[post] != 0) continue;
        for (uint32_t i = g_.posting_begin_[post]; i < g_.posting_begin_[post + 1]; ++i) --unit_count_[g_.postings_[i]];
    }
    if (lines_.size() > 2) interior_ -= lines_[1].chars;  // the second line becomes the first
    if (!first.flagged.empty()) out_.emplace_back(first.id, g_.hits_of(first.flagged));
    lines_.pop_front();
}

// Called when the newest line holds n-grams of `unit` and the window holds `threshold` of them. A run never crosses
// ordinary text (a line of 2n characters or more holding none of the unit's n-grams), so the runs that end on the
// newest line lie in the stretch of question-like lines -- each holds n-grams of the unit or is short (a label, a
// one-word choice) -- that ends there; only that stretch is read. In it: every shortest run ending on a line that
// holds n-grams, with `threshold` of the unit's n-grams and an interior of at most kLineSpanFactor x the unit's
// length. When one qualifies, the stretch's lines from its first to its last line holding n-grams are flagged (the
// stem that the choices alone may outweigh, and the short lines between them); lines after the newest are flagged
// when they arrive, by the call they trigger.
void LineWindow::locate(uint32_t unit) {
    const std::size_t n = lines_.size();
    // Short: under 2n characters, too short to hold more than a few n-grams of its own (a label with a one-word
    // choice "a 職場の分煙状況" is 8 characters, its one n-gram the label's); ordinary text lines are longer.
    auto short_line    = [&](std::size_t j) { return lines_[j].chars < 2 * static_cast<uint64_t>(g_.options_.ngram); };
    auto unit_postings = [&](std::size_t j) {  // line j's posting lists that belong to the unit
        std::vector<uint32_t> out;
        for (uint32_t post : lines_[j].postings) {
            const auto* b = g_.postings_.data() + g_.posting_begin_[post];
            const auto* e = g_.postings_.data() + g_.posting_begin_[post + 1];
            if (std::binary_search(b, e, unit)) out.push_back(post);
        }
        return out;
    };
    std::size_t a = n;                        // the stretch [a, n)
    std::vector<std::vector<uint32_t>> mine;  // mine[k]: line a + k's, filled backwards then reversed
    while (a > 0) {
        auto m = unit_postings(a - 1);
        if (m.empty() && !short_line(a - 1)) break;
        mine.push_back(std::move(m));
        --a;
    }
    std::reverse(mine.begin(), mine.end());
    const std::size_t len = mine.size();
    const double size     = g_.unit_size_[unit];
    const uint64_t cap    = static_cast<uint64_t>(kLineSpanFactor) * g_.unit_chars_[unit];
    const double need     = g_.options_.threshold - 1e-12;
    std::unordered_map<uint32_t, uint32_t> count;
    std::size_t distinct = 0, s = 0;
    uint64_t interior = 0;  // characters of lines s+1 .. e-1 (stretch positions)
    double best       = 0;  // best overlap of a qualifying run
    auto chars        = [&](std::size_t k) { return lines_[a + k].chars; };
    auto remove       = [&](std::size_t k) {
        for (uint32_t post : mine[k])
            if (--count[post] == 0) --distinct;
    };
    auto losses = [&](std::size_t k) {  // distinct n-grams lost if line k left the run
        std::size_t lost = 0;
        for (uint32_t post : mine[k]) lost += count[post] == 1;
        return lost;
    };
    for (std::size_t e = 0; e < len; ++e) {
        if (e > s) interior += e - 1 > s ? chars(e - 1) : 0;
        for (uint32_t post : mine[e])
            if (count[post]++ == 0) ++distinct;
        while (s < e && interior > cap) {
            remove(s);
            ++s;
            interior -= s < e ? chars(s) : 0;
        }
        while (s < e && (mine[s].empty() || (distinct - losses(s)) / size >= need)) {
            remove(s);
            ++s;
            interior -= s < e ? chars(s) : 0;
        }
        if (!mine[e].empty() && distinct / size >= need) best = std::max(best, distinct / size);
    }
    if (best == 0) return;
    std::size_t first = len, last = 0;
    for (std::size_t k = 0; k < len; ++k)
        if (!mine[k].empty()) first = std::min(first, k), last = k;
    const uint32_t qi = g_.unit_question_[unit];
    for (std::size_t k = first; k <= last; ++k) {
        double& flagged = lines_[a + k].flagged[qi];
        flagged         = std::max(flagged, best);
    }
}

void LineWindow::finish() {
    while (!lines_.empty()) drop_left();
    tail_.clear();
}

std::vector<std::pair<uint64_t, std::vector<GuardHit>>> LineWindow::take() {
    return std::move(out_);
}

std::unique_ptr<ContaminationGuard> make_eval_guard(const GuardSettings& settings, const std::string& what) {
    if (!settings.enabled) {
        spdlog::warn("eval_guard.enabled is false: {} NOT checked against the evaluation exams", what);
        return nullptr;
    }
    if (settings.igakuqa_dir.empty())
        throw UsageError("eval_guard.igakuqa_dir is required: " + what +
                         " checked against the IgakuQA exams (set "
                         "eval_guard.enabled: false to skip the check)");
    if (!std::filesystem::is_directory(std::filesystem::path(settings.igakuqa_dir) / "data"))
        throw UsageError("eval_guard.igakuqa_dir " + settings.igakuqa_dir + " has no data/ folder");
    GuardOptions g;
    g.ngram     = static_cast<int>(settings.ngram);
    g.threshold = settings.threshold;
    auto guard  = std::make_unique<ContaminationGuard>(
        ContaminationGuard::from_igakuqa(settings.igakuqa_dir, eval::parse_years(settings.years), g));
    spdlog::info("contamination guard: {} questions of {} and {} English translations (n = {}, threshold {})",
                 guard->num_questions() - guard->num_translations(), settings.years, guard->num_translations(), g.ngram,
                 g.threshold);
    return guard;
}

}  // namespace medllm::data

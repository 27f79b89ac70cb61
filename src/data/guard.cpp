// The contamination guard: n-gram overlap of training text with the evaluation exams (include/medllm/data/guard.h).
#include "medllm/data/guard.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/eval/igakuqa_data.h"
#include "medllm/text/unicode.h"

namespace medllm::data {
namespace {

constexpr uint64_t kFilterBits = uint64_t(1) << 22;
// A question with fewer n-grams than this (a one-line stem with one-word choices) is too short to be evidence.
constexpr int64_t kMinUnitNgrams = 4;

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
    auto field_ngrams = [&](const std::string& text, std::vector<uint64_t>& out) {
        auto h = ngram_hashes(normalize_for_guard(text), options_.ngram);
        out.insert(out.end(), h.begin(), h.end());
    };
    std::vector<std::pair<uint64_t, uint32_t>> pairs;  // (n-gram, unit)
    for (const auto& q : questions) {
        const uint32_t qi = static_cast<uint32_t>(question_ids_.size());
        question_ids_.push_back(q.id);
        std::vector<uint64_t> alone;
        field_ngrams(q.problem_text, alone);
        std::vector<uint64_t> full = alone;
        for (const auto& c : q.choices) field_ngrams(c, full);
        std::sort(full.begin(), full.end());
        full.erase(std::unique(full.begin(), full.end()), full.end());
        std::sort(alone.begin(), alone.end());
        alone.erase(std::unique(alone.begin(), alone.end()), alone.end());
        std::vector<std::vector<uint64_t>> units;
        if (static_cast<int64_t>(full.size()) >= kMinUnitNgrams) units.push_back(std::move(full));
        if (!units.empty() && static_cast<int64_t>(alone.size()) >= options_.min_ngrams &&
            alone.size() < units.front().size())
            units.push_back(std::move(alone));
        for (auto& u : units) {
            const uint32_t ui = static_cast<uint32_t>(unit_question_.size());
            unit_question_.push_back(qi);
            unit_size_.push_back(static_cast<uint32_t>(u.size()));
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
    for (const auto& q : eval::load_questions(data_dir, years)) qs.push_back({q.problem_id, q.problem_text, q.choices});
    if (qs.empty()) throw UsageError("eval_guard: no questions found in " + data_dir.string());
    return ContaminationGuard(qs, options);
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
    std::vector<GuardHit> out;
    for (const auto& [q, overlap] : best) out.push_back({question_ids_[q], overlap});
    std::sort(out.begin(), out.end(), [](const GuardHit& a, const GuardHit& b) {
        return a.overlap != b.overlap ? a.overlap > b.overlap : a.problem_id < b.problem_id;
    });
    return out;
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
    spdlog::info("contamination guard: {} questions of {} (n = {}, threshold {})", guard->num_questions(),
                 settings.years, g.ngram, g.threshold);
    return guard;
}

}  // namespace medllm::data

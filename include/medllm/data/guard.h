// Contamination guard: finds documents that contain exam questions (IgakuQA 2018-2022 by default), so training
// never sees the evaluation set. Used by prepare-corpus and reusable by the preference and RPO data builders.
//
// Method: both sides are normalized (NFKC, which also folds full-width ASCII and half-width katakana, then case
// folding, then every whitespace, control and punctuation character removed), and cut into character n-grams
// within each field (the problem text, each choice; never across two, since question banks print labels such as
// "a." or "ｂ" between the choices).
// A question is a hit for a document when at least `threshold` of its distinct n-grams occur in the document
// (containment, not Jaccard: a document may be much longer than the question). Each question is checked as two
// units: its problem text plus choices, and its problem text alone (long linked-case stems are often quoted
// without the choices); the problem-only unit needs `min_ngrams` n-grams so a short stem ("正しいのはどれか") alone
// can never match. n and threshold were chosen by measurement (README, "Contamination guard").
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace medllm::data {

struct GuardOptions {
    int ngram          = 8;    // characters per n-gram after normalization
    double threshold   = 0.7;  // share of a question's n-grams found in the document
    int64_t min_ngrams = 20;   // a problem-only unit needs this many n-grams to be checked on its own
};

struct GuardQuestion {
    std::string id;  // "116A1"
    std::string problem_text;
    std::vector<std::string> choices;
};

struct GuardHit {
    std::string problem_id;
    double overlap = 0;  // share of the question's n-grams contained in the document (best unit)
};

// The normalized code points (exposed for tests and for the report).
std::u32string normalize_for_guard(std::string_view utf8);

class ContaminationGuard {
public:
    ContaminationGuard(const std::vector<GuardQuestion>& questions, GuardOptions options);

    // Every question of `years` (problem text and choices) from an IgakuQA data folder (eval::load_questions).
    static ContaminationGuard from_igakuqa(const std::filesystem::path& data_dir, const std::vector<int>& years,
                                           GuardOptions options);

    // The questions contained in `text`, best overlap first. Thread-safe (const).
    std::vector<GuardHit> check(std::string_view text) const;

    std::size_t num_questions() const { return question_ids_.size(); }
    const GuardOptions& options() const { return options_; }

private:
    GuardOptions options_;
    std::vector<std::string> question_ids_;
    std::vector<uint32_t> unit_question_;                    // unit -> question
    std::vector<uint32_t> unit_size_;                        // distinct n-grams of the unit
    std::unordered_map<uint64_t, uint32_t> postings_index_;  // n-gram hash -> [begin, end) in postings_
    std::vector<uint32_t> posting_begin_;
    std::vector<uint32_t> postings_;  // unit ids
    std::vector<uint64_t> filter_;    // 2^22-bit prefilter on the hash
};

}  // namespace medllm::data

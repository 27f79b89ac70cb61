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
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "medllm/core/config.h"

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

// The `eval_guard.*` keys of every command that checks training text against the evaluation exams (prepare-corpus
// and cpt check documents, rpo checks prompts).
struct GuardSettings {
    bool enabled = true;
    std::string igakuqa_dir;  // an IgakuQA data folder (holds data/<year>/)
    std::string years  = "2018-2022";
    std::string action = "refuse";  // refuse | drop | warn
    int64_t ngram      = 8;
    double threshold   = 0.7;
};

// Adds the eval_guard.* keys (held in `C::*group`) to a command's schema; `what` names what is checked ("the
// corpus", "the prompts") and `refuse_help` what refuse/drop do for that command.
template <class C>
void add_guard_fields(ConfigSchema<C>& s, GuardSettings C::*group, const std::string& what,
                      const std::string& action_help) {
    using G = GuardSettings;
    s.field("eval_guard.enabled", group, &G::enabled, "check " + what + " against the evaluation exams");
    s.field("eval_guard.igakuqa_dir", group, &G::igakuqa_dir, "IgakuQA data folder (holds data/<year>/)");
    s.field("eval_guard.years", group, &G::years, "exam years " + what + " must not contain");
    s.field("eval_guard.action", group, &G::action, action_help).one_of({"refuse", "drop", "warn"});
    s.field("eval_guard.ngram", group, &G::ngram, "characters per n-gram after normalization").range(4, 64);
    s.field("eval_guard.threshold", group, &G::threshold, "share of a question's n-grams that makes a hit")
        .range(0.05, 1);
}

// The guard the settings describe, or null (with a warning naming `what`) when eval_guard.enabled is false.
// UsageError for a missing or empty IgakuQA folder.
std::unique_ptr<ContaminationGuard> make_eval_guard(const GuardSettings& settings, const std::string& what);

}  // namespace medllm::data

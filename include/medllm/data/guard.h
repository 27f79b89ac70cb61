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
//
// The English translations that ship in the IgakuQA folder (data/<year>/<exam>-<S>_translate.jsonl) are guarded
// as questions of their own under the same problem_id (GuardHit::language "en"): a corpus may hold the exam in
// English.
//
// Line-structured text (`format: lines` corpora, where every line is a document) spreads one question over several
// documents: the stem on one line, each choice on another. LineWindow checks runs of consecutive lines as one text:
// a run of lines is a hit for a question when it holds `threshold` of the question's n-grams, the lines strictly
// inside it are at most kLineSpanFactor times the question's normalized length in all, and none of them is
// ordinary text (a line of 2n normalized characters or more that holds none of the question's n-grams), so a question
// is never assembled from scattered lines of an unrelated text. The line break is no boundary: n-grams spanning
// it count, so a re-wrapped stem keeps its n-grams. Flagged are the question's lines around a hit: the lines that
// hold its n-grams and the short lines between them (labels, numbers, short choices), up to the ordinary text
// on either side -- the stem, the choices and what separates them; a trailing choice shorter than n characters
// holds none of its n-grams and stays. A line that holds the question alone is a hit as before.
#pragma once

#include <cstdint>
#include <deque>
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
    // The same for an English translation: English spells the same stem in ~2-3x the characters, so its
    // boilerplate ("Which of the following is correct? Select two.", 30 n-grams) would pass 20 (measured:
    // bench_guard_calibrate --english).
    int64_t min_ngrams_en = 60;
};

struct GuardQuestion {
    std::string id;  // "116A1"
    std::string problem_text;
    std::vector<std::string> choices;
    std::string language = "ja";  // "en" for IgakuQA's English translation of the question
};

struct GuardHit {
    std::string problem_id;
    double overlap       = 0;     // share of the question's n-grams contained in the document (best unit)
    std::string language = "ja";  // which version of the question matched
};

// The interior of a run of lines that LineWindow accepts as one question: at most this many times the question's
// normalized length (labels, numbers and a short remark between stem and choices fit; unrelated paragraphs do
// not).
inline constexpr int kLineSpanFactor = 2;

// IgakuQA's English translations of `years` (data/<year>/<exam>-<S>_translate.jsonl: problem_id, problem_text_en,
// choices_en), language "en". A year's missing translation file is skipped (the caller may warn); a record without
// those fields is an Error naming file and line.
std::vector<GuardQuestion> load_igakuqa_translations(const std::filesystem::path& data_dir,
                                                     const std::vector<int>& years, std::size_t* missing_files);

// The normalized code points (exposed for tests and for the report).
std::u32string normalize_for_guard(std::string_view utf8);

class ContaminationGuard {
public:
    ContaminationGuard(const std::vector<GuardQuestion>& questions, GuardOptions options);

    // Every question of `years` (problem text and choices) from an IgakuQA data folder (eval::load_questions),
    // plus its English translation where the folder ships one (load_igakuqa_translations; warns when none).
    static ContaminationGuard from_igakuqa(const std::filesystem::path& data_dir, const std::vector<int>& years,
                                           GuardOptions options);

    // The questions contained in `text`, best overlap first. Thread-safe (const).
    std::vector<GuardHit> check(std::string_view text) const;

    // Consecutive lines of one text (format: lines): per line, the questions of the runs of lines it belongs to
    // (see LineWindow), best overlap first. Thread-safe (const).
    std::vector<std::vector<GuardHit>> check_lines(const std::vector<std::string>& lines) const;

    std::size_t num_questions() const { return question_ids_.size(); }
    std::size_t num_translations() const;  // questions of language "en"
    const GuardOptions& options() const { return options_; }

    // What LineWindow needs of one line: the posting lists its own n-grams hit (sorted, distinct), its normalized
    // length and its first and last n-1 normalized characters (LineWindow adds the n-grams that span a line
    // break, so a question re-wrapped over many lines keeps all its n-grams). Thread-safe; the expensive part, so
    // callers may compute it for many lines in parallel.
    struct LinePostings {
        std::vector<uint32_t> postings;
        uint64_t chars = 0;
        std::u32string head, tail;
    };
    LinePostings line_postings(std::string_view line) const;

private:
    friend class LineWindow;
    std::vector<GuardHit> hits_of(const std::unordered_map<uint32_t, double>& best_by_question) const;

    GuardOptions options_;
    std::vector<std::string> question_ids_;
    std::vector<std::string> question_language_;
    std::vector<uint32_t> unit_question_;  // unit -> question
    std::vector<uint32_t> unit_size_;      // distinct n-grams of the unit
    std::vector<uint32_t> unit_chars_;     // normalized characters of the unit's fields
    uint64_t max_unit_chars_ = 0;
    std::unordered_map<uint64_t, uint32_t> postings_index_;  // n-gram hash -> [begin, end) in postings_
    std::vector<uint32_t> posting_begin_;
    std::vector<uint32_t> postings_;  // unit ids
    std::vector<uint64_t> filter_;    // 2^22-bit prefilter on the hash
};

// The guard over a stream of lines (a `format: lines` file read in order): push() each line's postings with the
// caller's id (its line number), take() the flagged lines that no later line can change any more, finish() at the
// end of the text. Windows of consecutive lines whose interior is at most kLineSpanFactor x the longest question
// are counted incrementally; a question that reaches the threshold in a window is then located exactly (the
// shortest run of lines, see the header comment). Memory: the lines of one window.
class LineWindow {
public:
    explicit LineWindow(const ContaminationGuard& guard);
    void push(uint64_t id, ContaminationGuard::LinePostings line);
    void finish();
    // Flagged lines that are final, in line order (moved out).
    std::vector<std::pair<uint64_t, std::vector<GuardHit>>> take();

private:
    struct Line {
        uint64_t id = 0;
        std::vector<uint32_t> postings;  // its own n-grams and those ending in it that start on earlier lines
        uint64_t chars = 0;
        std::unordered_map<uint32_t, double> flagged;  // question -> best overlap
    };
    void drop_left();
    void locate(uint32_t unit);

    const ContaminationGuard& g_;
    uint64_t max_interior_;
    std::deque<Line> lines_;               // the window: lines_.front() is its first line
    uint64_t interior_ = 0;                // normalized characters of its lines but the first and the last
    std::u32string tail_;                  // the last n-1 normalized characters of the stream so far
    std::vector<uint32_t> posting_count_;  // posting list -> lines of the window holding it
    std::vector<uint32_t> unit_count_;     // unit -> distinct n-grams in the window
    std::vector<uint32_t> unit_need_;      // unit -> distinct n-grams that make `threshold` of it
    std::vector<std::pair<uint64_t, std::vector<GuardHit>>> out_;
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

// Chooses the contamination guard's n and threshold by measurement (README, "Contamination guard"):
//   false positives: every question of the other years (one document each) checked against each year's guard;
//   recall: every question of the guarded years, printed with labels and disguised (full-width, re-wrapped,
//   spaces inserted), must be caught.
//   build/bench/bench_guard_calibrate ../shared/igakuqa_data
//   build/bench/bench_guard_calibrate ../shared/igakuqa_data --years   (the default settings only: a matrix of
//   false-positive rates, corpus year x guarded year, e.g. the 2018 questions checked against the 2022 exam, and
//   the flagged 2018-2021 vs 2022 pairs with their overlap, to read whether they are recurring questions)
//   build/bench/bench_guard_calibrate ../shared/igakuqa_data --english   (IgakuQA's English translations, n 8/10/12
//   x min_ngrams_en 20..80 and none: each year's English questions as the guard, the other years' English questions
//   as documents (false positives) and its own printed with labels and re-wrapped (recall); and the Japanese guard
//   on English documents; the flagged pairs at the default settings)
//   build/bench/bench_guard_calibrate ../shared/igakuqa_data --lines   (the default settings on `format: lines`
//   text: every question written over lines -- stem, one line per choice -- between ordinary lines, checked line
//   by line (as before line windows) and as runs of lines; false positives: the other years' questions as lines)
#include <cstdio>
#include <map>
#include <string>

#include "medllm/data/guard.h"
#include "medllm/eval/igakuqa_data.h"

using namespace medllm;

static std::string disguise(const eval::Question& q) {
    std::string s        = q.problem_text + "\n";
    const char* labels[] = {"ａ．", "ｂ．", "ｃ．", "ｄ．", "ｅ．", "ｆ．", "ｇ．", "ｈ．"};
    for (size_t i = 0; i < q.choices.size(); ++i) s += std::string(labels[i % 8]) + q.choices[i] + "\n";
    std::string out;  // ASCII to full width, a space every 5 bytes outside multi-byte characters
    int n = 0;
    for (unsigned char c : s) {
        if (c >= 0x21 && c <= 0x7E) {
            const char32_t u = 0xFEE0 + c;
            out += char(0xE0 | (u >> 12));
            out += char(0x80 | ((u >> 6) & 0x3F));
            out += char(0x80 | (u & 0x3F));
        } else {
            out += char(c);
        }
        if ((c & 0xC0) != 0x80 && ++n % 5 == 0 && c < 0x80) out += ' ';
    }
    return out;
}

static std::string as_document(const eval::Question& q) {
    std::string doc = q.problem_text;
    for (const auto& c : q.choices) doc += "\n" + c;
    return doc;
}

// Each year's questions (one document each) against each other year's guard at the default settings.
static void year_matrix(const std::vector<eval::Question>& all) {
    const data::GuardOptions o;  // what prepare-corpus uses
    std::printf(
        "guard n=%d threshold=%.2f: flagged share of the corpus year's questions (rows) against the guarded "
        "year's exam (columns)\ncorpus\\guard",
        o.ngram, o.threshold);
    for (int g = 2018; g <= 2022; ++g) std::printf("  %14d", g);
    std::printf("\n");
    std::map<int, data::ContaminationGuard> guards;
    for (int year = 2018; year <= 2022; ++year) {
        std::vector<data::GuardQuestion> qs;
        for (const auto& q : all)
            if (q.year == year) qs.push_back({q.problem_id, q.problem_text, q.choices});
        guards.emplace(year, data::ContaminationGuard(qs, o));
    }
    int64_t pre_fp = 0, pre_n = 0;
    std::vector<std::string> pairs;
    for (int c = 2018; c <= 2022; ++c) {
        std::printf("%-12d", c);
        for (int g = 2018; g <= 2022; ++g) {
            if (c == g) {
                std::printf("  %14s", "-");
                continue;
            }
            int64_t fp = 0, n = 0;
            for (const auto& q : all) {
                if (q.year != c) continue;
                ++n;
                const auto hits = guards.at(g).check(as_document(q));
                fp += !hits.empty();
                if (g == 2022 && !hits.empty()) {
                    char buf[96];
                    std::snprintf(buf, sizeof buf, "%s -> %s (%.2f)", q.problem_id.c_str(),
                                  hits.front().problem_id.c_str(), hits.front().overlap);
                    pairs.push_back(buf);
                }
            }
            if (g == 2022) pre_fp += fp, pre_n += n;
            char cell[48];
            std::snprintf(cell, sizeof cell, "%lld/%lld %.2f%%", (long long)fp, (long long)n, 100.0 * fp / n);
            std::printf("  %14s", cell);
        }
        std::printf("\n");
    }
    std::printf(
        "2018-2021 questions vs the 2022 exam: %lld of %lld flagged = %.2f%%\nflagged pairs (corpus question -> "
        "best 2022 match, overlap):\n",
        (long long)pre_fp, (long long)pre_n, 100.0 * pre_fp / pre_n);
    for (const auto& p : pairs) std::printf("  %s\n", p.c_str());
}

static int year_of(const std::string& id) {
    return std::stoi(id.substr(0, 3)) + 1906;
}

// English translations: per year, its English guard against the other years' English questions (false positives)
// and its own English questions printed with labels and re-wrapped (recall); the Japanese guard of each year on
// the other years' English questions (cross-language false positives).
static void english(const std::string& dir, const std::vector<eval::Question>& all, int ngram, int64_t min_en) {
    data::GuardOptions o;
    o.ngram         = ngram;
    o.min_ngrams_en = min_en;
    const auto en   = data::load_igakuqa_translations(dir, {2018, 2019, 2020, 2021, 2022}, nullptr);
    int64_t fp = 0, checked = 0, caught = 0, planted = 0, cross_fp = 0;
    std::vector<std::string> flagged;
    for (int year = 2018; year <= 2022; ++year) {
        std::vector<data::GuardQuestion> guard_en, guard_ja;
        for (const auto& q : en)
            if (year_of(q.id) == year) guard_en.push_back(q);
        for (const auto& q : all)
            if (q.year == year) guard_ja.push_back({q.problem_id, q.problem_text, q.choices});
        const data::ContaminationGuard g(guard_en, o), gj(guard_ja, o);
        for (const auto& q : en) {
            std::string doc = q.problem_text;
            for (size_t i = 0; i < q.choices.size(); ++i)
                doc += "\n" + std::string(1, char('a' + i)) + ") " + q.choices[i];
            if (year_of(q.id) == year) {
                ++planted;
                std::string wrapped;  // a line break every 23 bytes outside multi-byte characters
                for (size_t i = 0; i < doc.size(); ++i) {
                    wrapped += doc[i];
                    if (i % 23 == 22 && static_cast<unsigned char>(doc[i]) < 0x80) wrapped += '\n';
                }
                for (const auto& h : g.check(wrapped)) caught += h.problem_id == q.id;
            } else {
                ++checked;
                const auto hits = g.check(doc);
                fp += !hits.empty();
                if (!hits.empty() && flagged.size() < 12)
                    flagged.push_back(q.id + " -> " + hits.front().problem_id + " (" +
                                      std::to_string(hits.front().overlap).substr(0, 4) + ")");
                cross_fp += !gj.check(doc).empty();
            }
        }
    }
    std::printf(
        "English, n=%d threshold=%.2f min_ngrams_en=%lld: false positives %lld / %lld = %.4f, recall %lld / "
        "%lld; Japanese guard on English documents: %lld / %lld flagged\n",
        o.ngram, o.threshold, (long long)o.min_ngrams_en, (long long)fp, (long long)checked, double(fp) / checked,
        (long long)caught, (long long)planted, (long long)cross_fp, (long long)checked);
    if (ngram == data::GuardOptions{}.ngram && min_en == data::GuardOptions{}.min_ngrams_en)
        for (const auto& f : flagged) std::printf("  %s\n", f.c_str());
}

// `format: lines`: each question written over lines (stem, one labelled choice per line), questions separated by
// an ordinary line; per year: caught checking each line alone vs. as runs of lines (recall), and the other
// years' questions as lines against the year's guard (false positives: questions with any line flagged).
static void lines(const std::vector<eval::Question>& all) {
    const data::GuardOptions o;
    const std::string filler =
        "診察では圧痛の部位と腹膜刺激徴候を確かめ、血液検査と画像検査を組み合わせて重症度を判断する。";
    int64_t alone = 0, windows = 0, planted = 0, fp = 0, checked = 0;
    for (int year = 2018; year <= 2022; ++year) {
        std::vector<data::GuardQuestion> qs;
        for (const auto& q : all)
            if (q.year == year) qs.push_back({q.problem_id, q.problem_text, q.choices});
        const data::ContaminationGuard g(qs, o);
        std::vector<std::string> text;
        std::vector<std::pair<size_t, size_t>> span;
        std::vector<const eval::Question*> who;
        for (const auto& q : all) {
            text.push_back(filler);
            const size_t first = text.size();
            text.push_back(q.problem_id + "　" + q.problem_text);
            for (size_t i = 0; i < q.choices.size(); ++i)
                text.push_back(std::string(1, char('a' + i)) + "　" + q.choices[i]);
            span.emplace_back(first, text.size());
            who.push_back(&q);
        }
        const auto hits    = g.check_lines(text);
        int64_t year_alone = 0, year_windows = 0;
        for (size_t k = 0; k < who.size(); ++k) {
            const auto& q  = *who[k];
            bool any_alone = false, any_window = false, any_flag = false;
            for (size_t i = span[k].first; i < span[k].second; ++i) {
                for (const auto& h : g.check(text[i])) any_alone = any_alone || h.problem_id == q.problem_id;
                for (const auto& h : hits[i]) any_window = any_window || h.problem_id == q.problem_id;
                any_flag = any_flag || !hits[i].empty();
            }
            if (q.year == year) {
                ++planted;
                year_alone += any_alone;
                year_windows += any_window;
            } else {
                ++checked;
                fp += any_flag;
            }
        }
        alone += year_alone;
        windows += year_windows;
        std::printf("%d: caught line by line %lld / 400, as runs of lines %lld / 400\n", year, (long long)year_alone,
                    (long long)year_windows);
    }
    std::printf(
        "format lines, n=%d threshold=%.2f: caught line by line %lld / %lld, as runs of lines %lld / %lld; "
        "other years' questions flagged %lld / %lld = %.4f\n",
        o.ngram, o.threshold, (long long)alone, (long long)planted, (long long)windows, (long long)planted,
        (long long)fp, (long long)checked, double(fp) / checked);
}

int main(int argc, char** argv) {
    const std::string dir = argc > 1 ? argv[1] : "../shared/igakuqa_data";
    const auto all        = eval::load_questions(dir, {2018, 2019, 2020, 2021, 2022});
    if (argc > 2 && std::string(argv[2]) == "--years") {
        year_matrix(all);
        return 0;
    }
    if (argc > 2 && std::string(argv[2]) == "--english") {
        for (int n : {8, 10, 12})
            for (int64_t m : {int64_t(20), int64_t(40), int64_t(60), int64_t(80), int64_t(1) << 40})
                english(dir, all, n, m);
        return 0;
    }
    if (argc > 2 && std::string(argv[2]) == "--lines") {
        lines(all);
        return 0;
    }
    std::printf("n  threshold  false-positive docs (other years vs one year's guard, mean over years)  recall\n");
    for (int n : {8, 10, 12, 14}) {
        for (double t : {0.5, 0.6, 0.7, 0.8}) {
            data::GuardOptions o;
            o.ngram     = n;
            o.threshold = t;
            int64_t fp = 0, checked = 0, caught = 0, planted = 0;
            for (int year = 2018; year <= 2022; ++year) {
                std::vector<data::GuardQuestion> qs;
                for (const auto& q : all)
                    if (q.year == year) qs.push_back({q.problem_id, q.problem_text, q.choices});
                data::ContaminationGuard g(qs, o);
                for (const auto& q : all) {
                    if (q.year == year) {
                        ++planted;
                        for (const auto& h : g.check(disguise(q))) caught += h.problem_id == q.problem_id;
                    } else {
                        std::string doc = q.problem_text;
                        for (const auto& c : q.choices) doc += "\n" + c;
                        ++checked;
                        fp += !g.check(doc).empty();
                    }
                }
            }
            std::printf("%-2d %-9.2f  %6lld / %lld = %.4f  %lld / %lld\n", n, t, (long long)fp, (long long)checked,
                        double(fp) / checked, (long long)caught, (long long)planted);
        }
    }
}

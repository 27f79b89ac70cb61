// Chooses the contamination guard's n and threshold by measurement (README, "Contamination guard"):
//   false positives: every question of the other years (one document each) checked against each year's guard;
//   recall: every question of the guarded years, printed with labels and disguised (full-width, re-wrapped,
//   spaces inserted), must be caught.
//   build/bench/bench_guard_calibrate ../shared/igakuqa_data
//   build/bench/bench_guard_calibrate ../shared/igakuqa_data --years   (the default settings only: a matrix of
//   false-positive rates, corpus year x guarded year, e.g. the 2018 questions checked against the 2022 exam, and
//   the flagged 2018-2021 vs 2022 pairs with their overlap, to read whether they are recurring questions)
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

int main(int argc, char** argv) {
    const std::string dir = argc > 1 ? argv[1] : "../shared/igakuqa_data";
    const auto all        = eval::load_questions(dir, {2018, 2019, 2020, 2021, 2022});
    if (argc > 2 && std::string(argv[2]) == "--years") {
        year_matrix(all);
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

// Writing an IgakuQA evaluation's report.json and report.md (the paper's table, pass/fail per year).
#include "medllm/eval/igakuqa_report.h"

#include <cstdio>
#include <set>

#include "medllm/core/error.h"
#include "medllm/core/files.h"

namespace medllm::eval {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json tally_json(const Tally& t) {
    return {{"points", t.points},   {"possible", t.possible}, {"normalized_score", t.normalized()},
            {"correct", t.correct}, {"count", t.count},       {"accuracy", t.accuracy()}};
}

std::string fixed4(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4f", v);
    return buf;
}

std::string score_cell(const Tally& t) {
    return fixed4(t.normalized()) + " (" + std::to_string(t.points) + "/" + std::to_string(t.possible) + ")";
}

std::string mode_title(PromptMode mode) {
    return mode == PromptMode::standard ? "3-shot" : "3-shot w/ explanation";
}

// Per question: correct under the primary extraction of each mode.
struct Flip {
    std::string problem_id;
    bool standard_correct;
    bool explanation_correct;
};

std::vector<Flip> flipped_questions(const ModeResult& standard, const ModeResult& explanation,
                                    const std::vector<Question>& questions) {
    std::vector<Flip> flips;
    for (size_t i = 0; i < questions.size(); ++i) {
        const bool s = standard.primary().correct[i];
        const bool e = explanation.primary().correct[i];
        if (s != e) flips.push_back({questions[i].problem_id, s, e});
    }
    return flips;
}

}  // namespace

json summary_json(const ScoreSummary& summary) {
    json j                          = tally_json(summary.total);
    j["year_mean_normalized_score"] = summary.year_mean_normalized;
    json years                      = json::array();
    for (const auto& y : summary.years) {
        json yj       = tally_json(y.total);
        yj["year"]    = y.year;
        yj["exam"]    = y.exam;
        json sections = json::object();
        for (const auto& [section, t] : y.sections) sections[std::string(1, section)] = tally_json(t);
        yj["sections"]        = sections;
        yj["required"]        = tally_json(y.required);
        yj["general"]         = tally_json(y.general);
        yj["kinki_selected"]  = y.kinki_selected;
        yj["kinki_questions"] = y.kinki_questions;
        if (y.thresholds) {
            yj["required"]["threshold"] = y.thresholds->required_min;
            yj["general"]["threshold"]  = y.thresholds->general_min;
            yj["kinki_max"]             = y.thresholds->max_kinki;
        }
        yj["complete"]           = y.complete;
        yj["expected_questions"] = y.expected_questions;
        yj["expected_points"]    = y.expected_points;
        yj["passed"]             = y.passed ? json(*y.passed) : json(nullptr);
        if (!y.passed) yj["no_verdict"] = y.no_verdict_reason();
        years.push_back(yj);
    }
    j["years"]      = years;
    json categories = json::object();
    for (const auto& [name, t] : summary.categories) categories[name] = tally_json(t);
    j["categories"] = categories;
    j["missing"]    = summary.missing;
    j["incorrect"]  = summary.incorrect;
    return j;
}

json report_json(const EvalResult& result, const std::vector<Question>& questions) {
    json j;
    j["benchmark"]     = "IgakuQA";
    j["model"]         = result.model;
    j["source"]        = result.source;
    j["prompt_format"] = result.prompt_format;
    j["years"]         = result.years;
    j["questions"]     = questions.size();
    json modes         = json::object();
    for (const auto& m : result.modes) {
        json mj;
        mj["primary"]          = m.primary_name();
        mj["normalized_score"] = m.primary().total.normalized();
        mj["points"]           = m.primary().total.points;
        mj["possible"]         = m.primary().total.possible;
        mj["official"]         = summary_json(m.official);
        mj["lenient"]          = summary_json(m.lenient);
        json unparseable       = json::array();
        for (size_t i = 0; i < questions.size(); ++i)
            if (m.predictions[i] && !m.predictions[i]->extracted) unparseable.push_back(questions[i].problem_id);
        mj["unparseable"]        = unparseable;
        modes[to_string(m.mode)] = mj;
    }
    j["modes"] = modes;

    const ModeResult* standard    = result.find(PromptMode::standard);
    const ModeResult* explanation = result.find(PromptMode::explanation);
    if (standard && explanation) {
        json gap;
        gap["definition"]  = "normalized score with explanation minus without, primary extraction of each mode";
        gap["standard"]    = standard->primary().total.normalized();
        gap["explanation"] = explanation->primary().total.normalized();
        gap["overall"]     = explanation->primary().total.normalized() - standard->primary().total.normalized();
        json years         = json::array();
        for (size_t i = 0; i < standard->primary().years.size(); ++i) {
            const auto& s = standard->primary().years[i];
            const auto& e = explanation->primary().years[i];
            years.push_back({{"year", s.year},
                             {"standard", s.total.normalized()},
                             {"explanation", e.total.normalized()},
                             {"gap", e.total.normalized() - s.total.normalized()}});
        }
        gap["years"] = years;
        json flipped = json::array();
        int gained = 0, lost = 0;
        for (const auto& f : flipped_questions(*standard, *explanation, questions)) {
            flipped.push_back({{"problem_id", f.problem_id},
                               {"standard_correct", f.standard_correct},
                               {"explanation_correct", f.explanation_correct}});
            (f.explanation_correct ? gained : lost)++;
        }
        gap["gained"]      = gained;
        gap["lost"]        = lost;
        gap["flipped"]     = flipped;
        j["stability_gap"] = gap;
    }
    return j;
}

std::string report_markdown(const EvalResult& result) {
    const ModeResult* standard    = result.find(PromptMode::standard);
    const ModeResult* explanation = result.find(PromptMode::explanation);
    std::string md                = "# IgakuQA: " + result.model + "\n\n";
    md += "Normalized score = points earned / points possible, pooled over ";
    for (size_t i = 0; i < result.years.size(); ++i) md += (i ? ", " : "") + std::to_string(result.years[i]);
    md += result.prompt_format.empty() ? ".\n\n" : " (prompt format: " + result.prompt_format + ").\n\n";

    md += "| Model | 3-shot | 3-shot w/ explanation |\n|---|---:|---:|\n";
    md += "| " + result.model + " | " + (standard ? score_cell(standard->primary().total) : "–") + " | " +
          (explanation ? score_cell(explanation->primary().total) : "–") + " |\n\n";

    for (const auto& m : result.modes) {
        const ScoreSummary& s = m.primary();
        md += "## " + mode_title(m.mode) + " (" + m.primary_name() + " extraction)\n\n";
        md += "| Year | Points | Score | 必修 B+E | 一般 A+C+D+F | 禁忌 | Pass |\n|---|---:|---:|---:|---:|---:|---|\n";
        for (const auto& y : s.years) {
            const auto th = y.thresholds;
            md += "| " + std::to_string(y.year) + " | " + std::to_string(y.total.points) + "/" +
                  std::to_string(y.total.possible) + " | " + fixed4(y.total.normalized()) + " | " +
                  std::to_string(y.required.points) + "/" + std::to_string(y.required.possible) +
                  (th ? " (≥" + std::to_string(th->required_min) + ")" : "") + " | " +
                  std::to_string(y.general.points) + "/" + std::to_string(y.general.possible) +
                  (th ? " (≥" + std::to_string(th->general_min) + ")" : "") + " | " + std::to_string(y.kinki_selected) +
                  (th ? " (≤" + std::to_string(th->max_kinki) + ")" : "") + " | " +
                  (y.passed ? (*y.passed ? "pass" : "fail") : y.no_verdict_reason()) + " |\n";
        }
        md += "| all | " + std::to_string(s.total.points) + "/" + std::to_string(s.total.possible) + " | " +
              fixed4(s.total.normalized()) + " | | | | |\n\n";
        const ScoreSummary& other = m.lenient_primary ? m.official : m.lenient;
        md += std::string("Other extraction (") + (m.lenient_primary ? "official" : "lenient") +
              ", not comparable with the headline): " + score_cell(other.total) +
              ". Per-question accuracy: " + fixed4(s.total.accuracy()) + " (" + std::to_string(s.total.correct) + "/" +
              std::to_string(s.total.count) + ")";
        if (!s.missing.empty()) md += "; " + std::to_string(s.missing.size()) + " questions had no prediction";
        md += ".\n\n";
    }

    if (standard && explanation) {
        md +=
            "## Stability gap (w/ explanation − 3-shot)\n\n| Year | 3-shot | w/ explanation | gap "
            "|\n|---|---:|---:|---:|\n";
        for (size_t i = 0; i < standard->primary().years.size(); ++i) {
            const double s = standard->primary().years[i].total.normalized();
            const double e = explanation->primary().years[i].total.normalized();
            md += "| " + std::to_string(standard->primary().years[i].year) + " | " + fixed4(s) + " | " + fixed4(e) +
                  " | " + (e - s >= 0 ? "+" : "") + fixed4(e - s) + " |\n";
        }
        const double s = standard->primary().total.normalized();
        const double e = explanation->primary().total.normalized();
        md += "| all | " + fixed4(s) + " | " + fixed4(e) + " | " + (e - s >= 0 ? "+" : "") + fixed4(e - s) + " |\n\n";
    }

    md += "## Accuracy by category\n\n| Category | Questions |";
    for (const auto& m : result.modes) md += " " + mode_title(m.mode) + " |";
    md += "\n|---|---:|";
    for (size_t i = 0; i < result.modes.size(); ++i) md += "---:|";
    md += "\n";
    if (!result.modes.empty()) {
        for (const auto& [name, t] : result.modes.front().primary().categories) {
            md += "| " + name + " | " + std::to_string(t.count) + " |";
            for (const auto& m : result.modes) md += " " + fixed4(m.primary().categories.at(name).accuracy()) + " |";
            md += "\n";
        }
    }
    return md;
}

void write_reports(const fs::path& dir, const EvalResult& result, const std::vector<Question>& questions) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw Error(dir.string() + ": cannot create directory (" + ec.message() + ")");
    // Each report goes through a temporary and a rename: a full disk leaves the previous report (or none), never a
    // cut one under the final name, and the error names the file.
    write_file_atomic(dir / "report.json", dump_json(report_json(result, questions), 2) + "\n");
    write_file_atomic(dir / "report.md", report_markdown(result));
    std::string scored;
    for (const auto& m : result.modes) {
        for (size_t i = 0; i < questions.size(); ++i) {
            const auto& p = m.predictions[i];
            json line     = {{"problem_id", questions[i].problem_id},
                             {"mode", to_string(m.mode)},
                             {"answer", questions[i].answer},
                             {"points", questions[i].points},
                             {"prediction", p ? json(p->prediction) : json(nullptr)},
                             {"extracted", p && p->extracted ? json(*p->extracted) : json(nullptr)},
                             {"correct_official", static_cast<bool>(m.official.correct[i])},
                             {"correct_lenient", static_cast<bool>(m.lenient.correct[i])}};
            scored += dump_json(line) + "\n";
        }
    }
    write_file_atomic(dir / "scored.jsonl", scored);
}

}  // namespace medllm::eval

// The pipeline report (include/medllm/pipeline/report.h).
#include "medllm/pipeline/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/eval/igakuqa_data.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace medllm::pipeline {
namespace {

std::string pct(const json& v) {
    if (!v.is_number()) return "-";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", 100.0 * v.get<double>());
    return buf;
}

std::string signed_pct(const json& v) {
    if (!v.is_number()) return "-";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%+.1f", 100.0 * v.get<double>());
    return buf;
}

std::string html_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '&':
                out += "&amp;";
                break;
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '"':
                out += "&quot;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

// {standard, explanation, gap} from two normalized scores (either may be missing).
json columns(const json& standard, const json& explanation) {
    json c = {{"standard", standard}, {"explanation", explanation}, {"gap", nullptr}};
    if (standard.is_number() && explanation.is_number()) c["gap"] = explanation.get<double>() - standard.get<double>();
    return c;
}

json score_of(const json& mode) {
    return mode.is_object() && mode.contains("normalized_score") ? mode["normalized_score"] : json(nullptr);
}

// Points of one year in a summary_json (null when absent).
json year_points(const json& summary, int year) {
    if (!summary.is_object()) return nullptr;
    for (const auto& y : summary.value("years", json::array()))
        if (y.value("year", 0) == year) return y.value("points", 0);
    return nullptr;
}

json read_row(const ReportRow& row, const json& pass_lines) {
    const fs::path report_file = row.eval_dir / "report.json";
    if (!fs::exists(report_file)) throw Error(report_file.string() + ": missing (the eval stage did not finish)");
    const json r     = read_json_file(report_file);
    const json modes = r.value("modes", json::object());
    const json st    = modes.value("standard", json());
    const json ex    = modes.value("explanation", json());
    json out         = {{"name", row.name}, {"model", r.value("model", "")}, {"questions", r.value("questions", 0)}};
    // Each scoring: the summaries (summary_json shape) of its 3-shot and w/ explanation columns.
    std::vector<std::pair<std::string, std::pair<json, json>>> scorings;
    auto primary = [](const json& mode) {
        return mode.is_object() ? mode.value(mode.value("primary", "official"), json()) : json();
    };
    scorings.push_back({"letters", {primary(st), primary(ex)}});
    const fs::path options_file = row.eval_dir / "option_scores.json";
    if (fs::exists(options_file)) {
        const json o = read_json_file(options_file);
        scorings.push_back({"answer_text", {o.value("text_standard", json()), o.value("text_explanation", json())}});
        scorings.push_back({"option_ll", {o.value("standard", json()), o.value("explanation", json())}});
    }
    std::vector<int> years;
    for (const auto& y : primary(st).value("years", json::array())) years.push_back(y.value("year", 0));
    json scores = json::object();
    for (const auto& [name, pair] : scorings) {
        const auto& [s3, se] = pair;
        json c               = columns(score_of(s3), score_of(se));
        if (s3.is_object() && s3.contains("gold_margin")) c["gold_margin"] = s3["gold_margin"];
        if (se.is_object() && se.contains("gold_margin")) c["gold_margin_explanation"] = se["gold_margin"];
        json yj = json::array();
        for (int year : years) {
            json y = {{"year", year}, {"points", year_points(s3, year)}, {"points_explanation", year_points(se, year)}};
            int possible = 0;
            for (const auto& py : primary(st).value("years", json::array()))
                if (py.value("year", 0) == year) {
                    possible               = py.value("possible", 0);
                    y["evaluator_passed"]  = py.contains("passed") ? py["passed"] : json(nullptr);
                    y["evaluator_verdict"] = py.value("no_verdict", "");
                }
            y["possible"]         = possible;
            const std::string key = std::to_string(year);
            if (pass_lines.is_object() && pass_lines.contains(key)) {
                const double line = pass_lines[key].value("pass_fraction", 1.0) * possible;
                y["pass_line"]    = line;
                y["passed"]       = y["points"].is_number() ? json(y["points"].get<double>() >= line) : json(nullptr);
                y["passed_explanation"] = y["points_explanation"].is_number()
                                              ? json(y["points_explanation"].get<double>() >= line)
                                              : json(nullptr);
            } else {
                y["passed"] = y["evaluator_passed"];
            }
            yj.push_back(y);
        }
        c["years"]   = yj;
        scores[name] = c;
    }
    out["scores"] = scores;
    return out;
}

// metrics.jsonl -> {key: [[step, value], ...]} for the curve keys.
json read_curves(const fs::path& file) {
    static const std::vector<std::string> keys = {
        "loss",           "eval_loss",        "rewards/accuracies", "rewards/margins",
        "rewards/chosen", "rewards/rejected", "nll_loss",           "accuracy"};
    json series = json::object();
    for (const auto& r : eval::read_jsonl(file)) {
        if (!r.contains("step") || !r["step"].is_number()) continue;
        for (const auto& k : keys)
            if (r.contains(k) && r[k].is_number() && std::isfinite(r[k].get<double>()))
                series[k].push_back({r["step"], r[k]});
    }
    return series;
}

std::string yes_no(const json& v) {
    if (v.is_boolean()) return v.get<bool>() ? "pass" : "fail";
    return "-";
}

}  // namespace

json build_report(const ReportInputs& inputs) {
    json report = {{"title", inputs.title}, {"rows", json::array()}, {"curves", json::array()}};
    for (const auto& row : inputs.rows) report["rows"].push_back(read_row(row, inputs.pass_lines));
    for (const auto& [label, file] : inputs.curves)
        report["curves"].push_back({{"label", label}, {"file", file.string()}, {"series", read_curves(file)}});
    report["timings_seconds"] = inputs.timings.is_null() ? json::object() : inputs.timings;
    report["scorings"]        = {
               {"letters", "the evaluator's extraction of the generated answers (official in 3-shot)"},
               {"answer_text", "the generated answers read as option text and mapped to the label"},
               {"option_ll", "option-text log-likelihood, 0-shot (w/ explanation: after the model's own explanation)"},
               {"gap", "3-shot w/ explanation minus 3-shot"}};
    return report;
}

std::string report_table(const json& report) {
    static const std::vector<std::pair<std::string, std::string>> kScorings = {
        {"letters", "letters (official)"}, {"answer_text", "answer text -> label"}, {"option_ll", "option-text LL"}};
    std::vector<int> years;
    if (!report["rows"].empty())
        for (const auto& y : report["rows"][0]["scores"]["letters"]["years"]) years.push_back(y.value("year", 0));
    std::string out = "| model | scoring | 3-shot | 3-shot w/ expl. | gap |";
    std::string sep = "|---|---|---:|---:|---:|";
    for (int y : years) {
        out += " " + std::to_string(y) + " points (3-shot / w/ expl.) | " + std::to_string(y) + " pass |";
        sep += "---:|---|";
    }
    out += "\n" + sep + "\n";
    auto num = [](const json& v) { return v.is_number() ? std::to_string(v.get<int64_t>()) : std::string("-"); };
    for (const auto& r : report["rows"]) {
        for (const auto& [key, label] : kScorings) {
            if (!r["scores"].contains(key)) continue;
            const json c      = r["scores"][key];
            std::string shown = label;
            if (c.contains("gold_margin") && c["gold_margin"].is_number()) {
                char buf[48];
                std::snprintf(buf, sizeof buf, " (margin %.3f)", c["gold_margin"].get<double>());
                shown += buf;
            }
            out += "| " + r.value("name", "") + " | " + shown + " | " + pct(c["standard"]) + " | " +
                   pct(c["explanation"]) + " | " + signed_pct(c["gap"]) + " |";
            for (const auto& y : c["years"])
                out += " " + num(y["points"]) + " / " + num(y["points_explanation"]) + " of " + num(y["possible"]) +
                       " | " + yes_no(y["passed"]) + " / " + yes_no(y.value("passed_explanation", json())) + " |";
            out += "\n";
        }
    }
    out +=
        "\nScores are % of points; gap = w/ explanation minus 3-shot. letters: the evaluator's extraction of the "
        "generated answers (`eval igakuqa`, official in 3-shot). answer text -> label: the same generated answers, "
        "read as option text (eval::choice_named_by_text). option-text LL: the option whose text has the highest "
        "mean log-likelihood after the question (0-shot; w/ expl.: after the model's own explanation); margin: the "
        "gold "
        "option's mean log-prob per token minus the other options' average (3-shot column). pass: the "
        "world's pass line (report.pass_lines) when given, else the evaluator's MHLW verdict.\n";
    return out;
}

std::string svg_chart(const std::string& title,
                      const std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>>& series) {
    static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
    const double w = 440, h = 240, l = 50, r = 10, t = 28, b = 30;
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    for (const auto& [_, pts] : series)
        for (const auto& [x, y] : pts) {
            x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
        }
    char buf[256];
    std::string out;
    std::snprintf(buf, sizeof buf, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" ", w, h);
    out += buf;
    out +=
        "font-family=\"sans-serif\" font-size=\"11\"><rect width=\"100%\" height=\"100%\" fill=\"white\" "
        "stroke=\"#ccc\"/>";
    out += "<text x=\"8\" y=\"16\" font-weight=\"bold\">" + html_escape(title) + "</text>";
    if (x0 > x1) return out + "<text x=\"50\" y=\"120\">no data</text></svg>";
    if (x1 == x0) x1 = x0 + 1;
    if (y1 == y0) y1 = y0 + 1;
    auto px = [&](double x) { return l + (x - x0) / (x1 - x0) * (w - l - r); };
    auto py = [&](double y) { return t + (1 - (y - y0) / (y1 - y0)) * (h - t - b); };
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#888\"/>"
                  "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#888\"/>",
                  l, h - b, w - r, h - b, l, t, l, h - b);
    out += buf;
    std::snprintf(buf, sizeof buf,
                  "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%.3g</text><text x=\"%.0f\" y=\"%.0f\" "
                  "text-anchor=\"end\">%.3g</text><text x=\"%.0f\" y=\"%.0f\">%.0f</text><text x=\"%.0f\" y=\"%.0f\" "
                  "text-anchor=\"end\">step %.0f</text>",
                  l - 4, t + 4, y1, l - 4, h - b, y0, l, h - b + 14, x0, w - r, h - b + 14, x1);
    out += buf;
    int ci = 0;
    for (const auto& [label, pts] : series) {
        if (pts.empty()) continue;
        const char* color = colors[ci % 6];
        std::string poly;
        for (const auto& [x, y] : pts) {
            std::snprintf(buf, sizeof buf, "%.1f,%.1f ", px(x), py(y));
            poly += buf;
        }
        out += std::string("<polyline fill=\"none\" stroke=\"") + color + "\" stroke-width=\"1.5\" points=\"" + poly +
               "\"/>";
        if (pts.size() == 1) {
            std::snprintf(buf, sizeof buf, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>", px(pts[0].first),
                          py(pts[0].second), color);
            out += buf;
        }
        std::snprintf(buf, sizeof buf, "<text x=\"%.0f\" y=\"%d\" fill=\"%s\">", w - r - 150, 16 + 13 * ci, color);
        out += buf + html_escape(label) + "</text>";
        ++ci;
    }
    return out + "</svg>";
}

std::string report_html(const json& report) {
    std::string out = "<!DOCTYPE html>\n<html lang=\"ja\"><head><meta charset=\"utf-8\"><title>" +
                      html_escape(report.value("title", "")) +
                      "</title><style>body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}"
                      "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}td:nth-child(-n+2){text-align:left}"
                      ".charts svg{margin:6px}</style></head><body>\n<h1>" +
                      html_escape(report.value("title", "")) + "</h1>\n";
    // The table, rendered from the markdown lines.
    const std::string table = report_table(report);
    out += "<table>\n";
    size_t pos  = 0;
    int line_no = 0;
    std::string notes;
    while (pos < table.size()) {
        size_t eol = table.find('\n', pos);
        if (eol == std::string::npos) eol = table.size();
        const std::string line = table.substr(pos, eol - pos);
        pos                    = eol + 1;
        if (line.rfind("|", 0) != 0) {
            if (!line.empty()) notes += "<p>" + html_escape(line) + "</p>\n";
            continue;
        }
        if (line_no++ == 1) continue;  // the markdown separator
        const char* cell = line_no == 1 ? "th" : "td";
        out += "<tr>";
        size_t c = 1;
        while (c < line.size()) {
            size_t next = line.find('|', c);
            if (next == std::string::npos) break;
            std::string text = line.substr(c, next - c);
            while (!text.empty() && text.front() == ' ') text.erase(0, 1);
            while (!text.empty() && text.back() == ' ') text.pop_back();
            out += std::string("<") + cell + ">" + html_escape(text) + "</" + cell + ">";
            c = next + 1;
        }
        out += "</tr>\n";
    }
    out += "</table>\n" + notes + "<h2>Training curves</h2>\n<div class=\"charts\">\n";
    for (const auto& c : report["curves"]) {
        const json s = c["series"];
        auto pick    = [&](std::vector<std::string> keys) {
            std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> out_series;
            for (const auto& k : keys) {
                if (!s.contains(k)) continue;
                std::vector<std::pair<double, double>> pts;
                for (const auto& p : s[k]) pts.push_back({p[0].get<double>(), p[1].get<double>()});
                out_series.push_back({k, pts});
            }
            return out_series;
        };
        const std::string label = c.value("label", "");
        auto losses             = pick({"loss", "eval_loss", "nll_loss"});
        if (!losses.empty()) out += svg_chart(label + ": loss", losses) + "\n";
        auto acc = pick({"rewards/accuracies"});
        if (!acc.empty()) out += svg_chart(label + ": reward accuracy", acc) + "\n";
        auto margins = pick({"rewards/margins", "rewards/chosen", "rewards/rejected"});
        if (!margins.empty()) out += svg_chart(label + ": rewards", margins) + "\n";
    }
    out += "</div>\n<h2>Stage times (s)</h2>\n<p>";
    for (auto it = report["timings_seconds"].begin(); it != report["timings_seconds"].end(); ++it) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.1f", it.value().get<double>());
        out += html_escape(it.key()) + " " + buf + " &middot; ";
    }
    return out + "</p>\n</body></html>\n";
}

std::string write_pipeline_report(const fs::path& dir, const ReportInputs& inputs) {
    const json report = build_report(inputs);
    fs::create_directories(dir);
    const std::string table = report_table(report);
    write_file_atomic(dir / "report.json", dump_json(report, 2) + "\n");
    write_file_atomic(dir / "report.md", "# " + inputs.title + "\n\n" + table);
    write_file_atomic(dir / "report.html", report_html(report));
    return table;
}

}  // namespace medllm::pipeline

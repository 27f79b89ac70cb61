// The pipeline's final report (paper Table 2's shape): one row per model with 3-shot, 3-shot with explanation and
// the gap between them — for the evaluator's generated answers and for the option-text log-likelihood — plus
// per-year points and pass/fail, as a printed table, report.md, report.json, and a self-contained report.html with
// the training curves (CPT loss / validation loss, RPO loss, reward accuracy and margins) as inline SVG.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace medllm::pipeline {

struct ReportRow {
    std::string name;                // "base", "+CPT", ...
    std::filesystem::path eval_dir;  // report.json (evaluator) and option_scores.json (optional)
};

struct ReportInputs {
    std::string title;
    std::vector<ReportRow> rows;
    std::vector<std::pair<std::string, std::filesystem::path>> curves;  // label, metrics.jsonl
    nlohmann::json pass_lines;                                          // {"<year>": {"pass_fraction": x}} or null
    nlohmann::json timings;                                             // stage -> seconds
};

// Reads the rows' reports and builds report.json's content (throws medllm::Error naming a missing/bad file).
nlohmann::json build_report(const ReportInputs& inputs);
std::string report_table(const nlohmann::json& report);  // the printed table (markdown)
std::string report_html(const nlohmann::json& report);   // self-contained HTML with inline SVG
// Writes report.json, report.md and report.html into `dir` atomically; returns the table.
std::string write_pipeline_report(const std::filesystem::path& dir, const ReportInputs& inputs);

// An SVG line chart of `series` (label -> [(x, y)...]); empty series are skipped. Exposed for tests.
std::string svg_chart(const std::string& title,
                      const std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>>& series);

}  // namespace medllm::pipeline

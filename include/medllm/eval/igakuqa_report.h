// Reports of an IgakuQA evaluation: report.json, report.md (a table like the paper's, per-year pass/fail,
// per-category accuracy, the explanation stability gap) and scored.jsonl (one line per question and mode).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/eval/igakuqa_evaluator.h"

namespace medllm::eval {

nlohmann::json summary_json(const ScoreSummary& summary);
nlohmann::json report_json(const EvalResult& result, const std::vector<Question>& questions);
std::string report_markdown(const EvalResult& result);

// Writes report.json, report.md and scored.jsonl into `dir` (created if needed).
void write_reports(const std::filesystem::path& dir, const EvalResult& result, const std::vector<Question>& questions);

}  // namespace medllm::eval

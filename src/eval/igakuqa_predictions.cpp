// Reading predictions made elsewhere and writing the evaluator's predictions.jsonl.
#include "medllm/eval/igakuqa_predictions.h"

#include <algorithm>
#include <fstream>
#include <regex>
#include <set>

#include "medllm/core/error.h"
#include "medllm/eval/igakuqa_answer.h"

namespace medllm::eval {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string where(const fs::path& file, size_t line) {
    return file.string() + ":" + std::to_string(line);
}

std::string string_field(const json& j, const char* key, const std::string& at) {
    auto it = j.find(key);
    if (it == j.end()) throw Error(at + ": missing key '" + key + "'");
    if (!it->is_string()) throw Error(at + ": key '" + key + "' must be a string");
    return it->get<std::string>();
}

// Reads one predictions file into `out`; `id_prefix` ("112A") restricts ids to one section when non-empty.
void read_prediction_file(const fs::path& file, const std::string& id_prefix, ExternalPredictions& out) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw Error(file.string() + ": cannot open file");
    std::string text;
    size_t line = 0;
    while (std::getline(in, text)) {
        ++line;
        if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
        json j;
        try {
            j = json::parse(text);
        } catch (const json::exception& e) {
            throw Error(where(file, line) + ": invalid JSON (" + e.what() + ")");
        }
        if (!j.is_object()) throw Error(where(file, line) + ": expected a JSON object");
        const std::string at = where(file, line);
        PredictionInput input;
        const std::string id = string_field(j, "problem_id", at);
        input.prediction     = string_field(j, "prediction", at);
        std::string mode;
        if (j.contains("mode")) {
            mode = string_field(j, "mode", at);
            parse_prompt_mode(mode);  // validates
        }
        if (j.contains("raw_output")) input.raw_output = string_field(j, "raw_output", at);
        if (!id_prefix.empty() && id.rfind(id_prefix, 0) != 0)
            throw Error(at + ": problem_id '" + id + "' does not belong to section " + id_prefix);
        auto& by_id = out.by_mode[mode];
        if (!by_id.emplace(id, std::move(input)).second)
            throw Error(at + ": problem_id '" + id + "' appears twice" + (mode.empty() ? "" : " for mode " + mode));
    }
}

}  // namespace

ExternalPredictions load_external_predictions(const fs::path& file_or_dir) {
    ExternalPredictions out;
    if (fs::is_regular_file(file_or_dir)) {
        out.model_name = file_or_dir.stem().string();
        read_prediction_file(file_or_dir, "", out);
        out.files.push_back(file_or_dir);
        return out;
    }
    if (!fs::is_directory(file_or_dir))
        throw UsageError("--predictions " + file_or_dir.string() + ": no such file or directory");

    // <exam>-<section>_<name>.jsonl, in <year>/ subfolders or directly in the folder.
    static const std::regex section_file(R"((\d{3})-([A-F])_(.+)\.jsonl)");
    std::vector<fs::path> candidates;
    for (const auto& entry : fs::directory_iterator(file_or_dir)) {
        if (entry.is_directory()) {
            for (const auto& inner : fs::directory_iterator(entry.path()))
                if (inner.is_regular_file()) candidates.push_back(inner.path());
        } else if (entry.is_regular_file()) {
            candidates.push_back(entry.path());
        }
    }
    std::sort(candidates.begin(), candidates.end());
    std::set<std::string> names;
    for (const auto& file : candidates) {
        std::smatch m;
        const std::string filename = file.filename().string();
        if (!std::regex_match(filename, m, section_file)) continue;
        names.insert(m[3].str());
        read_prediction_file(file, m[1].str() + m[2].str(), out);
        out.files.push_back(file);
    }
    if (names.empty())
        throw UsageError("--predictions " + file_or_dir.string() +
                         ": no <exam>-<section>_<name>.jsonl files (e.g. 2018/112-A_chatgpt.jsonl)");
    if (names.size() > 1) {
        std::string list;
        for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
        throw UsageError("--predictions " + file_or_dir.string() + ": holds several models (" + list +
                         "); put one model per folder");
    }
    out.model_name = *names.begin();
    return out;
}

json PredictionRecord::to_json() const {
    json j;
    j["problem_id"]    = problem_id;
    j["mode"]          = to_string(mode);
    j["prompt_format"] = prompt_format;
    j["prompt"]        = prompt;
    j["raw_output"]    = raw_output;
    j["prediction"]    = prediction;
    j["extracted"]     = extracted ? json(*extracted) : json(nullptr);
    return j;
}

PredictionRecord PredictionRecord::from_json(const json& j, const std::string& at) {
    if (!j.is_object()) throw Error(at + ": expected a JSON object");
    PredictionRecord r;
    r.problem_id    = string_field(j, "problem_id", at);
    r.mode          = parse_prompt_mode(string_field(j, "mode", at));
    r.prompt_format = string_field(j, "prompt_format", at);
    r.raw_output    = string_field(j, "raw_output", at);
    r.prediction    = string_field(j, "prediction", at);
    if (j.contains("prompt")) r.prompt = string_field(j, "prompt", at);
    auto it = j.find("extracted");
    if (it != j.end() && it->is_string()) r.extracted = it->get<std::string>();
    return r;
}

std::string official_prediction_for_mode(const std::string& raw_output, PromptMode mode) {
    const std::string normalized = official_prediction(raw_output);
    if (mode == PromptMode::standard) return normalized;
    const size_t after = find_after_last_answer_marker(normalized);
    return after == std::string::npos ? normalized : normalized.substr(after);
}

PredictionRecord make_prediction_record(const Question& question, PromptMode mode, PromptFormat format,
                                        const std::string& prompt, const std::string& raw_output) {
    PredictionRecord r;
    r.problem_id      = question.problem_id;
    r.mode            = mode;
    r.prompt_format   = to_string(format);
    r.prompt          = prompt;
    r.raw_output      = raw_output;
    r.prediction      = official_prediction_for_mode(raw_output, mode);
    const auto answer = extract_answer(raw_output, answer_spec(question));
    if (answer.parsed) r.extracted = answer.as_prediction();
    return r;
}

}  // namespace medllm::eval

#include "medllm/eval/evaluator.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <fstream>

#include "medllm/core/error.h"
#include "medllm/core/progress.h"
#include "medllm/eval/answer.h"

namespace medllm::eval {
namespace fs = std::filesystem;
using nlohmann::json;

const ModeResult* EvalResult::find(PromptMode mode) const {
    for (const auto& m : modes)
        if (m.mode == mode) return &m;
    return nullptr;
}

ModeResult score_mode(const std::vector<Question>& questions, PromptMode mode, bool lenient_primary,
                      std::vector<std::optional<ScoredPrediction>> predictions) {
    ModeResult result;
    result.mode            = mode;
    result.lenient_primary = lenient_primary;
    std::vector<ScoredItems> official_items, lenient_items;
    for (const auto& p : predictions) {
        if (!p) {
            official_items.emplace_back();
            lenient_items.emplace_back();
            continue;
        }
        official_items.emplace_back(official_split(p->prediction));
        // Unparseable: no items, which matches no gold answer (116A71 is credited regardless, as officially).
        lenient_items.emplace_back(p->extracted ? official_split(*p->extracted) : std::vector<std::string>{});
    }
    result.official    = score_questions(questions, official_items);
    result.lenient     = score_questions(questions, lenient_items);
    result.predictions = std::move(predictions);
    return result;
}

namespace {

json run_identity(const std::string& model, const ModelEvalOptions& options,
                  const std::vector<FewShotExample>& examples) {
    json examples_ids = json::array();
    for (const auto& ex : examples) examples_ids.push_back(ex.problem_id);
    return {{"model", model},
            {"prompt_format", to_string(options.format)},
            {"few_shot", examples_ids},
            {"standard_max_new_tokens", options.standard_params.max_new_tokens},
            {"explanation_max_new_tokens", options.explanation_params.max_new_tokens}};
}

// A rerun may only continue predictions made under the same settings.
void check_or_write_run_identity(const fs::path& dir, const json& identity) {
    const fs::path file = dir / "run.json";
    if (fs::exists(file) && fs::exists(dir / "predictions.jsonl")) {
        std::ifstream in(file);
        json saved;
        try {
            saved = json::parse(in);
        } catch (const json::exception& e) {
            throw Error(file.string() + ": invalid JSON (" + e.what() + ")");
        }
        for (const auto& [key, value] : identity.items()) {
            if (!saved.contains(key) || saved[key] != value)
                throw UsageError(file.string() + ": key '" + key + "' was " +
                                 (saved.contains(key) ? saved[key].dump() : "absent") + " in the saved run, now " +
                                 value.dump() + "; use a new --output to start over");
        }
        return;
    }
    std::ofstream out(file);
    out << identity.dump(2) << '\n';
    if (!out) throw Error(file.string() + ": write failed");
}

}  // namespace

EvalResult evaluate_model(const std::vector<Question>& questions, const std::vector<FewShotExample>& examples,
                          CompletionBackend& backend, const ModelEvalOptions& options, const std::vector<int>& years) {
    if (options.batch_size < 1)
        throw UsageError("batch size must be at least 1, got " + std::to_string(options.batch_size));
    std::error_code ec;
    fs::create_directories(options.output_dir, ec);
    if (ec) throw Error(options.output_dir.string() + ": cannot create directory (" + ec.message() + ")");
    EvalResult result;
    result.model         = backend.model_name();
    result.source        = "model";
    result.prompt_format = to_string(options.format);
    result.years         = years;
    check_or_write_run_identity(options.output_dir, run_identity(result.model, options, examples));
    PredictionStore store(options.output_dir / "predictions.jsonl");

    for (PromptMode mode : options.modes) {
        std::map<std::string, PredictionRecord> saved = store.load(mode);
        GenerationParams params = mode == PromptMode::standard ? options.standard_params : options.explanation_params;
        if (options.format == PromptFormat::base) {
            for (auto& s : base_stop_strings(mode)) params.stop.push_back(s);
        }
        std::vector<size_t> todo;
        for (size_t i = 0; i < questions.size(); ++i)
            if (!saved.count(questions[i].problem_id)) todo.push_back(i);
        spdlog::info("igakuqa {}: {} questions, {} saved, {} to generate (batch {})", to_string(mode), questions.size(),
                     questions.size() - todo.size(), todo.size(), options.batch_size);

        // Every batch is a line: batches take a while, and the line says the run is alive and how long is left.
        ProgressLog progress(std::string("igakuqa ") + to_string(mode), static_cast<int64_t>(todo.size()), "questions",
                             0.0);
        for (size_t begin = 0; begin < todo.size(); begin += static_cast<size_t>(options.batch_size)) {
            const size_t end = std::min(todo.size(), begin + static_cast<size_t>(options.batch_size));
            std::vector<std::string> prompts;
            for (size_t k = begin; k < end; ++k)
                prompts.push_back(render_prompt(questions[todo[k]], examples, mode, options.format));
            const std::vector<std::string> outputs = backend.complete(prompts, params);
            if (outputs.size() != prompts.size())
                throw Error("backend returned " + std::to_string(outputs.size()) + " completions for " +
                            std::to_string(prompts.size()) + " prompts");
            std::vector<PredictionRecord> records;
            for (size_t k = begin; k < end; ++k) {
                records.push_back(make_prediction_record(questions[todo[k]], mode, options.format, outputs[k - begin]));
                saved[records.back().problem_id] = records.back();
            }
            store.append(records);

            progress.update(static_cast<int64_t>(end));
        }

        std::vector<std::optional<ScoredPrediction>> aligned;
        for (const auto& q : questions) {
            const PredictionRecord& r = saved.at(q.problem_id);
            aligned.push_back(ScoredPrediction{r.prediction, r.extracted});
        }
        const bool lenient_primary = mode == PromptMode::explanation || options.lenient_standard;
        result.modes.push_back(score_mode(questions, mode, lenient_primary, std::move(aligned)));
    }
    return result;
}

EvalResult evaluate_predictions(const std::vector<Question>& questions, const ExternalPredictions& predictions,
                                const std::vector<PromptMode>& modes, bool lenient_standard,
                                const std::vector<int>& years) {
    EvalResult result;
    result.model         = predictions.model_name;
    result.source        = "predictions";
    result.years         = years;
    const bool has_plain = predictions.by_mode.count("") > 0;
    if (has_plain && modes.size() != 1)
        throw UsageError(
            "--predictions: records without a 'mode' field can be scored as one mode only; pass "
            "--mode standard or --mode explanation");
    size_t matched = 0;
    for (PromptMode mode : modes) {
        const std::string key = has_plain ? "" : to_string(mode);
        auto it               = predictions.by_mode.find(key);
        if (it == predictions.by_mode.end())
            throw UsageError(std::string("--predictions: no records for mode ") + to_string(mode));
        const auto& by_id = it->second;
        std::vector<std::optional<ScoredPrediction>> aligned;
        for (const auto& q : questions) {
            auto p = by_id.find(q.problem_id);
            if (p == by_id.end()) {
                aligned.emplace_back();
                continue;
            }
            ++matched;
            ScoredPrediction sp;
            // A medllm record in explanation mode keeps the official string of the text after the marker.
            sp.prediction     = p->second.prediction;
            const auto answer = extract_answer(p->second.raw_output.value_or(p->second.prediction), answer_spec(q));
            if (answer.parsed) sp.extracted = answer.as_prediction();
            aligned.push_back(std::move(sp));
        }
        const size_t missing = std::count(aligned.begin(), aligned.end(), std::nullopt);
        if (by_id.size() + missing > questions.size())
            spdlog::warn("igakuqa: {} predictions are for questions outside the selected years; ignored",
                         by_id.size() + missing - questions.size());
        if (missing)
            spdlog::warn("igakuqa {}: {} questions have no prediction and count as wrong", to_string(mode), missing);
        const bool lenient_primary = mode == PromptMode::explanation || lenient_standard;
        result.modes.push_back(score_mode(questions, mode, lenient_primary, std::move(aligned)));
    }
    if (matched == 0) throw UsageError("--predictions: no prediction matches a question of the selected years");
    return result;
}

}  // namespace medllm::eval

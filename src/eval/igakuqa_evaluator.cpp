// The IgakuQA evaluation loop: prompts, batched resumable completions, extraction, scoring.
#include "medllm/eval/igakuqa_evaluator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/progress.h"
#include "medllm/core/shards.h"
#include "medllm/eval/igakuqa_answer.h"

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

json run_identity(const CompletionBackend& backend, const ModelEvalOptions& options,
                  const std::vector<FewShotExample>& examples) {
    json ids = json::array(), content = json::array();
    for (const auto& ex : examples) {
        ids.push_back(ex.problem_id);
        content.push_back({{"problem_id", ex.problem_id},
                           {"problem_text", ex.problem_text},
                           {"choices", ex.choices},
                           {"answer", ex.answer},
                           {"explanation", ex.explanation}});
    }
    auto params = [](const GenerationParams& p) {
        return json{{"max_new_tokens", p.max_new_tokens}, {"temperature", p.temperature}, {"stop", p.stop}};
    };
    return {{"benchmark", "IgakuQA"},
            {"model", backend.identity()},
            {"prompt_format", to_string(options.format)},
            {"few_shot", {{"problem_ids", ids}, {"xxh3", hash_bytes(dump_json(content))}}},
            {"data", options.data_identity},
            {"decoding",
             {{"standard", params(options.standard_params)}, {"explanation", params(options.explanation_params)}}}};
}

namespace {

std::string string_field(const json& j, const char* key) {
    const auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
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
    result.model           = backend.model_name();
    result.source          = "model";
    result.prompt_format   = to_string(options.format);
    result.years           = years;
    const std::string hint = "pass --overwrite to start over, or choose another --output";

    // Records are the result of (mode, problem_id); folded shards go in mode order, then question order, which is
    // the order one uninterrupted process writes.
    std::map<std::string, size_t> index_of;
    for (size_t i = 0; i < questions.size(); ++i) index_of.emplace(questions[i].problem_id, i);
    auto key   = [](const json& r) { return string_field(r, "mode") + "/" + string_field(r, "problem_id"); };
    auto order = [&](const json& r) -> int64_t {
        int64_t mode_index = static_cast<int64_t>(options.modes.size());
        for (size_t m = 0; m < options.modes.size(); ++m)
            if (string_field(r, "mode") == to_string(options.modes[m])) mode_index = static_cast<int64_t>(m);
        const auto it = index_of.find(string_field(r, "problem_id"));
        return mode_index * static_cast<int64_t>(questions.size() + 1) +
               (it == index_of.end() ? static_cast<int64_t>(questions.size()) : static_cast<int64_t>(it->second));
    };
    ShardedRecords store(options.output_dir / "predictions.jsonl", run_identity(backend, options, examples),
                         options.overwrite, hint, options.place, key, order);
    const ShardPlace& place = options.place;

    // What an earlier run saved, by mode and problem_id, with its file:line for errors.
    struct Saved {
        PredictionRecord record;
        std::string where;
    };
    std::map<PromptMode, std::map<std::string, Saved>> saved_by_mode;
    auto keep = [&](const json& j, const std::string& where) {
        PredictionRecord r      = PredictionRecord::from_json(j, where);
        const PromptMode mode   = r.mode;
        const std::string id    = r.problem_id;
        saved_by_mode[mode][id] = Saved{std::move(r), where};
    };
    for (size_t i = 0; i < store.existing().size(); ++i) keep(store.existing()[i], store.existing_where()[i]);

    for (PromptMode mode : options.modes) {
        auto& saved             = saved_by_mode[mode];
        GenerationParams params = mode == PromptMode::standard ? options.standard_params : options.explanation_params;
        if (options.format == PromptFormat::base) {
            for (auto& s : base_stop_strings(mode)) params.stop.push_back(s);
        }
        std::vector<std::string> prompts;
        prompts.reserve(questions.size());
        std::vector<size_t> todo;
        for (size_t i = 0; i < questions.size(); ++i) {
            prompts.push_back(render_prompt(questions[i], examples, mode, options.format));
            auto it = saved.find(questions[i].problem_id);
            if (it == saved.end()) {
                todo.push_back(i);
                continue;
            }
            // The run identity covers the data and few-shot files; this also catches an edited record.
            const PredictionRecord& r = it->second.record;
            const std::string at = it->second.where + ": problem_id " + r.problem_id + " (" + to_string(mode) + ")";
            if (r.prompt_format != to_string(options.format))
                throw Error(at + ": saved with prompt format " + r.prompt_format + ", this run uses " +
                            to_string(options.format) + "; " + hint);
            if (!r.prompt.empty() && r.prompt != prompts[i])
                throw Error(at + ": its saved prompt is not the one this run sends; " + hint);
        }
        // Every rank computes the same todo; rank R runs every R-th of it.
        std::vector<size_t> mine;
        for (size_t k = 0; k < todo.size(); ++k)
            if (place.owns(k)) mine.push_back(todo[k]);
        if (place.sharded())
            spdlog::info("igakuqa {}: {} questions, {} saved, {} to generate, {} on rank {} of {} (batch {})",
                         to_string(mode), questions.size(), questions.size() - todo.size(), todo.size(), mine.size(),
                         place.rank, place.world_size, options.batch_size);
        else
            spdlog::info("igakuqa {}: {} questions, {} saved, {} to generate (batch {})", to_string(mode),
                         questions.size(), questions.size() - todo.size(), todo.size(), options.batch_size);

        // Every batch is a line: batches take a while, and the line says the run is alive and how long is left.
        ProgressLog progress(std::string("igakuqa ") + to_string(mode), static_cast<int64_t>(mine.size()), "questions",
                             0.0);
        for (size_t begin = 0; begin < mine.size(); begin += static_cast<size_t>(options.batch_size)) {
            const size_t end = std::min(mine.size(), begin + static_cast<size_t>(options.batch_size));
            std::vector<std::string> batch;
            for (size_t k = begin; k < end; ++k) batch.push_back(prompts[mine[k]]);
            const std::vector<std::string> outputs = backend.complete(batch, params);
            if (outputs.size() != batch.size())
                throw Error("backend returned " + std::to_string(outputs.size()) + " completions for " +
                            std::to_string(batch.size()) + " prompts");
            for (size_t k = begin; k < end; ++k) {
                const Question& q = questions[mine[k]];
                PredictionRecord r =
                    make_prediction_record(q, mode, options.format, prompts[mine[k]], outputs[k - begin]);
                store.append(r.to_json());
                saved[q.problem_id] = Saved{std::move(r), store.own_path().string()};
            }
            progress.update(static_cast<int64_t>(end));
        }
    }

    // In a group, rank 0 gathers the other ranks' records; they are done.
    for (const json& j : store.finish()) keep(j, store.merged_path().string());
    if (!place.is_main()) return result;

    for (PromptMode mode : options.modes) {
        const auto& saved = saved_by_mode[mode];
        std::vector<std::optional<ScoredPrediction>> aligned;
        for (const auto& q : questions) {
            const auto it = saved.find(q.problem_id);
            if (it == saved.end())
                throw Error(store.merged_path().string() + ": no record for problem_id " + q.problem_id + " (" +
                            to_string(mode) + ") after every rank finished");
            aligned.push_back(ScoredPrediction{it->second.record.prediction, it->second.record.extracted});
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

// Stage configs through their commands' schemas (include/medllm/pipeline/stage_configs.h).
#include "medllm/pipeline/stage_configs.h"

#include "medllm/core/error.h"
#include "medllm/eval/igakuqa_command.h"
#include "medllm/eval/igakuqa_data.h"
#include "medllm/prefs/build_prefs_command.h"
#include "medllm/train/cpt_config.h"
#include "medllm/train/preference_loss.h"
#include "medllm/train/rpo_config.h"

namespace medllm::pipeline {
namespace {

template <class T>
StageConfig resolve_with(const ConfigSchema<T>& schema, const config_detail::FlatDoc& doc, const std::string& where,
                         T* typed = nullptr) {
    StageConfig out;
    const T config = schema.load_doc(doc, where, "", &out.entries);
    out.values     = schema.to_json(config);
    if (typed) *typed = config;
    return out;
}

const ConfigSchema<train::CptConfig>& cpt_schema() {
    static const auto s = [] {
        ConfigSchema<train::CptConfig> schema;
        train::add_cpt_fields(schema);
        return schema;
    }();
    return s;
}

const ConfigSchema<train::RpoConfig>& rpo_schema() {
    static const auto s = [] {
        ConfigSchema<train::RpoConfig> schema;
        train::add_rpo_fields(schema);
        return schema;
    }();
    return s;
}

// Where keys came from ("rpo.loss.beta from pipeline.yaml, ..."), for an error its command names by key only.
std::string origins(const config_detail::FlatDoc& doc, const std::string& prefix) {
    std::string out;
    for (const auto& [key, v] : doc)
        if (key == prefix || key.rfind(prefix + ".", 0) == 0)
            out += (out.empty() ? "" : ", ") + v.key_prefix + key + " from " + v.origin;
    return out.empty() ? "defaults" : out;
}

// Runs a check the command makes when it starts (one that needs no file), naming where its keys came from.
template <class F>
void check_now(const config_detail::FlatDoc& doc, const std::string& keys, F check) {
    try {
        check();
    } catch (const UsageError& e) {
        throw UsageError(std::string(e.what()) + " (" + origins(doc, keys) + ")");
    }
}

}  // namespace

StageConfig resolve_stage_config(const std::string& kind, const config_detail::FlatDoc& doc, const std::string& where) {
    if (kind == "cpt") return resolve_with(cpt_schema(), doc, where);
    if (kind == "rpo") {
        auto out      = resolve_with(rpo_schema(), doc, where);
        const auto& v = out.values;
        check_now(doc, "loss", [&] {
            train::parse_loss_spec(v["loss.loss_type"], v["loss.loss_weights"], v["loss.beta"].get<double>(),
                                   v["loss.label_smoothing"].get<double>(), v["loss.rpo_alpha"].get<double>(),
                                   v["loss.nll_normalization"].get<std::string>(),
                                   v["loss.nll_ignore_token_zero"].get<bool>());
        });
        return out;
    }
    if (kind == "build-prefs") {
        prefs::BuildPrefsConfig config;
        auto out = resolve_with(prefs::build_prefs_schema(), doc, where, &config);
        check_now(doc, "guard.years", [&] { prefs::guard_years(config); });
        for (const auto& type : config.types) check_now(doc, "pairs.types", [&] { prefs::parse_pair_type(type); });
        return out;
    }
    if (kind == "eval") {
        eval::EvalIgakuqaConfig config;
        auto out = resolve_with(eval::eval_igakuqa_schema(), doc, where, &config);
        check_now(doc, "years", [&] { eval::parse_years(config.years); });
        return out;
    }
    throw Error("pipeline: no config schema for stage kind '" + kind + "'");
}

}  // namespace medllm::pipeline

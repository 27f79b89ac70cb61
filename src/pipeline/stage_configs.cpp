// Stage configs through their commands' schemas (include/medllm/pipeline/stage_configs.h).
#include "medllm/pipeline/stage_configs.h"

#include "medllm/core/error.h"
#include "medllm/train/cpt_config.h"
#include "medllm/train/preference_loss.h"
#include "medllm/train/rpo_config.h"

namespace medllm::pipeline {
namespace {

template <class T>
StageConfig resolve_with(const ConfigSchema<T>& schema, const config_detail::FlatDoc& doc, const std::string& where) {
    StageConfig out;
    const T typed = schema.load_doc(doc, where, "", &out.entries);
    out.values    = schema.to_json(typed);
    out.checked   = true;
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

// The keys as given, unchecked (a kind whose schema is not reachable from the pipeline).
StageConfig raw(const config_detail::FlatDoc& doc) {
    StageConfig out;
    for (const auto& [key, v] : doc) {
        out.entries.push_back({key, config_detail::to_text(v.value), v.origin});
        out.values[key] = v.value;
    }
    return out;
}

// Where the loss keys came from, for a loss error that parse_loss_spec names by key only.
std::string loss_origins(const config_detail::FlatDoc& doc) {
    std::string out;
    for (const auto& [key, v] : doc)
        if (key.rfind("loss.", 0) == 0) out += (out.empty() ? "" : ", ") + v.key_prefix + key + " from " + v.origin;
    return out.empty() ? "defaults" : out;
}

}  // namespace

StageConfig resolve_stage_config(const std::string& kind, const config_detail::FlatDoc& doc, const std::string& where) {
    if (kind == "cpt") return resolve_with(cpt_schema(), doc, where);
    if (kind == "rpo") {
        auto out      = resolve_with(rpo_schema(), doc, where);
        const auto& v = out.values;
        try {
            train::parse_loss_spec(v["loss.loss_type"], v["loss.loss_weights"], v["loss.beta"].get<double>(),
                                   v["loss.label_smoothing"].get<double>(), v["loss.rpo_alpha"].get<double>(),
                                   v["loss.nll_normalization"].get<std::string>(),
                                   v["loss.nll_ignore_token_zero"].get<bool>());
        } catch (const UsageError& e) {
            throw UsageError(std::string(e.what()) + " (" + loss_origins(doc) + ")");
        }
        return out;
    }
    if (kind == "eval" || kind == "build-prefs") return raw(doc);
    throw Error("pipeline: no config schema for stage kind '" + kind + "'");
}

}  // namespace medllm::pipeline

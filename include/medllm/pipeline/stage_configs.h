// Each stage kind's config resolved through that command's own schema (the one `medllm cpt|rpo|build-prefs|eval
// igakuqa` loads its --config with), so the pipeline checks every stage's keys, types and ranges before the first
// stage runs and can print what each stage will really run with, defaults included (--print-config).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/config.h"

namespace medllm::pipeline {

struct StageConfig {
    std::vector<ResolvedEntry> entries;                // every key of the command, schema order, defaults included
    nlohmann::json values = nlohmann::json::object();  // dotted key -> typed value, defaults included
};

// `kind`: eval (`medllm eval igakuqa`) | cpt | build-prefs | rpo. `doc` is the stage's flat config, each value with its
// origin (and the key prefix it was written under); `where` is the pipeline file, named for values that came from it.
// UsageError naming the key as written and its file: unknown key, wrong type, out of range, and the checks the
// command makes before it reads any file (rpo's loss combination, eval's years, build-prefs' guard.years and
// pairs.types).
StageConfig resolve_stage_config(const std::string& kind, const config_detail::FlatDoc& doc, const std::string& where);

}  // namespace medllm::pipeline

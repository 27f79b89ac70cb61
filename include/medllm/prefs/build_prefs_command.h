// `medllm build-prefs`' settings and body: the config keys (BuildPrefsConfig, add_build_prefs_fields; a pipeline's
// build_prefs: section is the same keys), their mapping onto the library's BuildPrefsOptions, and run_build_prefs,
// which checks them, joins the process group and runs build_prefs (build_prefs.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "medllm/core/config.h"
#include "medllm/dist/parallel.h"
#include "medllm/prefs/build_prefs.h"

namespace medllm::prefs {

struct BuildPrefsConfig {
    std::vector<std::string> questions;
    std::string on_bad_record = "skip";
    std::string model, adapter, output;
    std::string dtype = "auto", device = "auto", prompt_format = "auto";
    std::string preset = "paper";
    std::string block, option, labels, separator, answer_separator, system;
    int64_t few_shot_k = 3, few_shot_seed = 0;
    std::string few_shot_file;
    std::string igakuqa_dir;
    std::string guard_years         = "2018-2022";
    std::vector<int64_t> eval_exams = {112, 113, 114, 115, 116};
    bool allow_eval_overlap         = false;
    int64_t n = 8, top_k = 0, max_new_tokens = 512, seed = 0, batch_size = 64;
    double temperature = 1.0, top_p = 1.0;
    bool require_marker            = true;
    bool answer_by_text            = false;
    int64_t min_explanation_chars  = 1;
    std::string flagged            = "rejected";
    std::vector<std::string> types = {"gt_chosen", "gt_rejected", "chosen_rejected"};
    int64_t max_per_type = 0, max_per_question = 0, pair_seed = 0;
    bool dedup = true;
};

// The config keys of `medllm build-prefs` (questions, model, template.*, few_shot.*, guard.*, sampling.*, check.*,
// pairs.*).
void add_build_prefs_fields(ConfigSchema<BuildPrefsConfig>& schema);

// The command's schema (add_build_prefs_fields), the one `medllm build-prefs --config` and a pipeline's
// build_prefs: section are both read with.
const ConfigSchema<BuildPrefsConfig>& build_prefs_schema();

// guard.years as a list of years. UsageError naming guard.years for a spec eval::parse_years refuses.
std::vector<int> guard_years(const BuildPrefsConfig& config);

// The library's options for a config. UsageError when questions, model or output is missing or model is no folder.
BuildPrefsOptions to_build_prefs_options(const BuildPrefsConfig& config, bool overwrite);

// The command: checks the config, joins the process group (each rank on its own device), starts the output folder
// (rank 0), runs build_prefs on this rank's share of the questions and prints the summary table (rank 0).
void run_build_prefs(const BuildPrefsConfig& config, const dist::RunOptions& run);

}  // namespace medllm::prefs

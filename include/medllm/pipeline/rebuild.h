// The pipeline's rebuild rule, as make and DVC have it: a stage runs again when what it consumed changed, when
// what it produced is missing or changed, or when a stage it reads from runs again; everything downstream follows.
//
// <stage>/done records what the stage consumed and produced (format 2):
//   config        its config as stage.yaml holds it, with run_dir and base_model as placeholders (so a moved run
//                 folder or base model does not count as a change), or a merge's command line
//   inputs        "stage <name>": the outputs hash of each stage it read from (recorded in that stage's done), and
//                 each input no stage produces by its identity (fingerprint.h)
//   outputs       its files with size, mtime and content hash (fingerprint.h), outputs_hash over them
// <stage>/started.json holds config and inputs while it runs, so an interrupted stage whose inputs changed since
// starts over instead of resuming on top of other inputs.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/pipeline/pipeline.h"

namespace medllm::pipeline {

struct StageStatus {
    bool run        = false;  // runs in this invocation
    bool start_over = false;  // its folder holds results of other inputs: cleared first (the caches are kept)
    bool remove     = false;  // --from / --only: its folder is removed first
    std::string reason;       // why it runs ("config changed: training.max_steps: was 60, now 7"), or why not
};

// The status of every stage, in order, as things are now. `from` / `only`: stage names or "". `refresh`: a done
// marker whose outputs were touched but not changed (fingerprint.h) is rewritten with their new mtimes (false for
// --list, which writes nothing). `warn`: say when an input of a done stage is gone. UsageError for --only STAGE when
// a stage it reads from (directly or through others) is not done or out of date, naming that stage and why.
//
// A stage after one that runs again is marked to run ("cpt runs again"); run_pipeline asks again when its turn
// comes, so a stage whose upstream wrote the same outputs again (a merge of the same adapter) is kept.
std::vector<StageStatus> stage_status(const PipelineConfig& config, const std::vector<Stage>& stages,
                                      const std::string& from, const std::string& only, bool refresh, bool warn = true);

// {"config", "inputs"} of a stage as things are now (the done markers of the stages it reads from as they are).
nlohmann::json stage_identity(const PipelineConfig& config, const std::vector<Stage>& stages, const Stage& stage);

// <stage>/done as JSON, null when the stage has none.
nlohmann::json read_done(const std::filesystem::path& dir);

// Before a stage runs: <stage>/started.json. After it finished: <stage>/done with its outputs recorded (reading
// them once to hash them), and started.json removed.
void write_started(const Stage& stage, const nlohmann::json& identity);
void write_done(const Stage& stage, const nlohmann::json& identity, double seconds);

// Empties a stage folder for a fresh run, keeping the caches whose own identity checks decide their reuse
// (corpus_cache/, ref_cache/).
void clear_stage_dir(const std::filesystem::path& dir);

}  // namespace medllm::pipeline

// `medllm pipeline`: the paper's whole job in one command. Stages, each in its own folder under run_dir:
//
//   eval-base -> cpt -> merge-cpt -> eval-cpt -> build-prefs -> rpo -> merge-rpo -> eval-cpt-rpo -> report
//   (+ ablations: rpo-dpo -> merge-dpo -> eval-cpt-dpo (rpo with loss.rpo_alpha 0); rpo-base -> merge-rpo-base ->
//    eval-rpo (RPO on the base model, no CPT))
//
// Each training/eval stage is the subcommand itself (`medllm cpt|merge|eval igakuqa|build-prefs|rpo`), run as a
// child process of the same binary with the pipeline config's section for it (`cpt:`, `eval:`, `build_prefs:`,
// `rpo:`) written to <stage>/stage.yaml, plus the keys the pipeline wires (model, output, data paths). So a stage
// behaves exactly as the command does by hand (its config checks, progress lines, resume, logs), and a failure or a
// signal in one stage never leaves the pipeline process in a half-state. Eval stages also score each option's text
// by log-likelihood in-process (option_scores.h) into <stage>/option_scores.json.
//
// A stage is complete when <stage>/done exists (written atomically after its outputs, with the hash of its config):
// a rerun skips it, continues an interrupted stage (the commands resume), and refuses a done stage whose config has
// changed since (naming the stage and `--from`). `--from STAGE` reruns STAGE and everything after it from scratch,
// `--only STAGE` just that one.
//
// `launch.nproc: N` (or `--nproc N`) runs every cpt, rpo, eval and build-prefs stage as N processes on this node
// (one per GPU, each binding cuda:LOCAL_RANK), with torchrun's variables set by the pipeline and a free rendezvous
// port on 127.0.0.1: training is data-parallel and generation shares its prompts, with the results of one
// process. The pipeline itself is launched once (it refuses to run under torchrun or srun).
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/config.h"
#include "medllm/pipeline/stage_configs.h"

namespace medllm::pipeline {

// One stage section of a pipeline file (`eval:`, `cpt:`, `build_prefs:`, `rpo:`) merged in order: the standalone
// stage config it names (`config: rpo_qlora.yaml`, relative to the pipeline file), then the section's own keys,
// then its `set:` mapping of dotted keys, then `--set <section>.<key>=...` on the command line. Every value keeps
// its origin (the stage file as written in `config:`, the pipeline file's name, or --set) and, for keys written in
// the pipeline file or on the command line, the prefix they were written under (`rpo.`, `rpo.set.`).
struct StageSection {
    std::string config_file;  // the stage config's path as medllm opens it; "" = none
    std::string config_name;  // as written after `config:` (the origin of its values)
    config_detail::FlatDoc doc;
};

struct PipelineConfig {
    std::string run_dir;
    std::string base_model;
    bool cpt_rpo             = true;   // rows.cpt_rpo: build-prefs + rpo + eval of +CPT+RPO
    bool ablation_dpo        = false;  // rows.cpt_dpo: rpo with loss.rpo_alpha 0 (plain DPO)
    bool ablation_no_cpt     = false;  // rows.rpo_without_cpt: rpo on the base model with the CPT model's pairs
    bool score_options       = true;   // score.options: option-text log-likelihood column
    std::string score_device = "cpu";
    std::string pass_lines;  // report.pass_lines: JSON {"<year>": {"pass_fraction": 0.6}} (the world's own lines)
    std::string title = "medllm pipeline";
    int64_t nproc     = 1;  // launch.nproc: ranks of every cpt / rpo / eval / build-prefs stage on this node
    std::string path;       // the pipeline file ("" = --set only), named in messages
    std::map<std::string, StageSection> sections;  // "eval", "cpt", "build_prefs", "rpo"

    // A section's merged values as dotted key -> value (an empty object for a section not given).
    nlohmann::json section(const std::string& name) const;
};

// Reads the pipeline config: its own keys (checked; unknown top-level sections are an error naming the closest
// one) and the stage sections, each merged with the stage config it names. The stage configs are checked
// against their commands' schemas by plan_stages.
PipelineConfig load_pipeline_config(const ConfigSource& source, std::vector<ResolvedEntry>* resolved = nullptr);
std::string describe_pipeline_config();

// A file or folder a stage reads that no stage produces, with the key that names it as the user wrote it
// ("cpt.data.sources[0].path (from pipeline.yaml)", "base_model").
struct StageInput {
    std::string id;  // stable name in the done marker ("base_model", "data.sources[0].path")
    std::string key;
    std::string path;                 // a file, a folder, or a glob (corpus sources)
    std::string what       = "path";  // path | model (a folder with config.json) | igakuqa (a folder with data/<year>/)
    std::vector<int> years = {};      // igakuqa: the exam years the stage reads from it
    std::string years_key  = "";      // the key that names those years ("eval.years", "build_prefs.guard.years")
};

struct Stage {
    std::string name;  // "cpt", "eval-base", ...
    std::string kind;  // eval | cpt | merge | build-prefs | rpo | report
    std::string row;   // eval stages: the report row ("base", "+CPT", ...)
    std::filesystem::path dir;
    nlohmann::json config;  // flat (dotted keys) stage config, what <stage>/stage.yaml holds; null for merge/report
    std::vector<std::string> args;  // the medllm command line (without the binary)
    std::string model;              // eval stages: the model folder evaluated
    config_detail::FlatDoc doc;     // `config` with each value's origin ("pipeline" for the keys the pipeline sets)
    StageConfig resolved;           // through the stage command's schema, defaults included
    std::map<std::string, std::string> wired;  // key -> what the pipeline sets it to, and what that replaced
    std::string config_name;                   // the stage config its section names ("" = none)
    std::vector<StageInput> inputs;            // what it reads that no stage produces
    std::vector<std::string> after;            // the stages whose outputs it reads
};

// The stages of a config, each stage's config merged with what the pipeline wires (model, output, data paths,
// cpt's and rpo's eval_guard.igakuqa_dir and build-prefs' guard.igakuqa_dir = eval.data_dir, the DPO row's
// loss.rpo_alpha 0) and resolved through its command's schema (the one its standalone command reads). UsageError naming
// the key as the user wrote it (`cpt.lora.rnak` in pipeline.yaml, `lora.rnak` in cpt.yaml) for a key the command does
// not have, a bad value, or a key the pipeline sets that the pipeline file or
// --set sets too (the pipeline never replaces a setting of the user's silently).
std::vector<Stage> plan_stages(const PipelineConfig& config);

// `--print-config`: the pipeline's own keys, then every stage's resolved config, one `key  value  origin` line
// each (origin: the file it came from, --set, default, or "pipeline: ..." for a key the pipeline sets).
std::string format_stage_configs(const PipelineConfig& config, const std::vector<Stage>& stages,
                                 const std::vector<ResolvedEntry>& own);

// Checks, before anything runs, that every input of the stages that will run exists (`run[i]` for stages[i]):
// UsageError "stage cpt: cpt.data.sources[0].path (from pipeline.yaml): no such file or folder 'corpus/'".
void check_stage_inputs(const std::vector<Stage>& stages, const std::vector<bool>& run);

struct PipelineOptions {
    std::string from, only;        // stage names; "" = none
    std::filesystem::path medllm;  // the binary that runs the stages (default: this process's)
    std::vector<ResolvedEntry> resolved;
};

struct PipelineResult {
    std::vector<std::string> ran, skipped;
    std::filesystem::path report_dir;
};

PipelineResult run_pipeline(const PipelineConfig& config, const PipelineOptions& options);

// Nested JSON from dotted keys ({"a.b": 1} -> {"a": {"b": 1}}).
nlohmann::json unflatten(const nlohmann::json& flat);

}  // namespace medllm::pipeline

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
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/config.h"

namespace medllm::pipeline {

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
    // The raw sections handed to the stage commands (dotted keys -> values).
    nlohmann::json eval, cpt, build_prefs, rpo;
};

// Reads the pipeline config: its own keys (checked; unknown top-level sections are an error naming the closest
// one) and the stage sections (checked by the stage commands when they run, naming <stage>/stage.yaml).
PipelineConfig load_pipeline_config(const ConfigSource& source, std::vector<ResolvedEntry>* resolved = nullptr);
std::string describe_pipeline_config();

struct Stage {
    std::string name;  // "cpt", "eval-base", ...
    std::string kind;  // eval | cpt | merge | build-prefs | rpo | report
    std::string row;   // eval stages: the report row ("base", "+CPT", ...)
    std::filesystem::path dir;
    nlohmann::json config;          // flat (dotted keys) stage config; null for merge/report
    std::vector<std::string> args;  // the medllm command line (without the binary)
    std::string model;              // eval stages: the model folder evaluated
};

std::vector<Stage> plan_stages(const PipelineConfig& config);

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

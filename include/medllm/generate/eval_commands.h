// The bodies of `medllm eval igakuqa` and `medllm eval mcqa`. They live here rather than in eval because evaluating
// a model needs the generation engine (EngineBackend, McqaEngineBackend) and the process group, both above eval;
// eval keeps the benchmarks, the commands' settings and everything that needs no model (igakuqa_command.h,
// mcqa_command.h), and stays free of LibTorch.
//
// Both check their settings before any work, then join the process group (run.launch; one process without
// torchrun / Slurm): every rank loads the model on its own device and takes its share of the questions; rank 0
// folds the records and writes the reports.
#pragma once

#include "medllm/dist/parallel.h"
#include "medllm/eval/igakuqa_command.h"
#include "medllm/eval/mcqa_command.h"

namespace medllm::generate {

// `medllm eval igakuqa`: --model runs the model (resumable predictions.jsonl), --predictions scores saved
// predictions in one process (UsageError under several).
void run_eval_igakuqa(const eval::EvalIgakuqaConfig& config, const dist::RunOptions& run);

// `medllm eval mcqa`: every task in turn, by option log-likelihood and/or a greedy answer.
void run_eval_mcqa(const eval::EvalMcqaConfig& config, const dist::RunOptions& run);

}  // namespace medllm::generate

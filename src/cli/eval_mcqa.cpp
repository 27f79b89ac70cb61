// `medllm eval mcqa`: zero-shot multiple-choice QA (the paper's Table 3), scored by option log-likelihood
// (lm-evaluation-harness acc / acc_norm) and/or by a greedy answer.
//
//   medllm eval mcqa --task medqa-jp --data data/medqa-jp/test.jsonl --model models/qwen2.5-7b --output runs/mcqa
//   medllm eval mcqa --tasks-config configs/mcqa/table3.yaml --model models/qwen2.5-7b --output runs/table3
//
// The body is generate::run_eval_mcqa (include/medllm/generate/eval_commands.h); this file declares the flags.
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/distributed_flags.h"
#include "medllm/generate/eval_commands.h"

namespace medllm::cli {

void add_eval_mcqa_command(CLI::App& eval_cmd) {
    auto* cmd = eval_cmd.add_subcommand(
        "mcqa",
        "Zero-shot multiple-choice QA (MedQA-jp, MedMCQA-jp, PubMedQA-jp, MMMLU medical; paper Table 3): option "
        "log-likelihood acc / acc_norm as lm-evaluation-harness, or a greedy answer");
    struct State {
        eval::EvalMcqaConfig flags;
        bool overwrite = false;
        DistributedFlags dist;
    };
    auto st = std::make_shared<State>();
    auto& f = st->flags;
    cmd->add_option("--task", f.task,
                    "Built-in task (medqa-jp, medmcqa-jp, pubmedqa-jp, mmmlu-medical) or a task YAML file");
    cmd->add_option("--data", f.data, "The task's data: a file or a folder of them (JSONL, JSON or MMMLU CSV)");
    cmd->add_option("--tasks-config", f.tasks_config,
                    "YAML file listing several tasks with their data (tasks: [{task: medqa-jp, data: ...}, ...])");
    cmd->add_option("--model", f.model, "Model directory")->required();
    cmd->add_option("--adapter", f.adapter, "LoRA adapter directory applied to --model");
    cmd->add_option("--model-name", f.model_name, "Label in the reports (default: the model folder's name)");
    cmd->add_option("--output", f.output, "Output folder: report.json, report.md, predictions/<task>.jsonl")
        ->required();
    cmd->add_option("--scoring", f.scoring, "loglik | generate | both")
        ->capture_default_str()
        ->check(CLI::IsMember({"loglik", "generate", "both"}));
    cmd->add_option("--prompt-format", f.prompt_format,
                    "base (the prompt as text, lm-eval's default) | chat (one ChatML user turn; no delimiter before "
                    "the option) | auto (chat if the model has a chat template)")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "base", "chat"}));
    cmd->add_option("--dtype", f.dtype, "auto | fp32 | bf16 | fp16")->capture_default_str();
    cmd->add_option("--device", f.device, "auto | cpu | cuda | cuda:N")->capture_default_str();
    cmd->add_option("--batch-size", f.batch_size, "Questions per backend call (scores do not depend on it)")
        ->capture_default_str()
        ->check(integer_in(1, 65536));
    cmd->add_option("--limit", f.limit,
                    "Only the first N questions of each task (0 = all): a quick check; a later run resumes them")
        ->capture_default_str()
        ->check(integer_in(0));
    cmd->add_flag("--overwrite", st->overwrite,
                  "Start predictions/<task>.jsonl over instead of resuming (a resume under another model, task "
                  "definition, data, prompt format or scoring is refused naming the key)");
    add_distributed_options(cmd, st->dist, /*training=*/false);
    cmd->footer(
        "Each task's predictions are appended to <output>/predictions/<task>.jsonl as they are scored (one record per "
        "question and scoring: prompt, option log-likelihoods, token counts, choice); a rerun resumes. Rows of the "
        "data that do not fit the task are skipped, named by file:line in the log and report.json.\n" +
        distributed_generation_help("eval mcqa", "<output>/predictions/<task>.jsonl"));
    cmd->callback([st] {
        dist::RunOptions run;
        run.overwrite = st->overwrite;
        run.launch    = launch_flags(st->dist);
        generate::run_eval_mcqa(st->flags, run);
    });
}

}  // namespace medllm::cli

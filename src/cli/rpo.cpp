// `medllm rpo --config rpo.yaml`: preference optimization (DPO, RPO = DPO + alpha * NLL) with QLoRA/LoRA on TRL
// preference pairs. Thin: schema, start_run, the recipe (src/train/rpo.cpp).
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/distributed_flags.h"
#include "medllm/core/files.h"
#include "medllm/train/preference_loss.h"
#include "medllm/train/rpo.h"

namespace medllm::cli {

void add_rpo_command(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "rpo", "Preference optimization: DPO / RPO (DPO + alpha * NLL) as TRL computes it, with QLoRA/LoRA");
    struct Options {
        ConfigOptions config;
        std::string resume = "auto";
        bool overwrite     = false;
        DistributedFlags dist;
    };
    auto opts = std::make_shared<Options>();
    add_config_options(cmd, opts->config);
    cmd->add_option("--resume", opts->resume,
                    "auto (the newest complete checkpoint in the output folder), never, or a checkpoint folder")
        ->capture_default_str();
    cmd->add_flag("--overwrite", opts->overwrite,
                  "with --resume never: start over in an output folder that holds an earlier run's checkpoints, "
                  "deleting them (without it such a folder is refused)");
    add_distributed_options(cmd, opts->dist);
    static const auto schema = [] {
        ConfigSchema<train::RpoConfig> s;
        train::add_rpo_fields(s);
        return s;
    }();
    cmd->footer("Config keys:\n" + schema.describe() +
                "\nloss.rpo_alpha: 10 with loss.loss_type: sigmoid is the same loss as TRL >= 1.0's loss_type: "
                "[sigmoid, sft] with loss_weights: [1, 10]; rpo_alpha: 0 is plain DPO.\n"
                "Writes <output>/checkpoint-<step>/ (adapter in PEFT format, optimizer, RNG, trainer_state.json), "
                "<output>/adapter/, metrics.jsonl (TRL's metric names: rewards/chosen, rewards/margins, "
                "rewards/accuracies[/<pair_type>], logps/*, logits/*, nll_loss), TensorBoard event files, medllm.log, "
                "config.resolved.yaml and summary.json. SIGINT/SIGTERM finish the current step, write a checkpoint "
                "and exit 1; rerunning the same command resumes.\n" +
                distributed_help("rpo"));
    cmd->callback([opts] {
        if (opts->config.path.empty() && opts->config.overrides.empty())
            throw UsageError("rpo: --config rpo.yaml is required");
        train::TrainOptions run;
        const auto config = schema.load(opts->config.source(), &run.resolved);
        run.resume        = opts->resume;
        run.overwrite     = opts->overwrite;
        // The loss keys are checked before the run folder is set up (one line, exit 2).
        train::parse_loss_spec(config.loss_type, config.loss_weights, config.beta, config.label_smoothing,
                               config.rpo_alpha, config.nll_normalization, config.nll_ignore_token_zero);
        run.parallel = join_process_group(opts->dist, config.training.device);
        if (run.parallel.group->is_main()) start_run(config.output, run.resolved);
        const auto result = run_reporting_failure(run.parallel, [&] { return train::run_rpo(config, run); });
        if (result.interrupted)
            throw Error("rpo: interrupted at step " + std::to_string(result.steps) + "/" +
                        std::to_string(result.total_steps) + "; checkpoint " + result.last_checkpoint.string() +
                        " written; run the same command again to resume");
        if (run.parallel.group->is_main()) write_stdout(dump_json(result.summary, 2) + "\n");
    });
}

}  // namespace medllm::cli

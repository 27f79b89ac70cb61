// `medllm cpt --config cpt.yaml`: continued pretraining (QLoRA) on a corpus. Thin: schema, start_run, the recipe
// (src/train/cpt.cpp).
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/distributed_flags.h"
#include "medllm/core/files.h"
#include "medllm/train/cpt.h"

namespace medllm::cli {

void add_cpt_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("cpt", "Continued pretraining with QLoRA/LoRA on a corpus (data: of cpt.yaml)");
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
        ConfigSchema<train::CptConfig> s;
        train::add_cpt_fields(s);
        return s;
    }();
    cmd->footer("Config keys:\n" + schema.describe() +
                "\nWrites <output>/checkpoint-<step>/ (adapter in PEFT format, optimizer, RNG, trainer_state.json), "
                "<output>/adapter/, metrics.jsonl, TensorBoard event files, medllm.log, config.resolved.yaml and "
                "summary.json. SIGINT/SIGTERM finish the current step, write a checkpoint and exit 1; rerunning the "
                "same command resumes.\n" +
                distributed_help("cpt"));
    cmd->callback([opts] {
        if (opts->config.path.empty() && opts->config.overrides.empty())
            throw UsageError("cpt: --config cpt.yaml is required");
        train::TrainOptions run;
        const auto config = schema.load(opts->config.source(), &run.resolved);
        run.resume        = opts->resume;
        run.overwrite     = opts->overwrite;
        run.parallel      = join_process_group(opts->dist, config.training.device);
        if (run.parallel.group->is_main()) start_run(config.output, run.resolved);
        const auto result = run_reporting_failure(run.parallel, [&] { return train::run_cpt(config, run); });
        if (result.interrupted)
            throw Error("cpt: interrupted at step " + std::to_string(result.steps) + "/" +
                        std::to_string(result.total_steps) + "; checkpoint " + result.last_checkpoint.string() +
                        " written; run the same command again to resume");
        if (run.parallel.group->is_main()) write_stdout(dump_json(result.summary, 2) + "\n");
    });
}

}  // namespace medllm::cli

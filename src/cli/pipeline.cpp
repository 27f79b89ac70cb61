// `medllm pipeline --config pipeline.yaml`: CPT -> preference pairs -> RPO -> IgakuQA-style evaluation, each stage
// the subcommand itself in its own folder under run_dir (include/medllm/pipeline/pipeline.h). Thin: flags, config,
// start_run, run_pipeline.
#include <cstdlib>

#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/pipeline/pipeline.h"
#include "medllm/pipeline/rebuild.h"

namespace medllm::cli {

void add_pipeline_command(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "pipeline",
        "Run the whole job: eval base -> cpt -> merge -> eval -> build-prefs -> rpo -> merge -> eval -> report");
    struct Options {
        ConfigOptions config;
        std::string from, only;
        bool list         = false;
        bool print_config = false;
        int64_t nproc     = 0;
    };
    auto opts = std::make_shared<Options>();
    add_config_options(cmd, opts->config);
    cmd->add_option("--from", opts->from, "Rerun this stage and every stage after it from scratch");
    cmd->add_option("--only", opts->only,
                    "Rerun just this stage from scratch; what it reads must be done and up to date (the stages after "
                    "it are rebuilt by the next plain run)");
    cmd->add_flag("--list", opts->list,
                  "Print the stages of this config and what a run would do with each (runs, and why; or done), then "
                  "exit");
    cmd->add_flag("--print-config", opts->print_config,
                  "Print every stage's resolved config (defaults included, each value's origin: the file it came "
                  "from, --set, default, or the pipeline), then exit without running anything");
    cmd->add_option("--nproc", opts->nproc,
                    "Processes per cpt / rpo / eval / build-prefs stage on this node, one per GPU (config key "
                    "launch.nproc; default 1)")
        ->check(CLI::Range(1, 1024));
    cmd->footer("Config keys:\n" + pipeline::describe_pipeline_config() +
                "\nEach stage writes <run_dir>/<stage>/ (stage.yaml: the config it ran with; stdout.txt; the "
                "command's own outputs and medllm.log) and <stage>/done when complete, recording what it read (its "
                "config, the outputs of the stages before it, its input files) and what it wrote. A rerun skips a done "
                "stage unless one of those changed or a stage it reads from runs again, and continues an interrupted "
                "one; --list says what will run and why. The report is <run_dir>/report/report.{md,json,html}. "
                "SIGINT/SIGTERM reach the running stage; a stage whose pipeline dies (SIGKILL) gets SIGTERM.\n"
                "Several GPUs on one node: --nproc N runs each cpt / rpo / eval / build-prefs stage as N ranks "
                "(torchrun's variables and a free port set by the pipeline; rank 0's stdout in stdout.txt, the "
                "others' in stdout.rank<R>.txt). The eval and build-prefs stages write what one process writes, in "
                "about 1/N of the time; cpt and rpo are data-parallel with per-rank batch sizes (N ranks train on N x "
                "the rows per step: divide grad_accum by N to keep the one-process batch). An unfinished cpt or rpo "
                "stage resumes only with the --nproc it started with (keep it, or rerun the stage from scratch with "
                "--from STAGE). Launch the pipeline itself once, not under torchrun or srun.");
    cmd->callback([opts] {
        if (opts->config.path.empty() && opts->config.overrides.empty())
            throw UsageError("pipeline: --config pipeline.yaml is required");
        if (const char* w = std::getenv("WORLD_SIZE"); w && std::string(w) != "1" && std::string(w) != "")
            throw UsageError("pipeline: launch it once, not under torchrun (WORLD_SIZE=" + std::string(w) +
                             "): it starts each stage's processes itself; set --nproc N (launch.nproc) for N GPUs");
        pipeline::PipelineOptions run;
        ConfigSource source = opts->config.source();
        if (opts->nproc > 0) source.overrides.push_back("launch.nproc=" + std::to_string(opts->nproc));
        const auto config = pipeline::load_pipeline_config(source, &run.resolved);
        if (opts->print_config) {
            write_stdout(pipeline::format_stage_configs(config, pipeline::plan_stages(config), run.resolved));
            return;
        }
        run.from = opts->from;
        run.only = opts->only;
        // Stage names are checked before the run folder and its log are created.
        const auto stages = pipeline::plan_stages(config);
        for (const auto* name : {&run.from, &run.only}) {
            if (name->empty()) continue;
            std::string names;
            bool found = false;
            for (const auto& s : stages) {
                found = found || s.name == *name;
                names += (names.empty() ? "" : ", ") + s.name;
            }
            if (!found)
                throw UsageError(std::string(name == &run.from ? "--from " : "--only ") + *name +
                                 ": no such stage in this config (stages: " + names + ")");
        }
        if (!run.from.empty() && !run.only.empty()) throw UsageError("pipeline: give --from or --only, not both");
        // What a run would do with each stage, and why (the rebuild rule, include/medllm/pipeline/rebuild.h); --only
        // is refused here when what the stage reads is not done or out of date.
        const auto status = pipeline::stage_status(config, stages, run.from, run.only, /*refresh=*/false);
        if (opts->list) {
            std::string out;
            for (size_t i = 0; i < stages.size(); ++i)
                out += std::to_string(i + 1) + "/" + std::to_string(stages.size()) + " " + stages[i].name + ": " +
                       (status[i].run ? "runs (" + status[i].reason + ")" : status[i].reason) + "\n";
            write_stdout(out);
            return;
        }
        // The inputs of the stages that will run, before the run folder and its log are created.
        std::vector<bool> will_run;
        for (const auto& st : status) will_run.push_back(st.run);
        pipeline::check_stage_inputs(stages, will_run);
        start_run(config.run_dir, run.resolved);
        const auto result = pipeline::run_pipeline(config, run);
        spdlog::info("pipeline: {} stages ran, {} skipped; report: {}", result.ran.size(), result.skipped.size(),
                     (result.report_dir / "report.html").string());
    });
}

}  // namespace medllm::cli

// `medllm build-prefs`: GT > chosen > rejected preference pairs from the CPT model's sampled exam answers.
//
//   medllm build-prefs --config configs/qwen2.5-72b/build_prefs.yaml --set model=runs/cpt/merged
//   medllm build-prefs --questions pre2018/ --model M --output runs/prefs --igakuqa-dir ../shared/igakuqa_data
//   torchrun --nproc-per-node 4 --no-python medllm build-prefs --config ...   the questions shared by 4 GPUs
//
// The body is prefs::run_build_prefs (include/medllm/prefs/build_prefs_command.h); this file declares the flags and
// maps them onto config keys. Flags given on the command line win over --config / --set.
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/distributed_flags.h"
#include "medllm/prefs/build_prefs_command.h"

namespace medllm::cli {

void add_build_prefs_command(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "build-prefs",
        "Build GT > chosen > rejected preference pairs (TRL DPOTrainer format) from the CPT model's sampled "
        "answers to exam questions with verified explanations");
    struct State {
        ConfigOptions config;
        std::vector<std::string> questions;
        std::string model, adapter, output, igakuqa_dir, few_shot_file, prompt_format, preset, device, dtype;
        int64_t n = 8, seed = 0, batch_size = 64, max_new_tokens = 512;
        double temperature      = 1.0;
        bool allow_eval_overlap = false, overwrite = false;
        KeyedFlags keyed;
        DistributedFlags dist;
    };
    auto st   = std::make_shared<State>();
    auto text = [&](const char* flag, std::string& target, const char* key, const char* help) {
        st->keyed.text(cmd->add_option(flag, target, help), key);
    };
    // The flags' ranges are the config keys' (add_build_prefs_fields), checked on the flag so the message names it.
    auto number = [&](const char* flag, auto& target, const char* key, const char* help, CLI::Validator range) {
        st->keyed.number(cmd->add_option(flag, target, help)->capture_default_str()->check(range), key);
    };
    cmd->add_option("--questions", st->questions,
                    "Question JSONL files or directories (repeatable; config key questions)");
    text("--model", st->model, "model", "CPT model directory that answers");
    text("--adapter", st->adapter, "adapter", "LoRA adapter directory applied to --model");
    text("--output", st->output, "output", "Output folder (samples.jsonl, pairs.jsonl, summary.json)");
    text("--igakuqa-dir", st->igakuqa_dir, "guard.igakuqa_dir",
         "IgakuQA data folder: questions with its problem_ids or overlapping its texts are refused");
    text("--few-shot-file", st->few_shot_file, "few_shot.file", "Fixed few-shot examples instead of drawing 3");
    text("--prompt-format", st->prompt_format, "prompt_format", "auto | base | chat (default auto)");
    text("--template", st->preset, "template.preset", "paper | ja (default paper)");
    text("--device", st->device, "device", "auto | cpu | cuda | cuda:N (default auto)");
    text("--dtype", st->dtype, "dtype", "auto | fp32 | bf16 | fp16 (default auto)");
    number("-n,--num-samples", st->n, "sampling.n", "Responses per question", integer_in(1, 4096));
    number("--temperature", st->temperature, "sampling.temperature", "Sampling temperature (0 = greedy)",
           number_in(0, 100));
    number("--max-new-tokens", st->max_new_tokens, "sampling.max_new_tokens", "Explanation + answer length limit",
           integer_in(1, 1 << 20));
    number("--seed", st->seed, "sampling.seed", "Sampling seed", integer_in(0, 1000000000000000000));
    number("--batch-size", st->batch_size, "sampling.batch_size", "Sequences decoded together", integer_in(1, 65536));
    auto* allow = cmd->add_flag("--allow-eval-overlap", st->allow_eval_overlap,
                                "Keep questions that overlap the evaluation exams (warned)");
    cmd->add_flag("--overwrite", st->overwrite,
                  "Start samples.jsonl over instead of resuming it (a resume under other settings is refused)");
    add_config_options(cmd, st->config);
    add_distributed_options(cmd, st->dist, /*training=*/false);
    cmd->footer(
        "Config keys (--config FILE, --set key=value; flags win):\n" + prefs::build_prefs_schema().describe() +
        "\nPairs: gt_chosen = (verified explanation + key, a correct sample), gt_rejected = (GT, a wrong sample), "
        "chosen_rejected = (a correct sample, a wrong sample). A sample is correct when the answer after its last "
        "answer marker (the evaluator's extraction: full-width, 'a, c', 'a と c', numbers) equals the key; "
        "unparseable samples are rejected and counted separately. Samples are appended to samples.jsonl as each "
        "question finishes; a rerun resumes it and draws the same samples (seeded per question and sample). Its run "
        "identity (model, adapter, dtype, template, few-shot, prompts, decoding) is kept in samples.jsonl.run.json; "
        "a rerun under another identity is refused naming the key that differs (--overwrite starts over). "
        "pairs.jsonl and summary.json are rebuilt from samples.jsonl in question order on every run. SIGINT/SIGTERM "
        "end the run at once (samples.jsonl keeps the finished questions) and print the command that resumes it.\n" +
        distributed_generation_help("build-prefs", "samples.jsonl") +
        " samples.jsonl then holds one process's records in question order (one process writes them as they "
        "finish); rank 0 writes pairs.jsonl and summary.json (the same as one process, timings aside) and prints the "
        "summary; each rank loads the model on its own device (cuda:LOCAL_RANK with device auto or cuda).");
    cmd->callback([st, allow] {
        ConfigSource source = st->config.source();
        if (!st->questions.empty()) {
            std::string list = "[";
            for (std::size_t i = 0; i < st->questions.size(); ++i)
                list += (i ? ", " : "") + yaml_quote(st->questions[i]);
            source.overrides.push_back("questions=" + list + "]");
        }
        st->keyed.add_to(source);
        if (allow->count()) source.overrides.push_back("guard.allow_eval_overlap=true");
        dist::RunOptions run;
        const auto config = prefs::build_prefs_schema().load(source, &run.resolved);
        run.overwrite     = st->overwrite;
        run.launch        = launch_flags(st->dist);
        prefs::run_build_prefs(config, run);
    });
}

}  // namespace medllm::cli

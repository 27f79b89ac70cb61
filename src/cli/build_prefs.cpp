// `medllm build-prefs`: GT > chosen > rejected preference pairs from the CPT model's sampled exam answers.
//
//   medllm build-prefs --config configs/qwen2.5-72b/build_prefs.yaml --set model=runs/cpt/merged
//   medllm build-prefs --questions pre2018/ --model M --output runs/prefs --igakuqa-dir ../shared/igakuqa_data
//   torchrun --nproc-per-node 4 --no-python medllm build-prefs --config ...   the questions shared by 4 GPUs
//
// The run is the library's prefs::build_prefs (include/medllm/prefs/build_prefs.h); this file maps config keys and
// flags onto it. Flags given on the command line win over --config / --set.
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/distributed_flags.h"
#include "medllm/core/config.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/generate/load.h"
#include "medllm/prefs/build_prefs.h"

namespace medllm::cli {
namespace {

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
    std::vector<int64_t> eval_exams = {112, 113, 114, 115, 116};
    bool allow_eval_overlap         = false;
    int64_t n = 8, top_k = 0, max_new_tokens = 512, seed = 0, batch_size = 64;
    double temperature = 1.0, top_p = 1.0;
    bool require_marker            = true;
    int64_t min_explanation_chars  = 1;
    std::string flagged            = "rejected";
    std::vector<std::string> types = {"gt_chosen", "gt_rejected", "chosen_rejected"};
    int64_t max_per_type = 0, max_per_question = 0, pair_seed = 0;
    bool dedup = true;
};

ConfigSchema<BuildPrefsConfig> make_schema() {
    using C = BuildPrefsConfig;
    ConfigSchema<C> s;
    s.field("questions", &C::questions, "question JSONL files or directories (IgakuQA records + explanation)");
    s.field("on_bad_record", &C::on_bad_record, "a record missing a needed field: skip (reported) or refuse")
        .one_of({"skip", "refuse"});
    s.field("model", &C::model, "the CPT model directory that answers");
    s.field("adapter", &C::adapter, "LoRA adapter directory applied to model");
    s.field("output", &C::output, "output folder: samples.jsonl, pairs.jsonl, summary.json");
    s.field("dtype", &C::dtype, "auto | fp32 | bf16 | fp16");
    s.field("device", &C::device, "auto | cpu | cuda | cuda:N");
    s.field("prompt_format", &C::prompt_format, "auto (chat if the model has a chat template) | base | chat")
        .one_of({"auto", "base", "chat"});
    s.field("template.preset", &C::preset, "paper (Question/Explanation/Answer) or ja (問題/解説/答え)")
        .one_of({"paper", "ja"});
    s.field("template.block", &C::block, "custom block with {question} {options} {explanation} {answer}");
    s.field("template.option", &C::option, "one choice line, with {label} and {text} (default '{label}: {text}')");
    s.field("template.labels", &C::labels, "choice labels, the 8 letters a-h in either case (default abcdefgh)");
    s.field("template.separator", &C::separator, "between few-shot blocks (default a blank line)");
    s.field("template.answer_separator", &C::answer_separator, "between answer letters (default ',')");
    s.field("template.system", &C::system, "chat system message (default: the preset's)");
    s.field("few_shot.k", &C::few_shot_k, "examples per question (drawn from the pool, or taken from few_shot.file)")
        .range(0, 64);
    s.field("few_shot.seed", &C::few_shot_seed, "seed of the draw").range(0, 1e18);
    s.field("few_shot.file", &C::few_shot_file,
            "fixed examples (same record format): the first few_shot.k that are not the question itself (fewer "
            "left: refused)");
    s.field("guard.igakuqa_dir", &C::igakuqa_dir, "IgakuQA data folder: its problem_ids and texts are refused");
    s.field("guard.eval_exams", &C::eval_exams, "exam numbers refused by problem_id (IgakuQA 2018-2022)");
    s.field("guard.allow_eval_overlap", &C::allow_eval_overlap, "keep overlapping questions (warned)");
    s.field("sampling.n", &C::n, "responses per question (sharing one prefill)").range(1, 4096);
    s.field("sampling.temperature", &C::temperature, "0 = greedy (then n > 1 repeats itself)").range(0, 100);
    s.field("sampling.top_p", &C::top_p, "nucleus sampling; 1 = off").range(1e-9, 1);
    s.field("sampling.top_k", &C::top_k, "0 = off").range(0, 1 << 30);
    s.field("sampling.max_new_tokens", &C::max_new_tokens, "explanation + answer length limit").range(1, 1 << 20);
    s.field("sampling.seed", &C::seed, "samples are seeded per question and sample from this").range(0, 1e18);
    s.field("sampling.batch_size", &C::batch_size, "sequences decoded together").range(1, 65536);
    s.field("check.require_marker", &C::require_marker, "a response with no answer marker is unparseable");
    s.field("check.min_explanation_chars", &C::min_explanation_chars, "shorter explanations are flagged")
        .range(0, 1 << 30);
    s.field("check.flagged", &C::flagged, "flagged responses (short explanation, token limit): rejected or dropped")
        .one_of({"rejected", "dropped"});
    s.field("pairs.types", &C::types, "pair types to write: gt_chosen, gt_rejected, chosen_rejected");
    s.field("pairs.max_per_type", &C::max_per_type, "cap per question and type (seeded choice); 0 = none")
        .range(0, 1 << 30);
    s.field("pairs.max_per_question", &C::max_per_question, "cap per question (types taken in turn); 0 = none")
        .range(0, 1 << 30);
    s.field("pairs.dedup", &C::dedup, "identical responses count once");
    s.field("pairs.seed", &C::pair_seed, "seed of the capped choice").range(0, 1e18);
    return s;
}

std::string yaml_quote(const std::string& text) {
    std::string out = "'";
    for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
    return out + "'";
}

prefs::BuildPrefsOptions to_options(const BuildPrefsConfig& c, bool overwrite) {
    prefs::BuildPrefsOptions o;
    if (c.questions.empty()) throw UsageError("build-prefs: questions (--questions PATH) is required");
    if (c.model.empty()) throw UsageError("build-prefs: model (--model DIR) is required");
    if (!std::filesystem::is_directory(c.model))
        throw UsageError("build-prefs: model " + c.model + ": no such model directory");
    if (c.output.empty()) throw UsageError("build-prefs: output (--output DIR) is required");
    for (const auto& q : c.questions) o.questions.push_back(q);
    o.load.refuse_bad_records = c.on_bad_record == "refuse";
    o.model                   = c.model;
    o.adapter                 = c.adapter;
    o.output                  = c.output;
    o.dtype                   = c.dtype;
    o.device                  = c.device;
    o.prompt_format           = c.prompt_format;
    o.prompt_template         = prefs::template_preset(c.preset);
    auto& t                   = o.prompt_template;
    if (!c.block.empty()) t.block = c.block;
    if (!c.option.empty()) t.option = c.option;
    if (!c.labels.empty()) t.labels = c.labels;
    if (!c.separator.empty()) t.separator = c.separator;
    if (!c.answer_separator.empty()) t.answer_separator = c.answer_separator;
    if (!c.system.empty()) t.system = c.system == "none" ? "" : c.system;
    o.few_shot_k                  = c.few_shot_k;
    o.few_shot_seed               = static_cast<uint64_t>(c.few_shot_seed);
    o.few_shot_file               = c.few_shot_file;
    o.guard.igakuqa_dir           = c.igakuqa_dir;
    o.guard.eval_exams            = c.eval_exams;
    o.allow_eval_overlap          = c.allow_eval_overlap;
    o.num_samples                 = c.n;
    o.temperature                 = c.temperature;
    o.top_p                       = c.top_p;
    o.top_k                       = c.top_k;
    o.max_new_tokens              = c.max_new_tokens;
    o.seed                        = static_cast<uint64_t>(c.seed);
    o.batch_size                  = c.batch_size;
    o.check.require_marker        = c.require_marker;
    o.check.min_explanation_chars = c.min_explanation_chars;
    o.check.drop_flagged          = c.flagged == "dropped";
    o.pairs.types.clear();
    for (const auto& type : c.types) o.pairs.types.push_back(prefs::parse_pair_type(type));
    o.pairs.max_per_type     = c.max_per_type;
    o.pairs.max_per_question = c.max_per_question;
    o.pairs.dedup            = c.dedup;
    o.pairs.seed             = static_cast<uint64_t>(c.pair_seed);
    o.overwrite              = overwrite;
    return o;
}

}  // namespace

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
        std::vector<std::pair<CLI::Option*, std::string>> keyed;  // option, config key (text values)
        std::vector<std::pair<CLI::Option*, std::string>> numeric;
        DistributedFlags dist;
    };
    auto st   = std::make_shared<State>();
    auto text = [&](const char* flag, std::string& target, const char* key, const char* help) {
        st->keyed.push_back({cmd->add_option(flag, target, help), key});
    };
    // The flags' ranges are the config keys' (make_schema), checked on the flag so the message names the flag.
    auto number = [&](const char* flag, auto& target, const char* key, const char* help, CLI::Validator range) {
        st->numeric.push_back({cmd->add_option(flag, target, help)->capture_default_str()->check(range), key});
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
    static const auto schema = make_schema();
    cmd->footer(
        "Config keys (--config FILE, --set key=value; flags win):\n" + schema.describe() +
        "\nPairs: gt_chosen = (verified explanation + key, a correct sample), gt_rejected = (GT, a wrong sample), "
        "chosen_rejected = (a correct sample, a wrong sample). A sample is correct when the answer after its last "
        "answer marker (the evaluator's extraction: full-width, 'a, c', 'a と c', numbers) equals the key; "
        "unparseable samples are rejected and counted separately. Samples are appended to samples.jsonl as each "
        "question finishes; a rerun resumes it and draws the same samples (seeded per question and sample). Its run "
        "identity (model, adapter, dtype, template, few-shot, prompts, decoding) is kept in samples.jsonl.run.json; "
        "a rerun under another identity is refused naming the key that differs (--overwrite starts over). "
        "pairs.jsonl and summary.json are rebuilt from samples.jsonl in question order on every run.\n" +
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
        for (const auto& [opt, key] : st->keyed)
            if (opt->count()) source.overrides.push_back(key + "=" + yaml_quote(opt->as<std::string>()));
        for (const auto& [opt, key] : st->numeric)
            if (opt->count()) source.overrides.push_back(key + "=" + opt->as<std::string>());
        if (allow->count()) source.overrides.push_back("guard.allow_eval_overlap=true");
        std::vector<ResolvedEntry> resolved;
        const auto cfg = schema.load(source, &resolved);
        auto options   = to_options(cfg, st->overwrite);
        if (options.output.empty()) throw UsageError("build-prefs: output (--output DIR) is required");
        generate::parse_device(options.device);  // a bad --device is named before any rendezvous
        const auto parallel = join_process_group(st->dist, options.device);
        if (parallel.world_size > 1) options.device = parallel.group->device().str();  // cuda:LOCAL_RANK
        options.place = shard_place(parallel);
        if (parallel.group->is_main()) start_run(cfg.output, resolved);
        const auto result = run_reporting_failure(parallel, [&] { return prefs::build_prefs(options); });
        if (parallel.group->is_main()) write_stdout(result.table);
    });
}

}  // namespace medllm::cli

// `medllm build-prefs`: its config keys, their mapping onto BuildPrefsOptions, and the command's body.
#include "medllm/prefs/build_prefs_command.h"

#include <filesystem>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/interrupt.h"
#include "medllm/eval/igakuqa_data.h"
#include "medllm/generate/load.h"

namespace medllm::prefs {

void add_build_prefs_fields(ConfigSchema<BuildPrefsConfig>& s) {
    using C = BuildPrefsConfig;
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
    s.field("guard.years", &C::guard_years,
            "years of guard.igakuqa_dir whose problem_ids and texts are refused, e.g. 2018-2022 or 2021,2022");
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
    s.field("check.answer_by_text", &C::answer_by_text,
            "an answer naming one option by its text (no letter) counts as that option's letter");
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
}

const ConfigSchema<BuildPrefsConfig>& build_prefs_schema() {
    static const auto schema = [] {
        ConfigSchema<BuildPrefsConfig> s;
        add_build_prefs_fields(s);
        return s;
    }();
    return schema;
}

std::vector<int> guard_years(const BuildPrefsConfig& c) {
    try {
        return eval::parse_years(c.guard_years);
    } catch (const UsageError& e) {
        // parse_years names the eval flag (--years); here the key is guard.years.
        std::string why = e.what();
        if (why.rfind("--years ", 0) == 0) why = why.substr(8);
        throw UsageError("build-prefs: guard.years " + why);
    }
}

BuildPrefsOptions to_build_prefs_options(const BuildPrefsConfig& c, bool overwrite) {
    BuildPrefsOptions o;
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
    o.prompt_template         = template_preset(c.preset);
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
    o.guard.years                 = guard_years(c);
    o.allow_eval_overlap          = c.allow_eval_overlap;
    o.num_samples                 = c.n;
    o.temperature                 = c.temperature;
    o.top_p                       = c.top_p;
    o.top_k                       = c.top_k;
    o.max_new_tokens              = c.max_new_tokens;
    o.seed                        = static_cast<uint64_t>(c.seed);
    o.batch_size                  = c.batch_size;
    o.check.require_marker        = c.require_marker;
    o.check.answer_by_text        = c.answer_by_text;
    o.check.min_explanation_chars = c.min_explanation_chars;
    o.check.drop_flagged          = c.flagged == "dropped";
    o.pairs.types.clear();
    for (const auto& type : c.types) o.pairs.types.push_back(parse_pair_type(type));
    o.pairs.max_per_type     = c.max_per_type;
    o.pairs.max_per_question = c.max_per_question;
    o.pairs.dedup            = c.dedup;
    o.pairs.seed             = static_cast<uint64_t>(c.pair_seed);
    o.overwrite              = overwrite;
    return o;
}

void run_build_prefs(const BuildPrefsConfig& config, const dist::RunOptions& run) {
    auto options = to_build_prefs_options(config, run.overwrite);
    generate::parse_device(options.device);  // a bad --device is named before any rendezvous
    const auto parallel = dist::join_process_group(run.launch, options.device);
    if (parallel.world_size > 1) options.device = parallel.group->device().str();  // cuda:LOCAL_RANK
    options.place = dist::shard_place(parallel);
    if (parallel.group->is_main()) start_run(config.output, run.resolved);
    // Sampling has no step to stop after; samples.jsonl holds every finished question, so a stop ends at once.
    const ResumeOnSignal on_stop("build-prefs", "samples.jsonl keeps every question sampled so far", "resume",
                                 parallel.group->is_main() ? config.output : std::string());
    const auto result = dist::run_reporting_failure(parallel, [&] { return build_prefs(options); });
    if (parallel.group->is_main()) write_stdout(result.table);
}

}  // namespace medllm::prefs

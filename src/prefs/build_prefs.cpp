// build-prefs' library: check each sampled answer, pair them GT > chosen > rejected, and the resumable run.
#include "medllm/prefs/build_prefs.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <set>

#include <spdlog/spdlog.h>
#include <utf8proc.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/eval/igakuqa_prompt.h"
#include "medllm/eval/igakuqa_scoring.h"
#include "medllm/generate/engine.h"
#include "medllm/generate/generate_file.h"
#include "medllm/generate/load.h"
#include "medllm/io/model_files.h"

namespace medllm::prefs {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string trim(const std::string& s) {
    const auto b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

int64_t count_visible_code_points(std::string_view s) {
    int64_t n        = 0;
    const auto* data = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
    for (std::size_t pos = 0; pos < s.size();) {
        utf8proc_int32_t cp = 0;
        const auto len      = utf8proc_iterate(data + pos, static_cast<utf8proc_ssize_t>(s.size() - pos), &cp);
        if (len <= 0) {
            ++pos;
            ++n;
            continue;
        }
        pos += static_cast<std::size_t>(len);
        const auto cat = utf8proc_category(cp);
        if (cat != UTF8PROC_CATEGORY_ZS && cat != UTF8PROC_CATEGORY_CC) ++n;
    }
    return n;
}

uint64_t key_hash(uint64_t seed, const std::string& text) {
    return std::stoull(hash_bytes(std::to_string(seed) + "\x1f" + text), nullptr, 16);
}

std::string join(const std::vector<std::string>& items, const char* sep = ",") {
    std::string out;
    for (std::size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
    return out;
}

const char* question_type(const eval::Question& q) {
    if (q.is_numeric()) return "numeric";
    return q.answer.size() > 1 ? "multi" : "single";
}

}  // namespace

const char* to_string(SampleStatus status) {
    switch (status) {
        case SampleStatus::chosen:
            return "chosen";
        case SampleStatus::rejected:
            return "rejected";
        default:
            return "dropped";
    }
}

const char* to_string(PairType type) {
    switch (type) {
        case PairType::gt_chosen:
            return "gt_chosen";
        case PairType::gt_rejected:
            return "gt_rejected";
        default:
            return "chosen_rejected";
    }
}

PairType parse_pair_type(const std::string& text) {
    for (auto t : {PairType::gt_chosen, PairType::gt_rejected, PairType::chosen_rejected})
        if (text == to_string(t)) return t;
    throw UsageError("pair type '" + text + "': expected gt_chosen, gt_rejected or chosen_rejected");
}

CheckedSample check_sample(const PrefQuestion& q, std::string text, const std::string& finish_reason,
                           const SampleCheckOptions& options) {
    CheckedSample s;
    s.text          = std::move(text);
    s.finish_reason = finish_reason;
    s.answer        = eval::extract_answer(s.text, eval::answer_spec(q.question));
    if (!s.answer.parsed && options.answer_by_text && !q.question.is_numeric()) {
        const std::string letter = eval::choice_named_by_text(s.text, q.question.choices);
        if (!letter.empty()) {
            s.answer.parsed = true;
            s.answer.items  = {letter};
            s.by_text       = true;
        }
    }
    s.parsed    = s.answer.parsed && (s.answer.marker_found || !options.require_marker);
    s.correct   = s.parsed && eval::official_is_correct(q.question.problem_id, s.answer.items, q.question.answer);
    s.truncated = finish_reason == "length";
    // The explanation: the normalised text before the last answer marker, the marker itself taken off.
    const std::string normalized = eval::official_prediction(s.text);
    const std::size_t after      = eval::find_after_last_answer_marker(normalized);
    std::string before           = after == std::string::npos ? normalized : normalized.substr(0, after);
    const std::string marker     = trim(options.answer_marker);
    if (after != std::string::npos) {
        const std::string t = trim(before);
        if (!marker.empty() && t.size() >= marker.size() &&
            t.compare(t.size() - marker.size(), marker.size(), marker) == 0)
            before = t.substr(0, t.size() - marker.size());
    }
    s.explanation_chars = count_visible_code_points(before);
    s.short_explanation = s.explanation_chars < options.min_explanation_chars;
    s.empty             = trim(s.text).empty();
    const bool flagged  = s.truncated || s.short_explanation;
    if (s.empty || (flagged && options.drop_flagged))
        s.status = SampleStatus::dropped;
    else if (s.correct && !flagged)
        s.status = SampleStatus::chosen;
    else
        s.status = SampleStatus::rejected;
    return s;
}

std::vector<Pair> build_pairs(const PrefQuestion& q, const std::vector<CheckedSample>& samples,
                              const PairOptions& options) {
    std::vector<int64_t> chosen, rejected;
    std::set<std::string> seen_chosen, seen_rejected;
    for (const auto& s : samples) {
        if (s.status == SampleStatus::dropped) continue;
        const bool is_chosen = s.status == SampleStatus::chosen;
        if (options.dedup && !(is_chosen ? seen_chosen : seen_rejected).insert(trim(s.text)).second) continue;
        (is_chosen ? chosen : rejected).push_back(s.sample_index);
    }
    std::vector<std::vector<Pair>> by_type;
    for (const auto type : options.types) {
        std::vector<Pair> list;
        if (type == PairType::gt_chosen)
            for (auto c : chosen) list.push_back({type, -1, c});
        if (type == PairType::gt_rejected)
            for (auto r : rejected) list.push_back({type, -1, r});
        if (type == PairType::chosen_rejected)
            for (auto c : chosen)
                for (auto r : rejected) list.push_back({type, c, r});
        by_type.push_back(std::move(list));
    }
    const bool capped = options.max_per_type > 0 || options.max_per_question > 0;
    if (capped) {
        for (std::size_t t = 0; t < by_type.size(); ++t) {
            auto& list = by_type[t];
            std::mt19937_64 rng(key_hash(options.seed, q.question.problem_id + "/" + to_string(options.types[t])));
            for (std::size_t i = list.size(); i > 1; --i) std::swap(list[i - 1], list[rng() % i]);
            if (options.max_per_type > 0 && static_cast<int64_t>(list.size()) > options.max_per_type)
                list.resize(static_cast<std::size_t>(options.max_per_type));
        }
        if (options.max_per_question > 0) {
            std::vector<std::vector<Pair>> kept(by_type.size());
            std::vector<std::size_t> next(by_type.size(), 0);
            int64_t total = 0;
            for (bool progress = true; progress && total < options.max_per_question;) {
                progress = false;
                for (std::size_t t = 0; t < by_type.size() && total < options.max_per_question; ++t) {
                    if (next[t] >= by_type[t].size()) continue;
                    kept[t].push_back(by_type[t][next[t]++]);
                    ++total;
                    progress = true;
                }
            }
            by_type = std::move(kept);
        }
    }
    std::vector<Pair> out;
    for (auto& list : by_type) {
        std::sort(list.begin(), list.end(), [](const Pair& a, const Pair& b) {
            return a.chosen_sample != b.chosen_sample ? a.chosen_sample < b.chosen_sample
                                                      : a.rejected_sample < b.rejected_sample;
        });
        out.insert(out.end(), list.begin(), list.end());
    }
    return out;
}

PairsOutput make_pairs_output(const std::vector<PrefQuestion>& questions, const std::vector<json>& prompts,
                              const std::vector<std::vector<CheckedSample>>& samples, const PrefPrompt& prompt,
                              const PairOptions& options) {
    PairsOutput out;
    int64_t n_samples = 0, n_chosen = 0, n_rejected = 0, n_unparseable = 0, n_truncated = 0, n_short = 0, n_dropped = 0,
            n_correct = 0, n_empty = 0, n_by_text = 0;
    json by_type = json::object();
    std::map<std::string, int64_t> pairs_by_type;
    std::map<std::string, std::vector<std::string>> without;
    for (auto t : options.types) {
        pairs_by_type[to_string(t)] = 0;
        without[to_string(t)]       = {};
    }
    for (std::size_t i = 0; i < questions.size(); ++i) {
        const auto& q   = questions[i];
        const auto& ss  = samples.at(i);
        const bool chat = prompts.at(i).is_array();
        auto completion = [&](const std::string& text) -> json {
            if (!chat) return text;
            return json::array({{{"role", "assistant"}, {"content", text}}});
        };
        const std::string gt = prompt.response(q.explanation, q.question.answer);
        const char* qtype    = question_type(q.question);
        auto& bt             = by_type[qtype];
        if (bt.is_null()) bt = {{"samples", 0}, {"correct", 0}};
        for (const auto& s : ss) {
            ++n_samples;
            bt["samples"] = bt["samples"].get<int64_t>() + 1;
            if (s.correct) {
                ++n_correct;
                bt["correct"] = bt["correct"].get<int64_t>() + 1;
            }
            if (!s.parsed) ++n_unparseable;
            if (s.truncated) ++n_truncated;
            if (s.short_explanation) ++n_short;
            if (s.empty) ++n_empty;
            if (s.by_text) ++n_by_text;
            if (s.status == SampleStatus::chosen) ++n_chosen;
            if (s.status == SampleStatus::rejected) ++n_rejected;
            if (s.status == SampleStatus::dropped) ++n_dropped;
        }
        std::map<int64_t, const CheckedSample*> by_index;
        for (const auto& s : ss) by_index[s.sample_index] = &s;
        const auto pairs = build_pairs(q, ss, options);
        std::set<std::string> types_present;
        for (const auto& p : pairs) {
            types_present.insert(to_string(p.type));
            json r;
            r["prompt"]              = prompts[i];
            r["problem_id"]          = q.question.problem_id;
            r["pair_type"]           = to_string(p.type);
            const CheckedSample* rej = by_index.at(p.rejected_sample);
            if (p.chosen_sample < 0) {
                r["chosen"]        = completion(gt);
                r["chosen_answer"] = join(q.question.answer);
                r["chosen_source"] = "gt";
            } else {
                const CheckedSample* c = by_index.at(p.chosen_sample);
                r["chosen"]            = completion(c->text);
                r["chosen_answer"]     = c->answer.as_prediction();
                r["chosen_source"]     = "sample:" + std::to_string(c->sample_index);
            }
            // In a (GT, chosen) pair the correct sample is the loser.
            r["rejected"]        = completion(rej->text);
            r["rejected_answer"] = rej->answer.as_prediction();
            r["rejected_source"] = "sample:" + std::to_string(rej->sample_index);
            out.records.push_back(std::move(r));
            ++pairs_by_type[to_string(p.type)];
        }
        for (auto& [type, ids] : without)
            if (!types_present.count(type)) ids.push_back(q.question.problem_id);
    }
    for (auto& [type, v] : by_type.items()) {
        const auto n  = v["samples"].get<int64_t>();
        v["accuracy"] = n ? static_cast<double>(v["correct"].get<int64_t>()) / static_cast<double>(n) : 0.0;
    }
    json& s                = out.summary;
    s["questions"]         = questions.size();
    s["samples"]           = n_samples;
    s["chosen"]            = n_chosen;
    s["rejected"]          = n_rejected;
    s["unparseable"]       = n_unparseable;
    s["truncated"]         = n_truncated;
    s["short_explanation"] = n_short;
    s["dropped"]           = n_dropped;
    s["empty"]             = n_empty;
    s["correct"]           = n_correct;
    s["answered_by_text"]  = n_by_text;
    s["sample_accuracy"]   = n_samples ? static_cast<double>(n_correct) / static_cast<double>(n_samples) : 0.0;
    s["accuracy_by_type"]  = by_type;
    json pj                = json::object();
    int64_t total          = 0;
    for (const auto& [type, n] : pairs_by_type) {
        pj[type] = n;
        total += n;
    }
    pj["total"] = total;
    s["pairs"]  = pj;
    json wj     = json::object();
    for (const auto& [type, ids] : without) wj[type] = {{"count", ids.size()}, {"problem_ids", ids}};
    s["questions_without_pair"] = wj;
    return out;
}

std::string format_summary(const json& s) {
    std::string out;
    char buf[256];
    auto row = [&](const char* name, const std::string& value) {
        std::snprintf(buf, sizeof buf, "  %-28s %s\n", name, value.c_str());
        out += buf;
    };
    auto num = [&](const char* key) { return s.contains(key) ? s[key].dump() : std::string("-"); };
    out += "build-prefs summary\n";
    row("questions", num("questions"));
    row("samples", num("samples"));
    row("chosen", num("chosen"));
    row("rejected (incl. unparseable)", num("rejected"));
    row("unparseable", num("unparseable"));
    row("answered by option text", num("answered_by_text"));
    row("truncated (token limit)", num("truncated"));
    row("short explanation", num("short_explanation"));
    row("dropped (incl. empty)", num("dropped"));
    row("empty samples", num("empty"));
    std::snprintf(buf, sizeof buf, "%.4f", s.value("sample_accuracy", 0.0));
    row("sample accuracy", buf);
    for (const auto& [type, v] : s["accuracy_by_type"].items()) {
        std::snprintf(buf, sizeof buf, "%.4f (%lld / %lld)", v["accuracy"].get<double>(),
                      static_cast<long long>(v["correct"].get<int64_t>()),
                      static_cast<long long>(v["samples"].get<int64_t>()));
        row(("  accuracy, " + type).c_str(), buf);
    }
    for (const auto& [type, n] : s["pairs"].items()) row(("pairs " + type).c_str(), n.dump());
    for (const auto& [type, v] : s["questions_without_pair"].items())
        row(("questions without " + type).c_str(), v["count"].dump());
    if (s.contains("sampling_seconds")) {
        std::snprintf(buf, sizeof buf, "%.1f s (%.2f samples/s)", s["sampling_seconds"].get<double>(),
                      s["samples_per_second"].get<double>());
        row("sampling", buf);
    }
    if (s.contains("seconds")) {
        std::snprintf(buf, sizeof buf, "%.1f s", s["seconds"].get<double>());
        row("total time", buf);
    }
    return out;
}

SampleCheckOptions with_template_marker(SampleCheckOptions options, const PrefPrompt& prompt) {
    if (options.answer_marker.empty()) options.answer_marker = eval::official_prediction(prompt.answer_marker());
    return options;
}

std::vector<std::vector<CheckedSample>> read_checked_samples(const fs::path& samples_path,
                                                             const std::vector<PrefQuestion>& questions,
                                                             const SampleCheckOptions& options) {
    std::vector<std::vector<CheckedSample>> checked(questions.size());
    std::vector<bool> have(questions.size(), false);
    const std::string damaged = "; the file is damaged (pass --overwrite to start over)";
    for (const auto& rec : eval::read_jsonl(samples_path)) {
        if (!rec.contains("index") || !rec["index"].is_number_unsigned() || !rec.contains("completions") ||
            !rec["completions"].is_array())
            throw Error(samples_path.string() + ": a record without index or completions" + damaged);
        const auto index = rec["index"].get<std::size_t>();
        if (index >= questions.size() || have[index])
            throw Error(samples_path.string() + ": record index " + std::to_string(index) +
                        " is out of range or repeated" + damaged);
        have[index] = true;
        int64_t k   = 0;
        for (const auto& c : rec["completions"]) {
            if (!c.is_object() || !c.contains("text") || !c["text"].is_string() || !c.contains("finish_reason") ||
                !c["finish_reason"].is_string())
                throw Error(samples_path.string() + ": record " + std::to_string(index) +
                            " has a completion without text or finish_reason" + damaged);
            auto s = check_sample(questions[index], c["text"].get<std::string>(), c["finish_reason"].get<std::string>(),
                                  options);
            s.sample_index = k++;
            checked[index].push_back(std::move(s));
        }
    }
    for (std::size_t i = 0; i < questions.size(); ++i)
        if (!have[i]) throw Error(samples_path.string() + ": no samples for " + questions[i].question.problem_id);
    return checked;
}

namespace {

void check_options(const BuildPrefsOptions& o) {
    if (o.output.empty()) throw UsageError("build-prefs: output (--output DIR) is required");
    if (o.model.empty()) throw UsageError("build-prefs: model (--model DIR) is required");
    if (!fs::is_directory(o.model)) throw UsageError("build-prefs: model " + o.model.string() + ": no such directory");
    if (o.prompt_format != "auto" && o.prompt_format != "base" && o.prompt_format != "chat")
        throw UsageError("build-prefs: prompt_format '" + o.prompt_format + "': expected auto, base or chat");
    if (o.num_samples < 1) throw UsageError("build-prefs: sampling.n must be >= 1");
    if (o.few_shot_k < 0) throw UsageError("build-prefs: few_shot.k must be >= 0");
    if (o.pairs.types.empty()) throw UsageError("build-prefs: pairs.types must name at least one pair type");
    // The guard reads guard.years of the IgakuQA folder: a folder that holds fewer years is named before any work.
    if (!o.guard.igakuqa_dir.empty()) {
        if (!fs::is_directory(o.guard.igakuqa_dir / "data"))
            throw UsageError("build-prefs: guard.igakuqa_dir " + o.guard.igakuqa_dir.string() +
                             " is not an IgakuQA data folder (no data/ in it)");
        for (int year : o.guard.years)
            if (!fs::is_directory(o.guard.igakuqa_dir / "data" / std::to_string(year)))
                throw UsageError("build-prefs: guard.igakuqa_dir " + o.guard.igakuqa_dir.string() + " has no data/" +
                                 std::to_string(year) + "; set guard.years to the exam years it holds");
    }
}

// The questions to sample and the fixed few-shot examples (if any), checked against the evaluation exams.
struct Inputs {
    QuestionLoadReport report;
    std::vector<PrefQuestion> questions;
    std::vector<PrefQuestion> fixed;                      // few_shot.file's examples; empty: drawn from the questions
    std::vector<std::vector<const PrefQuestion*>> shots;  // per question: its few-shot examples
};

Inputs load_inputs(const BuildPrefsOptions& o) {
    Inputs in;
    in.questions = load_pref_questions(o.questions, o.load, &in.report);
    if (!o.few_shot_file.empty()) in.fixed = load_pref_questions({o.few_shot_file}, {true, "few_shot.file"});
    spdlog::info("{} questions from {} file(s){}", in.questions.size(), in.report.files.size(),
                 in.report.problems.empty() ? "" : fmt::format(", {} records skipped", in.report.problems.size()));
    std::vector<PrefQuestion> guarded = in.questions;
    guarded.insert(guarded.end(), in.fixed.begin(), in.fixed.end());
    if (o.guard.igakuqa_dir.empty())
        spdlog::warn(
            "guard: no IgakuQA directory given (guard.igakuqa_dir): only exam numbers are checked, not "
            "problem_ids or text overlap");
    const auto overlap = find_eval_overlap(guarded, o.guard);
    if (!overlap.empty()) {
        std::string first;
        for (std::size_t i = 0; i < overlap.size() && i < 3; ++i)
            first += (i ? "; " : "") + overlap[i].where + " " + overlap[i].problem_id + ": " + overlap[i].reason;
        const std::string msg = std::to_string(overlap.size()) + " question(s) overlap the evaluation exams (" + first +
                                (overlap.size() > 3 ? "; ..." : "") + ")";
        if (!o.allow_eval_overlap) throw UsageError(msg + "; remove them or pass --allow-eval-overlap");
        spdlog::warn("{}; kept because of --allow-eval-overlap", msg);
    }
    // Every question's few-shot examples, before the model loads: a fixed file that holds the question itself (or
    // too few others) is refused here, naming the file and the question. (The pointers are into in.questions and
    // in.fixed, whose buffers stay put when `in` is moved out.)
    in.shots.resize(in.questions.size());
    for (std::size_t i = 0; i < in.questions.size(); ++i)
        in.shots[i] = o.few_shot_file.empty()
                          ? draw_few_shot(in.questions, in.questions[i], o.few_shot_k, o.few_shot_seed)
                          : fixed_few_shot(in.fixed, o.few_shot_file, in.questions[i], o.few_shot_k);
    return in;
}

struct OutputPaths {
    fs::path samples, pairs, summary;
};

// The output files, none of which may be an input.
OutputPaths output_paths(const BuildPrefsOptions& o, const Inputs& in) {
    std::vector<fs::path> inputs = in.report.files;
    for (const auto& p : {o.model, o.adapter, o.few_shot_file})
        if (!p.empty()) inputs.push_back(p);
    OutputPaths out{o.output / "samples.jsonl", o.output / "pairs.jsonl", o.output / "summary.json"};
    for (const auto& path : {out.samples, out.pairs, out.summary}) check_output_not_input(path, inputs);
    return out;
}

// Each question's few-shot prompt: as pairs.jsonl records it (a string, or a message list for chat) and as the
// engine receives it (rendered text).
struct Prompts {
    std::vector<json> shown;
    std::vector<generate::PromptRecord> records;
    std::string all;  // every rendered prompt with its index: the run identity's prompts_xxh3
};

Prompts render_prompts(const BuildPrefsOptions& o, const Inputs& in, const PrefPrompt& prompt, bool chat,
                       const text::Tokenizer& tokenizer) {
    Prompts p;
    for (std::size_t i = 0; i < in.questions.size(); ++i) {
        const auto& q        = in.questions[i];
        const auto& examples = in.shots[i];
        generate::PromptRecord r;
        r.index = i;
        r.id    = q.question.problem_id;
        if (chat) {
            const json messages = prompt.chat_messages(q, examples);
            std::vector<text::ChatMessage> m;
            for (const auto& msg : messages) m.push_back({msg["role"], msg["content"]});
            r.text = tokenizer.apply_chat_template(m, /*add_generation_prompt=*/true);
            p.shown.push_back(messages);
        } else {
            r.text = prompt.base_prompt(q, examples);
            p.shown.push_back(r.text);
        }
        p.all += std::to_string(i) + "\x1e" + r.text + "\x1e";
        p.records.push_back(std::move(r));
    }
    return p;
}

// A prompt that leaves no room in the context is named by its question (generate_to_file only knows indices).
void check_prompts_fit(const Prompts& p, const std::vector<PrefQuestion>& questions, const text::Tokenizer& tokenizer,
                       int64_t context_length) {
    std::vector<std::string> texts;
    for (const auto& r : p.records) texts.push_back(r.text);
    const auto ids = tokenizer.encode_batch(texts);
    for (std::size_t i = 0; i < ids.size(); ++i)
        if (static_cast<int64_t>(ids[i].size()) >= context_length)
            throw Error(questions[i].where() + ": problem_id " + questions[i].question.problem_id +
                        ": the few-shot prompt has " + std::to_string(ids[i].size()) +
                        " tokens, which leaves no room in the model's context of " + std::to_string(context_length) +
                        " tokens (fewer or shorter few-shot examples: few_shot.k, few_shot.file)");
}

generate::GenerateOptions sampling_options(const BuildPrefsOptions& o, const PrefPrompt& prompt) {
    generate::GenerateOptions gen;
    gen.num_samples        = o.num_samples;
    gen.max_new_tokens     = o.max_new_tokens;
    gen.seed               = o.seed;
    gen.max_batch_size     = o.batch_size;
    gen.sampling.do_sample = o.temperature > 0;
    if (gen.sampling.do_sample) gen.sampling.temperature = o.temperature;
    gen.sampling.top_p = o.top_p;
    gen.sampling.top_k = o.top_k;
    gen.stop_strings   = {prompt.next_block_stop()};
    return gen;
}

// samples.jsonl's settings, with the run identity a resume must match.
generate::GenerateFileOptions samples_file(const BuildPrefsOptions& o, const fs::path& samples_path,
                                           const generate::LoadedModel& loaded, bool chat, const PrefPrompt& prompt,
                                           const Inputs& in, const Prompts& prompts) {
    const at::Tensor& weight = loaded.model->lm_head_weight();
    generate::GenerateFileOptions file;
    file.output       = samples_path;
    file.overwrite    = o.overwrite;
    file.source       = "questions";
    file.log_progress = o.log_progress;
    file.place        = o.place;
    file.identity     = {{"command", "medllm build-prefs"},
                         {"model", io::model_dir_identity(o.model)},
                         {"adapter", o.adapter.empty() ? json(nullptr) : io::model_dir_identity(o.adapter)},
                         {"dtype", c10::toString(weight.scalar_type())},
                         {"device", c10::DeviceTypeName(weight.device().type(), /*lower_case=*/true)},
                         {"prompt_format", chat ? "chat" : "base"},
                         {"template", prompt.to_json()},
                         {"few_shot",
                          {{"k", o.few_shot_k},
                           {"seed", o.few_shot_seed},
                           {"file", o.few_shot_file.empty() ? json(nullptr) : json(hash_file(o.few_shot_file))}}},
                         {"questions", in.questions.size()},
                         {"prompts_xxh3", hash_bytes(prompts.all)}};
    return file;
}

}  // namespace

BuildPrefsResult build_prefs(const BuildPrefsOptions& o) {
    const auto t0 = std::chrono::steady_clock::now();
    check_options(o);
    const PrefPrompt prompt(o.prompt_template);

    // Inputs first: a bad record or an evaluation question is reported before the model loads.
    const Inputs in         = load_inputs(o);
    const OutputPaths paths = output_paths(o, in);

    generate::LoadOptions lo;
    lo.dtype        = o.dtype;
    lo.device       = o.device;
    lo.adapter      = o.adapter.string();
    auto loaded     = generate::load_model(o.model, lo);
    const bool chat = o.prompt_format == "chat" || (o.prompt_format == "auto" && loaded.has_chat_template);
    generate::Generator generator(loaded.model, loaded.tokenizer, loaded.eos_token_ids);
    const Prompts prompts = render_prompts(o, in, prompt, chat, *loaded.tokenizer);
    check_prompts_fit(prompts, in.questions, *loaded.tokenizer, generator.context_length());

    const auto gen  = sampling_options(o, prompt);
    const auto file = samples_file(o, paths.samples, loaded, chat, prompt, in, prompts);
    fs::create_directories(o.output);
    const auto ts                 = std::chrono::steady_clock::now();
    const auto gr                 = generate::generate_to_file(generator, prompts.records, gen, file);
    const double sampling_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    if (!o.place.is_main()) return {};  // rank 0 writes pairs.jsonl and summary.json

    // Every record of samples.jsonl, in question order (the file is in finishing order).
    const auto checked = read_checked_samples(paths.samples, in.questions, with_template_marker(o.check, prompt));
    auto po            = make_pairs_output(in.questions, prompts.shown, checked, prompt, o.pairs);
    {
        AtomicFileWriter w(paths.pairs);
        for (const auto& r : po.records) w.write(dump_json(r) + "\n");
        w.commit();
    }
    const int64_t generated_samples = static_cast<int64_t>(gr.generated) * o.num_samples;
    json& s                         = po.summary;
    s["records_skipped"]            = in.report.problems.size();
    s["resumed_questions"]          = gr.resumed;
    s["sampled_questions"]          = gr.generated;
    s["sampled_now"]                = generated_samples;
    s["sampling_seconds"]           = sampling_seconds;
    s["samples_per_second"]         = sampling_seconds > 0 ? generated_samples / sampling_seconds : 0.0;
    s["prompt_format"]              = chat ? "chat" : "base";
    s["seconds"]                    = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    s["files"]                      = {{"samples", paths.samples.string()}, {"pairs", paths.pairs.string()}};
    write_file_atomic(paths.summary, dump_json(s, 2) + "\n");
    return {s, format_summary(s)};
}

}  // namespace medllm::prefs

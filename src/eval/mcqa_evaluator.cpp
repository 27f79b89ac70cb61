// `eval mcqa`'s scoring: option log-likelihood and generated answers, the resumable per-task loop, the reports.
#include "medllm/eval/mcqa_evaluator.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <map>
#include <regex>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/progress.h"
#include "medllm/core/shards.h"
#include "medllm/eval/igakuqa_answer.h"

namespace medllm::eval {

namespace fs = std::filesystem;

int argmax_first(const std::vector<double>& values) {
    int best = -1;
    for (size_t i = 0; i < values.size(); ++i)
        if (best < 0 || values[i] > values[static_cast<size_t>(best)]) best = static_cast<int>(i);
    return best;
}

size_t codepoint_length(const std::string& text) {
    size_t n = 0;
    for (unsigned char c : text) n += (c & 0xC0) != 0x80;
    return n;
}

LoglikChoice choose_by_loglik(const std::vector<double>& logprobs, const std::vector<std::string>& choices,
                              const std::vector<int64_t>& tokens) {
    if (logprobs.size() != choices.size()) throw Error("choose_by_loglik: one log-likelihood per choice expected");
    if (!tokens.empty() && tokens.size() != logprobs.size())
        throw Error("choose_by_loglik: one token count per choice expected");
    LoglikChoice c;
    c.pred = argmax_first(logprobs);
    std::vector<double> normed;
    // numpy divides by float(len(choice)); an empty choice gives ±inf / nan there, which no real task has.
    for (size_t i = 0; i < choices.size(); ++i)
        normed.push_back(logprobs[i] / static_cast<double>(std::max<size_t>(1, codepoint_length(choices[i]))));
    c.pred_norm = argmax_first(normed);
    if (!tokens.empty()) {
        // JMedBench: np.argmin(loss / n_valid_tokens) with loss = -ll, i.e. the first maximum of ll / tokens
        // (-ll / n is exactly -(ll / n) in IEEE arithmetic, so ties fall the same way).
        std::vector<double> per_token;
        for (size_t i = 0; i < tokens.size(); ++i)
            per_token.push_back(logprobs[i] / static_cast<double>(std::max<int64_t>(1, tokens[i])));
        c.pred_norm_tokens = argmax_first(per_token);
    }
    return c;
}

namespace {

std::string lower(std::string s) {
    return unicode_lower(zen_to_han(s));
}

std::string trim(const std::string& s) {
    size_t a = 0, b = s.size();
    while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
    while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
    return s.substr(a, b - a);
}

bool single_letter_labels(const McqaTask& task, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        const std::string l = lower(task.labels[i]);
        if (l.size() != 1 || l[0] < 'a' || l[0] > 'h') return false;
    }
    return true;
}

}  // namespace

int generated_choice(const McqaTask& task, const McqaQuestion& question, const std::string& raw_output) {
    const size_t n = question.options.size();
    if (single_letter_labels(task, n)) {
        AnswerSpec spec;
        spec.num_choices    = static_cast<int>(n);
        spec.expected_count = 1;
        const auto a        = extract_answer(raw_output, spec);
        if (a.parsed) {
            if (a.items.size() != 1) return -1;  // several letters for a one-answer question
            for (size_t i = 0; i < n; ++i)
                if (lower(task.labels[i]) == a.items[0]) return static_cast<int>(i);
        }
    }
    // Otherwise the first non-empty line (after the last answer marker) that starts with an option's text or label.
    std::string text       = official_prediction(raw_output);
    const size_t marker_at = find_after_last_answer_marker(text);
    if (marker_at != std::string::npos) text = text.substr(marker_at);
    std::string line;
    for (size_t pos = 0; pos <= text.size();) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        line = trim(text.substr(pos, end - pos));
        if (!line.empty()) break;
        pos = end + 1;
    }
    int best         = -1;
    size_t best_size = 0;
    for (size_t i = 0; i < n; ++i) {
        for (const std::string& cand : {lower(trim(question.options[i])), lower(task.labels[i])}) {
            if (cand.empty() || line.compare(0, cand.size(), cand) != 0) continue;
            // The match must end at a word boundary ("yes." but not "yesterday").
            const bool boundary = line.size() == cand.size() ||
                                  !std::isalnum(static_cast<unsigned char>(line[cand.size()])) ||
                                  static_cast<unsigned char>(cand.back()) >= 0x80;
            if (boundary && cand.size() > best_size) {
                best      = static_cast<int>(i);
                best_size = cand.size();
            }
        }
    }
    return best;
}

std::string format_mcqa_prompt(const McqaTask& task, const McqaQuestion& question, PromptFormat format) {
    const std::string text = render_mcqa_prompt(task, question);
    if (format == PromptFormat::base) return text;
    std::vector<ChatMessage> messages;
    if (!task.system.empty()) messages.push_back({"system", task.system});
    messages.push_back({"user", text});
    return render_chatml(messages);
}

std::string mcqa_continuation(const McqaTask& task, const McqaQuestion& question, size_t i, PromptFormat format) {
    return (format == PromptFormat::chat ? std::string() : task.target_delimiter) + mcqa_choice_text(task, question, i);
}

McqaScoring parse_mcqa_scoring(const std::string& text) {
    if (text == "loglik") return McqaScoring::loglik;
    if (text == "generate") return McqaScoring::generate;
    if (text == "both") return McqaScoring::both;
    throw UsageError("--scoring '" + text + "': expected loglik, generate or both");
}

const char* to_string(McqaScoring scoring) {
    switch (scoring) {
        case McqaScoring::loglik:
            return "loglik";
        case McqaScoring::generate:
            return "generate";
        case McqaScoring::both:
            return "both";
    }
    return "?";
}

nlohmann::json mcqa_run_identity(const McqaBackend& backend, const McqaTask& task, const McqaDataset& data,
                                 const McqaOptions& options) {
    return {{"backend", backend.identity()},
            {"task", task.to_json()},
            {"data", data.identity},
            {"prompt_format", to_string(options.format)},
            {"scoring", to_string(options.scoring)}};
}

namespace {

struct Saved {
    nlohmann::json record;
    std::string where;  // file:line, for errors
};

// A backend's error for one request of a batch, as the user can act on it: the question's file:line and id first,
// and the backend's own batch position ("log-likelihood request 3: ", "prompt 3 ") left out.
[[noreturn]] void rethrow_for_question(const Error& e, const McqaQuestion& q) {
    static const std::regex position("^(log-likelihood request [0-9]+: |prompt [0-9]+ )");
    std::string what = e.what();
    std::smatch m;
    if (std::regex_search(what, m, position))
        what = (m.str(0).rfind("prompt", 0) == 0 ? "the prompt " : "") + what.substr(m.length(0));
    throw Error(q.source + ": question " + q.id + ": " + what);
}

// Runs `call` on a batch of questions; when it throws, runs the batch's questions one at a time until one fails
// and names that question (a long question among 16 is otherwise "request 0" of nothing the user can find).
template <class Result, class Call>
std::vector<Result> per_question_errors(const std::vector<const McqaQuestion*>& questions, Call call) {
    try {
        return call(0, questions.size());
    } catch (const Error& batch_error) {
        if (questions.size() > 1) {
            for (size_t k = 0; k < questions.size(); ++k) {
                try {
                    call(k, k + 1);
                } catch (const Error& e) {
                    rethrow_for_question(e, *questions[k]);
                }
            }
        }
        rethrow_for_question(batch_error, *questions.front());
    }
}

std::string record_key(size_t index, const std::string& mode) {
    return std::to_string(index) + "/" + mode;
}

// The key of a saved record (what it is the result of); a record without a valid index and mode keys to itself,
// and the checks below name its file:line.
std::string saved_key(const nlohmann::json& r) {
    const auto index = r.find("index");
    const auto mode  = r.find("mode");
    if (index == r.end() || !index->is_number_unsigned() || mode == r.end() || !mode->is_string())
        return "?" + r.dump();
    return record_key(index->get<size_t>(), mode->get<std::string>());
}

// Where a folded record goes: log-likelihood records, then generated ones, each by question index -- the order one
// uninterrupted process writes.
int64_t saved_order(const nlohmann::json& r, size_t questions) {
    const auto index = r.find("index");
    const auto mode  = r.find("mode");
    const int64_t m  = mode != r.end() && mode->is_string() ? (*mode == "loglik" ? 0 : *mode == "generate" ? 1 : 2) : 2;
    const int64_t n  = static_cast<int64_t>(questions) + 1;
    const int64_t i  = index != r.end() && index->is_number_unsigned() && index->get<size_t>() < questions
                           ? static_cast<int64_t>(index->get<size_t>())
                           : n - 1;
    return m * n + i;
}

// One task's evaluation: its predictions file (resumed), the records saved so far and the prompts sent.
class McqaTaskRun {
public:
    McqaTaskRun(const McqaTask& task, const McqaDataset& data, McqaBackend& backend, const McqaOptions& options,
                size_t count)
        : task_(task),
          qs_(data.questions),
          backend_(backend),
          options_(options),
          count_(count),
          batch_(static_cast<size_t>(options.batch_size)),
          path_(options.output_dir / "predictions" / (task.name + ".jsonl")),
          store_(path_, mcqa_run_identity(backend, task, data, options), options.overwrite, kHint, options.place,
                 saved_key, [n = qs_.size()](const nlohmann::json& r) { return saved_order(r, n); }) {
        for (size_t k = 0; k < store_.existing().size(); ++k) keep(store_.existing()[k], store_.existing_where()[k]);
        for (size_t i = 0; i < count_; ++i) prompts_.push_back(format_mcqa_prompt(task_, qs_[i], options_.format));
    }

    // Scores this rank's share of the questions without a saved log-likelihood record, a batch at a time.
    void score_loglik() {
        const std::vector<size_t> todo = share("loglik", "score");
        ProgressLog progress("mcqa " + task_.name + " loglik", static_cast<int64_t>(todo.size()), "questions");
        for (size_t begin = 0; begin < todo.size(); begin += batch_) {
            const size_t end = std::min(todo.size(), begin + batch_);
            loglik_batch(todo, begin, end);
            progress.update(static_cast<int64_t>(end));
        }
    }

    // Generates the answers of this rank's share of the questions without a saved generated record.
    void generate() {
        const std::vector<size_t> todo = share("generate", "generate");
        GenerationParams params;
        params.max_new_tokens = static_cast<int>(task_.max_new_tokens);
        if (options_.format == PromptFormat::base) params.stop = {"\n\n"};
        ProgressLog progress("mcqa " + task_.name + " generate", static_cast<int64_t>(todo.size()), "questions");
        for (size_t begin = 0; begin < todo.size(); begin += batch_) {
            const size_t end = std::min(todo.size(), begin + batch_);
            generate_batch(todo, begin, end, params);
            progress.update(static_cast<int64_t>(end));
        }
    }

    // In a group, rank 0 gathers the other ranks' records. False on the other ranks (they are done).
    bool finish() {
        for (const auto& r : store_.finish()) keep(r, store_.merged_path().string());
        return options_.place.is_main();
    }

    // Scores from the records (fresh or resumed alike), so a resumed run reports what a fresh one would.
    void tally(McqaTaskResult& result, bool do_loglik, bool do_generate) const {
        std::map<std::string, std::array<McqaMetrics, 4>> by_subject;
        for (size_t i = 0; i < count_; ++i) {
            auto& sub = by_subject[qs_[i].subject];
            if (do_loglik) {
                const auto& r   = record_of(i, "loglik");
                const bool hit  = r["pred"].get<int>() == qs_[i].answer;
                const bool hitn = r["pred_norm"].get<int>() == qs_[i].answer;
                // Per-token normalization from the saved log-likelihoods and token counts (records written before
                // it was reported have both).
                const auto by_tokens = choose_by_loglik(r["logprobs"].get<std::vector<double>>(),
                                                        r["choices"].get<std::vector<std::string>>(),
                                                        r["tokens"].get<std::vector<int64_t>>());
                const bool hitt      = by_tokens.pred_norm_tokens == qs_[i].answer;
                for (auto* m : {&result.acc, &sub[0]}) m->n++, m->correct += hit;
                for (auto* m : {&result.acc_norm, &sub[1]}) m->n++, m->correct += hitn;
                for (auto* m : {&result.acc_norm_tokens, &sub[3]}) m->n++, m->correct += hitt;
            }
            if (do_generate) {
                const auto& r  = record_of(i, "generate");
                const int pred = r["pred"].get<int>();
                for (auto* m : {&result.generate, &sub[2]}) m->n++, m->correct += pred == qs_[i].answer;
                result.generate_unparsed += pred < 0;
            }
        }
        if (by_subject.size() > 1 || (by_subject.size() == 1 && !by_subject.begin()->first.empty()))
            for (auto& [name, m] : by_subject) result.subjects.push_back({name, m});
    }

private:
    static constexpr const char* kHint =
        "pass --overwrite to start over, or choose another --output (predictions of another run are never mixed)";

    void keep(const nlohmann::json& r, const std::string& at) {
        if (!r.contains("index") || !r["index"].is_number_unsigned() || !r.contains("mode") || !r["mode"].is_string())
            throw Error(at + ": record without 'index' and 'mode'; " + kHint);
        const size_t index = r["index"].get<size_t>();
        if (index >= qs_.size() || r.value("id", "") != qs_[index].id)
            throw Error(at + ": record for a question this data does not have at that index; " + kHint);
        saved_[record_key(index, r["mode"].get<std::string>())] = Saved{r, at};
    }

    void check_saved(const Saved& s, size_t i) const {
        if (s.record.value("prompt", "") != prompts_[i])
            throw Error(s.where + ": question " + qs_[i].id + ": its saved prompt is not the one this run sends; " +
                        kHint);
    }

    // The questions of `mode` this rank runs: every rank computes the same list of unsaved ones (from the same
    // merged file) and takes every R-th of it.
    std::vector<size_t> share(const std::string& mode, const char* verb) const {
        const ShardPlace& place = options_.place;
        std::vector<size_t> todo;
        for (size_t i = 0; i < count_; ++i) {
            auto it = saved_.find(record_key(i, mode));
            if (it == saved_.end())
                todo.push_back(i);
            else
                check_saved(it->second, i);
        }
        std::vector<size_t> mine;
        for (size_t k = 0; k < todo.size(); ++k)
            if (place.owns(k)) mine.push_back(todo[k]);
        if (place.sharded())
            spdlog::info("mcqa {} {}: {} questions, {} saved, {} to {}, {} on rank {} of {}", task_.name, mode, count_,
                         count_ - todo.size(), todo.size(), verb, mine.size(), place.rank, place.world_size);
        else
            spdlog::info("mcqa {} {}: {} questions, {} saved, {} to {}", task_.name, mode, count_, count_ - todo.size(),
                         todo.size(), verb);
        return mine;
    }

    void loglik_batch(const std::vector<size_t>& todo, size_t begin, size_t end) {
        std::vector<LoglikRequest> requests;
        std::vector<const McqaQuestion*> batch_questions;
        for (size_t k = begin; k < end; ++k) {
            const auto& q = qs_[todo[k]];
            LoglikRequest r;
            r.context = prompts_[todo[k]];
            for (size_t o = 0; o < q.options.size(); ++o)
                r.continuations.push_back(mcqa_continuation(task_, q, o, options_.format));
            requests.push_back(std::move(r));
            batch_questions.push_back(&q);
        }
        const auto scores =
            per_question_errors<std::vector<ContinuationScore>>(batch_questions, [&](size_t from, size_t to) {
                return backend_.loglikelihood(
                    std::vector<LoglikRequest>(requests.begin() + static_cast<std::ptrdiff_t>(from),
                                               requests.begin() + static_cast<std::ptrdiff_t>(to)));
            });
        if (scores.size() != requests.size()) throw Error("backend returned the wrong number of score lists");
        for (size_t k = begin; k < end; ++k) save_loglik(todo[k], scores[k - begin]);
    }

    void save_loglik(size_t i, const std::vector<ContinuationScore>& s) {
        const auto& q = qs_[i];
        if (s.size() != q.options.size()) throw Error("backend returned the wrong number of option scores");
        std::vector<double> lls;
        std::vector<int64_t> tokens;
        std::vector<bool> greedy;
        std::vector<std::string> choices;
        for (size_t o = 0; o < s.size(); ++o) {
            lls.push_back(s[o].logprob);
            tokens.push_back(s[o].tokens);
            greedy.push_back(s[o].greedy);
            choices.push_back(mcqa_choice_text(task_, q, o));
        }
        const auto c = choose_by_loglik(lls, choices, tokens);
        nlohmann::json rec{{"index", i},
                           {"id", q.id},
                           {"mode", "loglik"},
                           {"source", q.source},
                           {"subject", q.subject},
                           {"prompt", prompts_[i]},
                           {"choices", choices},
                           {"gold", q.answer},
                           {"logprobs", lls},
                           {"tokens", tokens},
                           {"greedy", greedy},
                           {"pred", c.pred},
                           {"pred_norm", c.pred_norm},
                           {"pred_norm_tokens", c.pred_norm_tokens}};
        store_.append(rec);
        saved_[record_key(i, "loglik")] = Saved{rec, store_.own_path().string()};
    }

    void generate_batch(const std::vector<size_t>& todo, size_t begin, size_t end, const GenerationParams& params) {
        std::vector<std::string> batch_prompts;
        std::vector<const McqaQuestion*> batch_questions;
        for (size_t k = begin; k < end; ++k) {
            batch_prompts.push_back(prompts_[todo[k]]);
            batch_questions.push_back(&qs_[todo[k]]);
        }
        const auto outputs = per_question_errors<std::string>(batch_questions, [&](size_t from, size_t to) {
            return backend_.complete(std::vector<std::string>(batch_prompts.begin() + static_cast<std::ptrdiff_t>(from),
                                                              batch_prompts.begin() + static_cast<std::ptrdiff_t>(to)),
                                     params);
        });
        if (outputs.size() != batch_prompts.size()) throw Error("backend returned the wrong number of completions");
        for (size_t k = begin; k < end; ++k) {
            const size_t i = todo[k];
            const auto& q  = qs_[i];
            const int pred = generated_choice(task_, q, outputs[k - begin]);
            nlohmann::json rec{{"index", i},           {"id", q.id},
                               {"mode", "generate"},   {"source", q.source},
                               {"subject", q.subject}, {"prompt", prompts_[i]},
                               {"gold", q.answer},     {"raw_output", outputs[k - begin]},
                               {"pred", pred}};
            store_.append(rec);
            saved_[record_key(i, "generate")] = Saved{rec, store_.own_path().string()};
        }
    }

    const nlohmann::json& record_of(size_t i, const std::string& mode) const {
        const auto it = saved_.find(record_key(i, mode));
        if (it == saved_.end())
            throw Error(path_.string() + ": no " + mode + " record for question " + qs_[i].id +
                        " after every rank finished");
        return it->second.record;
    }

    const McqaTask& task_;
    const std::vector<McqaQuestion>& qs_;
    McqaBackend& backend_;
    const McqaOptions& options_;
    const size_t count_;  // the questions evaluated (--limit)
    const size_t batch_;
    const fs::path path_;
    ShardedRecords store_;
    std::map<std::string, Saved> saved_;  // by record_key
    std::vector<std::string> prompts_;
};

}  // namespace

McqaTaskResult evaluate_mcqa_task(const McqaTask& task, const McqaDataset& data, McqaBackend& backend,
                                  const McqaOptions& options) {
    if (options.batch_size < 1) throw UsageError("--batch-size must be at least 1");
    McqaTaskResult result;
    result.task       = task.name;
    result.definition = task.to_json();
    for (const auto& f : data.files) result.data_files.push_back(f.string());
    // --limit: the first `count` questions; records are per question index, so a later run with a larger limit (or
    // none) resumes these.
    const auto& qs     = data.questions;
    const size_t count = options.limit > 0 ? std::min(qs.size(), static_cast<size_t>(options.limit)) : qs.size();
    result.questions   = static_cast<int64_t>(count);
    result.skipped     = data.skipped;

    const bool do_loglik   = options.scoring != McqaScoring::generate;
    const bool do_generate = options.scoring != McqaScoring::loglik;
    McqaTaskRun run(task, data, backend, options, count);
    if (do_loglik) run.score_loglik();
    if (do_generate) run.generate();
    if (!run.finish()) return result;  // a rank other than 0: its result has no scores
    run.tally(result, do_loglik, do_generate);
    return result;
}

// ---------------------------------------------------------------- reports

namespace {

nlohmann::json metric_json(const McqaMetrics& m) {
    return {{"acc", m.acc()}, {"correct", m.correct}, {"n", m.n}};
}

bool has_loglik(McqaScoring s) {
    return s != McqaScoring::generate;
}
bool has_generate(McqaScoring s) {
    return s != McqaScoring::loglik;
}

std::string pct(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", 100.0 * v);
    return buf;
}

// The macro average over tasks of one metric.
double average(const McqaResult& r, const McqaMetrics McqaTaskResult::*metric) {
    if (r.tasks.empty()) return 0.0;
    double sum = 0;
    for (const auto& t : r.tasks) sum += (t.*metric).acc();
    return sum / static_cast<double>(r.tasks.size());
}

}  // namespace

nlohmann::json mcqa_report_json(const McqaResult& result) {
    nlohmann::json j{{"model", result.model},
                     {"prompt_format", result.prompt_format},
                     {"scoring", to_string(result.scoring)},
                     {"metrics",
                      {{"acc", "argmax of summed option log-likelihood (lm-evaluation-harness acc)"},
                       {"acc_norm",
                        "argmax of log-likelihood / len(choice) in Unicode code points (lm-evaluation-harness "
                        "acc_norm)"},
                       {"acc_norm_tokens",
                        "argmax of log-likelihood / the option's token count (JMedBench's own scorer, "
                        "nii-nlp/med-eval norm_accuracy)"},
                       {"generate", "greedy answer, label extracted by the answer module"}}}};
    j["tasks"] = nlohmann::json::array();
    for (const auto& t : result.tasks) {
        nlohmann::json tj{{"task", t.task},
                          {"questions", t.questions},
                          {"data_files", t.data_files},
                          {"skipped_rows", t.skipped.size()},
                          {"skipped", t.skipped},
                          {"definition", t.definition}};
        if (has_loglik(result.scoring)) {
            tj["acc"]             = metric_json(t.acc);
            tj["acc_norm"]        = metric_json(t.acc_norm);
            tj["acc_norm_tokens"] = metric_json(t.acc_norm_tokens);
        }
        if (has_generate(result.scoring)) {
            tj["generate"]          = metric_json(t.generate);
            tj["generate_unparsed"] = t.generate_unparsed;
        }
        if (!t.subjects.empty()) {
            nlohmann::json subs = nlohmann::json::object();
            for (const auto& [name, m] : t.subjects) {
                nlohmann::json sj;
                if (has_loglik(result.scoring)) {
                    sj["acc"]             = metric_json(m[0]);
                    sj["acc_norm"]        = metric_json(m[1]);
                    sj["acc_norm_tokens"] = metric_json(m[3]);
                }
                if (has_generate(result.scoring)) sj["generate"] = metric_json(m[2]);
                subs[name.empty() ? "(none)" : name] = sj;
            }
            tj["subjects"] = subs;
        }
        j["tasks"].push_back(tj);
    }
    nlohmann::json avg{{"tasks", result.tasks.size()}};
    if (has_loglik(result.scoring)) {
        avg["acc"]             = average(result, &McqaTaskResult::acc);
        avg["acc_norm"]        = average(result, &McqaTaskResult::acc_norm);
        avg["acc_norm_tokens"] = average(result, &McqaTaskResult::acc_norm_tokens);
    }
    if (has_generate(result.scoring)) avg["generate"] = average(result, &McqaTaskResult::generate);
    j["average"] = avg;
    return j;
}

std::string mcqa_report_markdown(const McqaResult& result) {
    std::string md = "# Zero-shot multiple-choice QA: " + result.model + "\n\n";
    md += "Prompt format: " + result.prompt_format + "; scoring: " + to_string(result.scoring) +
          ". Accuracy in %, average = mean over tasks (as Table 3).\n\n";
    md += "| Model | Metric |";
    for (const auto& t : result.tasks) md += " " + t.task + " |";
    md += " Average |\n|---|---|";
    for (size_t i = 0; i <= result.tasks.size(); ++i) md += "---:|";
    md += "\n";
    auto row = [&](const char* name, const McqaMetrics McqaTaskResult::*metric) {
        md += "| " + result.model + " | " + name + " |";
        for (const auto& t : result.tasks) md += " " + pct((t.*metric).acc()) + " |";
        md += " " + pct(average(result, metric)) + " |\n";
    };
    if (has_loglik(result.scoring)) {
        row("acc", &McqaTaskResult::acc);
        row("acc_norm", &McqaTaskResult::acc_norm);
        row("acc_norm_tokens", &McqaTaskResult::acc_norm_tokens);
    }
    if (has_generate(result.scoring)) row("generate", &McqaTaskResult::generate);
    if (has_loglik(result.scoring))
        md +=
            "\nacc_norm divides each option's log-likelihood by its length in characters (lm-evaluation-harness); "
            "acc_norm_tokens by its token count (JMedBench's own scorer).\n";
    md += "\n| Task | Questions | Skipped rows |";
    if (has_generate(result.scoring)) md += " Unparsed answers |";
    md += "\n|---|---:|---:|";
    if (has_generate(result.scoring)) md += "---:|";
    md += "\n";
    for (const auto& t : result.tasks) {
        md += "| " + t.task + " | " + std::to_string(t.questions) + " | " + std::to_string(t.skipped.size()) + " |";
        if (has_generate(result.scoring)) md += " " + std::to_string(t.generate_unparsed) + " |";
        md += "\n";
    }
    for (const auto& t : result.tasks) {
        if (t.subjects.empty()) continue;
        md += "\n## " + t.task + " by subject\n\n| Subject | Questions |";
        if (has_loglik(result.scoring)) md += " acc | acc_norm | acc_norm_tokens |";
        if (has_generate(result.scoring)) md += " generate |";
        md += "\n|---|---:|";
        if (has_loglik(result.scoring)) md += "---:|---:|---:|";
        if (has_generate(result.scoring)) md += "---:|";
        md += "\n";
        for (const auto& [name, m] : t.subjects) {
            const int64_t n = has_loglik(result.scoring) ? m[0].n : m[2].n;
            md += "| " + (name.empty() ? std::string("(none)") : name) + " | " + std::to_string(n) + " |";
            if (has_loglik(result.scoring))
                md += " " + pct(m[0].acc()) + " | " + pct(m[1].acc()) + " | " + pct(m[3].acc()) + " |";
            if (has_generate(result.scoring)) md += " " + pct(m[2].acc()) + " |";
            md += "\n";
        }
    }
    return md;
}

void write_mcqa_reports(const fs::path& dir, const McqaResult& result) {
    fs::create_directories(dir);
    write_file_atomic(dir / "report.json", dump_json(mcqa_report_json(result), 2) + "\n");
    write_file_atomic(dir / "report.md", mcqa_report_markdown(result));
}

}  // namespace medllm::eval

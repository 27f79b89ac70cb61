// build-prefs' inputs: questions with verified explanations and their few-shot examples.
#include "medllm/prefs/inputs.h"

#include <algorithm>
#include <map>
#include <random>
#include <regex>
#include <set>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/eval/igakuqa_answer.h"

namespace medllm::prefs {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<fs::path> expand_inputs(const std::vector<fs::path>& inputs, const std::string& key) {
    std::vector<fs::path> files;
    for (const auto& in : inputs) {
        if (fs::is_directory(in)) {
            std::vector<fs::path> found;
            for (const auto& e : fs::recursive_directory_iterator(in)) {
                if (!e.is_regular_file()) continue;
                const std::string name = e.path().filename().string();
                if (!ends_with(name, ".jsonl")) continue;
                if (ends_with(name, "_metadata.jsonl") || ends_with(name, "_translate.jsonl") ||
                    ends_with(name, "_chatgpt.jsonl"))
                    continue;
                found.push_back(e.path());
            }
            if (found.empty()) throw UsageError(key + ": " + in.string() + " holds no *.jsonl file");
            std::sort(found.begin(), found.end());
            files.insert(files.end(), found.begin(), found.end());
        } else if (fs::exists(in)) {
            files.push_back(in);
        } else {
            throw UsageError(key + ": " + in.string() + ": no such file or directory");
        }
    }
    return files;
}

// "111A23" -> exam 111, section 'A', number 23; false for ids of another shape.
bool parse_problem_id(const std::string& id, int* exam, char* section, int* number) {
    static const std::regex re("([0-9]+)([A-Z])([0-9]+)");
    std::smatch m;
    if (!std::regex_match(id, m, re)) return false;
    *exam    = std::stoi(m[1].str());
    *section = m[2].str()[0];
    *number  = std::stoi(m[3].str());
    return true;
}

// The record as a question; "" on success, else the problem ("missing field 'explanation'").
std::string parse_record(const json& j, PrefQuestion& out) {
    if (!j.is_object()) return "not a JSON object";
    auto string_field = [&](const char* key, std::string& dst, bool required) -> std::string {
        if (!j.contains(key)) return required ? std::string("missing field '") + key + "'" : "";
        if (!j[key].is_string()) return std::string("field '") + key + "' must be a string";
        dst = j[key].get<std::string>();
        if (required && dst.find_first_not_of(" \t\r\n") == std::string::npos)
            return std::string("field '") + key + "' is empty";
        return "";
    };
    auto& q = out.question;
    for (auto [key, dst] : {std::pair<const char*, std::string*>{"problem_id", &q.problem_id},
                            {"problem_text", &q.problem_text},
                            {"explanation", &out.explanation}}) {
        if (auto e = string_field(key, *dst, true); !e.empty()) return e;
    }
    if (auto e = string_field("case_id", out.case_group, false); !e.empty()) return e;
    if (!j.contains("choices")) return "missing field 'choices'";
    if (!j["choices"].is_array()) return "field 'choices' must be a list of strings";
    for (const auto& c : j["choices"]) {
        if (!c.is_string()) return "field 'choices' must be a list of strings";
        q.choices.push_back(c.get<std::string>());
    }
    if (q.choices.size() > 8) return "field 'choices' has " + std::to_string(q.choices.size()) + " items (at most 8)";
    if (!j.contains("answer")) return "missing field 'answer'";
    if (!j["answer"].is_array() || j["answer"].empty()) return "field 'answer' must be a non-empty list of strings";
    std::set<std::string> letters;
    for (const auto& a : j["answer"]) {
        if (!a.is_string()) return "field 'answer' must be a non-empty list of strings";
        std::string v = eval::official_prediction(a.get<std::string>());
        v.erase(0, v.find_first_not_of(' '));
        v.erase(v.find_last_not_of(' ') + 1);
        if (q.choices.empty()) {
            static const std::regex number_re("[0-9]+(\\.[0-9]+)?");
            if (j["answer"].size() != 1 || !std::regex_match(v, number_re))
                return "field 'answer': a question without choices needs one number, got " + j["answer"].dump();
            q.answer = {v};
        } else {
            if (v.size() != 1 || v[0] < 'a' || v[0] - 'a' >= static_cast<int>(q.choices.size()))
                return "field 'answer': '" + a.get<std::string>() + "' is not one of the " +
                       std::to_string(q.choices.size()) + " choices";
            if (!letters.insert(v).second) return "field 'answer' lists '" + v + "' twice";
        }
    }
    if (!q.choices.empty()) q.answer.assign(letters.begin(), letters.end());
    if (j.contains("text_only")) {
        if (!j["text_only"].is_boolean()) return "field 'text_only' must be true or false";
        q.text_only = j["text_only"].get<bool>();
    }
    if (j.contains("points")) {
        const auto& p = j["points"];
        if (p.is_number_integer()) {
            q.points = p.get<int>();
        } else if (p.is_string() && !p.get<std::string>().empty() &&
                   p.get<std::string>().find_first_not_of("0123456789") == std::string::npos) {
            q.points = std::stoi(p.get<std::string>());
        } else {
            return "field 'points' must be a whole number (or its string)";
        }
    }
    int number = 0;
    if (parse_problem_id(q.problem_id, &q.exam, &q.section, &number)) q.year = q.exam + 1906;
    return "";
}

uint64_t key_hash(uint64_t seed, const std::string& text) {
    return std::stoull(hash_bytes(std::to_string(seed) + "\x1f" + text), nullptr, 16);
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
    for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
    return s;
}

}  // namespace

std::vector<PrefQuestion> load_pref_questions(const std::vector<fs::path>& inputs, const QuestionLoadOptions& options,
                                              QuestionLoadReport* report) {
    if (inputs.empty()) throw UsageError(options.key + ": give at least one JSONL file or directory");
    QuestionLoadReport local;
    QuestionLoadReport& rep = report ? *report : local;
    rep.files               = expand_inputs(inputs, options.key);
    std::vector<PrefQuestion> questions;
    std::map<std::string, std::string> seen;  // problem_id -> where
    for (const auto& file : rep.files) {
        const std::string content = read_text_file(file);
        std::size_t pos           = 0;
        for (std::size_t line_no = 1; pos < content.size(); ++line_no) {
            std::size_t nl = content.find('\n', pos);
            if (nl == std::string::npos) nl = content.size();
            std::string line = content.substr(pos, nl - pos);
            pos              = nl + 1;
            if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
            const std::string where = file.string() + ":" + std::to_string(line_no);
            json j;
            try {
                j = json::parse(line);
            } catch (const std::exception& e) {
                throw Error(where + ": not valid JSON (" + std::string(e.what()) + ")");
            }
            ++rep.records;
            PrefQuestion q;
            q.source                = file.string();
            q.line                  = line_no;
            const std::string error = parse_record(j, q);
            if (!error.empty()) {
                std::string id;
                if (j.is_object() && j.contains("problem_id") && j["problem_id"].is_string())
                    id = " problem_id " + j["problem_id"].get<std::string>() + ":";
                const std::string msg = where + ":" + id + " " + error;
                if (options.refuse_bad_records)
                    throw Error(msg +
                                (options.key == "questions" ? " (on_bad_record: refuse)" : " (" + options.key + ")"));
                spdlog::warn("{}; skipped", msg);
                rep.problems.push_back(msg);
                continue;
            }
            auto [it, fresh] = seen.emplace(q.question.problem_id, where);
            if (!fresh) throw Error(where + ": problem_id " + q.question.problem_id + " also at " + it->second);
            questions.push_back(std::move(q));
        }
    }
    if (questions.empty())
        throw Error(options.key + ": no usable record in " + std::to_string(rep.files.size()) + " file(s)" +
                    (rep.problems.empty() ? std::string() : "; first problem: " + rep.problems.front()));
    assign_case_groups(questions);
    return questions;
}

void assign_case_groups(std::vector<PrefQuestion>& questions) {
    // "次の文を読み、47〜49の問いに答えよ" after zen_to_han: digits half-width, ～ -> ~.
    static const std::regex lead_re(
        "^\\s*次の文を読み(?:､|、|,)?\\s*([0-9]+)\\s*(?:〜|~|-|－|から)\\s*([0-9]+)の問いに答えよ");
    struct Range {
        int exam;
        char section;
        int lo, hi;
        std::string group;
    };
    std::vector<Range> ranges;
    for (const auto& q : questions) {
        if (!q.case_group.empty()) continue;
        const std::string text = eval::zen_to_han(q.question.problem_text);
        std::smatch m;
        int exam = 0, number = 0;
        char section = 0;
        if (!std::regex_search(text, m, lead_re)) continue;
        if (!parse_problem_id(q.question.problem_id, &exam, &section, &number)) continue;
        const int lo = std::stoi(m[1].str()), hi = std::stoi(m[2].str());
        if (lo > hi || hi - lo > 10) continue;
        ranges.push_back(
            {exam, section, lo, hi, std::to_string(exam) + section + std::to_string(lo) + "-" + std::to_string(hi)});
    }
    for (auto& q : questions) {
        if (!q.case_group.empty()) continue;
        int exam = 0, number = 0;
        char section = 0;
        if (!parse_problem_id(q.question.problem_id, &exam, &section, &number)) continue;
        for (const auto& r : ranges)
            if (r.exam == exam && r.section == section && number >= r.lo && number <= r.hi) q.case_group = r.group;
    }
}

std::vector<const PrefQuestion*> draw_few_shot(const std::vector<PrefQuestion>& pool, const PrefQuestion& target,
                                               int64_t k, uint64_t seed) {
    std::vector<const PrefQuestion*> candidates;
    for (const auto& q : pool) {
        if (q.question.problem_id == target.question.problem_id) continue;
        if (!target.case_group.empty() && q.case_group == target.case_group) continue;
        candidates.push_back(&q);
    }
    if (static_cast<int64_t>(candidates.size()) < k)
        throw Error(target.where() + ": problem_id " + target.question.problem_id + " needs " + std::to_string(k) +
                    " few-shot examples but the pool has only " + std::to_string(candidates.size()) +
                    " other questions outside its case");
    // Partial Fisher-Yates with mt19937_64 (its output is fixed by the standard, unlike the distributions).
    std::mt19937_64 rng(key_hash(seed, target.question.problem_id));
    for (int64_t i = 0; i < k; ++i) {
        const uint64_t span = candidates.size() - static_cast<uint64_t>(i);
        std::swap(candidates[i], candidates[i + static_cast<int64_t>(rng() % span)]);
    }
    candidates.resize(static_cast<std::size_t>(k));
    return candidates;
}

namespace {

// The question as the guard sees it (normalized text, choices in order): equal for the same question in two files.
std::u32string question_key(const eval::Question& q) {
    std::u32string key = data::normalize_for_guard(q.problem_text);
    for (const auto& c : q.choices) key += U'\x1f' + data::normalize_for_guard(c);
    return key;
}

}  // namespace

std::vector<const PrefQuestion*> fixed_few_shot(const std::vector<PrefQuestion>& shots, const fs::path& file,
                                                const PrefQuestion& target, int64_t k) {
    std::vector<const PrefQuestion*> out;
    const std::u32string key = question_key(target.question);
    std::string excluded;
    for (const auto& s : shots) {
        if (static_cast<int64_t>(out.size()) == k) break;
        const bool same_id   = s.question.problem_id == target.question.problem_id;
        const bool same_case = !target.case_group.empty() && s.case_group == target.case_group;
        if (same_id || same_case || question_key(s.question) == key) {
            excluded += (excluded.empty() ? "" : ", ") + s.where();
            continue;
        }
        out.push_back(&s);
    }
    if (static_cast<int64_t>(out.size()) < k)
        throw UsageError("few_shot.file " + file.string() + ": question " + target.question.problem_id + " (" +
                         target.where() + ") needs " + std::to_string(k) + " examples but only " +
                         std::to_string(out.size()) + " remain" +
                         (excluded.empty() ? std::string() : " without itself or its linked case (" + excluded + ")") +
                         "; add examples to the file, lower few_shot.k, or leave the question out");
    return out;
}

std::vector<EvalOverlap> find_eval_overlap(const std::vector<PrefQuestion>& questions,
                                           const EvalGuardOptions& options) {
    std::vector<EvalOverlap> out;
    const std::set<int64_t> exams(options.eval_exams.begin(), options.eval_exams.end());
    std::map<std::string, bool> eval_ids;
    std::unique_ptr<data::ContaminationGuard> guard;
    if (!options.igakuqa_dir.empty()) {
        for (const auto& q : eval::load_questions(options.igakuqa_dir, options.years)) eval_ids[q.problem_id] = true;
        guard = std::make_unique<data::ContaminationGuard>(
            data::ContaminationGuard::from_igakuqa(options.igakuqa_dir, options.years, options.text));
    }
    for (const auto& pq : questions) {
        const auto& q = pq.question;
        if (q.exam != 0 && exams.count(q.exam)) {
            out.push_back({pq.where(), q.problem_id, "exam " + std::to_string(q.exam) + " is an evaluation exam"});
            continue;
        }
        if (eval_ids.count(q.problem_id)) {
            out.push_back({pq.where(), q.problem_id, "problem_id is in " + options.igakuqa_dir.string()});
            continue;
        }
        if (guard) {
            std::string text = q.problem_text;
            for (const auto& c : q.choices) text += "\n" + c;
            const auto hits = guard->check(text);
            if (!hits.empty()) {
                char buf[32];
                std::snprintf(buf, sizeof buf, "%.2f", hits.front().overlap);
                out.push_back({pq.where(), q.problem_id,
                               "text overlaps evaluation question " + hits.front().problem_id + " (" + buf + ")"});
            }
        }
    }
    return out;
}

// ---------------------------------------------------------------- template

PrefTemplate template_preset(const std::string& name) {
    PrefTemplate t;
    if (name == "paper") {
        t.block = "Question: {question}\n{options}\n Explanation:{explanation}\n Answer:{answer}";
    } else if (name == "ja") {
        t.block  = "問題: {question}\n{options}\n解説:{explanation}\n答え:{answer}";
        t.system = "医師国家試験を解きます。";
    } else {
        throw UsageError("template.preset '" + name + "': expected paper or ja");
    }
    return t;
}

PrefPrompt::PrefPrompt(PrefTemplate t) : t_(std::move(t)) {
    const char* keys[] = {"{question}", "{options}", "{explanation}", "{answer}"};
    std::size_t at[4];
    for (int i = 0; i < 4; ++i) {
        at[i] = t_.block.find(keys[i]);
        if (at[i] == std::string::npos || t_.block.find(keys[i], at[i] + 1) != std::string::npos)
            throw UsageError(std::string("template.block must contain ") + keys[i] + " exactly once");
        if (i > 0 && at[i] < at[i - 1])
            throw UsageError(std::string("template.block: ") + keys[i] + " must come after " + keys[i - 1]);
    }
    before_question_ = t_.block.substr(0, at[0]);
    between_q_o_     = t_.block.substr(at[0] + 10, at[1] - at[0] - 10);
    between_o_e_     = t_.block.substr(at[1] + 9, at[2] - at[1] - 9);
    between_e_a_     = t_.block.substr(at[2] + 13, at[3] - at[2] - 13);
    after_answer_    = t_.block.substr(at[3] + 8);
    if (t_.option.find("{label}") == std::string::npos || t_.option.find("{text}") == std::string::npos)
        throw UsageError("template.option must contain {label} and {text}");
    if (t_.labels.size() < 8 || eval::unicode_lower(t_.labels).substr(0, 8) != "abcdefgh")
        throw UsageError("template.labels must be the 8 letters a-h (either case); got '" + t_.labels + "'");
    if (t_.answer_separator.empty()) throw UsageError("template.answer_separator must not be empty");
    // The answer must be readable by the evaluator's extraction after the marker between explanation and answer.
    for (const auto& answer : {std::vector<std::string>{"c"}, std::vector<std::string>{"a", "d"}}) {
        const std::string resp = response("x", answer);
        const auto got         = eval::extract_answer(resp, eval::AnswerSpec{false, 5, 0});
        if (!got.marker_found || got.items != answer)
            throw UsageError("template.block: the text between {explanation} and {answer} ('" + between_e_a_ +
                             "') must end in an answer marker the evaluator reads (答え:, 答:, 解答:, 正解:, Answer:) "
                             "and template.answer_separator must be one it splits on");
    }
    if (before_question_.find_first_not_of(" \t\r\n") == std::string::npos)
        throw UsageError("template.block must start with a question marker before {question} (e.g. 'Question: ')");
}

std::string PrefPrompt::options_text(const std::vector<std::string>& choices) const {
    std::string out;
    for (std::size_t i = 0; i < choices.size(); ++i) {
        if (i) out += "\n";
        out += replace_all(replace_all(t_.option, "{label}", std::string(1, t_.labels[i])), "{text}", choices[i]);
    }
    return out;
}

std::string PrefPrompt::answer_text(const std::vector<std::string>& answer) const {
    std::string out;
    for (std::size_t i = 0; i < answer.size(); ++i) {
        if (i) out += t_.answer_separator;
        const std::string& a = answer[i];
        out += a.size() == 1 && a[0] >= 'a' && a[0] <= 'h' ? std::string(1, t_.labels[a[0] - 'a']) : a;
    }
    return out;
}

std::string PrefPrompt::head(const eval::Question& q) const {
    std::string out = before_question_ + q.problem_text + between_q_o_ + options_text(q.choices);
    // A numeric-entry question has no option lines: do not leave an empty line in their place.
    if (q.choices.empty() && !between_q_o_.empty() && between_q_o_.back() == '\n' && !between_o_e_.empty() &&
        between_o_e_.front() == '\n')
        out.pop_back();
    return out + between_o_e_;
}

std::string PrefPrompt::response(const std::string& explanation, const std::vector<std::string>& answer) const {
    return explanation + between_e_a_ + answer_text(answer) + after_answer_;
}

std::string PrefPrompt::base_prompt(const PrefQuestion& target,
                                    const std::vector<const PrefQuestion*>& examples) const {
    std::string out;
    for (const auto* ex : examples) out += full_block(*ex) + t_.separator;
    return out + head(target.question);
}

json PrefPrompt::chat_messages(const PrefQuestion& target, const std::vector<const PrefQuestion*>& examples) const {
    json messages = json::array();
    if (!t_.system.empty()) messages.push_back({{"role", "system"}, {"content", t_.system}});
    for (const auto* ex : examples) {
        messages.push_back({{"role", "user"}, {"content", head(ex->question)}});
        messages.push_back({{"role", "assistant"}, {"content", response(ex->explanation, ex->question.answer)}});
    }
    messages.push_back({{"role", "user"}, {"content", head(target.question)}});
    return messages;
}

std::string PrefPrompt::next_block_stop() const {
    std::string lead = before_question_;
    lead.erase(0, lead.find_first_not_of(" \t\r\n"));
    // Cut at the placeholder-free lead's end of whitespace: "Question: " -> "Question:".
    lead.erase(lead.find_last_not_of(" \t") + 1);
    return "\n" + lead;
}

json PrefPrompt::to_json() const {
    return {{"block", t_.block},
            {"option", t_.option},
            {"labels", t_.labels},
            {"separator", t_.separator},
            {"answer_separator", t_.answer_separator},
            {"system", t_.system}};
}

}  // namespace medllm::prefs

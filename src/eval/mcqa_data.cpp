// Zero-shot MCQA tasks (eval mcqa, Table 3): task definitions and dataset loaders.
#include "medllm/eval/mcqa_data.h"

#include <algorithm>
#include <cctype>
#include <functional>
#include <map>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"

namespace medllm::eval {

namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kLoaders       = {"jsonl", "mmmlu_csv", "pubmedqa"};
const std::vector<std::string> kChoices       = {"label", "option"};
const std::vector<std::string> kPlaceholders  = {"question", "options", "context", "subject", "labels"};
const std::vector<std::string> kOptionHolders = {"label", "option"};

std::string join(const std::vector<std::string>& items, const std::string& sep) {
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
    return out;
}

// Fills {name} placeholders from `value`; "{{" / "}}" are literal braces. `value` returns false for an unknown
// name, which throws UsageError naming `where`.
std::string fill_template(const std::string& tmpl, const std::function<bool(const std::string&, std::string&)>& value,
                          const std::string& where) {
    std::string out;
    for (size_t i = 0; i < tmpl.size(); ++i) {
        const char c = tmpl[i];
        if ((c == '{' || c == '}') && i + 1 < tmpl.size() && tmpl[i + 1] == c) {
            out += c;
            ++i;
            continue;
        }
        if (c == '{') {
            const size_t close = tmpl.find('}', i);
            if (close == std::string::npos) throw UsageError(where + ": unclosed '{' in template: " + tmpl);
            const std::string name = tmpl.substr(i + 1, close - i - 1);
            std::string v;
            if (!value(name, v)) throw UsageError(where + ": unknown placeholder {" + name + "} in template: " + tmpl);
            out += v;
            i = close;
            continue;
        }
        out += c;
    }
    return out;
}

bool contains(const std::vector<std::string>& list, const std::string& s) {
    return std::find(list.begin(), list.end(), s) != list.end();
}

std::string lower_ascii(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

std::string trim(const std::string& s) {
    size_t a = 0, b = s.size();
    while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
    while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
    return s.substr(a, b - a);
}

}  // namespace

// ---------------------------------------------------------------- task definitions

nlohmann::json McqaTask::to_json() const {
    return {{"name", name},
            {"loader", loader},
            {"prompt", prompt},
            {"option_format", option_format},
            {"option_separator", option_separator},
            {"labels", labels},
            {"choice", choice},
            {"target_delimiter", target_delimiter},
            {"system", system},
            {"fields",
             {{"question", fields.question},
              {"options", fields.options},
              {"answer", fields.answer},
              {"context", fields.context},
              {"id", fields.id},
              {"subject", fields.subject}}},
            {"subjects", subjects},
            {"fixed_options", fixed_options},
            {"max_new_tokens", max_new_tokens}};
}

void McqaTask::validate(const std::string& where) const {
    if (name.empty()) throw UsageError(where + ": key 'name' is required (the task's label in the reports)");
    // The name is also a file name (predictions/<name>.jsonl).
    const bool safe = name[0] != '.' && std::all_of(name.begin(), name.end(), [](char c) {
                          return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
                      });
    if (!safe)
        throw UsageError(where + ": key 'name' is '" + name +
                         "'; use letters, digits, '-', '_' and '.' (it names predictions/<name>.jsonl)");
    if (!contains(kLoaders, loader))
        throw UsageError(where + ": key 'loader' is '" + loader + "', expected one of " + join(kLoaders, ", "));
    if (!contains(kChoices, choice))
        throw UsageError(where + ": key 'choice' is '" + choice + "', expected label or option");
    if (labels.empty()) throw UsageError(where + ": key 'labels' must list at least one label");
    for (size_t i = 0; i < labels.size(); ++i) {
        if (labels[i].empty()) throw UsageError(where + ": key 'labels' has an empty label");
        for (size_t j = 0; j < i; ++j)
            if (lower_ascii(labels[i]) == lower_ascii(labels[j]))
                throw UsageError(where + ": key 'labels' lists '" + labels[i] + "' twice");
    }
    if (loader == "pubmedqa" && fixed_options.empty())
        throw UsageError(where + ": loader pubmedqa needs key 'fixed_options' (e.g. [yes, no, maybe])");
    if (fixed_options.size() > labels.size())
        throw UsageError(where + ": key 'fixed_options' has " + std::to_string(fixed_options.size()) +
                         " options but 'labels' only " + std::to_string(labels.size()));
    if (max_new_tokens < 1 || max_new_tokens > (1 << 20))
        throw UsageError(where + ": key 'max_new_tokens' must be between 1 and 1048576");
    auto check = [&](const std::string& tmpl, const std::vector<std::string>& names, const std::string& key) {
        fill_template(
            tmpl, [&](const std::string& n, std::string&) { return contains(names, n); },
            where + ": key '" + key + "'");
    };
    check(prompt, kPlaceholders, "prompt");
    check(option_format, kOptionHolders, "option_format");
}

std::vector<std::string> builtin_mcqa_task_names() {
    return {"medqa-jp", "medmcqa-jp", "pubmedqa-jp", "mmmlu-medical"};
}

McqaTask builtin_mcqa_task(const std::string& name) {
    McqaTask t;
    t.name = name;
    // JMedBench's MCQA sets (nii-nlp/med-eval): its templates mcqa_with_options_jp and context_based_mcqa_jp, each
    // option's text scored; MMMLU as lm-eval scores MMLU: the label after the listed options.
    if (name == "medqa-jp") {
        t.prompt = "質問：{question}\n{options}\n答え：";
        t.labels = {"A", "B", "C", "D", "E"};
        t.choice = "option";
    } else if (name == "medmcqa-jp") {
        t.prompt = "質問：{question}\n{options}\n答え：";
        t.labels = {"A", "B", "C", "D"};
        t.choice = "option";
    } else if (name == "pubmedqa-jp") {
        t.loader        = "pubmedqa";
        t.prompt        = "要旨：{context}\n質問：{question}\n答え：";
        t.labels        = {"A", "B", "C"};
        t.fixed_options = {"yes", "no", "maybe"};
        t.choice        = "option";
    } else if (name == "mmmlu-medical") {
        t.loader   = "mmmlu_csv";
        t.prompt   = "質問：{question}\n選択肢：\n{options}\n答え：";
        t.labels   = {"A", "B", "C", "D"};
        t.subjects = {"anatomy", "clinical_knowledge", "college_medicine", "medical_genetics", "professional_medicine"};
    } else {
        throw UsageError("unknown task '" + name + "'; built-in tasks: " + join(builtin_mcqa_task_names(), ", ") +
                         " (or give a task YAML file)");
    }
    return t;
}

McqaTask mcqa_task_from_flat(const config_detail::FlatDoc& doc, const std::string& where,
                             const std::vector<std::string>& extra_keys) {
    McqaTask t;
    if (auto it = doc.find("base"); it != doc.end()) {
        std::string base;
        config_detail::convert("base", it->second, base);
        t = builtin_mcqa_task(base);
        t.name.clear();  // a derived task names itself (or keeps the base's name when it does not)
        if (!doc.count("name")) t.name = base;
    }
    using Setter = std::function<void(const std::string&, const config_detail::FlatValue&)>;
    const std::map<std::string, Setter> setters = {
        {"name", [&](auto& k, auto& v) { config_detail::convert(k, v, t.name); }},
        {"loader", [&](auto& k, auto& v) { config_detail::convert(k, v, t.loader); }},
        {"prompt", [&](auto& k, auto& v) { config_detail::convert(k, v, t.prompt); }},
        {"option_format", [&](auto& k, auto& v) { config_detail::convert(k, v, t.option_format); }},
        {"option_separator", [&](auto& k, auto& v) { config_detail::convert(k, v, t.option_separator); }},
        {"labels", [&](auto& k, auto& v) { config_detail::convert(k, v, t.labels); }},
        {"choice", [&](auto& k, auto& v) { config_detail::convert(k, v, t.choice); }},
        {"target_delimiter", [&](auto& k, auto& v) { config_detail::convert(k, v, t.target_delimiter); }},
        {"system", [&](auto& k, auto& v) { config_detail::convert(k, v, t.system); }},
        {"fields.question", [&](auto& k, auto& v) { config_detail::convert(k, v, t.fields.question); }},
        {"fields.options", [&](auto& k, auto& v) { config_detail::convert(k, v, t.fields.options); }},
        {"fields.answer", [&](auto& k, auto& v) { config_detail::convert(k, v, t.fields.answer); }},
        {"fields.context", [&](auto& k, auto& v) { config_detail::convert(k, v, t.fields.context); }},
        {"fields.id", [&](auto& k, auto& v) { config_detail::convert(k, v, t.fields.id); }},
        {"fields.subject", [&](auto& k, auto& v) { config_detail::convert(k, v, t.fields.subject); }},
        {"subjects", [&](auto& k, auto& v) { config_detail::convert(k, v, t.subjects); }},
        {"fixed_options", [&](auto& k, auto& v) { config_detail::convert(k, v, t.fixed_options); }},
        {"max_new_tokens", [&](auto& k, auto& v) { config_detail::convert(k, v, t.max_new_tokens); }},
    };
    std::vector<std::string> known{"base"};
    for (const auto& [k, _] : setters) known.push_back(k);
    for (const auto& k : extra_keys) known.push_back(k);
    for (const auto& [key, value] : doc) {
        if (key == "base" || contains(extra_keys, key)) continue;
        auto it = setters.find(key);
        if (it == setters.end()) {
            std::string msg        = where + ": unknown key '" + key + "'";
            const std::string near = config_detail::closest_key(key, known);
            if (!near.empty()) msg += "; did you mean '" + near + "'?";
            throw UsageError(msg);
        }
        it->second(where + ": key '" + key + "'", value);
    }
    t.validate(where);
    return t;
}

McqaTask resolve_mcqa_task(const std::string& name_or_file) {
    const auto names = builtin_mcqa_task_names();
    if (contains(names, name_or_file)) return builtin_mcqa_task(name_or_file);
    const fs::path p(name_or_file);
    if (fs::exists(p) || p.extension() == ".yaml" || p.extension() == ".yml") {
        if (!fs::is_regular_file(p)) throw UsageError("--task " + name_or_file + ": no such task file");
        return mcqa_task_from_flat(config_detail::load_flat(ConfigSource{p.string(), {}}), p.string());
    }
    return builtin_mcqa_task(name_or_file);  // throws, listing the built-in names
}

std::vector<McqaTaskEntry> load_mcqa_tasks_config(const fs::path& file) {
    if (!fs::is_regular_file(file)) throw UsageError("--tasks-config " + file.string() + ": no such file");
    const auto doc = config_detail::load_flat(ConfigSource{file.string(), {}});
    for (const auto& [key, _] : doc)
        if (key != "tasks")
            throw UsageError(file.string() + ": unknown key '" + key + "' (a tasks config holds 'tasks:' only)");
    auto it = doc.find("tasks");
    if (it == doc.end()) throw UsageError(file.string() + ": key 'tasks' is required (a list of tasks)");
    const auto items = config_detail::list_of_mappings("tasks", it->second);
    if (items.empty()) throw UsageError(file.string() + ": key 'tasks' lists no task");
    std::vector<McqaTaskEntry> out;
    for (size_t i = 0; i < items.size(); ++i) {
        const std::string where = file.string() + ": tasks[" + std::to_string(i) + "]";
        auto flat               = config_detail::flatten_mapping(items[i], file.string());
        McqaTaskEntry entry;
        // `task: NAME_OR_FILE` starts from a built-in or a task file; the other keys override it.
        if (auto t = flat.find("task"); t != flat.end()) {
            std::string ref;
            config_detail::convert(where + ".task", t->second, ref);
            fs::path ref_path(ref);
            if (!contains(builtin_mcqa_task_names(), ref) && ref_path.is_relative())
                ref_path = file.parent_path() / ref_path;
            const McqaTask base           = contains(builtin_mcqa_task_names(), ref) ? builtin_mcqa_task(ref)
                                                                                     : resolve_mcqa_task(ref_path.string());
            config_detail::FlatDoc merged = config_detail::flatten_mapping(base.to_json(), file.string());
            for (auto& [k, v] : flat)
                if (k != "task") merged[k] = v;
            flat = std::move(merged);
        }
        auto d = flat.find("data");
        if (d == flat.end()) throw UsageError(where + ": key 'data' is required (the task's file or folder)");
        std::string data;
        config_detail::convert(where + ".data", d->second, data);
        entry.data = fs::path(data).is_relative() ? file.parent_path() / data : fs::path(data);
        entry.task = mcqa_task_from_flat(flat, where, {"data"});
        for (const auto& prev : out)
            if (prev.task.name == entry.task.name)
                throw UsageError(where + ": task name '" + entry.task.name + "' is used twice");
        out.push_back(std::move(entry));
    }
    return out;
}

// ---------------------------------------------------------------- CSV

CsvTable parse_csv(const std::string& text, const std::string& where) {
    CsvTable table;
    size_t i = 0, line = 1;
    if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) i = 3;
    std::vector<std::string> record;
    std::string field;
    size_t record_line = 1;
    bool in_record     = false;
    auto finish_record = [&]() {
        record.push_back(std::move(field));
        field.clear();
        table.records.push_back(std::move(record));
        table.lines.push_back(record_line);
        record.clear();
        in_record = false;
    };
    while (i < text.size()) {
        if (!in_record) {
            in_record   = true;
            record_line = line;
        }
        const char c = text[i];
        if (c == '"' && field.empty()) {
            // A quoted field: up to the closing quote; "" is one quote.
            const size_t start_line = line;
            ++i;
            bool closed = false;
            while (i < text.size()) {
                if (text[i] == '"') {
                    if (i + 1 < text.size() && text[i + 1] == '"') {
                        field += '"';
                        i += 2;
                        continue;
                    }
                    ++i;
                    closed = true;
                    break;
                }
                if (text[i] == '\n') ++line;
                field += text[i++];
            }
            if (!closed)
                throw Error(where + ":" + std::to_string(start_line) + ": unterminated quoted field (no closing '\"')");
            if (i < text.size() && text[i] != ',' && text[i] != '\n' && text[i] != '\r')
                throw Error(where + ":" + std::to_string(line) + ": text after a closing quote in a quoted field");
            if (i >= text.size()) break;
            continue;
        }
        if (c == ',') {
            record.push_back(std::move(field));
            field.clear();
            ++i;
        } else if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') {
            finish_record();
            i += 2;
            ++line;
        } else if (c == '\n') {
            finish_record();
            ++i;
            ++line;
        } else {
            field += c;
            ++i;
        }
    }
    if (in_record) finish_record();
    return table;
}

// ---------------------------------------------------------------- loaders

namespace {

struct RowSink {
    McqaDataset& out;
    const McqaTask& task;
    std::string file_name;
    void skip(size_t line, const std::string& reason) {
        out.skipped.push_back(file_name + ":" + std::to_string(line) + ": " + reason);
    }
};

// The option index of `answer` (a label, a 0-based index, or an option's text), or -1.
int answer_index(const nlohmann::json& answer, const std::vector<std::string>& options,
                 const std::vector<std::string>& labels, std::string& why) {
    const int n = static_cast<int>(options.size());
    if (answer.is_number_integer()) {
        const int64_t v = answer.get<int64_t>();
        if (v >= 0 && v < n) return static_cast<int>(v);
        why = "answer index " + std::to_string(v) + " is outside 0.." + std::to_string(n - 1);
        return -1;
    }
    if (!answer.is_string()) {
        why = "answer is neither a label, an index nor an option's text";
        return -1;
    }
    const std::string a = trim(answer.get<std::string>());
    for (int i = 0; i < n && i < static_cast<int>(labels.size()); ++i)
        if (lower_ascii(a) == lower_ascii(labels[i])) return i;
    for (int i = 0; i < n; ++i)
        if (a == options[i] || lower_ascii(a) == lower_ascii(options[i])) return i;
    if (!a.empty() &&
        std::all_of(a.begin(), a.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
        const long v = std::stol(a);
        if (v >= 0 && v < n) return static_cast<int>(v);
    }
    why = "answer '" + a + "' is not a label (" +
          join(std::vector<std::string>(labels.begin(), labels.begin() + std::min<size_t>(labels.size(), n)), ", ") +
          "), an index or an option";
    return -1;
}

std::string scalar_text(const nlohmann::json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_number()) return v.dump();
    return "";
}

// The context field: a string, or a list of strings joined by "\n", or {contexts: [...]} (HF pubmed_qa).
bool context_text(const nlohmann::json& v, std::string& out) {
    if (v.is_string()) {
        out = v.get<std::string>();
        return true;
    }
    if (v.is_object() && v.contains("contexts")) return context_text(v["contexts"], out);
    if (v.is_array()) {
        std::vector<std::string> parts;
        for (const auto& p : v) {
            if (!p.is_string()) return false;
            parts.push_back(p.get<std::string>());
        }
        out = join(parts, "\n");
        return true;
    }
    return false;
}

// `row.metadata.<key>` (JMedBench keeps a PubMedQA context there), or null.
const nlohmann::json* metadata_field(const nlohmann::json& row, const std::string& key) {
    auto m = row.find("metadata");
    if (m == row.end() || !m->is_object()) return nullptr;
    auto v = m->find(key);
    return v == m->end() ? nullptr : &*v;
}

// One JSON row of the jsonl or pubmedqa loaders.
void add_json_row(RowSink& sink, const nlohmann::json& row, size_t line, const std::string& key_id) {
    const McqaTask& t = sink.task;
    if (!row.is_object()) return sink.skip(line, "not a JSON object");
    McqaQuestion q;
    q.source = sink.file_name + ":" + std::to_string(line);
    auto qv  = row.find(t.fields.question);
    if (qv == row.end() || !qv->is_string() || trim(qv->get<std::string>()).empty())
        return sink.skip(line, "no '" + t.fields.question + "' text");
    q.question = qv->get<std::string>();
    auto id    = row.find(t.fields.id);
    if (id == row.end()) id = row.find("sample_id");  // JMedBench's name
    if (id != row.end() && !scalar_text(*id).empty())
        q.id = scalar_text(*id);
    else
        q.id = key_id.empty() ? q.source : key_id;
    if (t.loader == "pubmedqa") {
        auto cv                 = row.find(t.fields.context);
        const nlohmann::json* c = cv != row.end() ? &*cv : metadata_field(row, t.fields.context);
        if (!c || !context_text(*c, q.context))
            return sink.skip(line, "no '" + t.fields.context + "' (a string or a list of strings)");
        q.options = t.fixed_options;
        // JMedBench's pubmedqa rows list their options; the fixed ones are for rows without.
        if (auto ov = row.find(t.fields.options); ov != row.end() && ov->is_array() && !ov->empty()) {
            q.options.clear();
            for (const auto& o : *ov) {
                if (!o.is_string()) return sink.skip(line, "an option is not text");
                q.options.push_back(o.get<std::string>());
            }
        }
    } else if (!t.fixed_options.empty()) {
        q.options = t.fixed_options;
    } else if (auto ov = row.find(t.fields.options); ov != row.end()) {
        if (!ov->is_array()) return sink.skip(line, "'" + t.fields.options + "' is not a list");
        for (const auto& o : *ov) {
            if (!o.is_string() && !o.is_number()) return sink.skip(line, "an option is not text");
            q.options.push_back(scalar_text(o));
        }
    } else {
        // One field per label: "A": ..., "B": ...; the options end at the first missing label.
        for (const auto& label : t.labels) {
            auto lv = row.find(label);
            if (lv == row.end()) break;
            if (!lv->is_string() && !lv->is_number()) return sink.skip(line, "option '" + label + "' is not text");
            q.options.push_back(scalar_text(*lv));
        }
        if (q.options.empty())
            return sink.skip(line, "no '" + t.fields.options + "' list and no '" + t.labels.front() + "' field");
    }
    if (q.options.size() < 2) return sink.skip(line, "fewer than 2 options");
    if (q.options.size() > t.labels.size())
        return sink.skip(line, std::to_string(q.options.size()) + " options but the task has " +
                                   std::to_string(t.labels.size()) + " labels");
    for (const auto& o : q.options)
        if (trim(o).empty() && t.choice == "option") return sink.skip(line, "an option is empty");
    if (!t.fields.context.empty() && t.loader != "pubmedqa")
        if (auto cv = row.find(t.fields.context); cv != row.end()) {
            context_text(*cv, q.context);
        } else if (const auto* mv = metadata_field(row, t.fields.context)) {
            context_text(*mv, q.context);
        }
    if (auto sv = row.find(t.fields.subject); sv != row.end()) q.subject = scalar_text(*sv);
    auto av = row.find(t.fields.answer);
    if (av == row.end()) av = row.find("answer_idx");  // JMedBench's name
    if (av == row.end()) return sink.skip(line, "no '" + t.fields.answer + "'");
    std::string why;
    q.answer = answer_index(*av, q.options, t.labels, why);
    if (q.answer < 0) return sink.skip(line, why);
    if (!t.subjects.empty() && !q.subject.empty() && !contains(t.subjects, q.subject)) return;
    sink.out.questions.push_back(std::move(q));
}

void load_jsonl_file(RowSink& sink, const std::string& text) {
    size_t line = 0, pos = 0;
    while (pos < text.size()) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        ++line;
        std::string row = text.substr(pos, end - pos);
        pos             = end + 1;
        if (!row.empty() && row.back() == '\r') row.pop_back();
        if (trim(row).empty()) continue;
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(row);
        } catch (const nlohmann::json::parse_error& e) {
            sink.skip(line, std::string("not valid JSON (") + e.what() + ")");
            continue;
        }
        add_json_row(sink, j, line, "");
    }
}

// The original PubMedQA layout: {"<pmid>": {QUESTION, CONTEXTS, final_decision, ...}, ...}. The line of each
// entry is found by its key in the text.
void load_json_object_file(RowSink& sink, const std::string& text, const fs::path& path) {
    nlohmann::ordered_json doc;
    try {
        doc = nlohmann::ordered_json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
        throw Error(path.string() + ": not valid JSON (" + e.what() + ")");
    }
    if (!doc.is_object() && !doc.is_array())
        throw Error(path.string() + ": expected an object of questions keyed by id, or a list");
    // The line of an entry: where its key first appears as a JSON key.
    auto line_of = [&](const std::string& key) {
        const size_t at = text.find("\"" + key + "\"");
        if (at == std::string::npos) return static_cast<size_t>(0);
        return static_cast<size_t>(std::count(text.begin(), text.begin() + static_cast<long>(at), '\n') + 1);
    };
    if (doc.is_array()) {
        size_t k = 0;
        for (const auto& row : doc) add_json_row(sink, nlohmann::json::parse(row.dump()), ++k, "");
        return;
    }
    // In file order (ordered_json keeps it), so question order is the file's.
    for (auto it = doc.begin(); it != doc.end(); ++it)
        add_json_row(sink, nlohmann::json::parse(it.value().dump()), line_of(it.key()), it.key());
}

void load_mmmlu_file(RowSink& sink, const std::string& text, const fs::path& path) {
    const McqaTask& t    = sink.task;
    const CsvTable table = parse_csv(text, path.string());
    if (table.records.empty()) throw Error(path.string() + ": empty CSV file");
    const auto& header = table.records.front();
    auto column        = [&](const std::string& name) -> int {
        for (size_t i = 0; i < header.size(); ++i)
            if (trim(header[i]) == name) return static_cast<int>(i);
        return -1;
    };
    const int qcol = column(t.fields.question == "question" ? "Question" : t.fields.question);
    const int acol = column(t.fields.answer == "answer" ? "Answer" : t.fields.answer);
    const int scol = column(t.fields.subject);
    // MMMLU's first column is an unnamed row index: the id unless the task names an id column.
    const int icol = column(t.fields.id) >= 0 ? column(t.fields.id) : (trim(header.front()).empty() ? 0 : -1);
    std::vector<int> ocols;
    for (const auto& label : t.labels) {
        const int c = column(label);
        if (c < 0) break;
        ocols.push_back(c);
    }
    if (qcol < 0 || acol < 0 || ocols.size() < 2)
        throw Error(path.string() + ":1: header must name the question, answer and option columns (MMMLU: " +
                    "Question, A, B, C, D, Answer, Subject), got: " + join(header, ","));
    if (!t.subjects.empty() && scol < 0)
        throw Error(path.string() + ":1: no '" + t.fields.subject + "' column to filter subjects " +
                    join(t.subjects, ", ") + " by");
    for (size_t r = 1; r < table.records.size(); ++r) {
        const auto& rec   = table.records[r];
        const size_t line = table.lines[r];
        if (rec.size() == 1 && trim(rec[0]).empty()) continue;  // blank line
        if (rec.size() != header.size()) {
            sink.skip(line, std::to_string(rec.size()) + " fields, the header has " + std::to_string(header.size()));
            continue;
        }
        McqaQuestion q;
        q.source   = sink.file_name + ":" + std::to_string(line);
        q.question = rec[qcol];
        q.subject  = scol >= 0 ? trim(rec[scol]) : "";
        q.id       = icol >= 0 && !trim(rec[icol]).empty() ? trim(rec[icol]) : q.source;
        if (!t.subjects.empty() && !contains(t.subjects, q.subject)) continue;
        if (trim(q.question).empty()) {
            sink.skip(line, "empty question");
            continue;
        }
        for (int c : ocols) q.options.push_back(rec[c]);
        std::string why;
        q.answer = answer_index(nlohmann::json(trim(rec[acol])), q.options, t.labels, why);
        if (q.answer < 0) {
            sink.skip(line, why);
            continue;
        }
        sink.out.questions.push_back(std::move(q));
    }
}

}  // namespace

McqaDataset load_mcqa_dataset(const McqaTask& task, const fs::path& file_or_dir) {
    McqaDataset out;
    if (!fs::exists(file_or_dir))
        throw UsageError("task " + task.name + ": data " + file_or_dir.string() + ": no such file or folder");
    const std::vector<std::string> exts =
        task.loader == "mmmlu_csv" ? std::vector<std::string>{".csv"} : std::vector<std::string>{".jsonl", ".json"};
    if (fs::is_directory(file_or_dir)) {
        for (const auto& e : fs::directory_iterator(file_or_dir))
            if (e.is_regular_file() && contains(exts, e.path().extension().string())) out.files.push_back(e.path());
        std::sort(out.files.begin(), out.files.end());
        if (out.files.empty())
            throw UsageError("task " + task.name + ": data folder " + file_or_dir.string() + " has no " +
                             join(exts, " or ") + " file");
    } else {
        out.files.push_back(file_or_dir);
    }
    out.identity = nlohmann::json::array();
    for (const auto& f : out.files) {
        const std::string text = read_text_file(f);
        out.identity.push_back({{"file", f.filename().string()}, {"size", text.size()}, {"xxh3", hash_bytes(text)}});
        RowSink sink{out, task, f.filename().string()};
        const size_t before         = out.questions.size();
        const size_t skipped_before = out.skipped.size();
        if (task.loader == "mmmlu_csv")
            load_mmmlu_file(sink, text, f);
        else if (f.extension() == ".json")
            load_json_object_file(sink, text, f);
        else
            load_jsonl_file(sink, text);
        const size_t kept = out.questions.size() - before;
        if (kept == 0 && out.skipped.size() > skipped_before)
            throw Error(f.string() + ": no usable question (" + std::to_string(out.skipped.size() - skipped_before) +
                        " rows skipped; first: " + out.skipped[skipped_before] + ")");
    }
    if (out.questions.empty())
        throw Error("task " + task.name + ": " + file_or_dir.string() + " holds no question" +
                    (task.subjects.empty() ? "" : " of subjects " + join(task.subjects, ", ")));
    // Predictions and scores are per question id: two rows with one id would be scored twice (and a resumed run
    // could not tell their records apart).
    std::map<std::string, const McqaQuestion*> by_id;
    for (const auto& q : out.questions) {
        const auto [it, fresh] = by_id.emplace(q.id, &q);
        if (!fresh)
            throw Error("task " + task.name + ": " + file_or_dir.string() + ": question id '" + q.id + "' at " +
                        it->second->source + " and again at " + q.source +
                        " (each question needs its own id; it would be scored twice)");
    }
    for (const auto& s : out.skipped) spdlog::warn("task {}: skipped {}", task.name, s);
    return out;
}

// ---------------------------------------------------------------- prompts

std::string mcqa_choice_text(const McqaTask& task, const McqaQuestion& question, size_t i) {
    return task.choice == "label" ? task.labels.at(i) : question.options.at(i);
}

std::string render_mcqa_prompt(const McqaTask& task, const McqaQuestion& question) {
    std::vector<std::string> lines, labels;
    for (size_t i = 0; i < question.options.size(); ++i) {
        labels.push_back(task.labels[i]);
        lines.push_back(fill_template(
            task.option_format,
            [&](const std::string& n, std::string& v) {
                if (n == "label")
                    v = task.labels[i];
                else if (n == "option")
                    v = question.options[i];
                else
                    return false;
                return true;
            },
            "task " + task.name + ": option_format"));
    }
    return fill_template(
        task.prompt,
        [&](const std::string& n, std::string& v) {
            if (n == "question")
                v = question.question;
            else if (n == "options")
                v = join(lines, task.option_separator);
            else if (n == "context")
                v = question.context;
            else if (n == "subject")
                v = question.subject;
            else if (n == "labels")
                v = join(labels, ", ");
            else
                return false;
            return true;
        },
        "task " + task.name + ": prompt");
}

}  // namespace medllm::eval

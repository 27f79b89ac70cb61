// `medllm pipeline` (include/medllm/pipeline/pipeline.h): plan, run each stage as its own subcommand, skip what is
// done, write the report.
#include "medllm/pipeline/pipeline.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <glob.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>
#include <cstring>

#include <algorithm>
#include <array>
#include <chrono>
#include <set>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/progress.h"
#include "medllm/eval/igakuqa_data.h"
#include "medllm/eval/igakuqa_option_scores.h"
#include "medllm/generate/option_scores.h"
#include "medllm/pipeline/rebuild.h"
#include "medllm/pipeline/report.h"

namespace fs = std::filesystem;

namespace medllm::pipeline {
namespace {

const std::vector<std::string> kStageSections = {"eval", "cpt", "build_prefs", "rpo"};
const std::vector<std::string> kOwnSections   = {"run_dir", "base_model", "rows", "score", "report", "launch"};

ConfigSchema<PipelineConfig> make_schema() {
    using C = PipelineConfig;
    ConfigSchema<C> s;
    s.field("run_dir", &C::run_dir, "run folder: one sub-folder per stage, report/ at the end").required();
    s.field("base_model", &C::base_model, "the base model folder (HF Qwen2 checkpoint with tokenizer)").required();
    s.field("rows.cpt_rpo", &C::cpt_rpo, "build-prefs + rpo + eval of +CPT+RPO");
    s.field("rows.cpt_dpo", &C::ablation_dpo, "ablation +CPT+DPO: rpo with loss.rpo_alpha 0");
    s.field("rows.rpo_without_cpt", &C::ablation_no_cpt,
            "ablation +RPO: rpo on the base model (no CPT) with the CPT model's pairs");
    s.field("score.options", &C::score_options, "also score each option's text by log-likelihood (second column)");
    s.field("score.device", &C::score_device, "device of the option scoring: cpu | cuda | cuda:N | auto");
    s.field("report.pass_lines", &C::pass_lines, "JSON {\"<year>\": {\"pass_fraction\": 0.6}}: own pass lines");
    s.field("report.title", &C::title, "report title");
    s.field("launch.nproc", &C::nproc,
            "processes per cpt / rpo / eval / build-prefs stage on this node (one per GPU): data-parallel training "
            "and shared generation, the results of one process")
        .range(1, 1024);
    return s;
}

std::string section_of(const std::string& key) {
    return key.substr(0, key.find('.'));
}

// Sets `key` in a flat document as an override does: it replaces the value of that key and of every key beneath
// it, and a leaf written where a mapping now goes (`lora:` with nothing under it).
void put_key(config_detail::FlatDoc& doc, const std::string& key, config_detail::FlatValue value) {
    for (auto it = doc.lower_bound(key + "."); it != doc.end() && it->first.rfind(key + ".", 0) == 0;)
        it = doc.erase(it);
    for (size_t dot = key.find('.'); dot != std::string::npos; dot = key.find('.', dot + 1))
        doc.erase(key.substr(0, dot));
    doc[key] = std::move(value);
}

// The flat key `key` of a stage section, as text ("" when absent or not a string).
std::string text_key(const nlohmann::json& flat, const std::string& key) {
    return flat.contains(key) && flat[key].is_string() ? flat[key].get<std::string>() : std::string();
}

std::string hms(double seconds) {
    return format_duration(seconds);
}

// A free TCP port on 127.0.0.1 for a stage's rendezvous (0 when none could be bound: the stage then uses 29500).
int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    sockaddr_in a{};
    a.sin_family      = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len     = sizeof a;
    int port          = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
        port = ntohs(a.sin_port);
    ::close(fd);
    return port;
}

// The stage's processes, so a SIGINT/SIGTERM to the pipeline reaches them (the stage commands finish their step,
// write a checkpoint and exit 1).
constexpr int kMaxChildren                     = 1024;
volatile sig_atomic_t g_children[kMaxChildren] = {};
extern "C" void forward_signal(int sig) {
    for (int i = 0; i < kMaxChildren && g_children[i] > 0; ++i) ::kill(static_cast<pid_t>(g_children[i]), sig);
}

// Runs the stage command as `nproc` ranks (torchrun's variables; rank 0's stdout to `stdout_file`, the other
// ranks' to <stage>/stdout.rank<R>.txt). Returns the first non-zero exit status, else 0.
int run_child(const fs::path& binary, const std::vector<std::string>& args, const fs::path& stdout_file,
              int64_t nproc) {
    std::vector<std::string> argv_s{binary.string()};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string port = std::to_string(nproc > 1 ? free_port() : 0);
    std::vector<pid_t> pids;
    std::fflush(nullptr);
    const pid_t pipeline_pid = ::getpid();
    for (int64_t rank = 0; rank < nproc; ++rank) {
        const fs::path out_file =
            rank == 0 ? stdout_file : stdout_file.parent_path() / ("stdout.rank" + std::to_string(rank) + ".txt");
        const int out = ::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (out < 0) throw Error(out_file.string() + ": cannot create: " + std::strerror(errno));
        const pid_t pid = ::fork();
        if (pid < 0) {
            ::close(out);
            for (pid_t p : pids) ::kill(p, SIGTERM);
            throw Error(std::string("pipeline: fork failed: ") + std::strerror(errno));
        }
        if (pid == 0) {
            // The stage dies with the pipeline: a SIGKILLed pipeline (an OOM kill, a cancelled job step that
            // reaches only it) would otherwise leave its stage running as an orphan, holding the GPU and writing
            // into the run folder. SIGTERM, so cpt and rpo still finish their step and write a checkpoint. The
            // setting survives execv; the getppid check covers a pipeline that died before it was made.
            if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() != pipeline_pid) ::_exit(128 + SIGTERM);
            // The stage's ranks are the pipeline's to set: a launch environment around the pipeline (an sbatch
            // script's SLURM_NTASKS, an exported WORLD_SIZE) must not make a stage wait for ranks that never come.
            for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_PROCID",
                                  "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"})
                ::unsetenv(v);
            if (nproc > 1) {
                ::setenv("RANK", std::to_string(rank).c_str(), 1);
                ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
                ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
                ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
                ::setenv("MASTER_ADDR", "127.0.0.1", 1);
                if (port != "0") ::setenv("MASTER_PORT", port.c_str(), 1);
            }
            ::dup2(out, STDOUT_FILENO);
            ::execv(argv[0], argv.data());
            const char msg[] = "pipeline: exec of the medllm binary failed\n";
            (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
            ::_exit(127);
        }
        ::close(out);
        pids.push_back(pid);
        if (rank < kMaxChildren) g_children[rank] = pid;
    }
    struct sigaction sa      = {};
    struct sigaction old_int = {}, old_term = {};
    sa.sa_handler = forward_signal;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, &old_int);
    ::sigaction(SIGTERM, &sa, &old_term);
    int rc = 0;
    for (pid_t pid : pids) {
        int status = 0;
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        if (rc == 0) rc = code;
    }
    for (auto& c : g_children) c = 0;
    ::sigaction(SIGINT, &old_int, nullptr);
    ::sigaction(SIGTERM, &old_term, nullptr);
    return rc;
}

}  // namespace

nlohmann::json unflatten(const nlohmann::json& flat) {
    nlohmann::json out = nlohmann::json::object();
    for (auto it = flat.begin(); it != flat.end(); ++it) {
        nlohmann::json* node = &out;
        std::string key      = it.key();
        size_t pos;
        while ((pos = key.find('.')) != std::string::npos) {
            node = &(*node)[key.substr(0, pos)];
            if (!node->is_object()) *node = nlohmann::json::object();
            key = key.substr(pos + 1);
        }
        (*node)[key] = it.value();
    }
    return out;
}

nlohmann::json PipelineConfig::section(const std::string& name) const {
    nlohmann::json out = nlohmann::json::object();
    if (const auto it = sections.find(name); it != sections.end())
        for (const auto& [key, v] : it->second.doc) out[key] = v.value;
    return out;
}

PipelineConfig load_pipeline_config(const ConfigSource& source, std::vector<ResolvedEntry>* resolved) {
    const auto flat                = config_detail::load_flat(source);
    const std::string where        = source.path.empty() ? "the overrides" : source.path;
    std::vector<std::string> known = kStageSections;
    known.insert(known.end(), kOwnSections.begin(), kOwnSections.end());
    config_detail::FlatDoc own;
    // Per stage section: `config:`, its plain keys and its `set:` keys, each as (key in the stage's config, value).
    struct Parts {
        const config_detail::FlatValue* config = nullptr;
        std::vector<std::pair<std::string, config_detail::FlatValue>> plain, set, command_line;
    };
    std::map<std::string, Parts> parts;
    for (const auto& [key, value] : flat) {
        const std::string section = section_of(key);
        bool is_stage             = false;
        for (const auto& s : kStageSections) is_stage = is_stage || s == section;
        if (!is_stage) {
            bool is_own = false;
            for (const auto& s : kOwnSections) is_own = is_own || s == section;
            if (!is_own) {
                std::string msg  = "unknown key '" + key + "' in " + (value.origin == "--set" ? "--set" : where);
                std::string near = config_detail::closest_key(section, known);
                if (!near.empty()) msg += "; did you mean '" + near + "'?";
                throw UsageError(msg);
            }
            own[key] = value;
            continue;
        }
        if (key.size() <= section.size() + 1)
            throw UsageError("key '" + key + "' in " + where + " must be a mapping (the " + section +
                             " command's config keys)");
        std::string sub = key.substr(section.size() + 1);
        auto& p         = parts[section];
        auto v          = value;
        if (sub == "config") {
            if (!v.value.is_string() || v.value.get<std::string>().empty())
                throw UsageError("key '" + key + "' (from " + v.origin +
                                 ") must be the path of a stage config file (relative to the pipeline file)");
            p.config = &value;
            continue;
        }
        bool is_set = false;
        if (sub == "set") {
            // `set: {}` or `set:` with nothing under it sets nothing; anything else must be a mapping.
            if (v.value.is_null() || (v.value.is_object() && v.value.empty())) continue;
            throw UsageError("key '" + key + "' (from " + v.origin +
                             ") must be a mapping of dotted keys, e.g. set: {loss.beta: 0.2}");
        }
        if (sub.rfind("set.", 0) == 0) {
            sub    = sub.substr(4);
            is_set = true;
        }
        v.key_prefix = section + (is_set ? ".set." : ".");
        if (v.origin == "--set")
            p.command_line.emplace_back(sub, v);
        else
            (is_set ? p.set : p.plain).emplace_back(sub, v);
    }
    static const auto schema = make_schema();
    PipelineConfig cfg       = schema.load_doc(own, where, "", resolved);
    cfg.path                 = source.path;
    const fs::path base_dir  = source.path.empty() ? fs::path() : fs::path(source.path).parent_path();
    for (const auto& name : kStageSections) {
        StageSection sec;
        const auto& p = parts[name];
        if (p.config) {
            sec.config_name = p.config->value.get<std::string>();
            const fs::path file =
                fs::path(sec.config_name).is_absolute() ? fs::path(sec.config_name) : base_dir / sec.config_name;
            sec.config_file = file.lexically_normal().string();
            if (!fs::is_regular_file(sec.config_file))
                throw UsageError("key '" + name + ".config' (from " + p.config->origin + "): no such stage config " +
                                 sec.config_file + " (paths are relative to the pipeline file)");
            for (auto [key, v] : config_detail::load_flat({sec.config_file, {}})) {
                if (key == "config" || key.rfind("set.", 0) == 0 || key == "set")
                    throw UsageError("key '" + key + "' in " + sec.config_file +
                                     ": a stage config cannot name another one (only a pipeline section can)");
                v.origin     = sec.config_name;
                sec.doc[key] = v;
            }
        }
        // The section's keys, then set:, then --set: each replaces what came before for its key and beneath it.
        for (const auto* list : {&p.plain, &p.set, &p.command_line})
            for (const auto& [key, v] : *list) put_key(sec.doc, key, v);
        cfg.sections[name] = std::move(sec);
    }
    if (!cfg.sections["eval"].doc.count("data_dir"))
        throw UsageError("missing required key 'eval.data_dir' in " + where + " (the IgakuQA-layout exam folder)");
    plan_stages(cfg);  // every stage's config checked now, before anything is created
    return cfg;
}

std::string describe_pipeline_config() {
    return make_schema().describe() +
           "  eval.*, cpt.*, build_prefs.*, rpo.*\n      the config keys of `medllm eval igakuqa`, `cpt`, "
           "`build-prefs`, `rpo` (see their --help); the pipeline sets model, output and data paths\n"
           "  <stage>.config\n      a standalone stage config to start from (relative to this file), e.g. "
           "rpo: {config: rpo_qlora.yaml}; the section's own keys apply over it\n"
           "  <stage>.set\n      a mapping of dotted keys applied over the stage config and the section's keys, e.g. "
           "set: {loss.beta: 0.2}; --set <stage>.<key>=... on the command line applies last\n";
}

namespace {

// How the pipeline sets a key of a stage's config.
enum class Wire {
    path,   // a path between stages: a value the user gave in the pipeline file or with --set is refused (it would
            // be replaced); a value from the stage config (meant for running that command by hand) is replaced
    guard,  // eval_guard.igakuqa_dir = eval.data_dir: the user's value in the pipeline file or --set is kept
    empty,  // must be empty: the pipeline runs this stage on merged models (an adapter here would apply twice)
    derive  // the ablation row's change (loss.rpo_alpha 0): always set, whatever was there
};

std::string as_text(const nlohmann::json& v) {
    return v.is_string() ? v.get<std::string>() : v.dump();
}

void wire(Stage& s, const std::string& key, const nlohmann::json& value, const std::string& why, Wire mode,
          const std::string& where) {
    const auto it    = s.doc.find(key);
    const bool given = it != s.doc.end() && !it->second.value.is_null() &&
                       !(it->second.value.is_string() && it->second.value.get<std::string>().empty());
    const bool by_pipeline_file = given && !it->second.key_prefix.empty();  // the pipeline file or --set
    std::string named;                                                      // the key as the user wrote it, and where
    if (given) {
        const std::string from = it->second.origin == "--set" ? "--set" : by_pipeline_file ? where : it->second.origin;
        named                  = "key '" + it->second.key_prefix + key + "' (from " + from + ")";
    }
    if (mode == Wire::empty) {
        if (given) throw UsageError(named + " must be empty in a pipeline: " + why);
        return;
    }
    if (mode == Wire::guard && by_pipeline_file) return;
    if (mode == Wire::path && by_pipeline_file)
        throw UsageError(named + " is set by the pipeline (" + why + "); remove it");
    std::string note = why;
    if (given && as_text(it->second.value) != as_text(value))
        note += "; replaces " + it->second.origin + ": " + config_detail::render_value(it->second.value);
    put_key(s.doc, key, {value, "pipeline", ""});
    s.wired[key] = note;
}

// A key of a stage's config as the user wrote it, and where ("cpt.data.sources[0].path (from pipeline.yaml)").
std::string key_label(const Stage& s, const std::string& key) {
    if (const auto w = s.wired.find(key); w != s.wired.end())
        return key + " (set by the pipeline: " + w->second.substr(0, w->second.find(';')) + ")";
    const std::string base = key.substr(0, key.find('['));
    if (const auto d = s.doc.find(base); d != s.doc.end())
        return d->second.key_prefix + key + " (from " + d->second.origin + ")";
    return key + " (default)";
}

// What a stage reads that no stage produces, from its resolved config.
void add_inputs(Stage& s) {
    const auto& v = s.resolved.values;
    auto text     = [&](const std::string& key) {
        return v.contains(key) && v[key].is_string() ? v[key].get<std::string>() : std::string();
    };
    auto enabled = [&](const std::string& key) { return !v.contains(key) || v[key] != false; };
    auto add     = [&](const std::string& key, const std::string& path, const char* what) {
        if (!path.empty()) s.inputs.push_back({key, key_label(s, key), path, what});
    };
    // An IgakuQA folder and the years read from it (years resolved through the schema, so they parse).
    auto add_exams = [&](const std::string& key, const std::string& years_key) {
        const std::string path = text(key);
        if (path.empty()) return;
        StageInput in{key, key_label(s, key), path, "igakuqa"};
        in.years     = eval::parse_years(text(years_key));
        in.years_key = key_label(s, years_key);
        s.inputs.push_back(in);
    };
    if (s.kind == "eval") {
        add_exams("data_dir", "years");
        add("prompt_file", text("prompt_file"), "path");
    } else if (s.kind == "cpt" || s.kind == "rpo") {
        add("model.tokenizer", text("model.tokenizer"), "path");
        if (s.kind == "cpt" && v.contains("data.sources") && v["data.sources"].is_array())
            for (size_t i = 0; i < v["data.sources"].size(); ++i) {
                const auto& item = v["data.sources"][i];
                if (item.is_object() && item.contains("path") && item["path"].is_string())
                    add("data.sources[" + std::to_string(i) + "].path", item["path"].get<std::string>(), "path");
            }
        if (enabled("eval_guard.enabled")) add_exams("eval_guard.igakuqa_dir", "eval_guard.years");
    } else if (s.kind == "build-prefs") {
        if (v.contains("questions") && v["questions"].is_array())
            for (size_t i = 0; i < v["questions"].size(); ++i)
                if (v["questions"][i].is_string())
                    add("questions[" + std::to_string(i) + "]", v["questions"][i].get<std::string>(), "path");
        add("few_shot.file", text("few_shot.file"), "path");
        add_exams("guard.igakuqa_dir", "guard.years");
    }
}

}  // namespace

void check_stage_inputs(const std::vector<Stage>& stages, const std::vector<bool>& run) {
    for (size_t i = 0; i < stages.size(); ++i) {
        if (!run[i]) continue;
        for (const auto& in : stages[i].inputs) {
            std::string problem;
            if (in.path.find_first_of("*?[") != std::string::npos) {
                glob_t g{};
                const int rc   = ::glob(in.path.c_str(), 0, nullptr, &g);
                const bool any = rc == 0 && g.gl_pathc > 0;
                globfree(&g);
                if (!any) problem = "matches no file";
            } else if (!fs::exists(in.path)) {
                problem = "no such file or folder";
            } else if (in.what == "model" && !fs::is_regular_file(fs::path(in.path) / "config.json")) {
                problem = "not a model folder (no config.json in it)";
            } else if (in.what == "igakuqa" && !fs::is_directory(fs::path(in.path) / "data")) {
                problem = "not an IgakuQA data folder (no data/ in it)";
            } else if (in.what == "igakuqa") {
                for (int year : in.years)
                    if (problem.empty() && !fs::is_directory(fs::path(in.path) / "data" / std::to_string(year)))
                        problem = "no data/" + std::to_string(year) + " for the years of " + in.years_key + " in";
            }
            if (!problem.empty())
                throw UsageError("stage " + stages[i].name + ": " + in.key + ": " + problem + " '" + in.path + "'");
        }
    }
}

std::vector<Stage> plan_stages(const PipelineConfig& c) {
    const fs::path run(c.run_dir);
    const std::string where    = c.path.empty() ? "the overrides" : c.path;
    auto section               = [&](const std::string& name) -> const StageSection& { return c.sections.at(name); };
    const std::string data_dir = text_key(c.section("eval"), "data_dir");
    std::vector<Stage> stages;
    auto from_section = [&](const std::string& name, const std::string& section_name, const std::string& kind) {
        Stage s;
        s.name        = name;
        s.kind        = kind;
        s.dir         = run / name;
        s.doc         = section(section_name).doc;
        s.config_name = section(section_name).config_name;
        return s;
    };
    // The stage's config with the wiring, as stage.yaml will hold it, resolved through the command's schema.
    auto finish = [&](Stage& s, const std::vector<std::string>& args) {
        s.config = nlohmann::json::object();
        for (const auto& [key, v] : s.doc) s.config[key] = v.value;
        s.resolved = resolve_stage_config(s.kind, s.doc, where);
        add_inputs(s);
        s.args = args;
        s.args.push_back("--config");
        s.args.push_back((s.dir / "stage.yaml").string());
    };
    const std::string cpt_model = (run / "merge-cpt").string();
    auto eval_stage             = [&](const std::string& name, const std::string& row, const std::string& model,
                          const std::string& merged_by) {
        Stage s = from_section(name, "eval", "eval");
        s.row   = row;
        s.model = model;
        if (!merged_by.empty()) s.after = {merged_by};
        wire(s, "model", model, "the model of row " + row, Wire::path, where);
        wire(s, "output", s.dir.string(), "the stage folder", Wire::path, where);
        wire(s, "model_name", row, "the report row", Wire::path, where);
        wire(s, "adapter", "", "each row evaluates a merged model", Wire::empty, where);
        wire(s, "predictions", "", "each row evaluates its model", Wire::empty, where);
        finish(s, {"eval", "igakuqa"});
        stages.push_back(s);
    };
    // Folds the adapter that stage `trained_by` wrote into `model`.
    auto merge_stage = [&](const std::string& name, const std::string& model, const std::string& trained_by) {
        Stage s;
        s.name  = name;
        s.kind  = "merge";
        s.dir   = run / name;
        s.args  = {"merge",
                   "--model",
                   model,
                   "--adapter",
                   (run / trained_by / "adapter").string(),
                   "--output",
                   (run / name).string()};
        s.after = {trained_by};
        if (model == cpt_model) s.after.push_back("merge-cpt");
        stages.push_back(s);
    };
    StageConfig rpo_config;  // the rpo stage's, which the DPO row derives from
    auto rpo_stage = [&](const std::string& name, const std::string& model, const std::string& model_why, bool dpo) {
        Stage s = from_section(name, "rpo", "rpo");
        s.after = {"build-prefs"};
        if (model == cpt_model) s.after.insert(s.after.begin(), "merge-cpt");
        wire(s, "model.path", model, model_why, Wire::path, where);
        wire(s, "data.path", (run / "build-prefs" / "pairs.jsonl").string(), "build-prefs' pairs", Wire::path, where);
        wire(s, "output", s.dir.string(), "the stage folder", Wire::path, where);
        wire(s, "lora.init_adapter", "", "rpo starts from " + model_why + ", in which merge-cpt merged the CPT adapter",
             Wire::empty, where);
        wire(s, "lora.resume_adapter", "", "rpo trains a fresh adapter on " + model_why, Wire::empty, where);
        wire(s, "eval_guard.igakuqa_dir", data_dir, "eval.data_dir", Wire::guard, where);
        if (dpo) {
            // The DPO row is the rpo stage with its NLL term off: rpo_alpha 0, and the `sft` entry of a TRL >= 1.0
            // loss list weighted 0 (parse_loss_spec refuses both at once, so at most one of them carries the NLL).
            wire(s, "loss.rpo_alpha", 0.0, "rows.cpt_dpo: plain DPO", Wire::derive, where);
            const auto& types = rpo_config.values["loss.loss_type"];
            if (types.is_array()) {
                nlohmann::json weights = rpo_config.values["loss.loss_weights"];
                if (!weights.is_array()) weights = nlohmann::json(std::vector<double>(types.size(), 1.0));
                bool sft = false;
                for (size_t i = 0; i < types.size(); ++i)
                    if (types[i] == "sft") {
                        weights[i] = 0.0;
                        sft        = true;
                    }
                if (sft) wire(s, "loss.loss_weights", weights, "rows.cpt_dpo: the sft term off", Wire::derive, where);
            }
        }
        finish(s, {"rpo"});
        return s;
    };
    const StageInput base_input{"base_model", "base_model", c.base_model, "model"};
    eval_stage("eval-base", "base", c.base_model, "");
    stages.back().inputs.insert(stages.back().inputs.begin(), base_input);
    {
        Stage s = from_section("cpt", "cpt", "cpt");
        wire(s, "model.path", c.base_model, "base_model", Wire::path, where);
        wire(s, "output", s.dir.string(), "the stage folder", Wire::path, where);
        wire(s, "eval_guard.igakuqa_dir", data_dir, "eval.data_dir", Wire::guard, where);
        finish(s, {"cpt"});
        s.inputs.insert(s.inputs.begin(), base_input);
        stages.push_back(s);
    }
    merge_stage("merge-cpt", c.base_model, "cpt");
    stages.back().inputs.push_back(base_input);
    eval_stage("eval-cpt", "+CPT", cpt_model, "merge-cpt");
    if (c.cpt_rpo || c.ablation_dpo || c.ablation_no_cpt) {
        Stage s = from_section("build-prefs", "build_prefs", "build-prefs");
        s.after = {"merge-cpt"};
        wire(s, "model", cpt_model, "the +CPT model (merge-cpt)", Wire::path, where);
        wire(s, "output", s.dir.string(), "the stage folder", Wire::path, where);
        wire(s, "adapter", "", "it samples the merged +CPT model", Wire::empty, where);
        // build-prefs' guard refuses eval_exams' problem_ids and the problem_ids and texts of guard.years in the
        // exam folder the eval stages read, as cpt's and rpo's eval_guard do.
        wire(s, "guard.igakuqa_dir", data_dir, "eval.data_dir", Wire::guard, where);
        finish(s, {"build-prefs"});
        stages.push_back(s);
    }
    // The rows trained on the CPT model start from its merged weights (merge-cpt), so their reference model (the
    // policy with its adapter off, or the log-probs precomputed from it) is the +CPT model, as in the paper.
    const std::string cpt_why = "the +CPT model (merge-cpt)";
    if (c.cpt_rpo || c.ablation_dpo) {
        // Resolved even when its row is off: the DPO row derives from it.
        Stage rpo  = rpo_stage("rpo", cpt_model, cpt_why, false);
        rpo_config = rpo.resolved;
        if (c.cpt_rpo) {
            stages.push_back(rpo);
            merge_stage("merge-rpo", cpt_model, "rpo");
            eval_stage("eval-cpt-rpo", "+CPT+RPO", (run / "merge-rpo").string(), "merge-rpo");
        }
    }
    if (c.ablation_dpo) {
        stages.push_back(rpo_stage("rpo-dpo", cpt_model, cpt_why, true));
        merge_stage("merge-dpo", cpt_model, "rpo-dpo");
        eval_stage("eval-cpt-dpo", "+CPT+DPO", (run / "merge-dpo").string(), "merge-dpo");
    }
    if (c.ablation_no_cpt) {
        stages.push_back(rpo_stage("rpo-base", c.base_model, "base_model (the row without CPT)", false));
        stages.back().inputs.insert(stages.back().inputs.begin(), base_input);
        merge_stage("merge-rpo-base", c.base_model, "rpo-base");
        stages.back().inputs.push_back(base_input);
        eval_stage("eval-rpo", "+RPO", (run / "merge-rpo-base").string(), "merge-rpo-base");
    }
    Stage report;
    report.name = report.kind = "report";
    report.dir                = run / "report";
    // The report reads every row's evaluation and the training curves.
    for (const auto& s : stages)
        if (s.kind == "eval" || s.kind == "cpt" || s.kind == "rpo") report.after.push_back(s.name);
    stages.push_back(report);
    if (!c.pass_lines.empty())
        stages.back().inputs.push_back({"report.pass_lines", "report.pass_lines", c.pass_lines, "path"});
    return stages;
}

namespace {

// `key  value  origin` lines, the columns aligned.
std::string table(const std::vector<std::array<std::string, 3>>& rows) {
    size_t wk = 0, wv = 0;
    for (const auto& r : rows) {
        wk = std::max(wk, r[0].size());
        wv = std::max(wv, std::min<size_t>(r[1].size(), 48));
    }
    std::string out;
    for (const auto& r : rows) {
        out += "  " + r[0] + std::string(wk - r[0].size() + 2, ' ') + r[1];
        out += std::string(r[1].size() < wv ? wv - r[1].size() + 2 : 2, ' ') + r[2] + "\n";
    }
    return out;
}

}  // namespace

std::string format_stage_configs(const PipelineConfig& config, const std::vector<Stage>& stages,
                                 const std::vector<ResolvedEntry>& own) {
    const std::string file = config.path.empty() ? "--set" : config_detail::file_origin(config.path);
    std::string out        = "pipeline " + (config.path.empty() ? std::string("(--set only)") : config.path) + "\n";
    std::vector<std::array<std::string, 3>> rows;
    for (const auto& e : own) rows.push_back({e.key, e.value, e.origin});
    out += table(rows);
    for (const auto& s : stages) {
        out += "\nstage " + s.name + ": medllm";
        for (const auto& a : s.args) out += " " + a;
        out += "\n";
        if (s.kind == "merge" || s.kind == "report") continue;
        if (!s.config_name.empty()) out += "  (stage config: " + s.config_name + ", relative to " + file + ")\n";
        rows.clear();
        for (const auto& e : s.resolved.entries) {
            std::string origin = e.origin;
            if (const auto w = s.wired.find(e.key); w != s.wired.end()) {
                origin = "pipeline: " + w->second;
            } else if (const auto d = s.doc.find(e.key); d != s.doc.end() && !d->second.key_prefix.empty()) {
                // Written in the pipeline file's section, its set: or --set: say which.
                origin =
                    (d->second.origin == "--set" ? std::string("--set ") : file + " ") + d->second.key_prefix + e.key;
            }
            rows.push_back({e.key, e.value, origin});
        }
        out += table(rows);
    }
    return out;
}

PipelineResult run_pipeline(const PipelineConfig& config, const PipelineOptions& options) {
    const auto stages = plan_stages(config);
    auto index_of     = [&](const std::string& name, const char* flag) {
        std::string names;
        for (size_t i = 0; i < stages.size(); ++i) {
            if (stages[i].name == name) return i;
            names += (i ? ", " : "") + stages[i].name;
        }
        throw UsageError(std::string(flag) + " " + name + ": no such stage in this config (stages: " + names + ")");
    };
    if (!options.from.empty() && !options.only.empty()) throw UsageError("pipeline: give --from or --only, not both");
    if (!options.from.empty()) index_of(options.from, "--from");  // stage_status reruns it and what follows
    const size_t only     = options.only.empty() ? stages.size() : index_of(options.only, "--only");
    const fs::path binary = options.medllm.empty() ? fs::read_symlink("/proc/self/exe") : options.medllm;
    const auto status     = stage_status(config, stages, options.from, options.only, /*refresh=*/true);
    // Every input of the stages that will run is checked before the first one starts, not hours later.
    std::vector<bool> will_run(stages.size());
    for (size_t i = 0; i < stages.size(); ++i) will_run[i] = status[i].run;
    check_stage_inputs(stages, will_run);
    fs::create_directories(config.run_dir);

    PipelineResult result;
    const auto start = std::chrono::steady_clock::now();
    auto elapsed     = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    nlohmann::json timings = nlohmann::json::object();
    const size_t n         = stages.size();
    for (size_t i = 0; i < n; ++i) {
        const Stage& s = stages[i];
        std::string after;
        for (size_t k = i + 1; k < n; ++k) after += (after.empty() ? "" : ", ") + stages[k].name;
        const std::string head = fmt::format("[pipeline] stage {}/{} {}", i + 1, n, s.name);
        StageStatus st         = status[i];
        if (st.run && s.kind != "report") {
            // Asked again now that the stages before it ran: one that wrote the same outputs again (the same
            // adapter merged again) leaves this stage done.
            st = stage_status(config, stages, options.from, options.only, /*refresh=*/true, /*warn=*/false)[i];
            if (!st.run) st.reason = "done (what it reads came out the same)";
        }
        if (!st.run) {
            if (const auto done = read_done(s.dir); done.is_object()) timings[s.name] = done.value("seconds", 0.0);
            if (only < n) continue;  // --only: the other stages are not this run's business
            if (s.kind == "report")
                spdlog::info("{}: not rewritten ({})", head, st.reason);
            else if (st.reason == "done")
                spdlog::info("{}: done, skipped (elapsed {})", head, hms(elapsed()));
            else
                spdlog::info("{}: {}, skipped (elapsed {})", head, st.reason, hms(elapsed()));
            result.skipped.push_back(s.name);
            continue;
        }
        if (st.remove) {
            fs::remove_all(s.dir);
        } else if (st.start_over) {
            clear_stage_dir(s.dir);
        } else {
            std::error_code ec;
            fs::remove(s.dir / "done", ec);  // its outputs are made again (the command resumes where it can)
        }
        fs::create_directories(s.dir);
        spdlog::info("{} (elapsed {}; {}; remaining after it: {})", head, hms(elapsed()), st.reason,
                     after.empty() ? "none" : after);
        for (const auto& [key, note] : s.wired)
            if (note.find("; replaces ") != std::string::npos)
                spdlog::info("{}: {} = {} (set by the pipeline: {})", s.name, key,
                             config_detail::to_text(s.config[key]), note);
        const auto stage_start = std::chrono::steady_clock::now();
        if (s.kind == "report") {
            ReportInputs in;
            in.title = config.title;
            for (const auto& e : stages)
                if (e.kind == "eval" && read_done(e.dir).is_object()) in.rows.push_back({e.row, e.dir});
            if (in.rows.empty())
                throw UsageError("pipeline: no evaluation stage is done in " + config.run_dir +
                                 ", so the report would be empty; run the pipeline first");
            for (const auto& e : stages)
                if ((e.kind == "cpt" || e.kind == "rpo") && fs::exists(e.dir / "metrics.jsonl"))
                    in.curves.push_back({e.name, e.dir / "metrics.jsonl"});
            if (!config.pass_lines.empty()) in.pass_lines = read_json_file(config.pass_lines);
            in.timings       = timings;
            const auto table = write_pipeline_report(s.dir, in);
            write_stdout(table);
            result.report_dir = s.dir;
            result.ran.push_back(s.name);
            continue;
        }
        // What it consumes, as it is now that the stages before it ran.
        const auto identity = stage_identity(config, stages, s);
        if (!s.config.is_null()) write_file_atomic(s.dir / "stage.yaml", dump_json(unflatten(s.config), 2) + "\n");
        write_started(s, identity);
        const bool ranked = s.kind == "cpt" || s.kind == "rpo" || s.kind == "eval" || s.kind == "build-prefs";
        const int rc      = run_child(binary, s.args, s.dir / "stdout.txt", ranked ? config.nproc : 1);
        if (rc != 0)
            throw Error("pipeline: stage " + s.name + " failed (exit " + std::to_string(rc) + "); its log is " +
                        (s.dir / "medllm.log").string() + "; rerun the same command to continue");
        if (s.kind == "eval" && config.score_options) {
            eval::OptionScoreOptions so;
            so.predictions       = fs::exists(s.dir / "predictions.jsonl") ? s.dir / "predictions.jsonl" : fs::path();
            const auto& v        = s.resolved.values;
            const auto questions = eval::load_questions(v["data_dir"].get<std::string>(),
                                                        eval::parse_years(v["years"].get<std::string>()));
            write_file_atomic(
                s.dir / "option_scores.json",
                dump_json(
                    eval::score_options(questions, generate::load_option_text_scorer(s.model, config.score_device), so),
                    2) +
                    "\n");
        }
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - stage_start).count();
        timings[s.name]      = seconds;
        write_done(s, identity, seconds);
        spdlog::info("{}: finished in {} (elapsed {})", head, hms(seconds), hms(elapsed()));
        result.ran.push_back(s.name);
    }
    return result;
}

}  // namespace medllm::pipeline

// `medllm pipeline` (include/medllm/pipeline/pipeline.h): plan, run each stage as its own subcommand, skip what is
// done, write the report.
#include "medllm/pipeline/pipeline.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>
#include <cstring>

#include <chrono>
#include <set>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/progress.h"
#include "medllm/eval/igakuqa_data.h"
#include "medllm/eval/igakuqa_option_scores.h"
#include "medllm/generate/option_scores.h"
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
    s.strict_sections(kOwnSections);
    return s;
}

std::string section_of(const std::string& key) {
    return key.substr(0, key.find('.'));
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

nlohmann::json read_done(const fs::path& dir) {
    const fs::path done = dir / "done";
    if (!fs::exists(done)) return nullptr;
    return read_json_file(done);
}

std::string stage_hash(const Stage& s) {
    return hash_bytes(s.config.dump() + "\n" + nlohmann::json(s.args).dump());
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

PipelineConfig load_pipeline_config(const ConfigSource& source, std::vector<ResolvedEntry>* resolved) {
    const auto flat                = config_detail::load_flat(source);
    const std::string where        = source.path.empty() ? "the overrides" : source.path;
    std::vector<std::string> known = kStageSections;
    known.insert(known.end(), kOwnSections.begin(), kOwnSections.end());
    PipelineConfig cfg;
    nlohmann::json sections = nlohmann::json::object();
    for (const auto& s : kStageSections) sections[s] = nlohmann::json::object();
    for (const auto& [key, value] : flat) {
        const std::string section = section_of(key);
        bool is_stage             = false;
        for (const auto& s : kStageSections) is_stage = is_stage || s == section;
        if (is_stage) {
            if (key.size() <= section.size() + 1)
                throw UsageError("key '" + key + "' in " + where + " must be a mapping (the " + section +
                                 " command's config keys)");
            sections[section][key.substr(section.size() + 1)] = value.value;
            continue;
        }
        bool own = false;
        for (const auto& s : kOwnSections) own = own || s == section;
        if (!own) {
            std::string msg  = "unknown key '" + key + "' in " + (value.origin == "--set" ? "--set" : where);
            std::string near = config_detail::closest_key(section, known);
            if (!near.empty()) msg += "; did you mean '" + near + "'?";
            throw UsageError(msg);
        }
    }
    static const auto schema = make_schema();
    cfg                      = schema.load(source, resolved);
    cfg.eval                 = sections["eval"];
    cfg.cpt                  = sections["cpt"];
    cfg.build_prefs          = sections["build_prefs"];
    cfg.rpo                  = sections["rpo"];
    if (resolved)
        for (const auto& s : kStageSections)
            for (auto it = sections[s].begin(); it != sections[s].end(); ++it)
                resolved->push_back({s + "." + it.key(), config_detail::render_value(it.value()), where});
    if (!cfg.eval.contains("data_dir"))
        throw UsageError("missing required key 'eval.data_dir' in " + where + " (the IgakuQA-layout exam folder)");
    for (const char* k : {"model", "adapter", "output", "predictions"})
        if (cfg.eval.contains(k))
            throw UsageError("key 'eval." + std::string(k) + "' in " + where +
                             " is set by the pipeline for each row; remove it");
    return cfg;
}

std::string describe_pipeline_config() {
    return make_schema().describe() +
           "  eval.*, cpt.*, build_prefs.*, rpo.*\n      the config keys of `medllm eval igakuqa`, `cpt`, "
           "`build-prefs`, `rpo` (see their --help); the pipeline sets model, output and data paths\n";
}

std::vector<Stage> plan_stages(const PipelineConfig& c) {
    const fs::path run(c.run_dir);
    const std::string data_dir = text_key(c.eval, "data_dir");
    std::vector<Stage> stages;
    auto eval_stage = [&](const std::string& name, const std::string& row, const std::string& model) {
        Stage s{name, "eval", row, run / name, c.eval, {}, model};
        s.config["model"]      = model;
        s.config["output"]     = s.dir.string();
        s.config["model_name"] = row;
        s.args                 = {"eval", "igakuqa", "--config", (s.dir / "stage.yaml").string()};
        stages.push_back(s);
    };
    auto merge_stage = [&](const std::string& name, const std::string& model, const fs::path& adapter) {
        Stage s{name, "merge", "", run / name, nullptr, {}, ""};
        s.args = {"merge", "--model", model, "--adapter", adapter.string(), "--output", (run / name).string()};
        stages.push_back(s);
    };
    auto rpo_stage = [&](const std::string& name, const std::string& model, bool dpo) {
        Stage s{name, "rpo", "", run / name, c.rpo, {}, ""};
        s.config["model.path"] = model;
        s.config["data.path"]  = (run / "build-prefs" / "pairs.jsonl").string();
        s.config["output"]     = s.dir.string();
        if (!s.config.contains("eval_guard.igakuqa_dir")) s.config["eval_guard.igakuqa_dir"] = data_dir;
        if (dpo) s.config["loss.rpo_alpha"] = 0.0;
        s.args = {"rpo", "--config", (s.dir / "stage.yaml").string()};
        stages.push_back(s);
    };
    const std::string cpt_model = (run / "merge-cpt").string();
    eval_stage("eval-base", "base", c.base_model);
    {
        Stage s{"cpt", "cpt", "", run / "cpt", c.cpt, {}, ""};
        s.config["model.path"] = c.base_model;
        s.config["output"]     = s.dir.string();
        if (!s.config.contains("eval_guard.igakuqa_dir")) s.config["eval_guard.igakuqa_dir"] = data_dir;
        s.args = {"cpt", "--config", (s.dir / "stage.yaml").string()};
        stages.push_back(s);
    }
    merge_stage("merge-cpt", c.base_model, run / "cpt" / "adapter");
    eval_stage("eval-cpt", "+CPT", cpt_model);
    if (c.cpt_rpo || c.ablation_dpo || c.ablation_no_cpt) {
        Stage s{"build-prefs", "build-prefs", "", run / "build-prefs", c.build_prefs, {}, ""};
        s.config["model"]  = cpt_model;
        s.config["output"] = s.dir.string();
        // build-prefs' guard refuses eval_exams' problem_ids, and with guard.igakuqa_dir also every text of a real
        // IgakuQA folder (all of 2018-2022); it is left to the config, since the quickstart's exam folder holds two.
        s.args = {"build-prefs", "--config", (s.dir / "stage.yaml").string()};
        stages.push_back(s);
    }
    if (c.cpt_rpo) {
        rpo_stage("rpo", cpt_model, false);
        merge_stage("merge-rpo", cpt_model, run / "rpo" / "adapter");
        eval_stage("eval-cpt-rpo", "+CPT+RPO", (run / "merge-rpo").string());
    }
    if (c.ablation_dpo) {
        rpo_stage("rpo-dpo", cpt_model, true);
        merge_stage("merge-dpo", cpt_model, run / "rpo-dpo" / "adapter");
        eval_stage("eval-cpt-dpo", "+CPT+DPO", (run / "merge-dpo").string());
    }
    if (c.ablation_no_cpt) {
        rpo_stage("rpo-base", c.base_model, false);
        merge_stage("merge-rpo-base", c.base_model, run / "rpo-base" / "adapter");
        eval_stage("eval-rpo", "+RPO", (run / "merge-rpo-base").string());
    }
    stages.push_back(Stage{"report", "report", "", run / "report", nullptr, {}, ""});
    return stages;
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
    const size_t from     = options.from.empty() ? stages.size() : index_of(options.from, "--from");
    const size_t only     = options.only.empty() ? stages.size() : index_of(options.only, "--only");
    const fs::path binary = options.medllm.empty() ? fs::read_symlink("/proc/self/exe") : options.medllm;
    if (!fs::exists(config.base_model)) throw UsageError("base_model " + config.base_model + ": no such model folder");
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
        const bool forced      = i >= from || i == only;
        if (only < n && i != only && s.kind != "report") {
            if (const auto done = read_done(s.dir); done.is_object()) timings[s.name] = done.value("seconds", 0.0);
            continue;
        }
        const std::string hash = stage_hash(s);
        if (s.kind != "report" && !forced) {
            if (const auto done = read_done(s.dir); done.is_object()) {
                if (done.value("config_hash", "") != hash)
                    throw UsageError("stage " + s.name + " (" + s.dir.string() +
                                     ") is done under another config; rerun it and the stages after it with --from " +
                                     s.name);
                timings[s.name] = done.value("seconds", 0.0);
                spdlog::info("{}: done, skipped (elapsed {})", head, hms(elapsed()));
                result.skipped.push_back(s.name);
                continue;
            }
        }
        if (forced && fs::exists(s.dir)) fs::remove_all(s.dir);
        fs::create_directories(s.dir);
        spdlog::info("{} (elapsed {}; remaining after it: {})", head, hms(elapsed()), after.empty() ? "none" : after);
        const auto stage_start = std::chrono::steady_clock::now();
        if (s.kind == "report") {
            ReportInputs in;
            in.title = config.title;
            for (const auto& e : stages)
                if (e.kind == "eval" && read_done(e.dir).is_object()) in.rows.push_back({e.row, e.dir});
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
        if (!s.config.is_null()) write_file_atomic(s.dir / "stage.yaml", dump_json(unflatten(s.config), 2) + "\n");
        const bool ranked = s.kind == "cpt" || s.kind == "rpo" || s.kind == "eval" || s.kind == "build-prefs";
        const int rc      = run_child(binary, s.args, s.dir / "stdout.txt", ranked ? config.nproc : 1);
        if (rc != 0)
            throw Error("pipeline: stage " + s.name + " failed (exit " + std::to_string(rc) + "); its log is " +
                        (s.dir / "medllm.log").string() + "; rerun the same command to continue");
        if (s.kind == "eval" && config.score_options) {
            eval::OptionScoreOptions so;
            so.predictions       = fs::exists(s.dir / "predictions.jsonl") ? s.dir / "predictions.jsonl" : fs::path();
            const auto questions = eval::load_questions(
                text_key(s.config, "data_dir"),
                eval::parse_years(s.config.contains("years") ? s.config["years"].is_string()
                                                                   ? s.config["years"].get<std::string>()
                                                                   : s.config["years"].dump()
                                                             : std::string("2018-2022")));
            write_file_atomic(
                s.dir / "option_scores.json",
                dump_json(
                    eval::score_options(questions, generate::load_option_text_scorer(s.model, config.score_device), so),
                    2) +
                    "\n");
        }
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - stage_start).count();
        timings[s.name]      = seconds;
        write_file_atomic(s.dir / "done",
                          dump_json({{"stage", s.name}, {"config_hash", hash}, {"seconds", seconds}}, 2) + "\n");
        spdlog::info("{}: finished in {} (elapsed {})", head, hms(seconds), hms(elapsed()));
        result.ran.push_back(s.name);
    }
    return result;
}

}  // namespace medllm::pipeline

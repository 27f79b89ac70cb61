// The pipeline's rebuild rule (include/medllm/pipeline/rebuild.h).
#include "medllm/pipeline/rebuild.h"

#include <map>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/pipeline/fingerprint.h"

namespace fs = std::filesystem;

namespace medllm::pipeline {
namespace {

constexpr int kFormat = 2;

// A path string with `prefix` (a folder) replaced by `name`: "runs/q/cpt" -> "$run_dir/cpt".
nlohmann::json replace_prefix(const nlohmann::json& v, const std::string& prefix, const std::string& name) {
    if (prefix.empty()) return v;
    if (v.is_string()) {
        const std::string s = v.get<std::string>();
        if (s == prefix) return name;
        if (s.rfind(prefix + "/", 0) == 0) return name + s.substr(prefix.size());
        return v;
    }
    if (v.is_array() || v.is_object()) {
        nlohmann::json out = v;
        for (auto it = out.begin(); it != out.end(); ++it) *it = replace_prefix(*it, prefix, name);
        return out;
    }
    return v;
}

std::string without_trailing_slash(std::string s) {
    while (s.size() > 1 && s.back() == '/') s.pop_back();
    return s;
}

nlohmann::json identity_config(const PipelineConfig& c, const Stage& s) {
    nlohmann::json v;
    if (s.kind == "merge") {
        v = {{"args", s.args}};
    } else if (s.kind == "report") {
        v = {{"title", c.title}, {"pass_lines", c.pass_lines}};
    } else {
        v = s.config;
        if (s.kind == "eval") v["pipeline.score.options"] = c.score_options;  // the option-text column it writes
    }
    v = replace_prefix(v, without_trailing_slash(fs::path(c.run_dir).lexically_normal().string()), "$run_dir");
    return replace_prefix(v, without_trailing_slash(c.base_model), "$base_model");
}

const Stage* find_stage(const std::vector<Stage>& stages, const std::string& name) {
    for (const auto& s : stages)
        if (s.name == name) return &s;
    return nullptr;
}

// What the stages after a stage read of its outputs, so that a rerun which writes the same adapter but new
// timings into metrics.jsonl does not rebuild everything downstream (the report, which reads the metrics, is
// rewritten on every run anyway).
std::vector<std::string> consumed_outputs(const std::string& kind) {
    if (kind == "cpt" || kind == "rpo") return {"adapter/"};
    if (kind == "build-prefs") return {"pairs.jsonl"};
    return {};  // merge: the model folder; eval: its reports
}

std::string outputs_hash_of(const nlohmann::json& done) {
    return done.is_object() && done.value("format", 0) == kFormat ? done.value("outputs_hash", "") : "";
}

}  // namespace

nlohmann::json read_done(const fs::path& dir) {
    const fs::path done = dir / "done";
    if (!fs::exists(done)) return nullptr;
    return read_json_file(done);
}

nlohmann::json stage_identity(const PipelineConfig& config, const std::vector<Stage>& stages, const Stage& stage) {
    nlohmann::json inputs = nlohmann::json::object();
    for (const auto& u : stage.after) {
        const Stage* up      = find_stage(stages, u);
        inputs["stage " + u] = up ? outputs_hash_of(read_done(up->dir)) : "";
    }
    for (const auto& in : stage.inputs) inputs[in.id] = input_identity(in.path);
    return {{"config", identity_config(config, stage)}, {"inputs", inputs}};
}

std::vector<StageStatus> stage_status(const PipelineConfig& config, const std::vector<Stage>& stages,
                                      const std::string& from, const std::string& only, bool refresh, bool warn) {
    const size_t n = stages.size();
    auto index_of  = [&](const std::string& name) {
        for (size_t i = 0; i < n; ++i)
            if (stages[i].name == name) return i;
        return n;
    };
    const size_t from_i = from.empty() ? n : index_of(from);
    const size_t only_i = only.empty() ? n : index_of(only);
    std::vector<StageStatus> status(n);
    std::map<std::string, bool> runs;  // stage name -> runs in this invocation (as the rule decides, --only aside)
    for (size_t i = 0; i < n; ++i) {
        const Stage& s  = stages[i];
        StageStatus& st = status[i];
        if (i >= from_i) {
            st           = {true, false, true, "--from " + from};
            runs[s.name] = true;
            continue;
        }
        if (s.kind == "report") {
            st           = {true, false, false, "the report is rewritten on every run"};
            runs[s.name] = true;
            continue;
        }
        const auto now = stage_identity(config, stages, s);
        auto done      = read_done(s.dir);
        auto run       = [&](bool start_over, const std::string& why) { st = {true, start_over, false, why}; };
        if (!done.is_object()) {
            const fs::path started = s.dir / "started.json";
            if (fs::exists(started)) {
                const auto before      = read_json_file(started);
                const std::string diff = describe_json_difference(before, now);
                if (diff.empty())
                    run(false, "interrupted; continues");
                else
                    run(true, "interrupted under other inputs (" + diff + "); starts over");
            } else {
                run(false, "not done");
            }
        } else if (done.value("format", 0) != kFormat) {
            run(true, "done by an older medllm that did not record its inputs; starts over");
        } else if (const auto diff = describe_json_difference(done["config"], now["config"]); !diff.empty()) {
            run(true, "config changed (" + diff + ")");
        } else {
            const auto& recorded = done["inputs"];
            for (const auto& u : s.after) {
                if (runs[u]) {
                    run(true, u + " runs again");
                    break;
                }
                if (recorded.value("stage " + u, "") != now["inputs"]["stage " + u].get<std::string>()) {
                    run(true, u + "'s outputs changed since " + s.name + " ran");
                    break;
                }
            }
            for (const auto& in : s.inputs) {
                if (st.run) break;
                const std::string id = now["inputs"][in.id].get<std::string>();
                if (id.empty()) {
                    // Nothing to rebuild from: the results stay, and the user hears about it.
                    if (warn)
                        spdlog::warn("stage {}: input {} ({}) is gone; keeping the results made from it", s.name,
                                     in.key, in.path);
                } else if (!recorded.contains(in.id)) {
                    run(true, "new input " + in.key);
                } else if (recorded[in.id] != id) {
                    run(true, "input " + in.key + " changed (" + in.path + ")");
                }
            }
            if (!st.run) {
                bool refreshed     = false;
                const auto problem = check_outputs(s.dir, done["outputs"], &refreshed);
                if (!problem.empty()) {
                    run(false, "output " + problem);
                } else {
                    st = {false, false, false, "done"};
                    if (refreshed && refresh) write_file_atomic(s.dir / "done", dump_json(done, 2) + "\n");
                }
            }
        }
        runs[s.name] = st.run;
    }
    if (only_i < n) {
        // --only STAGE runs that stage alone: what it reads, directly or through other stages, must be done and up
        // to date. The first such stage in the pipeline's order that would run is named.
        std::vector<bool> upstream(n, false);
        std::vector<std::string> todo = stages[only_i].after;
        while (!todo.empty()) {
            const size_t k = index_of(todo.back());
            todo.pop_back();
            if (k >= n || upstream[k]) continue;
            upstream[k] = true;
            todo.insert(todo.end(), stages[k].after.begin(), stages[k].after.end());
        }
        for (size_t k = 0; k < n; ++k)
            if (upstream[k] && status[k].run)
                throw UsageError("--only " + only + ": " + stages[k].name + " must run first (" + status[k].reason +
                                 "); run the pipeline without --only, or --only " + stages[k].name + " first");
        for (size_t i = 0; i < n; ++i) {
            if (i == only_i) {
                status[i] = {true, false, true, "--only " + only};
            } else if (status[i].run) {
                status[i].run    = false;
                status[i].reason = "not run (--only " + only + "); would run: " + status[i].reason;
            }
        }
    }
    return status;
}

void write_started(const Stage& stage, const nlohmann::json& identity) {
    write_file_atomic(stage.dir / "started.json", dump_json(identity, 2) + "\n");
}

void write_done(const Stage& stage, const nlohmann::json& identity, double seconds) {
    nlohmann::json done  = identity;
    done["format"]       = kFormat;
    done["stage"]        = stage.name;
    done["seconds"]      = seconds;
    done["outputs"]      = record_outputs(stage.dir);
    done["outputs_hash"] = outputs_hash(done["outputs"], consumed_outputs(stage.kind));
    write_file_atomic(stage.dir / "done", dump_json(done, 2) + "\n");
    std::error_code ec;
    fs::remove(stage.dir / "started.json", ec);
}

void clear_stage_dir(const fs::path& dir) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string name = e.path().filename().string();
        if (name == "corpus_cache" || name == "ref_cache") continue;
        fs::remove_all(e.path());
    }
}

}  // namespace medllm::pipeline

// The pipeline's rebuild rule (include/medllm/pipeline/rebuild.h, fingerprint.h) on stage folders whose outputs
// are written by hand, so every case runs in milliseconds: a stage whose config, inputs or upstream outputs changed
// runs again with everything downstream; missing or changed outputs are made again; a touched or moved folder
// stays done.
#include <sys/stat.h>
#include <unistd.h>
#include <utime.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include <gtest/gtest.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/pipeline/fingerprint.h"
#include "medllm/pipeline/pipeline.h"
#include "medllm/pipeline/rebuild.h"

namespace fs = std::filesystem;
using namespace medllm;

namespace {

void write(const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
}

// Moves a file's mtime by `seconds` (a touch, or a copy without -p).
void shift_mtime(const fs::path& p, long seconds) {
    struct stat st {};
    ASSERT_EQ(::stat(p.c_str(), &st), 0);
    struct utimbuf t {};
    t.actime  = st.st_atime;
    t.modtime = st.st_mtime + seconds;
    ASSERT_EQ(::utime(p.c_str(), &t), 0);
}

class Rebuild : public ::testing::Test {
protected:
    fs::path root = fs::temp_directory_path() / ("medllm-rebuild-" + std::to_string(::getpid()));
    fs::path run  = root / "run";

    void SetUp() override {
        fs::remove_all(root);
        write(root / "model" / "config.json", "{}");
        write(root / "exams" / "data" / "2021" / "116-A.jsonl", "{}\n");
        write(root / "corpus.jsonl", "{\"text\": \"a\"}\n");
        write(root / "past.jsonl", "{}\n");
        write(root / "pipeline.yaml", "base_model: " + (root / "model").string() +
                                          "\neval:\n  data_dir: " + (root / "exams").string() +
                                          "\ncpt:\n  data:\n    sources: [{path: " + (root / "corpus.jsonl").string() +
                                          "}]\nbuild_prefs:\n  questions: [" + (root / "past.jsonl").string() +
                                          "]\nrpo:\n  loss:\n    beta: 0.2\n");
    }
    void TearDown() override { fs::remove_all(root); }

    pipeline::PipelineConfig config(std::vector<std::string> overrides = {}, const fs::path& run_dir = {}) {
        overrides.push_back("run_dir=" + (run_dir.empty() ? run : run_dir).string());
        return pipeline::load_pipeline_config({(root / "pipeline.yaml").string(), overrides});
    }

    // What each stage writes, by hand: the files the real commands write that the next stages read.
    static void write_outputs(const pipeline::Stage& s, const std::string& adapter = "adapter v1") {
        if (s.kind == "cpt" || s.kind == "rpo") {
            write(s.dir / "adapter" / "adapter_model.safetensors", adapter);
            write(s.dir / "metrics.jsonl", "{\"step\": 1, \"seconds\": " + std::to_string(::rand()) + "}\n");
            write(s.dir / "checkpoint-1" / "optimizer.safetensors", "state");  // not an output
        } else if (s.kind == "merge") {
            write(s.dir / "model.safetensors", "merged weights");
            write(s.dir / "config.json", "{}");
        } else if (s.kind == "eval") {
            write(s.dir / "report.json", "{}");
        } else if (s.kind == "build-prefs") {
            write(s.dir / "pairs.jsonl", "{}\n");
        }
        write(s.dir / "medllm.log", "log");  // not an output
    }

    // Every stage "runs" in order, as run_pipeline records it.
    void finish_all(const pipeline::PipelineConfig& c) {
        const auto stages = pipeline::plan_stages(c);
        for (const auto& s : stages) {
            if (s.kind == "report") continue;
            write_outputs(s);
            pipeline::write_done(s, pipeline::stage_identity(c, stages, s), 1.0);
        }
    }

    // "stage: runs (reason)" or "stage: done" for each stage, as --list prints it.
    std::map<std::string, std::string> status(const pipeline::PipelineConfig& c, const std::string& from = "",
                                              const std::string& only = "") {
        const auto stages = pipeline::plan_stages(c);
        const auto st     = pipeline::stage_status(c, stages, from, only, true);
        std::map<std::string, std::string> out;
        for (size_t i = 0; i < stages.size(); ++i)
            out[stages[i].name] = st[i].run ? "runs: " + st[i].reason : st[i].reason;
        return out;
    }
};

}  // namespace

TEST_F(Rebuild, FinishedStagesAreDone) {
    const auto c = config();
    finish_all(c);
    for (const auto& [name, st] : status(c)) {
        if (name == "report") continue;
        EXPECT_EQ(st, "done") << name;
    }
    const auto done = pipeline::read_done(run / "cpt");
    EXPECT_TRUE(done["outputs"].contains("adapter/adapter_model.safetensors"));
    EXPECT_FALSE(done["outputs"].contains("medllm.log"));
    EXPECT_FALSE(done["outputs"].contains("checkpoint-1/optimizer.safetensors"));
    EXPECT_EQ(done["config"]["output"], "$run_dir/cpt");  // the run folder is a placeholder
}

// The case: a changed cpt config reruns cpt and everything that read from it, not just cpt.
TEST_F(Rebuild, AChangedConfigRebuildsTheStageAndEverythingDownstream) {
    finish_all(config());
    const auto st = status(config({"cpt.lora.r=8"}));
    EXPECT_EQ(st.at("eval-base"), "done");
    EXPECT_NE(st.at("cpt").find("runs: config changed (lora.r"), std::string::npos) << st.at("cpt");
    EXPECT_EQ(st.at("merge-cpt"), "runs: cpt runs again");
    EXPECT_EQ(st.at("eval-cpt"), "runs: merge-cpt runs again");
    EXPECT_EQ(st.at("build-prefs"), "runs: merge-cpt runs again");
    EXPECT_EQ(st.at("rpo"), "runs: merge-cpt runs again");
    EXPECT_EQ(st.at("eval-cpt-rpo"), "runs: merge-rpo runs again");
}

// `--only cpt` with a changed config, then a plain run: everything downstream of cpt runs (it ran nothing before).
TEST_F(Rebuild, OnlyThenAPlainRunRebuildsWhatReadTheOldOutputs) {
    finish_all(config());
    const auto c      = config({"cpt.lora.r=8"});
    const auto stages = pipeline::plan_stages(c);
    EXPECT_THROW(pipeline::stage_status(c, stages, "", "merge-cpt", false), UsageError);  // cpt is out of date
    const auto& cpt = stages[1];
    ASSERT_EQ(cpt.name, "cpt");
    write_outputs(cpt, "adapter v2");
    pipeline::write_done(cpt, pipeline::stage_identity(c, stages, cpt), 1.0);
    const auto st = status(c);
    EXPECT_EQ(st.at("cpt"), "done");
    EXPECT_EQ(st.at("merge-cpt"), "runs: cpt's outputs changed since merge-cpt ran");
    EXPECT_EQ(st.at("eval-cpt"), "runs: merge-cpt runs again");
    EXPECT_EQ(st.at("eval-base"), "done");
}

// A stage that wrote the same adapter again (new mtime, new timings in metrics.jsonl) rebuilds nothing after it.
TEST_F(Rebuild, TheSameOutputsWrittenAgainRebuildNothing) {
    const auto c = config();
    finish_all(c);
    const auto stages = pipeline::plan_stages(c);
    write_outputs(stages[1], "adapter v1");
    shift_mtime(stages[1].dir / "adapter" / "adapter_model.safetensors", 10);
    pipeline::write_done(stages[1], pipeline::stage_identity(c, stages, stages[1]), 1.0);
    EXPECT_EQ(status(c).at("merge-cpt"), "done");
}

TEST_F(Rebuild, AMissingOrChangedOutputIsMadeAgain) {
    const auto c = config();
    finish_all(c);
    fs::remove(run / "merge-cpt" / "model.safetensors");
    auto st = status(c);
    EXPECT_EQ(st.at("merge-cpt"), "runs: output model.safetensors is missing");
    EXPECT_EQ(st.at("eval-cpt"), "runs: merge-cpt runs again");
    EXPECT_EQ(st.at("cpt"), "done");

    finish_all(c);
    fs::remove_all(run / "cpt" / "adapter");
    EXPECT_EQ(status(c).at("cpt"), "runs: output adapter/adapter_model.safetensors is missing");

    finish_all(c);
    write(run / "build-prefs" / "pairs.jsonl", "{}\n{}\n");
    st = status(c);
    EXPECT_EQ(st.at("build-prefs"), "runs: output pairs.jsonl changed (size)");
    EXPECT_EQ(st.at("rpo"), "runs: build-prefs runs again");
    // Same size, other bytes, a later mtime: the content decides.
    finish_all(c);
    write(run / "build-prefs" / "pairs.jsonl", "[]\n");
    shift_mtime(run / "build-prefs" / "pairs.jsonl", 5);
    EXPECT_EQ(status(c).at("build-prefs"), "runs: output pairs.jsonl changed");
}

// A touched output (a copy without -p) is read once, found the same, and its new mtime recorded.
TEST_F(Rebuild, ATouchedOutputStaysDoneAndIsNotReadAgain) {
    const auto c = config();
    finish_all(c);
    const fs::path weights = run / "merge-cpt" / "model.safetensors";
    shift_mtime(weights, 100);
    EXPECT_EQ(status(c).at("merge-cpt"), "done");
    EXPECT_EQ(pipeline::read_done(run / "merge-cpt")["outputs"]["model.safetensors"]["mtime_ns"].get<int64_t>(),
              pipeline::unix_mtime_ns(weights));
}

// Only the location changed: every stage stays done.
TEST_F(Rebuild, AMovedRunFolderStaysValid) {
    finish_all(config());
    const fs::path moved = root / "elsewhere";
    fs::rename(run, moved);
    for (const auto& [name, st] : status(config({}, moved))) {
        if (name == "report") continue;
        EXPECT_EQ(st, "done") << name;
    }
}

TEST_F(Rebuild, AChangedInputRebuildsWhatReadsIt) {
    finish_all(config());
    write(root / "corpus.jsonl", "{\"text\": \"b\"}\n");  // same size, other text
    auto st = status(config());
    EXPECT_NE(st.at("cpt").find("runs: input cpt.data.sources[0].path"), std::string::npos) << st.at("cpt");
    EXPECT_EQ(st.at("eval-base"), "done");
    EXPECT_EQ(st.at("merge-cpt"), "runs: cpt runs again");
    // A new exam year changes the evaluations (and the guards that read the folder).
    finish_all(config());
    write(root / "exams" / "data" / "2022" / "116-B.jsonl", "{}\n");
    st = status(config());
    EXPECT_NE(st.at("eval-base").find("runs: input eval.data_dir"), std::string::npos) << st.at("eval-base");
    // An input that is gone leaves the results made from it (warned): there is nothing to rebuild from.
    finish_all(config());
    fs::remove(root / "past.jsonl");
    EXPECT_EQ(status(config()).at("build-prefs"), "done");
}

TEST_F(Rebuild, AnInterruptedStageContinuesUnlessItsInputsChanged) {
    const auto c = config();
    finish_all(c);
    const auto stages = pipeline::plan_stages(c);
    fs::remove(run / "cpt" / "done");
    pipeline::write_started(stages[1], pipeline::stage_identity(c, stages, stages[1]));
    EXPECT_EQ(status(c).at("cpt"), "runs: interrupted; continues");
    const auto changed = status(config({"cpt.training.max_steps=3"}));
    EXPECT_NE(changed.at("cpt").find("interrupted under other inputs"), std::string::npos) << changed.at("cpt");
    EXPECT_NE(changed.at("cpt").find("starts over"), std::string::npos);
    fs::remove(run / "cpt" / "started.json");
    EXPECT_EQ(status(c).at("cpt"), "runs: not done");
}

TEST_F(Rebuild, OnlyNeedsWhatItReadsDoneAndUpToDate) {
    const auto c = config();
    // Nothing ran: --only report (and any stage that reads another) is refused, naming what must run first.
    try {
        pipeline::stage_status(c, pipeline::plan_stages(c), "", "report", false);
        FAIL() << "--only report on an empty run folder was accepted";
    } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("--only report: eval-base must run first (not done)"), std::string::npos)
            << e.what();
    }
    EXPECT_NO_THROW(pipeline::stage_status(c, pipeline::plan_stages(c), "", "eval-base", false));
    finish_all(c);
    auto st = status(c, "", "report");
    EXPECT_EQ(st.at("report"), "runs: --only report");
    EXPECT_EQ(st.at("cpt"), "done");
    // --from reruns the stage and everything after it, whatever their state.
    st = status(c, "rpo");
    EXPECT_EQ(st.at("build-prefs"), "done");
    EXPECT_EQ(st.at("rpo"), "runs: --from rpo");
    EXPECT_EQ(st.at("eval-cpt-rpo"), "runs: --from rpo");
}

TEST_F(Rebuild, ADoneMarkerOfAnOlderMedllmStartsOver) {
    const auto c = config();
    finish_all(c);
    write(run / "cpt" / "done", "{\"stage\": \"cpt\", \"config_hash\": \"0\", \"seconds\": 1}\n");
    const auto stages = pipeline::plan_stages(c);
    const auto st     = pipeline::stage_status(c, stages, "", "", false);
    EXPECT_TRUE(st[1].run);
    EXPECT_TRUE(st[1].start_over);
}

TEST(Fingerprint, InputsAreIdentifiedWithoutReadingLargeFiles) {
    const fs::path dir = fs::temp_directory_path() / ("medllm-fp-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    write(dir / "small.json", "{\"a\": 1}");
    const std::string big(2 << 20, 'x');
    write(dir / "big.bin", big);
    const auto id = pipeline::input_identity(dir);
    EXPECT_EQ(pipeline::input_identity(dir), id);
    EXPECT_EQ(pipeline::input_identity(dir / "nothing"), "");
    // A small file is known by its content: touching it changes nothing, editing it does.
    shift_mtime(dir / "small.json", 30);
    EXPECT_EQ(pipeline::input_identity(dir), id);
    write(dir / "small.json", "{\"a\": 2}");
    const auto edited = pipeline::input_identity(dir);
    EXPECT_NE(edited, id);
    // A large one by size and mtime.
    shift_mtime(dir / "big.bin", 30);
    EXPECT_NE(pipeline::input_identity(dir), edited);
    // Globs (corpus sources) are identified by what they match.
    const auto matched = pipeline::input_identity(dir / "*.json");
    EXPECT_NE(matched, "");
    write(dir / "small.json", "{\"a\": 3}");
    EXPECT_NE(pipeline::input_identity(dir / "*.json"), matched);
    EXPECT_EQ(pipeline::input_identity(dir / "*.none"), "");
    fs::remove_all(dir);
}

// Every config mistake is caught before work starts, with one line naming the file and the key as the user wrote
// it: unknown keys and sections (also from --set), keys written twice, the two NLL weights of rpo given at once,
// and in a pipeline every stage's config and every input path, before the first stage runs.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>

#include <gtest/gtest.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/pipeline/pipeline.h"
#include "medllm/train/preference_loss.h"
#include "pipeline_test_util.h"
#include "support/run_medllm.h"

namespace fs = std::filesystem;
using namespace medllm;

namespace {

fs::path scratch(const std::string& name) {
    return fs::temp_directory_path() / ("medllm-mistakes-" + name + "-" + std::to_string(::getpid()));
}

}  // namespace

using pipeline_test::medllm_in_root;
using pipeline_test::usage_error;

// A misspelt section or --set key used to be a warning, and the run trained with the defaults (exit 0).
TEST(ConfigMistakes, AMisspeltKeyStopsTheCommand) {
    const fs::path out = scratch("cpt");
    const auto run     = medllm_in_root("cpt --config configs/tiny/cpt.yaml --set output=" + out.string() +
                                        " --set training.max_steps=1 --set trainng.max_steps=3");
    EXPECT_EQ(run.exit_code, 2) << run.output;
    EXPECT_NE(run.output.find("unknown key 'trainng.max_steps' in --set; did you mean 'training.max_steps'?"),
              std::string::npos)
        << run.output;
    EXPECT_FALSE(fs::exists(out / "adapter"));

    const fs::path file = scratch("trainig.yaml");
    std::ofstream(file) << read_text_file(fs::path(MEDLLM_SOURCE_DIR) / "configs/tiny/cpt.yaml")
                        << "trainig:\n  max_steps: 1\n";
    const auto section = medllm_in_root("cpt --config " + file.string() + " --set output=" + out.string());
    EXPECT_EQ(section.exit_code, 2) << section.output;
    EXPECT_NE(section.output.find("unknown key 'trainig.max_steps'"), std::string::npos) << section.output;
    fs::remove_all(out);
    fs::remove(file);
}

// prepare-corpus reads cpt.yaml: it accepts exactly cpt's keys, so a slip in any section stops it too.
TEST(ConfigMistakes, PrepareCorpusAcceptsExactlyCptsKeys) {
    const fs::path out     = scratch("prepare");
    const fs::path file    = scratch("prepare.yaml");
    const std::string tiny = read_text_file(fs::path(MEDLLM_SOURCE_DIR) / "configs/tiny/cpt.yaml");
    std::ofstream(file) << tiny << "lora_typo:\n  r: 4\n";
    const auto typo = medllm_in_root("prepare-corpus --config " + file.string() + " --set output=" + out.string());
    EXPECT_EQ(typo.exit_code, 2) << typo.output;
    EXPECT_NE(typo.output.find("unknown key 'lora_typo.r'"), std::string::npos) << typo.output;
    // cpt's own keys (lora:, optim:, training: of the tiny config) are accepted, and the corpus is prepared.
    const auto ok = medllm_in_root("prepare-corpus --config configs/tiny/cpt.yaml --set output=" + out.string());
    EXPECT_EQ(ok.exit_code, 0) << ok.output;
    fs::remove_all(out);
    fs::remove(file);
}

// A second `lora:` section silently replaced the first (QLoRA back on, the rank back to its default).
TEST(ConfigMistakes, AKeyWrittenTwiceIsRefusedNamingBothLines) {
    const fs::path file = scratch("twice.yaml");
    std::ofstream(file) << "model:\n  path: tests/fixtures/model/qwen2-tiny-tied\nlora:\n  r: 8\n"
                           "  quantize_base: false\ndata:\n  sources: [{path: README.md}]\nlora:\n  alpha: 16\n";
    const auto run = medllm_in_root("cpt --config " + file.string());
    EXPECT_EQ(run.exit_code, 2) << run.output;
    EXPECT_NE(run.output.find("duplicate key 'lora' in " + file.string() + " at lines 3 and 8"), std::string::npos)
        << run.output;
    fs::remove(file);
}

// loss_weights [1, 5] with rpo_alpha 2 trained with alpha 7; either spelling alone is fine.
TEST(ConfigMistakes, TheNllWeightIsGivenOnce) {
    const auto sft_list   = nlohmann::json::array({"sigmoid", "sft"});
    const std::string msg = usage_error([&] { train::parse_loss_spec(sft_list, {1, 5}, 0.1, 0, 2, "pooled", false); });
    EXPECT_NE(msg.find("loss.rpo_alpha"), std::string::npos) << msg;
    EXPECT_NE(msg.find("alpha = 7"), std::string::npos) << msg;
    EXPECT_EQ(usage_error([&] { train::parse_loss_spec(sft_list, {1, 5}, 0.1, 0, 0, "pooled", false); }), "");
    EXPECT_EQ(usage_error([&] { train::parse_loss_spec("sigmoid", nullptr, 0.1, 0, 10, "pooled", false); }), "");
    // The pipeline checks it for every rpo stage, naming where the loss keys came from.
    const auto in_pipeline = medllm_in_root(
        "pipeline --config configs/quickstart/ci.yaml --list --set 'rpo.loss.loss_type=[sigmoid, sft]' "
        "--set 'rpo.loss.loss_weights=[1, 5]' --set rpo.loss.rpo_alpha=2");
    EXPECT_EQ(in_pipeline.exit_code, 2) << in_pipeline.output;
    EXPECT_NE(in_pipeline.output.find("alpha = 7"), std::string::npos) << in_pipeline.output;
    EXPECT_NE(in_pipeline.output.find("rpo.loss.rpo_alpha from --set"), std::string::npos) << in_pipeline.output;
}

// The pipeline checks every stage's config and every input it will read before the first stage runs, naming the
// user's file and key, instead of failing at stage five hours later.
TEST(ConfigMistakes, ThePipelineChecksEverythingBeforeTheFirstStage) {
    const fs::path run = scratch("pipe");
    fs::remove_all(run);
    const std::string base = "pipeline --config configs/quickstart/ci.yaml --set run_dir=" + run.string() + " ";
    struct Case {
        std::string set, want;
    };
    const std::vector<Case> cases = {
        {"--set cpt.lora.rnak=3", "unknown key 'cpt.lora.rnak' in --set; did you mean 'cpt.lora.r'?"},
        {"--set 'cpt.data.sources=[{path: /nonexistent/corpus.jsonl}]'",
         "stage cpt: cpt.data.sources[0].path (from --set): no such file or folder '/nonexistent/corpus.jsonl'"},
        {"--set build_prefs.few_shot.file=/nonexistent/shots.jsonl",
         "stage build-prefs: build_prefs.few_shot.file (from --set): no such file or folder"},
        {"--set 'build_prefs.questions=[/nonexistent/past/]'", "stage build-prefs: build_prefs.questions[0]"},
        {"--set build_prefs.guard.igakuqa_dir=configs", "not an IgakuQA data folder (no data/ in it)"},
        {"--set report.pass_lines=/nonexistent/pass.json", "stage report: report.pass_lines"},
        {"--set rpo.data.path=mine.jsonl", "'rpo.data.path' (from --set) is set by the pipeline"},
        // build-prefs' and eval's sections go through the schemas of `medllm build-prefs` and `eval igakuqa`.
        {"--set build_prefs.sampling.nn=3",
         "unknown key 'build_prefs.sampling.nn' in --set; did you mean 'build_prefs.sampling.n'?"},
        {"--set eval.yeras=2022", "unknown key 'eval.yeras' in --set; did you mean 'eval.years'?"},
        {"--set eval.mode=all", "eval.mode"},
        {"--set build_prefs.sampling.n=0", "build_prefs.sampling.n"},
        {"--set eval.years=2030", "2030 is outside the IgakuQA data (2018-2022) (eval.years from --set)"},
        {"--set build_prefs.guard.years=2017", "guard.years '2017'"},
        {"--set 'build_prefs.pairs.types=[gt_chosen, best_worst]'", "best_worst"},
        // The years a stage reads from an exam folder are there (the quickstart's folder holds 2021-2022).
        {"--set build_prefs.guard.years=2018-2022",
         "stage build-prefs: guard.igakuqa_dir (set by the pipeline: eval.data_dir): no data/2018 for the years of "
         "build_prefs.guard.years (from --set) in 'configs/quickstart/igakuqa'"},
    };
    for (const auto& c : cases) {
        const auto out = medllm_in_root(base + c.set);
        EXPECT_EQ(out.exit_code, 2) << c.set << "\n" << out.output;
        EXPECT_NE(out.output.find(c.want), std::string::npos) << c.set << "\n" << out.output;
        EXPECT_FALSE(fs::exists(run / "eval-base")) << c.set << ": a stage ran before the mistake was named";
    }
    fs::remove_all(run);
}

// A slip in any stage section, in the pipeline file or in the stage config it names, is one line naming that file
// and the key as written, before anything runs.
TEST(ConfigMistakes, EveryStageSectionIsCheckedByItsCommandsSchema) {
    const fs::path dir = scratch("sections");
    fs::create_directories(dir);
    const std::string ci = read_text_file(fs::path(MEDLLM_SOURCE_DIR) / "configs/quickstart/ci.yaml");
    auto with            = [&](const std::string& from, const std::string& to) {
        std::string text = ci;
        const size_t at  = text.find(from);
        EXPECT_NE(at, std::string::npos) << from;
        return text.replace(at, from.size(), to);
    };
    struct Case {
        std::string text, want;
    };
    const fs::path file           = dir / "pipeline.yaml";
    const std::vector<Case> cases = {
        {with("  few_shot:\n    k: 0", "  few_shot:\n    kk: 0"),
         "unknown key 'build_prefs.few_shot.kk' in " + file.string() + "; did you mean 'build_prefs.few_shot.k'?"},
        {with("  mode: standard", "  mdoe: standard"),
         "unknown key 'eval.mdoe' in " + file.string() + "; did you mean 'eval.mode'?"},
        {with("build_prefs:\n", "build_prefs:\n  config: prefs.yaml\n"),
         "unknown key 'samplng.n' in prefs.yaml; did you mean 'sampling.n'?"},
        {with("eval:\n", "eval:\n  config: eval.yaml\n"), "unknown key 'extraction_mode' in eval.yaml"},
    };
    std::ofstream(dir / "prefs.yaml") << "samplng:\n  n: 2\n";
    std::ofstream(dir / "eval.yaml") << "extraction_mode: lenient\n";
    for (const auto& c : cases) {
        std::ofstream(file) << c.text;
        const auto out =
            medllm_in_root("pipeline --config " + file.string() + " --set run_dir=" + (dir / "run").string());
        EXPECT_EQ(out.exit_code, 2) << out.output;
        EXPECT_NE(out.output.find(c.want), std::string::npos) << c.want << "\n" << out.output;
        EXPECT_EQ(std::count(out.output.begin(), out.output.end(), '\n'), 1) << "one line:\n" << out.output;
        EXPECT_FALSE(fs::exists(dir / "run")) << c.want;
    }
    fs::remove_all(dir);
}

// `--only report` on a folder where nothing ran wrote an empty report and exited 0.
TEST(ConfigMistakes, AReportOfNothingIsRefused) {
    const fs::path run = scratch("empty");
    fs::remove_all(run);
    const auto out =
        medllm_in_root("pipeline --config configs/quickstart/ci.yaml --only report --set run_dir=" + run.string());
    EXPECT_EQ(out.exit_code, 2) << out.output;
    EXPECT_NE(out.output.find("--only report"), std::string::npos) << out.output;
    EXPECT_FALSE(fs::exists(run / "report" / "report.json"));
    fs::remove_all(run);
}

// `medllm rpo` through the binary: the shipped configs parse, the tiny config trains and a rerun resumes, --help
// documents the keys, bad input is one line with exit 2.
#include <algorithm>
#include <fstream>

#include <gtest/gtest.h>

#include "medllm/core/config.h"
#include "medllm/core/files.h"
#include "medllm/train/rpo.h"
#include "support/run_medllm.h"
#include "train_test_util.h"

namespace fs = std::filesystem;

namespace {

fs::path repo() {
    return test::fixtures().parent_path().parent_path();
}

int count_lines(const std::string& s) {
    return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

}  // namespace

class RpoCli : public test::TrainTempDir {};

TEST_F(RpoCli, ShippedConfigsParse) {
    medllm::ConfigSchema<medllm::train::RpoConfig> s;
    medllm::train::add_rpo_fields(s);
    for (const char* c : {"configs/qwen2.5-72b/rpo_qlora.yaml", "configs/qwen2.5-72b/dpo_qlora.yaml",
                          "configs/qwen2.5-7b/rpo_qlora.yaml", "configs/tiny/rpo.yaml"}) {
        const auto cfg = s.load(medllm::ConfigSource{(repo() / c).string(), {"model.path=m", "data.path=p"}});
        EXPECT_GT(cfg.training.epochs, 0) << c;
    }
    const auto rpo = s.load(medllm::ConfigSource{(repo() / "configs/qwen2.5-72b/rpo_qlora.yaml").string(), {}});
    EXPECT_EQ(rpo.rpo_alpha, 10.0);  // the paper
    EXPECT_EQ(rpo.training.epochs, 1.0);
    EXPECT_TRUE(rpo.merge_init_adapter);
    const auto dpo = s.load(medllm::ConfigSource{(repo() / "configs/qwen2.5-72b/dpo_qlora.yaml").string(), {}});
    EXPECT_EQ(dpo.rpo_alpha, 0.0);
}

TEST_F(RpoCli, TinyConfigTrainsResumesAndRefusesBadInput) {
    const std::string cfg  = (repo() / "configs/tiny/rpo.yaml").string();
    const std::string base = "rpo --config " + cfg + " --set output=" + (dir / "out").string() +
                             " --set model.path=" + (repo() / "tests/fixtures/model/qwen2-tiny-tied").string() +
                             " --set model.tokenizer=" + (repo() / "tests/fixtures/train/byte-tokenizer").string() +
                             " --set data.path=" + (repo() / "tests/fixtures/train/rpo/pairs.jsonl").string() +
                             " --set training.epochs=2";
    auto r = run_medllm(base, false);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto summary = nlohmann::json::parse(r.output);
    EXPECT_EQ(summary["steps"], 6);  // 6 pairs / batch 2 x 2 epochs
    EXPECT_EQ(summary["data"]["pairs"], 6);
    for (const char* f : {"adapter/adapter_model.safetensors", "checkpoint-6/COMPLETE", "metrics.jsonl", "summary.json",
                          "config.resolved.yaml", "medllm.log"})
        EXPECT_TRUE(fs::exists(dir / "out" / f)) << f;
    EXPECT_TRUE(fs::exists(dir / "out" / "ref_cache"));  // the tiny config precomputes the reference

    r = run_medllm(base);  // nothing left: resumes at the last step
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;

    // A malformed pairs file: exit 2, the error one line naming file:line (after the resolved-config table that
    // every run logs first).
    const auto bad = dir / "bad.jsonl";
    std::ofstream(bad) << "{\"prompt\": \"Q\", \"chosen\": \" a\", \"rejected\": \" b\"}\n{\"prompt\": \"Q\"}\n";
    r = run_medllm(base + " --resume never --overwrite --set data.path=" + bad.string());
    EXPECT_EQ(r.exit_code, 2) << r.output;
    const auto last = r.output.substr(r.output.rfind('\n', r.output.size() - 2) + 1);
    EXPECT_EQ(last.rfind("error: ", 0), 0u) << r.output;
    EXPECT_NE(last.find("bad.jsonl:2: missing field 'chosen'"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("error: "), r.output.rfind("error: ")) << r.output;  // one error line

    // A folder given as the pairs file is named as such.
    r = run_medllm(base + " --resume never --overwrite --set data.path=" + dir.string());
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("is a folder"), std::string::npos) << r.output;

    // A bad loss key is found before the run starts: one line in all.
    r = run_medllm(base + " --resume never --set loss.loss_type=kto");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_EQ(count_lines(r.output), 1) << r.output;

    r = run_medllm("rpo --help");
    EXPECT_EQ(r.exit_code, 0);
    for (const char* key : {"loss.rpo_alpha", "loss.loss_type", "loss.nll_normalization", "reference.precompute",
                            "lora.merge_init_adapter", "data.truncation_mode", "eval_guard.action"})
        EXPECT_NE(r.output.find(key), std::string::npos) << key;
}

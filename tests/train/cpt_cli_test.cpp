// `medllm cpt` through the binary: a tiny run end to end, a rerun that resumes, bad input as one line.
#include <algorithm>

#include <gtest/gtest.h>

#include "medllm/core/files.h"
#include "support/run_medllm.h"
#include "support/shared_data.h"
#include "train_test_util.h"

namespace fs = std::filesystem;

class CptCli : public test::TrainTempDir {
protected:
    std::string command(const std::vector<std::string>& overrides) {
        std::string c = "cpt";
        for (const auto& o : overrides) c += " --set '" + o + "'";
        return c;
    }
};

TEST_F(CptCli, TrainsResumesAndRefusesBadInputWithOneLine) {
    auto ov = tiny_overrides(write_corpus(), dir / "out");
    ov.push_back("training.max_steps=2");
    ov.push_back("training.save_steps=1");
    auto first = ov;
    first.push_back("training.merge=true");  // not a math key: the reruns below resume this run
    auto r = run_medllm(command(first), false);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto summary = nlohmann::json::parse(r.output);
    EXPECT_EQ(summary["steps"], 2);
    for (const char* f :
         {"adapter/adapter_model.safetensors", "checkpoint-2/COMPLETE", "checkpoint-1/COMPLETE", "metrics.jsonl",
          "summary.json", "config.resolved.yaml", "medllm.log", "merged/config.json", "merged/model.safetensors"})
        EXPECT_TRUE(fs::exists(dir / "out" / f)) << f;

    // The rerun finds checkpoint-2, the last step: nothing left to train.
    r = run_medllm(command(ov));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;

    // Another learning rate in the same folder: refused, naming the key.
    auto changed = ov;
    changed.push_back("optim.lr=0.5");
    r = run_medllm(command(changed));
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("optim.lr"), std::string::npos) << r.output;

    auto too_long = ov;
    too_long.push_back("data.seq_len=1024");
    r = run_medllm(command(too_long) + " --resume never --overwrite", false);
    EXPECT_EQ(r.exit_code, 2) << r.output;

    // The shared Qwen2.5 tokenizer's ids exceed the tiny model's 512-entry vocabulary.
    auto wrong_tokenizer = ov;
    wrong_tokenizer.push_back("model.tokenizer=" + shared_path("qwen_tokenizer").string());
    wrong_tokenizer.push_back("data.cache_dir=" + (dir / "qwen_cache").string());
    r = run_medllm(command(wrong_tokenizer) + " --resume never --overwrite");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("does not belong to model.path"), std::string::npos) << r.output;
    // A model or adapter folder that is not there: exit 2 naming the key, before anything loads.
    for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
             {"model.path", (dir / "no-model").string()},
             {"lora.init_adapter", (dir / "no-adapter").string()},
             {"lora.init_adapter", dir.string()}}) {  // a folder without adapter_config.json
        auto missing = ov;
        missing.push_back(key + "=" + value);
        r = run_medllm(command(missing) + " --resume never --overwrite");
        EXPECT_EQ(r.exit_code, 2) << key << "\n" << r.output;
        EXPECT_NE(r.output.find("error: " + key), std::string::npos) << r.output;
    }
    // The error is in the run's log too (a log read after a failure says why the run stopped).
    const std::string log = read_bytes(dir / "out" / "medllm.log");
    EXPECT_NE(log.find("fatal: "), std::string::npos) << log;
    EXPECT_NE(log.rfind("does not belong to model.path"), std::string::npos);

    r = run_medllm("cpt");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("--config"), std::string::npos) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
}

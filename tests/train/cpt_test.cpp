// The cpt recipe end to end on the tiny fixture model (fp32 LoRA, CPU): it trains, resumes exactly, refuses a
// resume of another run, and its checkpoints are complete and retained.
#include <cmath>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/io/safetensors.h"
#include "medllm/train/checkpoint.h"
#include "medllm/train/cpt.h"
#include "train_test_util.h"

using namespace medllm;
namespace fs = std::filesystem;

class CptRecipe : public test::TrainTempDir {
protected:
    struct Run {
        train::TrainResult result;
        std::vector<nlohmann::json> steps;
    };
    Run run(const std::vector<std::string>& overrides, int64_t stop_at = 0, const std::string& resume = "auto") {
        train::TrainOptions o;
        const auto cfg = load(overrides, &o.resolved);
        o.resume       = resume;
        o.overwrite    = resume == "never";  // a fresh run in a used folder replaces the earlier run
        Run r;
        o.on_step = [&](int64_t step, const nlohmann::json& rec) {
            r.steps.push_back(rec);
            if (step == stop_at) train::request_stop();
        };
        r.result = train::run_cpt(cfg, o);
        return r;
    }
};

TEST_F(CptRecipe, ResumedRunIsBitIdenticalToAStraightRun) {
    const auto corpus = write_corpus();
    const auto a      = run(tiny_overrides(corpus, dir / "straight"));
    ASSERT_EQ(a.steps.size(), 6u);
    ASSERT_FALSE(a.result.interrupted);

    const auto first = run(tiny_overrides(corpus, dir / "resumed"), 2);  // stops after step 2 (as on SIGTERM)
    ASSERT_TRUE(first.result.interrupted);
    EXPECT_EQ(first.result.steps, 2);
    EXPECT_TRUE(train::is_complete_checkpoint(dir / "resumed" / "checkpoint-2"));
    for (size_t i = 0; i < 2; ++i) EXPECT_EQ(first.steps[i]["loss"], a.steps[i]["loss"]) << "step " << i + 1;
    at::manual_seed(987654321);  // a different RNG position: the resume must restore the dropout stream itself
    const auto second = run(tiny_overrides(corpus, dir / "resumed"));
    ASSERT_EQ(second.steps.size(), 4u);
    for (size_t i = 0; i < 4; ++i) {
        // Bit-identical: the same floating-point operations on the same inputs (dropout 0.1 is on).
        EXPECT_EQ(second.steps[i]["loss"].get<double>(), a.steps[i + 2]["loss"].get<double>()) << "step " << i + 3;
        EXPECT_EQ(second.steps[i]["grad_norm"].get<double>(), a.steps[i + 2]["grad_norm"].get<double>());
        EXPECT_EQ(second.steps[i]["micro_losses"], a.steps[i + 2]["micro_losses"]);
    }
    const auto adapter = [](const fs::path& out) { return read_bytes(out / "adapter" / "adapter_model.safetensors"); };
    EXPECT_TRUE(adapter(dir / "straight") == adapter(dir / "resumed")) << "final adapter bytes differ";
    EXPECT_FALSE(adapter(dir / "straight").empty());
}

TEST_F(CptRecipe, TrainsToALowerValidationLossAndWritesItsFiles) {
    auto ov = tiny_overrides(write_corpus(), dir / "out");
    ov.push_back("training.max_steps=12");
    ov.push_back("optim.lr=0.02");
    ov.push_back("training.save_total_limit=2");
    const auto r = run(ov);
    ASSERT_TRUE(r.result.summary.contains("first_eval_loss"));
    EXPECT_LT(r.result.summary["final_eval_loss"].get<double>(), r.result.summary["first_eval_loss"].get<double>());
    // Checkpoints at 3, 6, 9, 12; retention keeps the newest two, all complete.
    const auto kept = train::list_checkpoints(dir / "out");
    ASSERT_EQ(kept.size(), 2u);
    EXPECT_EQ(kept[0].filename(), "checkpoint-9");
    EXPECT_EQ(kept[1].filename(), "checkpoint-12");
    EXPECT_FALSE(fs::exists(dir / "out" / "checkpoint-3"));
    for (const char* f : {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "optimizer.safetensors",
                          "rng_state.safetensors", "trainer_state.json", "COMPLETE"})
        EXPECT_TRUE(fs::exists(kept[1] / f)) << f;
    JsonlRecordFile metrics(dir / "out" / "metrics.jsonl", nullptr);
    int train_records = 0;
    for (const auto& m : metrics.existing())
        if (m.contains("loss")) {
            ++train_records;
            for (const char* k : {"step", "epoch", "lr", "grad_norm", "tokens_per_second", "tokens_seen"})
                EXPECT_TRUE(m.contains(k)) << k;
            // A measured peak (CPU: the process's max RSS, at least the loaded LibTorch), never a placeholder 0;
            // no MFU on CPU (no known peak), rather than a made-up figure.
            EXPECT_GT(m.value("peak_memory_gb", 0.0), 0.05);
            EXPECT_EQ(m.value("peak_memory_kind", ""), "cpu_max_rss");
            EXPECT_FALSE(m.contains("mfu"));
        }
    EXPECT_EQ(train_records, 12);
    bool tb = false;
    for (const auto& e : fs::directory_iterator(dir / "out"))
        tb = tb || e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
    EXPECT_TRUE(tb);
    EXPECT_TRUE(fs::exists(dir / "out" / "summary.json"));
}

TEST_F(CptRecipe, RefusesToResumeACheckpointOfAnotherRun) {
    const auto corpus = write_corpus();
    auto ov           = tiny_overrides(corpus, dir / "out");
    run(ov, 1);
    ov.push_back("optim.lr=0.5");
    try {
        run(ov);
        FAIL() << "a resume with another learning rate must be refused";
    } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("optim.lr"), std::string::npos) << e.what();
    }
    // --resume never starts over in the same folder.
    const auto fresh = run(ov, 0, "never");
    EXPECT_EQ(fresh.steps.size(), 6u);
}

TEST_F(CptRecipe, RefusesASequenceLongerThanTheModelContext) {
    auto ov = tiny_overrides(write_corpus(), dir / "out");
    ov.push_back("data.seq_len=512");  // the fixture model has 256 positions
    EXPECT_THROW(run(ov), UsageError);
}

TEST(CptConfig, ShippedConfigsParseWithThePapersSettings) {
    ConfigSchema<train::CptConfig> s;
    train::add_cpt_fields(s);
    const std::string root = MEDLLM_SOURCE_DIR;
    const auto big         = s.load({root + "/configs/qwen2.5-72b/cpt.yaml", {}});
    EXPECT_TRUE(big.lora.quantize_base);  // the paper: QLoRA, 2 epochs, cosine with warmup
    EXPECT_EQ(big.training.epochs, 2);
    EXPECT_EQ(big.schedule.name, "cosine");
    EXPECT_GT(big.schedule.warmup_ratio, 0);
    const auto seven = s.load({root + "/configs/qwen2.5-7b/cpt.yaml", {}});  // one GPU, same recipe
    EXPECT_TRUE(seven.lora.quantize_base);
    EXPECT_EQ(seven.training.epochs, 2);
    EXPECT_EQ(seven.schedule.name, "cosine");
    EXPECT_EQ(seven.training.batch_size * seven.training.grad_accum,
              16);  // the 72B config's 16 rows per step, on one GPU
    const auto tiny = s.load({root + "/configs/tiny/cpt.yaml", {}});
    EXPECT_EQ(tiny.training.device, "cpu");
    EXPECT_THROW(s.load({root + "/configs/tiny/cpt.yaml", {"lora.rnak=4"}}), UsageError);  // strict sections
}

TEST_F(CptRecipe, QloraDefaultPathTrainsAndResumesExactly) {
    // QLoRA (NF4 base, the default) on the tiny model: the fixture's 64-wide projections are one NF4 block a row.
    auto ov = tiny_overrides(write_corpus(), dir / "straight");
    ov.push_back("lora.quantize_base=true");
    ov.push_back("training.max_steps=4");
    ov.push_back("training.save_steps=2");
    const auto a = run(ov);
    ASSERT_EQ(a.steps.size(), 4u);
    EXPECT_TRUE(std::isfinite(a.steps.back()["loss"].get<double>()));
    auto ov2 = ov;
    for (auto& o : ov2)
        if (o.rfind("output=", 0) == 0) o = "output=" + (dir / "resumed").string();
    run(ov2, 1);
    const auto b = run(ov2);
    ASSERT_EQ(b.steps.size(), 3u);
    EXPECT_EQ(b.steps.back()["loss"], a.steps.back()["loss"]);
    EXPECT_TRUE(read_bytes(dir / "straight" / "adapter" / "adapter_model.safetensors") ==
                read_bytes(dir / "resumed" / "adapter" / "adapter_model.safetensors"));
}

TEST_F(CptRecipe, NonFiniteLossStopsNamingTheStepOrIsSkippedWhenAsked) {
    // An initial adapter whose down_proj pair is 1e20 everywhere overflows fp32 (1e40) in the first forward.
    const auto src = test::fixtures() / "train" / "parity" / "init_adapter";
    const auto bad = dir / "nan_adapter";
    fs::create_directories(bad);
    fs::copy_file(src / "adapter_config.json", bad / "adapter_config.json");
    {
        io::SafetensorsFile f(src / "adapter_model.safetensors");
        std::vector<std::pair<std::string, at::Tensor>> tensors;
        for (const auto& n : f.names()) tensors.emplace_back(n, f.tensor(n).clone());
        for (auto& [name, t] : tensors)
            if (name.find("layers.0.mlp.down_proj") != std::string::npos) t.fill_(1e20);
        io::save_file(bad / "adapter_model.safetensors", tensors);
    }
    auto ov = tiny_overrides(write_corpus(), dir / "out");
    ov.push_back("lora.init_adapter=" + bad.string());
    ov.push_back("training.eval_on_start=false");
    try {
        run(ov);
        FAIL() << "a NaN loss must stop the run";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("step 1:"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("not finite"), std::string::npos) << e.what();
    }
    ov.push_back("training.skip_nonfinite=true");
    const auto skipped = run(ov, 0, "never");
    EXPECT_EQ(skipped.steps.size(), 6u);  // every update skipped, the run still ends with its checkpoint
    EXPECT_TRUE(train::is_complete_checkpoint(dir / "out" / "checkpoint-6"));
}

TEST_F(CptRecipe, ADamagedCheckpointIsPassedOverAndTheRunStillEndsBitIdentical) {
    // Checkpoints every step; the run stops after step 4; one changed byte in checkpoint-4's optimizer state (and a
    // hand-edited step in checkpoint-3's trainer_state.json) must not be loaded: the resume falls back to
    // checkpoint-2, and the finished run equals a straight one.
    const auto corpus = write_corpus();
    auto ov           = tiny_overrides(corpus, dir / "straight");
    ov.push_back("training.save_steps=1");
    ov.push_back("training.save_total_limit=0");
    const auto a = run(ov);
    ov           = tiny_overrides(corpus, dir / "damaged");
    ov.push_back("training.save_steps=1");
    ov.push_back("training.save_total_limit=0");
    ASSERT_TRUE(run(ov, 4).result.interrupted);
    {
        const fs::path opt = dir / "damaged" / "checkpoint-4" / "optimizer.safetensors";
        std::string bytes  = read_bytes(opt);
        bytes[bytes.size() - 3] ^= 0x10;
        medllm::write_file_atomic(opt, bytes);
        const fs::path state = dir / "damaged" / "checkpoint-3" / "trainer_state.json";
        auto j               = medllm::read_json_file(state);
        j["step"]            = 4;
        medllm::write_file_atomic(state, medllm::dump_json(j, 2) + "\n");
    }
    const auto b = run(ov);
    ASSERT_EQ(b.steps.size(), 4u);  // steps 3..6 again, from checkpoint-2
    for (size_t i = 0; i < 4; ++i)
        EXPECT_EQ(b.steps[i]["loss"].get<double>(), a.steps[i + 2]["loss"].get<double>()) << "step " << i + 3;
    const auto adapter = [](const fs::path& out) { return read_bytes(out / "adapter" / "adapter_model.safetensors"); };
    EXPECT_TRUE(adapter(dir / "straight") == adapter(dir / "damaged")) << "final adapter bytes differ";

    // An explicit --resume of a damaged checkpoint is refused, naming the file.
    ASSERT_TRUE(run(tiny_overrides(corpus, dir / "other"), 2).result.interrupted);
    medllm::write_file_atomic(dir / "other" / "checkpoint-2" / "adapter" / "adapter_config.json", "{}\n");
    try {
        run(tiny_overrides(corpus, dir / "other"), 0, (dir / "other" / "checkpoint-2").string());
        FAIL() << "a damaged checkpoint must not be resumed";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("adapter/adapter_config.json"), std::string::npos) << e.what();
    }
}

TEST_F(CptRecipe, AFreshRunRefusesAFolderHoldingAnEarlierRunUnlessToldToReplaceIt) {
    const auto corpus = write_corpus();
    const auto ov     = tiny_overrides(corpus, dir / "out");
    ASSERT_TRUE(run(ov, 2).result.interrupted);  // checkpoint-2 (the run saves every 3 steps, and when stopped)
    train::TrainOptions o;
    ConfigSchema<train::CptConfig> s;
    train::add_cpt_fields(s);
    const auto cfg = s.load({"", ov}, &o.resolved);
    o.resume       = "never";  // without overwrite
    try {
        train::run_cpt(cfg, o);
        FAIL() << "a fresh run must not mix its checkpoints with the earlier run's";
    } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(train::is_complete_checkpoint(dir / "out" / "checkpoint-2"));  // untouched
    const auto fresh = run(ov, 0, "never");                                    // with overwrite
    EXPECT_EQ(fresh.steps.size(), 6u);
    EXPECT_FALSE(fs::exists(dir / "out" / "checkpoint-2"));  // the earlier run's checkpoint went
    EXPECT_TRUE(train::is_complete_checkpoint(dir / "out" / "checkpoint-6"));
}

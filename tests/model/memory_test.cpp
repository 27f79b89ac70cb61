// Parameter counts and memory estimates, checked against figures computed independently: the reference doc's
// parameter counts and tensor totals (qwen2.md §2, §3.6), the 0.5B checkpoint size, PEFT's trainable-parameter
// count for r=64 all-linear LoRA on a 7B-shaped Qwen2, and the per-token KV-cache size. Also `medllm info`.
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "medllm/core/error.h"
#include "medllm/model/config.h"
#include "medllm/model/memory.h"
#include "support/run_medllm.h"

namespace fs = std::filesystem;
using namespace medllm::model;

namespace {

const fs::path kRepo = fs::path(MEDLLM_FIXTURES_DIR).parent_path().parent_path();

Qwen2Config published(const std::string& size) {
    return Qwen2Config::from_file(kRepo / "configs" / "models" / ("qwen2.5-" + size));
}

CliRun run(const std::string& args) {
    return run_medllm(args);
}

}  // namespace

TEST(Memory, ParameterCountsMatchTheReference) {
    struct Row {
        const char* size;
        double total_b, non_embedding_b;
        int64_t tensors;
    };
    const Row rows[] = {{"0.5b", 0.494, 0.358, 290}, {"1.5b", 1.544, 1.310, 338},  {"3b", 3.086, 2.775, 434},
                        {"7b", 7.616, 6.526, 339},   {"14b", 14.770, 13.213, 579}, {"32b", 32.764, 31.207, 771},
                        {"72b", 72.706, 70.215, 963}};
    for (const auto& r : rows) {
        SCOPED_TRACE(r.size);
        const auto p = count_parameters(published(r.size));
        EXPECT_NEAR(p.total() / 1e9, r.total_b, 0.0005);
        EXPECT_NEAR(p.non_embedding() / 1e9, r.non_embedding_b, 0.0005);
        EXPECT_EQ(p.tensors, r.tensors);
        EXPECT_EQ(static_cast<int64_t>(expected_tensors(published(r.size)).size()), r.tensors);
    }
    // Exact: Qwen2.5-0.5B model.safetensors holds 988,065,536 bytes of bf16 tensors = 494,032,768 parameters.
    const auto p05 = count_parameters(published("0.5b"));
    EXPECT_EQ(p05.total(), 494'032'768);
    EXPECT_EQ(estimate_memory(published("0.5b")).bf16_weights, 988'065'536u);
    EXPECT_EQ(p05.lm_head, 0);
    EXPECT_EQ(count_parameters(published("7b")).lm_head, 152064 * 3584);
}

TEST(Memory, Nf4DoubleQuantBytes) {
    // 32768 weights: 16384 packed bytes, 512 absmax codes, 2 fp32 second-level scales, fp32 offset,
    // 16 + 256 fp32 code-book entries.
    EXPECT_EQ(nf4_double_quant_bytes(32768), 16384u + 512 + 8 + 4 + 1088);
    EXPECT_EQ(nf4_double_quant_bytes(1), 1u + 1 + 4 + 4 + 1088);
    // Large weights approach 4 + 8/64 + 32/(64*256) bits per parameter.
    const int64_t n = 8192LL * 29568;
    EXPECT_NEAR(nf4_double_quant_bytes(n) * 8.0 / n, 4.0 + 0.125 + 32.0 / 16384, 1e-4);
}

TEST(Memory, EstimatesFor7BAnd72B) {
    MemoryOptions o;
    o.lora_rank   = 64;
    o.batch       = 1;
    o.seq_len     = 32768;
    const auto m7 = estimate_memory(published("7b"), o);
    // PEFT reports 161,480,704 trainable parameters for r=64 on all seven linears of Qwen2-7B.
    EXPECT_EQ(m7.lora_parameters, 161'480'704);
    EXPECT_EQ(m7.lora_weights, 4u * 161'480'704);
    // KV cache: 2 (k, v) x 28 layers x 4 heads x 128 dims x 2 bytes = 57,344 bytes per token.
    EXPECT_EQ(m7.kv_cache, 57'344u * 32768);

    const auto m72 = estimate_memory(published("72b"));
    const auto p72 = count_parameters(published("72b"));
    EXPECT_EQ(m72.bf16_weights, 2u * p72.total());
    // NF4: the linears shrink ~3.9x; embeddings and lm_head (2 x 1.25B) stay bf16.
    EXPECT_NEAR(static_cast<double>(m72.nf4_linear_bytes) / (2.0 * p72.linear_weights), 4.127 / 16, 0.001);
    EXPECT_EQ(m72.nf4_weights, m72.nf4_linear_bytes + 2u * (p72.embedding + p72.lm_head + p72.other));
    EXPECT_LT(m72.nf4_weights / double(1ull << 30), 45.0);  // fits the paper's 48 GB-class budget for weights
    EXPECT_GT(m72.nf4_weights / double(1ull << 30), 35.0);

    // Checkpointing keeps one bf16 hidden state per layer instead of every intermediate.
    MemoryOptions ck, no_ck;
    ck.seq_len = no_ck.seq_len     = 4096;
    no_ck.activation_checkpointing = false;
    const auto a = estimate_memory(published("72b"), ck), b = estimate_memory(published("72b"), no_ck);
    EXPECT_LT(a.activations * 5, b.activations);
    EXPECT_EQ(a.logits, b.logits);
    MemoryOptions twice = ck;
    twice.batch         = 2;
    const auto c        = estimate_memory(published("72b"), twice);
    EXPECT_GT(c.activations, a.activations);
    EXPECT_LT(c.activations, 2 * a.activations);  // the logits chunk does not grow with the batch
    // QLoRA's dequantization workspace holds the largest projection (gate/up/down: 8192 x 29568) in bf16.
    EXPECT_EQ(a.dequant_workspace, 2u * 8192 * 29568);
    EXPECT_EQ(a.qlora_training_total(),
              a.nf4_weights + a.lora_weights + a.lora_training_state + a.activations + a.dequant_workspace);
    EXPECT_THROW(estimate_memory(published("72b"), MemoryOptions{0, 1, 1, true, 1}), medllm::UsageError);
}

TEST(MedllmInfo, WorksOnEveryPublishedConfigAndOnACheckpoint) {
    for (const char* size : {"0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b"}) {
        SCOPED_TRACE(size);
        const auto r =
            run("info --model " + (kRepo / "configs" / "models" / ("qwen2.5-" + std::string(size))).string() +
                " --batch 2 --seq-len 4096 --lora-r 16");
        EXPECT_EQ(r.exit_code, 0) << r.output;
        EXPECT_NE(r.output.find("LoRA r=16"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("config only"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("QLoRA training total"), std::string::npos) << r.output;
    }
    // --lora-rank is the older spelling of --lora-r (the config key is lora.r); both give the same estimate.
    const auto r_new = run("info --model " + (kRepo / "configs/models/qwen2.5-7b").string() + " --lora-r 8");
    const auto r_old = run("info --model " + (kRepo / "configs/models/qwen2.5-7b").string() + " --lora-rank 8");
    EXPECT_EQ(r_new.exit_code, 0) << r_new.output;
    EXPECT_EQ(r_new.output, r_old.output);
    const auto r05 = run("info --model " + (kRepo / "configs/models/qwen2.5-0.5b").string());
    EXPECT_NE(r05.output.find("494,032,768"), std::string::npos) << r05.output;

    const fs::path ckpt = fs::path(MEDLLM_FIXTURES_DIR) / "io" / "sharded";
    const auto r        = run("info --model " + ckpt.string());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("3 (sharded)"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("matches config           yes"), std::string::npos) << r.output;

    // A config that disagrees with the tensors: exit 1 and say which tensor.
    const fs::path bad = fs::temp_directory_path() / ("medllm_info_mismatch_" + std::to_string(::getpid()));
    fs::remove_all(bad);
    fs::create_directories(bad);
    for (const auto& e : fs::directory_iterator(ckpt)) fs::copy_file(e.path(), bad / e.path().filename());
    auto cfg                 = nlohmann::json::parse(std::ifstream(ckpt / "config.json"));
    cfg["intermediate_size"] = 96;
    std::ofstream(bad / "config.json") << cfg.dump();
    const auto m = run("info --model " + bad.string());
    EXPECT_EQ(m.exit_code, 1) << m.output;
    EXPECT_NE(m.output.find("mlp.down_proj.weight"), std::string::npos) << m.output;
    fs::remove_all(bad);

    const auto usage = run("info --model /nonexistent/dir");
    EXPECT_EQ(usage.exit_code, 2) << usage.output;
    const auto swa = run("info --model " + (kRepo / "configs/models/qwen2.5-7b").string() + " --batch 0");
    EXPECT_EQ(swa.exit_code, 2) << swa.output;
}

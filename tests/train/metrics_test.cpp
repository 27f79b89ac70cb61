// CRC-32C, TFRecord framing and the TensorBoard event encoding; metrics.jsonl on a fresh run and on a resume;
// peak memory, MFU and the log/live lines.
#include <cstring>
#include <fstream>
#include <vector>

#include <gtest/gtest.h>

#include "medllm/core/files.h"
#include "medllm/train/metrics.h"
#include "train_test_util.h"

using namespace medllm::train;

TEST(Crc32c, KnownVectors) {
    // RFC 3720 B.4 check value and test vectors (iSCSI, CRC-32C).
    EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
    const std::string zeros(32, '\0'), ones(32, '\xff');
    EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
    EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
}

TEST(TfRecord, FramesLengthAndDataWithMaskedCrcs) {
    const std::string rec = tfrecord("abc");
    ASSERT_EQ(rec.size(), 8u + 4u + 3u + 4u);
    EXPECT_EQ(rec.substr(0, 8), std::string("\x03\0\0\0\0\0\0\0", 8));
    EXPECT_EQ(rec.substr(12, 3), "abc");
    uint32_t data_crc;
    std::memcpy(&data_crc, rec.data() + 15, 4);
    const uint32_t c = crc32c("abc", 3);
    EXPECT_EQ(data_crc, ((c >> 15) | (c << 17)) + 0xa282ead8u);
}

TEST(TensorBoard, ScalarEventEncodesEventAndSummaryFields) {
    // Event{wall_time=1.5, step=3, summary{value{tag:"a", simple_value:2.0}}} as protobuf wire bytes.
    const std::string e        = tensorboard_scalar_event(1.5, 3, "a", 2.0f);
    const std::string expected = std::string("\x09\0\0\0\0\0\0\xf8\x3f", 9) + "\x10\x03" +  // wall_time, step
                                 "\x2a\x0a" + "\x0a\x08" +                                  // summary, value
                                 "\x0a\x01" + "a" + std::string("\x15\0\0\0\x40", 5);
    EXPECT_EQ(e, expected);
    const std::string v = tensorboard_version_event(0.0);
    EXPECT_NE(v.find("brain.Event:2"), std::string::npos);
}

class MetricsFileTest : public test::TrainTempDir {};

TEST_F(MetricsFileTest, ResumeKeepsRecordsUpToTheCheckpointAndFreshRunEmptiesIt) {
    const auto path = dir / "metrics.jsonl";
    {
        MetricsFile m(path, 0);
        for (int s = 1; s <= 5; ++s) m.append({{"step", s}, {"loss", 1.0 / s}});
        m.close();
    }
    {
        MetricsFile m(path, 3);  // a resume from checkpoint-3: steps 4 and 5 were logged after it
        m.append({{"step", 4}, {"loss", 0.2}});
        m.close();
    }
    std::vector<nlohmann::json> records;  // read without taking the writer's lock the next MetricsFile needs
    std::vector<std::size_t> lines;
    medllm::JsonlRecordFile::read_records(path, records, lines);
    ASSERT_EQ(records.size(), 4u);
    EXPECT_EQ(records[3]["step"], 4);
    EXPECT_EQ(records[3]["loss"], 0.2);
    {
        MetricsFile m(path, 0);
        m.close();
    }
    EXPECT_EQ(read_bytes(path), "");
}

TEST(PeakMemory, CpuIsTheProcessMaxRssAndGrowsWithTouchedMemory) {
    const c10::Device cpu(c10::kCPU);
    const double before = peak_memory_bytes(cpu);
    EXPECT_GT(before, 1e6);
    EXPECT_STREQ(peak_memory_kind(cpu), "cpu_max_rss");
    std::vector<char> block(static_cast<std::size_t>(before) + (256u << 20));  // more than the peak so far
    std::memset(block.data(), 1, block.size());
    const double after = peak_memory_bytes(cpu);
    EXPECT_GE(after, before + 200e6) << "the peak must see 256 MB more resident";
    EXPECT_EQ(block[block.size() / 2], 1);
}

TEST(Mfu, PeakKnownOnlyForNamedGpusAndSixNFormula) {
    EXPECT_DOUBLE_EQ(*peak_bf16_flops("NVIDIA A100-SXM4-80GB"), 312e12);
    EXPECT_DOUBLE_EQ(*peak_bf16_flops("NVIDIA A100 80GB PCIe"), 312e12);
    EXPECT_DOUBLE_EQ(*peak_bf16_flops("NVIDIA H100 80GB HBM3"), 989.4e12);
    EXPECT_DOUBLE_EQ(*peak_bf16_flops("NVIDIA H100 PCIe"), 756e12);
    EXPECT_DOUBLE_EQ(*peak_bf16_flops("NVIDIA H200"), 989.4e12);
    EXPECT_FALSE(peak_bf16_flops("NVIDIA GeForce RTX 4090").has_value());
    EXPECT_FALSE(peak_bf16_flops("").has_value());
    EXPECT_FALSE(device_peak_flops(c10::Device(c10::kCPU)).has_value());
    // 7e9 matmul weights at 3,000 tokens/s on an A100: 6 · 7e9 · 3000 / 312e12 = 0.4038...
    EXPECT_NEAR(model_flops_utilization(7e9, 3000, 312e12), 0.40385, 1e-4);
    // N counts the seven projections and the LM head (tied or not), not the embedding lookup or the norms.
    medllm::model::Qwen2Config c;
    c.vocab_size = 1000, c.hidden_size = 64, c.intermediate_size = 128, c.num_hidden_layers = 2;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 16, c.tie_word_embeddings = true;
    const double per_layer = 64.0 * 64 * 2 + 64.0 * 32 * 2 + 3 * 64.0 * 128;  // q,o + k,v (2 KV heads of 16) + mlp
    EXPECT_DOUBLE_EQ(matmul_parameters(c), 2 * per_layer + 1000.0 * 64);
}

TEST(StepLines, LogLineHasEveryFieldAndMfuOnlyWhenKnown) {
    StepReport r;
    r.step = 12, r.total_steps = 30, r.epoch = 0.4, r.loss = 5.43214, r.lr = 1.234e-4, r.grad_norm = 0.81234;
    r.tokens_per_second = 1234.4, r.eta_seconds = 21, r.peak_memory_gb = 1.234;
    EXPECT_EQ(format_log_line(r),
              "step 12/30 | epoch 0.40 | loss 5.4321 | lr 1.234e-04 | grad_norm 0.8123 | 1234 tok/s | peak mem 1.23 GB"
              " | ETA 0:00:21");
    r.mfu = 0.4123;
    EXPECT_EQ(format_log_line(r),
              "step 12/30 | epoch 0.40 | loss 5.4321 | lr 1.234e-04 | grad_norm 0.8123 | 1234 tok/s | peak mem 1.23 GB"
              " | MFU 41.2% | ETA 0:00:21");
    EXPECT_EQ(format_live_line(r),
              "step 12/30 (40%) | epoch 0.40 | loss 5.4321 | lr 1.234e-04 | 1234 tok/s | ETA 0:00:21");
}

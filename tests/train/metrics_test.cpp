// CRC-32C, TFRecord framing and the TensorBoard event encoding; metrics.jsonl on a fresh run and on a resume.
#include <fstream>

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
    medllm::JsonlRecordFile check(path, nullptr);
    ASSERT_EQ(check.existing().size(), 4u);
    EXPECT_EQ(check.existing()[3]["step"], 4);
    EXPECT_EQ(check.existing()[3]["loss"], 0.2);
    {
        MetricsFile m(path, 0);
        m.close();
    }
    EXPECT_EQ(read_bytes(path), "");
}

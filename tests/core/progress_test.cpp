// ProgressLog: the line's content and when it is logged.
#include <gtest/gtest.h>

#include <thread>

#include "medllm/core/progress.h"

namespace medllm {
namespace {

TEST(Progress, FormatsDurations) {
    EXPECT_EQ(format_duration(0), "0:00:00");
    EXPECT_EQ(format_duration(59.6), "0:01:00");
    EXPECT_EQ(format_duration(3 * 3600 + 25 * 60 + 7), "3:25:07");
    EXPECT_EQ(format_duration(-5), "0:00:00");
    EXPECT_EQ(format_duration(250 * 3600.0), "250:00:00");
}

TEST(Progress, LogsFirstThrottledAndLastSteps) {
    ProgressLog log("quantize", 10, "tensors", /*interval_seconds=*/3600);
    EXPECT_TRUE(log.update(1, 1000));  // the first step always shows the job started
    EXPECT_FALSE(log.update(2, 1000));
    EXPECT_FALSE(log.update(9, 1000));
    EXPECT_TRUE(log.update(10, 1000));  // and the last one always ends it

    ProgressLog every("eval", 3, "questions", 0.0);
    for (int i = 1; i <= 3; ++i) EXPECT_TRUE(every.update(i));
}

TEST(Progress, LineShowsCountsRateAndEtaThenTotalTime) {
    ProgressLog log("merge", 4, "tensors", 0.0);
    EXPECT_TRUE(log.update(1));
    EXPECT_EQ(log.line().find("/s"), std::string::npos) << "no rate from a few milliseconds: " << log.line();
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    log.update(1, 2'000'000'000);
    const std::string midway = log.line();
    EXPECT_NE(midway.find("merge: 1/4 (25%)"), std::string::npos) << midway;
    EXPECT_NE(midway.find("tensors/s"), std::string::npos) << midway;
    EXPECT_NE(midway.find("GB/s"), std::string::npos) << midway;
    EXPECT_NE(midway.find("ETA "), std::string::npos) << midway;
    log.update(4);
    const std::string last = log.line();
    EXPECT_NE(last.find("4/4 (100%)"), std::string::npos) << last;
    EXPECT_NE(last.find("done in "), std::string::npos) << last;
    EXPECT_EQ(last.find("ETA"), std::string::npos) << last;

    ProgressLog no_bytes("eval", 2, "questions", 0.0);
    no_bytes.update(1);
    EXPECT_EQ(no_bytes.line().find("GB/s"), std::string::npos);
}

}  // namespace
}  // namespace medllm

// ProgressLog: the line's content and when it is logged.
#include <gtest/gtest.h>

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

// A clock the test moves by hand, so nothing depends on how fast the machine is.
struct FakeClock {
    std::chrono::steady_clock::time_point now{};
    void advance(double seconds) {
        now += std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
    }
    ProgressLog::Clock fn() {
        return [this] { return now; };
    }
};

TEST(Progress, LogsFirstThrottledAndLastSteps) {
    FakeClock clock;
    ProgressLog log("quantize", 10, "tensors", /*interval_seconds=*/10, clock.fn());
    EXPECT_TRUE(log.update(1, 1000));  // the first step always shows the job started
    clock.advance(5);
    EXPECT_FALSE(log.update(2, 1000));
    clock.advance(6);
    EXPECT_TRUE(log.update(3, 1000));  // 11 s since the last line
    clock.advance(1);
    EXPECT_FALSE(log.update(9, 1000));
    EXPECT_TRUE(log.update(10, 1000));  // and the last one always ends it

    ProgressLog every("eval", 3, "questions", 0.0, clock.fn());
    for (int i = 1; i <= 3; ++i) EXPECT_TRUE(every.update(i));
}

TEST(Progress, LineShowsCountsRateAndEtaThenTotalTime) {
    FakeClock clock;
    ProgressLog log("merge", 4, "tensors", 0.0, clock.fn());
    EXPECT_TRUE(log.update(1));
    EXPECT_EQ(log.line(), "merge: 1/4 (25%)");  // no rate from a few milliseconds
    clock.advance(10);
    log.update(1, 2'000'000'000);
    EXPECT_EQ(log.line(), "merge: 1/4 (25%) | 0.10 tensors/s | 0.20 GB/s | ETA 0:00:30");
    clock.advance(30);
    log.update(4);
    EXPECT_EQ(log.line(), "merge: 4/4 (100%) | 0.10 tensors/s | 0.05 GB/s | done in 0:00:40");

    ProgressLog no_bytes("eval", 2, "questions", 0.0, clock.fn());
    clock.advance(1);
    no_bytes.update(1);
    EXPECT_EQ(no_bytes.line(), "eval: 1/2 (50%) | 1.00 questions/s | ETA 0:00:01");
}

}  // namespace
}  // namespace medllm

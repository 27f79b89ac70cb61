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

// The live line rewrites itself on a terminal and is silent elsewhere (a pipe, a log file).
TEST(LiveLine, RewritesInPlaceOnATerminalAndWritesNothingElsewhere) {
    std::FILE* f = std::tmpfile();
    ASSERT_NE(f, nullptr);
    {
        LiveLine live(f, /*force=*/true);
        EXPECT_TRUE(live.enabled());
        live.clear();  // nothing shown yet: nothing to erase
        live.show("step 1/3");
        live.show("step 2/3");
        live.clear();
        live.show("step 3/3");
    }  // the destructor erases the last line
    std::rewind(f);
    std::string got(256, '\0');
    got.resize(std::fread(got.data(), 1, got.size(), f));
    EXPECT_EQ(got, "\r\033[Kstep 1/3\r\033[Kstep 2/3\r\033[K\r\033[Kstep 3/3\r\033[K");
    std::fclose(f);

    std::FILE* g = std::tmpfile();  // a regular file is not a terminal
    {
        LiveLine live(g);
        EXPECT_FALSE(live.enabled());
        live.show("step 1/3");
    }
    EXPECT_EQ(std::ftell(g), 0);
    std::fclose(g);
}

}  // namespace
}  // namespace medllm

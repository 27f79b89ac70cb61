// Schedules against transformers' get_*_schedule_with_warmup through LambdaLR (scripts/make_train_fixtures.py).
#include <gtest/gtest.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/train/schedule.h"
#include "train_test_util.h"

using medllm::train::Schedule;

TEST(Schedule, EqualsTransformersStepByStep) {
    const auto j = medllm::read_json_file(test::fixtures() / "train" / "schedules.json");
    ASSERT_GE(j["schedules"].size(), 5u);
    for (const auto& c : j["schedules"]) {
        Schedule s;
        s.name         = c["name"];
        s.base_lr      = c["base_lr"];
        s.total_steps  = c["total_steps"];
        s.warmup_steps = c["warmup_steps"];
        s.min_lr_rate  = c["min_lr_rate"];
        s.validate();
        const auto& lrs = c["lrs"];
        for (size_t step = 0; step < lrs.size(); ++step) {
            // The same double operations in the same order as the Python lambdas: equal, except that LambdaLR
            // multiplies base_lr by the factor exactly as lr_at does; allow one ulp for libm's cos.
            EXPECT_NEAR(s.lr_at(static_cast<int64_t>(step)), lrs[step].get<double>(), 1e-18)
                << s.name << " total " << s.total_steps << " step " << step;
        }
    }
}

TEST(Schedule, WarmupRatioRoundsUpAsTransformers) {
    const auto j = medllm::read_json_file(test::fixtures() / "train" / "schedules.json");
    for (const auto& c : j["warmup_ratio"])
        EXPECT_EQ(medllm::train::resolve_warmup_steps(0, c["ratio"], c["total_steps"]),
                  c["warmup_steps"].get<int64_t>())
            << "ratio " << c["ratio"];
    EXPECT_EQ(medllm::train::resolve_warmup_steps(7, 0.5, 100), 7);  // explicit steps win
}

TEST(Schedule, FirstStepOfAWarmupRunsAtZero) {
    Schedule s;
    s.total_steps  = 10;
    s.warmup_steps = 2;
    EXPECT_EQ(s.lr_at(0), 0.0);
    EXPECT_DOUBLE_EQ(s.lr_at(1), s.base_lr / 2);
    EXPECT_DOUBLE_EQ(s.lr_at(2), s.base_lr);
}

TEST(Schedule, RejectsUnknownNamesAndBadSteps) {
    Schedule s;
    s.name = "cosine_restarts";
    EXPECT_THROW(s.validate(), medllm::UsageError);
    s.name        = "cosine";
    s.total_steps = 0;
    EXPECT_THROW(s.validate(), medllm::UsageError);
}

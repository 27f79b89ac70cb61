// RngState (medllm/model/rng_state.h): a captured state replays the same random numbers once restored.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "medllm/model/rng_state.h"

TEST(RngState, RestoreReplaysTheCpuGeneratorsDraws) {
    const auto like  = at::zeros({1});
    const auto state = medllm::model::RngState::capture(like);
    EXPECT_FALSE(state.device.defined());  // a CPU tensor captures no CUDA generator
    const auto first = at::rand({16});
    EXPECT_FALSE(at::equal(at::rand({16}), first));  // the generator moved on
    state.restore();
    EXPECT_TRUE(at::equal(at::rand({16}), first));
    // Dropout draws from the same generator: the same mask after a restore.
    state.restore();
    const auto mask = at::dropout(at::ones({64}), 0.5, /*train=*/true);
    state.restore();
    EXPECT_TRUE(at::equal(at::dropout(at::ones({64}), 0.5, /*train=*/true), mask));
}

// AdamW's update (hand-derived first step) and state round trip; clipping as torch.nn.utils.clip_grad_norm_.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "medllm/core/error.h"
#include "medllm/train/optimizer.h"

using namespace medllm::train;

TEST(AdamW, FirstStepMovesEachWeightByLrTimesTheSignOfItsGradient) {
    // Step 1: m = (1-b1) g, v = (1-b2) g²; m̂ = g, v̂ = g²; update = lr · g / (|g| + eps) ≈ lr · sign(g).
    at::Tensor p     = at::tensor({1.0f, -2.0f, 3.0f}).requires_grad_(true);
    p.mutable_grad() = at::tensor({0.5f, -0.25f, 0.0f});
    AdamW opt({{"p", p}}, {});
    opt.step(0.1);
    EXPECT_NEAR(p[0].item<float>(), 0.9f, 1e-6);
    EXPECT_NEAR(p[1].item<float>(), -1.9f, 1e-6);
    EXPECT_EQ(p[2].item<float>(), 3.0f);  // zero gradient: no move
    EXPECT_EQ(opt.steps(), 1);
}

TEST(AdamW, WeightDecayIsDecoupled) {
    at::Tensor p     = at::tensor({2.0f}).requires_grad_(true);
    p.mutable_grad() = at::tensor({0.0f});
    AdamWOptions o;
    o.weight_decay = 0.5;
    AdamW opt({{"p", p}}, o);
    opt.step(0.1);
    EXPECT_NEAR(p.item<float>(), 2.0f * (1 - 0.1 * 0.5), 1e-6);
}

TEST(AdamW, StateRoundTripContinuesIdentically) {
    auto run = [](AdamW& opt, at::Tensor& p, int steps) {
        for (int i = 0; i < steps; ++i) {
            p.mutable_grad() = at::sin(p.detach() * (i + 1));
            opt.step(0.01);
        }
    };
    at::Tensor a = at::arange(6, at::kFloat).requires_grad_(true);
    at::Tensor b = a.detach().clone().requires_grad_(true);
    AdamW oa({{"w", a}}, {});
    AdamW ob({{"w", b}}, {});
    run(oa, a, 3);
    run(ob, b, 3);
    std::vector<std::pair<std::string, at::Tensor>> saved;
    for (auto& [n, t] : ob.state_tensors()) saved.emplace_back(n, t.clone());
    AdamW oc({{"w", b}}, {});
    oc.load_state(saved, ob.steps());
    run(oa, a, 2);
    run(oc, b, 2);
    EXPECT_TRUE(at::equal(a, b));
    saved.pop_back();
    EXPECT_THROW(oc.load_state(saved, 1), medllm::Error);
}

TEST(ClipGradNorm, ReturnsThePreClipNormAndScalesToTheLimit) {
    at::Tensor x     = at::zeros({2}).requires_grad_(true);
    at::Tensor y     = at::zeros({1}).requires_grad_(true);
    x.mutable_grad() = at::tensor({3.0f, 0.0f});
    y.mutable_grad() = at::tensor({4.0f});
    const std::vector<std::pair<std::string, at::Tensor>> ps{{"x", x}, {"y", y}};
    EXPECT_NEAR(clip_grad_norm(ps, 1.0), 5.0, 1e-6);
    EXPECT_NEAR(x.grad()[0].item<float>(), 3.0f / (5.0f + 1e-6f), 1e-6);
    EXPECT_NEAR(y.grad()[0].item<float>(), 4.0f / (5.0f + 1e-6f), 1e-6);
    EXPECT_NEAR(clip_grad_norm(ps, 10.0), 1.0, 1e-5);  // below the limit: unchanged
    EXPECT_NEAR(x.grad()[0].item<float>(), 0.6f, 1e-5);
}

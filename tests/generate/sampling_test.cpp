// Logits processors on crafted logits (expected masks worked out by hand from HF's definitions), checked again
// against a plain loop-based restatement of the same rules on random logits, and the token choice.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "medllm/core/error.h"
#include "medllm/generate/sampling.h"

using namespace medllm::generate;

namespace {

at::Tensor row(std::vector<float> values) {
    return at::tensor(values, at::kFloat).unsqueeze(0);
}

// Which entries of a [1, V] tensor survived (are finite).
std::vector<int> kept(const at::Tensor& t) {
    std::vector<int> out;
    auto r = t.squeeze(0);
    for (int64_t i = 0; i < r.size(0); ++i) out.push_back(std::isfinite(r[i].item<float>()) ? 1 : 0);
    return out;
}

std::vector<double> softmax(const std::vector<double>& x) {
    double m = *std::max_element(x.begin(), x.end());
    std::vector<double> e(x.size());
    double s = 0;
    for (size_t i = 0; i < x.size(); ++i) s += (e[i] = std::exp(x[i] - m));
    for (auto& v : e) v /= s;
    return e;
}

TEST(Sampling, TopKKeepsTheKLargestAndTiesWithTheKth) {
    auto logits = row({1.0f, 5.0f, 3.0f, 3.0f, -2.0f, 4.0f});
    EXPECT_EQ(kept(apply_top_k(logits, 2)), (std::vector<int>{0, 1, 0, 0, 0, 1}));
    EXPECT_EQ(kept(apply_top_k(logits, 3)), (std::vector<int>{0, 1, 1, 1, 0, 1}));  // 3.0 ties with the 3rd
    EXPECT_EQ(kept(apply_top_k(logits, 100)), (std::vector<int>{1, 1, 1, 1, 1, 1}));
    EXPECT_EQ(kept(apply_top_k(logits, 0)), (std::vector<int>{1, 1, 1, 1, 1, 1}));
    // Survivors keep their values.
    EXPECT_EQ(apply_top_k(logits, 2)[0][1].item<float>(), 5.0f);
}

TEST(Sampling, TopPDropsTheTailBelowOneMinusP) {
    // probabilities 0.5, 0.25, 0.125, 0.125 (log-space logits)
    auto logits = row({std::log(0.125f), std::log(0.5f), std::log(0.25f), std::log(0.125f)});
    // Ascending cumulative: 0.125, 0.25, 0.5, 1.0. top_p 0.7 removes cumulative <= 0.3: both 0.125 tokens.
    EXPECT_EQ(kept(apply_top_p(logits, 0.7)), (std::vector<int>{0, 1, 1, 0}));
    // top_p 0.5 removes cumulative <= 0.5: everything but the 0.5 token.
    EXPECT_EQ(kept(apply_top_p(logits, 0.5)), (std::vector<int>{0, 1, 0, 0}));
    // A tiny top_p keeps the top token.
    EXPECT_EQ(kept(apply_top_p(logits, 1e-6)), (std::vector<int>{0, 1, 0, 0}));
    EXPECT_EQ(kept(apply_top_p(logits, 1.0)), (std::vector<int>{1, 1, 1, 1}));
}

TEST(Sampling, MinPScalesWithTheTopProbability) {
    auto logits = row({std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)});
    // threshold = min_p * 0.5
    EXPECT_EQ(kept(apply_min_p(logits, 0.2)), (std::vector<int>{1, 1, 1, 0}));  // 0.1: drops 0.05
    EXPECT_EQ(kept(apply_min_p(logits, 0.5)), (std::vector<int>{1, 1, 0, 0}));  // 0.25
    EXPECT_EQ(kept(apply_min_p(logits, 1.0)), (std::vector<int>{1, 0, 0, 0}));  // only the top
    EXPECT_EQ(kept(apply_min_p(logits, 0.0)), (std::vector<int>{1, 1, 1, 1}));
}

TEST(Sampling, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
    auto logits = row({2.0f, -2.0f, 2.0f, -2.0f});
    auto seen   = at::tensor(std::vector<uint8_t>{1, 1, 0, 0}).to(at::kBool).unsqueeze(0);
    auto out    = apply_repetition_penalty(logits, seen, 2.0);
    EXPECT_FLOAT_EQ(out[0][0].item<float>(), 1.0f);
    EXPECT_FLOAT_EQ(out[0][1].item<float>(), -4.0f);
    EXPECT_FLOAT_EQ(out[0][2].item<float>(), 2.0f);
    EXPECT_FLOAT_EQ(out[0][3].item<float>(), -2.0f);
}

TEST(Sampling, ProcessorsRunInHfOrder) {
    // Temperature before min-p and top-p: at temperature 2 the distribution flattens, so more tokens survive.
    auto logits = row({4.0f, 3.0f, 2.0f, 0.0f});
    SamplingParams p;
    p.do_sample = true;
    p.min_p     = 0.3;
    EXPECT_EQ(kept(process_logits(logits, p, {})), (std::vector<int>{1, 1, 0, 0}));
    p.temperature = 2.0;
    EXPECT_EQ(kept(process_logits(logits, p, {})), (std::vector<int>{1, 1, 1, 0}));
    // Greedy ignores the warpers but applies the penalty (HF applies processors, not warpers, when greedy).
    SamplingParams g;
    g.top_k              = 1;
    g.repetition_penalty = 3.0;
    auto seen            = at::tensor(std::vector<uint8_t>{1, 0, 0, 0}).to(at::kBool).unsqueeze(0);
    auto scores          = process_logits(logits, g, seen);
    EXPECT_EQ(kept(scores), (std::vector<int>{1, 1, 1, 1}));
    EXPECT_EQ(choose_tokens(scores, false, {}).item<int64_t>(), 1);  // 4/3 < 3
}

// Random logits against a loop restatement of each rule.
TEST(Sampling, MasksMatchALoopRestatementOnRandomLogits) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
    for (int trial = 0; trial < 50; ++trial) {
        const int V = 37;
        auto logits = at::randn({1, V}, gen, at::kFloat) * 3.0;
        std::vector<double> x(V);
        for (int i = 0; i < V; ++i) x[i] = logits[0][i].item<float>();
        auto probs = softmax(x);
        std::vector<int> order(V);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return x[a] > x[b]; });

        const int k = 1 + trial % 10;
        std::vector<int> want_k(V);
        for (int i = 0; i < V; ++i) want_k[i] = x[i] >= x[order[k - 1]];
        EXPECT_EQ(kept(apply_top_k(logits, k)), want_k);

        const double top_p = 0.05 + 0.9 * (trial % 7) / 6.0;
        std::vector<int> want_p(V, 0);
        double mass = 0;  // nucleus: the most likely tokens until their mass reaches top_p
        for (int idx : order) {
            want_p[idx] = 1;
            mass += probs[idx];
            if (mass >= top_p - 1e-6) break;
        }
        auto got_p = kept(apply_top_p(logits, top_p));
        int diff   = 0;  // float rounding of a cumulative sum right at the border may move one token
        for (int i = 0; i < V; ++i) diff += got_p[i] != want_p[i];
        EXPECT_LE(diff, 1) << "top_p " << top_p;

        const double min_p = 0.01 + 0.5 * (trial % 5) / 4.0;
        std::vector<int> want_m(V);
        for (int i = 0; i < V; ++i) want_m[i] = probs[i] >= min_p * probs[order[0]] - 1e-7;
        EXPECT_EQ(kept(apply_min_p(logits, min_p)), want_m);
    }
}

TEST(Sampling, InverseCdfPicksTheTokenWhoseIntervalHoldsU) {
    // probabilities 0.5, 0, 0.25, 0.25 (token 1 filtered)
    const float inf = std::numeric_limits<float>::infinity();
    auto scores     = at::tensor(std::vector<float>{std::log(0.5f), -inf, std::log(0.25f), std::log(0.25f)})
                      .unsqueeze(0)
                      .repeat({4, 1});
    auto picked = choose_tokens(scores, true, {0.0, 0.49, 0.6, 0.99});
    EXPECT_EQ(picked[0].item<int64_t>(), 0);
    EXPECT_EQ(picked[1].item<int64_t>(), 0);
    EXPECT_EQ(picked[2].item<int64_t>(), 2);
    EXPECT_EQ(picked[3].item<int64_t>(), 3);
    EXPECT_THROW(choose_tokens(scores, true, {0.5}), medllm::Error);
}

TEST(Sampling, SequenceRngIsSeededPerSequence) {
    SequenceRng a(42, 3, 1), b(42, 3, 1), c(42, 3, 2), d(43, 3, 1);
    double va = a.uniform();
    EXPECT_EQ(va, b.uniform());
    EXPECT_NE(va, c.uniform());
    EXPECT_NE(va, d.uniform());
    for (int i = 0; i < 1000; ++i) {
        double u = a.uniform();
        EXPECT_GE(u, 0.0);
        EXPECT_LT(u, 1.0);
    }
}

TEST(Sampling, BadValuesAreUsageErrors) {
    SamplingParams p;
    p.temperature = 0.0;
    EXPECT_THROW(p.validate(), medllm::UsageError);
    p       = {};
    p.top_p = 0.0;
    EXPECT_THROW(p.validate(), medllm::UsageError);
    p       = {};
    p.min_p = 1.5;
    EXPECT_THROW(p.validate(), medllm::UsageError);
    p       = {};
    p.top_k = -1;
    EXPECT_THROW(p.validate(), medllm::UsageError);
    p                    = {};
    p.repetition_penalty = 0.0;
    EXPECT_THROW(p.validate(), medllm::UsageError);
    EXPECT_NO_THROW(SamplingParams{}.validate());
}

}  // namespace

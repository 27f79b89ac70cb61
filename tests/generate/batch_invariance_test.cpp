// Issue 24 §3: a sampled sequence is a function of (seed, prompt key, sample index) alone. Its tokens and the
// log-probabilities the model gave them must be the same bits whatever the batch size, the other prompts in the
// call (their number, lengths, shared prefixes and order) and the prefix cache's contents, in fp32 and in bf16.
// Log-probabilities are compared as well as tokens because a difference in the last bits of a logit changes a
// sampled token only rarely, while it always shows in the log-probabilities.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "generate/generate_test_util.h"
#include "medllm/generate/engine.h"

using namespace medllm::generate;
namespace gt = medllm::generate::testing;

namespace {

// Prompts of lengths around the prefill chunk boundaries (1, 63..65, 128, 150), several sharing their first 70 or
// 130 tokens, so the prefix cache, partial chunks and fully cached chunks all occur.
std::vector<std::vector<TokenId>> invariance_prompts() {
    auto gen    = at::make_generator<at::CPUGeneratorImpl>(41);
    auto random = [&](int64_t n) {
        auto t = at::randint(3, 512, {n}, gen, at::kLong);
        return std::vector<TokenId>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
    };
    const auto shared = random(130);
    auto with_prefix  = [&](int64_t prefix, int64_t rest) {
        std::vector<TokenId> p(shared.begin(), shared.begin() + prefix);
        const auto tail = random(rest);
        p.insert(p.end(), tail.begin(), tail.end());
        return p;
    };
    return {random(5),           with_prefix(130, 20), random(1),          with_prefix(70, 0),  random(64),
            with_prefix(130, 0), random(63),           with_prefix(70, 9), with_prefix(128, 0), random(65)};
}

using Sequences =
    std::vector<std::pair<std::vector<TokenId>, std::vector<float>>>;  // per (prompt, sample), input order

Sequences run_of(const std::vector<Completion>& out) {
    Sequences r;
    for (const auto& c : out) r.emplace_back(c.ids, c.logprobs);
    return r;
}

// Bitwise float comparison (EXPECT_EQ on floats compares values, which is what is wanted: no NaNs occur).
void expect_same(const Sequences& got, const Sequences& want, const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got[i].first, want[i].first) << what << ": tokens of sequence " << i;
        EXPECT_EQ(got[i].second, want[i].second) << what << ": logprobs of sequence " << i;
    }
}

class BatchInvariance : public ::testing::TestWithParam<at::ScalarType> {};

TEST_P(BatchInvariance, SampledSequencesDoNotDependOnTheBatch) {
    auto model =
        medllm::model::Qwen2ForCausalLM::from_pretrained(gt::model_fixture("qwen2-tiny-untied").string(), GetParam());
    const auto prompts = invariance_prompts();
    GenerateOptions opt;
    opt.max_new_tokens       = 24;
    opt.num_samples          = 2;
    opt.seed                 = 5;
    opt.logprobs             = true;
    opt.sampling.do_sample   = true;
    opt.sampling.temperature = 1.3;
    opt.sampling.top_p       = 0.95;

    // The reference: every prompt alone, in a fresh generator (empty prefix cache), one sequence at a time.
    Sequences alone;
    for (size_t i = 0; i < prompts.size(); ++i) {
        Generator gen(model, nullptr, {});
        GenerateOptions one = opt;
        one.prompt_keys     = {i};
        one.max_batch_size  = 1;
        auto r              = run_of(gen.generate({prompts[i]}, one));
        alone.insert(alone.end(), r.begin(), r.end());
    }
    // The tokens vary (the comparison would pass vacuously if every sample were the same).
    std::set<std::vector<TokenId>> distinct;
    for (const auto& s : alone) distinct.insert(s.first);
    EXPECT_GT(distinct.size(), prompts.size());

    // All prompts in one call, at batch sizes 1, 3 and 8 (other neighbours, refills mid-run, prefix cache warm
    // from the earlier calls of the same generator).
    Generator shared(model, nullptr, {});
    for (int64_t batch : {1, 3, 8}) {
        opt.max_batch_size = batch;
        expect_same(run_of(shared.generate(prompts, opt)), alone, "batch " + std::to_string(batch));
    }
    // Reversed order and a subset, with each prompt's key: what a resumed file or another rank runs.
    std::vector<size_t> order(prompts.size());
    std::iota(order.begin(), order.end(), 0);
    std::reverse(order.begin(), order.end());
    order.erase(order.begin() + 3);
    std::vector<std::vector<TokenId>> subset;
    opt.prompt_keys.clear();
    Sequences want;
    for (size_t i : order) {
        subset.push_back(prompts[i]);
        opt.prompt_keys.push_back(i);
        for (int64_t j = 0; j < opt.num_samples; ++j) want.push_back(alone[i * opt.num_samples + j]);
    }
    opt.max_batch_size = 5;
    expect_same(run_of(Generator(model, nullptr, {}).generate(subset, opt)), want, "reversed subset, batch 5");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, BatchInvariance, ::testing::Values(at::kFloat, at::kBFloat16),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

}  // namespace

// The engine on the HF fixture models (tests/fixtures/model, from scripts/make_reference_fixtures.py):
// greedy parity with transformers' generate, batching invariance, seeded sampling, stops and limits.
#include <unistd.h>

#include <algorithm>
#include <map>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "generate/generate_test_util.h"
#include "medllm/core/error.h"
#include "medllm/generate/engine.h"
#include "medllm/io/safetensors.h"

using namespace medllm::generate;
namespace gt = medllm::generate::testing;
namespace fs = std::filesystem;

namespace {

std::vector<TokenId> to_ids(const at::Tensor& t) {
    auto c = t.to(at::kLong).contiguous();
    return std::vector<TokenId>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

std::shared_ptr<medllm::model::Qwen2ForCausalLM> fixture_model(const std::string& name) {
    return medllm::model::Qwen2ForCausalLM::from_pretrained(gt::model_fixture(name).string(), at::kFloat);
}

// Prompts of mixed lengths with ids from the fixture vocabulary.
std::vector<std::vector<TokenId>> mixed_prompts(int count, uint64_t seed) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    std::vector<std::vector<TokenId>> prompts;
    for (int i = 0; i < count; ++i) {
        int64_t len = 1 + (i * 7 + 3) % 23;
        prompts.push_back(to_ids(at::randint(3, 512, {len}, gen, at::kLong)));
    }
    return prompts;
}

std::vector<std::vector<TokenId>> ids_of(const std::vector<Completion>& cs) {
    std::vector<std::vector<TokenId>> out;
    for (const auto& c : cs) out.push_back(c.ids);
    return out;
}

class GreedyParity : public ::testing::TestWithParam<std::string> {};

TEST_P(GreedyParity, MatchesTransformersGenerateTokenForToken) {
    medllm::io::SafetensorsFile ref(gt::model_fixture(GetParam()) / "reference.safetensors");
    auto input = ref.tensor("input_ids").clone();
    // The fixture script ran HF generate on input_ids[row, 3:] (row 1 without its padding), one row at a time.
    const std::vector<TokenId> p0 = to_ids(input[0].narrow(0, 3, 9)), p1 = to_ids(input[1].narrow(0, 3, 9));
    const std::vector<TokenId> want0 = to_ids(ref.tensor("greedy.0")), want1 = to_ids(ref.tensor("greedy.1"));
    Generator gen(fixture_model(GetParam()), nullptr, {});  // HF ran with eos_token_id=None
    GenerateOptions opt;
    opt.max_new_tokens = 8;
    // One at a time, both together, and together behind a longer prompt (so both rows are left-padded).
    for (int64_t batch : {1, 2}) {
        opt.max_batch_size = batch;
        auto out           = gen.generate({p0, p1}, opt);
        ASSERT_EQ(out.size(), 2u);
        EXPECT_EQ(out[0].ids, want0) << "batch " << batch;
        EXPECT_EQ(out[1].ids, want1) << "batch " << batch;
        for (const auto& c : out) {
            EXPECT_EQ(c.finish_reason, FinishReason::length);
            EXPECT_EQ(c.generated_tokens, 8);
            EXPECT_EQ(c.prompt_tokens, 9);
        }
    }
    opt.max_batch_size = 8;
    auto padded        = gen.generate({to_ids(input[0]), p0, p1}, opt);
    EXPECT_EQ(padded[1].ids, want0);
    EXPECT_EQ(padded[2].ids, want1);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GreedyParity, ::testing::Values("qwen2-tiny-tied", "qwen2-tiny-untied"));

TEST(Engine, BatchedGreedyEqualsOneAtATimeForMixedLengths) {
    Generator gen(fixture_model("qwen2-tiny-untied"), nullptr, {});
    const auto prompts = mixed_prompts(9, 11);
    GenerateOptions opt;
    opt.max_new_tokens = 12;
    std::vector<std::vector<TokenId>> single;
    for (const auto& p : prompts) single.push_back(gen.generate({p}, opt)[0].ids);
    // All at once; and 3 slots refilled from the queue as rows finish (stop ids make rows end at different steps).
    for (int64_t batch : {64, 3}) {
        opt.max_batch_size = batch;
        EXPECT_EQ(ids_of(gen.generate(prompts, opt)), single) << "batch " << batch;
    }
    // Rows finishing early at different steps: stop on a token some sequences produce.
    std::map<TokenId, int> counts;
    for (const auto& s : single)
        for (size_t i = 2; i < s.size(); ++i) ++counts[s[i]];
    opt.stop_token_ids = {
        std::max_element(counts.begin(), counts.end(), [](auto& a, auto& b) { return a.second < b.second; })->first};
    std::vector<std::vector<TokenId>> single_stop;
    opt.max_batch_size = 1;
    for (const auto& p : prompts) single_stop.push_back(gen.generate({p}, opt)[0].ids);
    opt.max_batch_size = 2;
    auto out           = gen.generate(prompts, opt);
    EXPECT_EQ(ids_of(out), single_stop);
    int stopped = 0;
    for (const auto& c : out) stopped += c.finish_reason == FinishReason::stop;
    EXPECT_GT(stopped, 0);
    EXPECT_LT(stopped, static_cast<int>(prompts.size()));
}

TEST(Engine, SeededSamplingIsReproducibleAndIndependentOfBatching) {
    Generator gen(fixture_model("qwen2-tiny-tied"), nullptr, {});
    const auto prompts = mixed_prompts(4, 5);
    GenerateOptions opt;
    opt.max_new_tokens              = 10;
    opt.num_samples                 = 3;
    opt.seed                        = 1234;
    opt.sampling.do_sample          = true;
    opt.sampling.temperature        = 1.5;
    opt.sampling.top_k              = 50;
    opt.sampling.top_p              = 0.95;
    opt.sampling.min_p              = 0.01;
    opt.sampling.repetition_penalty = 1.1;
    const auto first                = ids_of(gen.generate(prompts, opt));
    ASSERT_EQ(first.size(), 12u);
    EXPECT_EQ(ids_of(gen.generate(prompts, opt)), first);
    opt.max_batch_size = 2;  // other slots, other neighbours, refills: same draws per sequence
    EXPECT_EQ(ids_of(gen.generate(prompts, opt)), first);
    // The samples of one prompt differ from each other, and another seed gives other text.
    EXPECT_FALSE(first[0] == first[1] && first[1] == first[2]);
    opt.seed = 99;
    EXPECT_NE(ids_of(gen.generate(prompts, opt)), first);
}

TEST(Engine, SamplesShareThePrefillAndGreedySamplesAgree) {
    Generator gen(fixture_model("qwen2-tiny-untied"), nullptr, {});
    const auto prompts = mixed_prompts(3, 8);
    GenerateOptions opt;
    opt.max_new_tokens           = 6;
    const auto one               = gen.generate(prompts, opt);
    const int64_t prefilled_once = gen.last_stats().prompt_tokens;
    opt.num_samples              = 4;
    const auto four              = gen.generate(prompts, opt);
    EXPECT_EQ(gen.last_stats().prompt_tokens, prefilled_once);
    ASSERT_EQ(four.size(), 12u);
    for (size_t i = 0; i < four.size(); ++i) {
        EXPECT_EQ(four[i].prompt_index, i / 4);
        EXPECT_EQ(four[i].sample_index, static_cast<int64_t>(i % 4));
        EXPECT_EQ(four[i].ids, one[i / 4].ids);
    }
}

TEST(Engine, EosAndStopTokensEndASequenceAndAreNotOutput) {
    auto model         = fixture_model("qwen2-tiny-tied");
    const auto prompts = mixed_prompts(1, 3);
    GenerateOptions opt;
    opt.max_new_tokens = 10;
    const auto free    = Generator(model, nullptr, {}).generate(prompts, opt)[0].ids;
    ASSERT_EQ(free.size(), 10u);
    // The first occurrence of the token decides where it stops.
    const TokenId end = free[4];
    const size_t cut  = std::find(free.begin(), free.end(), end) - free.begin();
    auto as_eos       = Generator(model, nullptr, {end}).generate(prompts, opt)[0];
    EXPECT_EQ(as_eos.finish_reason, FinishReason::eos);
    EXPECT_EQ(as_eos.ids, std::vector<TokenId>(free.begin(), free.begin() + cut));
    EXPECT_EQ(as_eos.generated_tokens, static_cast<int64_t>(cut + 1));
    EXPECT_EQ(as_eos.stop, std::to_string(end));
    opt.ignore_eos = true;
    EXPECT_EQ(Generator(model, nullptr, {end}).generate(prompts, opt)[0].ids, free);
    opt.ignore_eos     = false;
    opt.stop_token_ids = {end};
    auto as_stop       = Generator(model, nullptr, {}).generate(prompts, opt)[0];
    EXPECT_EQ(as_stop.finish_reason, FinishReason::stop);
    EXPECT_EQ(as_stop.ids, as_eos.ids);
}

TEST(Engine, LogprobsAreTheModelsLogSoftmax) {
    auto model         = fixture_model("qwen2-tiny-untied");
    const auto prompts = mixed_prompts(2, 4);
    GenerateOptions opt;
    opt.max_new_tokens = 3;
    opt.logprobs       = true;
    auto out           = Generator(model, nullptr, {}).generate(prompts, opt);
    at::NoGradGuard no_grad;
    for (const auto& c : out) {
        ASSERT_EQ(c.logprobs.size(), 3u);
        std::vector<TokenId> seq = prompts[c.prompt_index];
        for (size_t t = 0; t < 3; ++t) {
            medllm::model::ForwardInputs in;
            in.input_ids = at::tensor(std::vector<int64_t>(seq.begin(), seq.end()), at::kLong).unsqueeze(0);
            auto lp      = at::log_softmax(model->forward(in)[0][-1].to(at::kFloat), -1)[c.ids[t]].item<float>();
            EXPECT_NEAR(c.logprobs[t], lp, 1e-4);
            EXPECT_LE(c.logprobs[t], 0.0f);
            seq.push_back(c.ids[t]);
        }
    }
}

TEST(Engine, ContextLengthGuard) {
    auto model = fixture_model("qwen2-tiny-tied");  // max_position_embeddings 256
    Generator gen(model, nullptr, {});
    GenerateOptions opt;
    opt.max_new_tokens = 20;
    std::vector<TokenId> too_long(256, 7);
    try {
        gen.generate({{5, 6}, too_long}, opt);
        FAIL() << "an over-long prompt was accepted";
    } catch (const medllm::Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("prompt 1 has 256 tokens"), std::string::npos) << msg;
        EXPECT_NE(msg.find("context of 256"), std::string::npos) << msg;
    }
    // A prompt that nearly fills the context stops at the context with finish reason "length".
    auto out = gen.generate({std::vector<TokenId>(250, 7)}, opt)[0];
    EXPECT_EQ(out.generated_tokens, 6);
    EXPECT_EQ(out.finish_reason, FinishReason::length);
    EXPECT_THROW(gen.generate({{}}, opt), medllm::Error);
    EXPECT_THROW(gen.generate({{5, 600}}, opt), medllm::Error);  // outside the vocabulary
    opt.max_new_tokens = 0;
    EXPECT_THROW(gen.generate({{5}}, opt), medllm::UsageError);
}

TEST(Engine, StopStringsSplitAcrossTokensWithATokenizer) {
    const auto dir =
        gt::make_printable_model_dir(fs::path(::testing::TempDir()) / ("gen_stop_model_" + std::to_string(::getpid())));
    LoadOptions lo;
    lo.device   = "cpu";
    auto loaded = load_model(dir, lo);
    EXPECT_TRUE(loaded.has_chat_template);
    EXPECT_EQ(loaded.eos_token_ids, std::vector<int64_t>{2});
    Generator gen(loaded.model, loaded.tokenizer, {});
    // Prompts of byte tokens (ids 3..258 are single bytes): the model's greedy continuation is mostly bytes too.
    std::vector<std::vector<TokenId>> prompts;
    for (int i = 0; i < 6; ++i) prompts.push_back(loaded.tokenizer->encode("question " + std::to_string(i) + ":"));
    GenerateOptions opt;
    opt.max_new_tokens = 24;
    const auto free    = gen.generate(prompts, opt);
    // Pick a stop string made of the text of tokens 3..5 of a completion whose tokens each decode to ASCII.
    bool tested = false;
    for (const auto& c : free) {
        std::vector<std::string> pieces;
        for (auto id : c.ids) pieces.push_back(loaded.tokenizer->decode({id}));
        if (pieces.size() < 8) continue;
        bool ascii = true;
        for (size_t t = 0; t < 8; ++t)
            for (unsigned char ch : pieces[t]) ascii = ascii && ch >= 0x20 && ch < 0x7f;
        if (!ascii || pieces[3].empty() || pieces[4].empty()) continue;
        const std::string stop   = pieces[3] + pieces[4] + pieces[5];
        const std::string before = c.text.substr(0, c.text.find(stop));
        opt.stop_strings         = {stop};
        std::string streamed;
        GenerateCallbacks cb;
        cb.on_text = [&](const Completion& partial, const std::string& piece) {
            if (partial.prompt_index == c.prompt_index) streamed += piece;
        };
        auto stopped = gen.generate(prompts, opt, cb)[c.prompt_index];
        EXPECT_EQ(stopped.finish_reason, FinishReason::stop);
        EXPECT_EQ(stopped.stop, stop);
        EXPECT_EQ(stopped.text, before);
        EXPECT_EQ(streamed, before);  // streaming never showed part of the stop string
        tested = true;
        break;
    }
    EXPECT_TRUE(tested) << "no completion suitable for the stop-string test";
    fs::remove_all(dir);
}

}  // namespace

// Absurd values are refused before anything is allocated, naming the option (and its flag) and the range; they
// used to reach LibTorch's allocator (`generate -n 100000` aborted).
TEST(Engine, AbsurdOptionsAreRefusedWithTheFlagAndTheRange) {
    auto expect_usage = [](const GenerateOptions& opt, const std::string& what, const std::string& range) {
        try {
            opt.validate();
            ADD_FAILURE() << "accepted: " << what;
        } catch (const medllm::UsageError& e) {
            const std::string msg = e.what();
            EXPECT_NE(msg.find(what), std::string::npos) << msg;
            EXPECT_NE(msg.find(range), std::string::npos) << msg;
        }
    };
    GenerateOptions opt;
    opt.num_samples = 100000;
    expect_usage(opt, "-n/--num-samples", "[1, 1024]");
    opt             = {};
    opt.num_samples = 1024;
    EXPECT_NO_THROW(opt.validate());
    opt                = {};
    opt.max_batch_size = 1000000;
    expect_usage(opt, "--batch-size", "[1, 4096]");
    opt                = {};
    opt.max_new_tokens = int64_t{1} << 40;
    expect_usage(opt, "--max-new-tokens", "[1, 4194304]");
    opt                = {};
    opt.stop_token_ids = {5, -7};
    expect_usage(opt, "--stop-token-id", "-7");
}

// A KV cache larger than the machine's memory is one clear Error before any allocation (it used to grow until the
// allocator aborted, or the kernel killed the process).
TEST(Engine, AKvCacheLargerThanMemoryIsAnErrorNamingTheBatch) {
    auto cfg                    = medllm::model::Qwen2Config::from_file(gt::model_fixture("qwen2-tiny-untied"));
    cfg.max_position_embeddings = int64_t{1} << 22;  // a context long enough for the cache to outgrow any machine
    auto model = std::make_shared<medllm::model::Qwen2ForCausalLM>(cfg, at::TensorOptions().dtype(at::kFloat));
    Generator gen(model, nullptr, {});
    GenerateOptions opt;
    opt.num_samples    = 1024;
    opt.max_batch_size = 4096;
    opt.max_new_tokens = int64_t{1} << 22;
    // 4096 rows x 2^22 positions (1 + 2^22 cut to the context) x 2 layers x (K, V) x 2 heads x 16 x 4 bytes = 8 TiB.
    try {
        gen.generate({{5}, {6}, {7}, {8}}, opt);
        ADD_FAILURE() << "no error";
    } catch (const medllm::UsageError& e) {
        ADD_FAILURE() << "a UsageError: " << e.what();
    } catch (const medllm::Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("cannot allocate 8192.0 GiB for the KV cache of batch 4096 x 4194304 tokens"),
                  std::string::npos)
            << msg;
        EXPECT_NE(msg.find("--batch-size"), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
    EXPECT_EQ(gen.last_stats().prompt_tokens, 0);  // refused before the first prefill
}

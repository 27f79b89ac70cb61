// Qwen2 in LibTorch against HF transformers (fixtures from scripts/make_reference_fixtures.py).
//
// Tolerances. fp32: both sides run the same math in fp32 on CPU; only the order of reductions inside
// GEMM/SDPA kernels may differ, which moves results by a few ulps times the reduction length (~1e-6
// relative here), so logits, hidden states and loss must agree to 1e-5 relative to the tensor's scale,
// and gradients (one more chain of reductions) to 1e-4. bf16: a rounding step is 2^-8 = 0.4% relative;
// a few roundings on different paths can flip a value by one or two steps, so bf16 logits must agree to
// 3e-2 of the logits' scale (and their argmax everywhere but near ties).
#include <filesystem>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "medllm/io/safetensors.h"
#include "medllm/model/qwen2.h"

namespace fs = std::filesystem;
using namespace medllm::model;

namespace {

const fs::path kFixtures = fs::path(MEDLLM_FIXTURES_DIR) / "model";

struct Reference {
    std::unique_ptr<medllm::io::SafetensorsFile> file;
    at::Tensor get(const std::string& name) const { return file->tensor(name).clone(); }
};

Reference load_reference(const std::string& name) {
    return {std::make_unique<medllm::io::SafetensorsFile>(kFixtures / name / "reference.safetensors")};
}

// max |a - b| / max |ref|
double rel_err(const at::Tensor& a, const at::Tensor& ref) {
    auto scale = ref.abs().max().item<double>();
    return (a.to(at::kDouble) - ref.to(at::kDouble)).abs().max().item<double>() / std::max(scale, 1e-30);
}

class Qwen2Parity : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        dir   = (kFixtures / GetParam()).string();
        ref   = load_reference(GetParam());
        model = Qwen2ForCausalLM::from_pretrained(dir, at::kFloat);
        ids   = ref.get("input_ids");
        mask  = ref.get("attention_mask");
    }
    std::string dir;
    Reference ref;
    std::shared_ptr<Qwen2ForCausalLM> model;
    at::Tensor ids, mask;
};

// Rows of the padded row that are real tokens (the padding rows' outputs are garbage in HF too).
at::Tensor real_rows(const at::Tensor& t, const at::Tensor& mask) {
    return t.index({mask.to(at::kBool)});
}

TEST_P(Qwen2Parity, Fp32LogitsAndHiddenStatesMatchTransformers) {
    at::NoGradGuard no_grad;
    ForwardInputs in;
    in.input_ids            = ids;
    in.attention_mask       = mask;
    in.output_hidden_states = true;
    auto out                = model->forward_hidden(in);
    auto logits             = model->logits(out.hidden);
    EXPECT_LT(rel_err(real_rows(logits, mask), real_rows(ref.get("logits"), mask)), 1e-5);
    ASSERT_EQ(out.hidden_states.size(), 3u);
    for (size_t i = 0; i < out.hidden_states.size(); ++i) {
        auto expect = ref.get("hidden_states." + std::to_string(i));
        EXPECT_LT(rel_err(real_rows(out.hidden_states[i], mask), real_rows(expect, mask)), 1e-5) << "hidden " << i;
    }
}

TEST_P(Qwen2Parity, LossAndGradientsMatchTransformers) {
    auto labels = ref.get("labels");
    ForwardInputs in;
    in.input_ids      = ids;
    in.attention_mask = mask;
    auto hidden       = model->forward_hidden(in).hidden;
    auto loss         = causal_lm_loss(hidden, model->lm_head_weight(), labels, /*chunk_tokens=*/5);
    EXPECT_NEAR(loss.item<double>(), ref.get("loss").item<double>(), 1e-5 * ref.get("loss").item<double>());
    loss.backward();
    auto params = model->named_parameters();
    for (const auto& name : {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                             "model.layers.0.self_attn.k_proj.bias", "model.layers.1.mlp.down_proj.weight",
                             "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"}) {
        EXPECT_LT(rel_err(params[name].grad(), ref.get(std::string("grad.") + name)), 1e-4) << name;
    }
    if (!model->config.tie_word_embeddings) {
        EXPECT_LT(rel_err(params["lm_head.weight"].grad(), ref.get("grad.lm_head.weight")), 1e-4);
    }
}

TEST_P(Qwen2Parity, Bf16LogitsMatchTransformersWithinBf16Rounding) {
    at::NoGradGuard no_grad;
    auto bf16 = Qwen2ForCausalLM::from_pretrained(dir, at::kBFloat16);
    ForwardInputs in;
    in.input_ids = ids.narrow(0, 0, 1);
    auto logits  = bf16->forward(in).to(at::kFloat);
    auto expect  = ref.get("bf16_logits");
    EXPECT_LT(rel_err(logits, expect), 3e-2);
    auto agree = (logits.argmax(-1) == expect.argmax(-1)).to(at::kFloat).mean().item<double>();
    EXPECT_GE(agree, 0.9);
}

TEST_P(Qwen2Parity, KvCacheDecodingEqualsFullForward) {
    at::NoGradGuard no_grad;
    // Row 1 is left-padded: prefill 7 positions, then decode the rest one token at a time.
    ForwardInputs full;
    full.input_ids      = ids;
    full.attention_mask = mask;
    auto expect         = model->forward(full);

    KVCache cache(model->config.num_hidden_layers);
    int64_t S = ids.size(1), prefill = 7;
    std::vector<at::Tensor> pieces;
    for (int64_t start = 0; start < S;) {
        int64_t n = start == 0 ? prefill : 1;
        ForwardInputs step;
        step.input_ids      = ids.narrow(1, start, n);
        step.attention_mask = mask.narrow(1, 0, start + n);
        step.cache          = &cache;
        pieces.push_back(model->forward(step));
        start += n;
    }
    auto got = at::cat(pieces, 1);
    EXPECT_LT(rel_err(real_rows(got, mask), real_rows(expect, mask)), 1e-5);
    EXPECT_EQ(cache.length(), S);
}

// last_positions runs the last layer's queries, attention output and MLP on the kept rows only. Its logits must
// equal the last rows of the full forward and of transformers' (1e-5 as above: the last layer's GEMMs see fewer
// rows, so their kernels may reduce in another order), with the padding mask (both rows) and with plain causal
// attention (row 0 alone, where SDPA's top-left is_causal cannot serve the kept rows).
TEST_P(Qwen2Parity, LastPositionsEqualTheFullForwardsLastRows) {
    at::NoGradGuard no_grad;
    const int64_t S   = ids.size(1);
    const auto expect = ref.get("logits");
    for (bool padded : {true, false}) {
        ForwardInputs full;
        full.input_ids = padded ? ids : ids.narrow(0, 0, 1);
        if (padded) full.attention_mask = mask;
        const auto all = model->forward(full);
        for (int64_t keep : {int64_t{1}, int64_t{3}, S - 1}) {
            ForwardInputs in  = full;
            in.last_positions = keep;
            const auto got    = model->forward(in);
            ASSERT_EQ(got.sizes(), (std::vector<int64_t>{full.input_ids.size(0), keep, all.size(2)}))
                << "padded " << padded << " keep " << keep;
            // Only real tokens' rows count (a padding row's output is garbage in HF too).
            const auto real = padded ? mask.narrow(1, S - keep, keep) : at::ones({1, keep}, at::kLong);
            EXPECT_LT(rel_err(real_rows(got, real), real_rows(all.narrow(1, S - keep, keep), real)), 1e-5)
                << "padded " << padded << " keep " << keep;
            auto hf = expect.narrow(0, 0, got.size(0)).narrow(1, S - keep, keep);
            EXPECT_LT(rel_err(real_rows(got, real), real_rows(hf, real)), 1e-5)
                << "padded " << padded << " keep " << keep;
        }
        ForwardInputs every  = full;  // as many positions as there are, or more: the full forward
        every.last_positions = S;
        EXPECT_TRUE(at::equal(model->forward(every), all));
    }
}

// A prefill that keeps only the last position still writes every position's keys and values: decoding after it
// gives what decoding after a full prefill gives.
TEST_P(Qwen2Parity, LastPositionPrefillFillsTheWholeCache) {
    at::NoGradGuard no_grad;
    ForwardInputs full;
    full.input_ids      = ids;
    full.attention_mask = mask;
    auto expect         = model->forward(full);

    KVCache cache(model->config.num_hidden_layers);
    const int64_t S = ids.size(1), prefill = 7;
    ForwardInputs first;
    first.input_ids      = ids.narrow(1, 0, prefill);
    first.attention_mask = mask.narrow(1, 0, prefill);
    first.cache          = &cache;
    first.last_positions = 1;
    std::vector<at::Tensor> pieces{model->forward(first)};
    EXPECT_EQ(cache.length(), prefill);
    for (int64_t start = prefill; start < S; ++start) {
        ForwardInputs step;
        step.input_ids      = ids.narrow(1, start, 1);
        step.attention_mask = mask.narrow(1, 0, start + 1);
        step.cache          = &cache;
        pieces.push_back(model->forward(step));
    }
    EXPECT_LT(rel_err(at::cat(pieces, 1), expect.narrow(1, prefill - 1, S - prefill + 1)), 1e-5);
}

TEST_P(Qwen2Parity, LastPositionsRefusesHiddenStatesAndNegativeCounts) {
    at::NoGradGuard no_grad;
    ForwardInputs in;
    in.input_ids            = ids;
    in.last_positions       = 1;
    in.output_hidden_states = true;
    EXPECT_THROW(model->forward(in), medllm::Error);
    in.output_hidden_states = false;
    in.last_positions       = -1;
    EXPECT_THROW(model->forward(in), medllm::Error);
}

TEST_P(Qwen2Parity, PackedDocumentsEqualSeparateForwards) {
    at::NoGradGuard no_grad;
    auto a = ids.narrow(0, 0, 1).narrow(1, 0, 5), b = ids.narrow(0, 0, 1).narrow(1, 5, 7);
    ForwardInputs packed;
    packed.input_ids   = at::cat({a, b}, 1);
    packed.segment_ids = at::cat({at::zeros({1, 5}, at::kLong), at::ones({1, 7}, at::kLong)}, 1);
    auto got           = model->forward(packed);
    ForwardInputs one, two;
    one.input_ids = a;
    two.input_ids = b;
    auto expect   = at::cat({model->forward(one), model->forward(two)}, 1);
    EXPECT_LT(rel_err(got, expect), 1e-5);
}

TEST_P(Qwen2Parity, CheckpointedLayersGiveTheSameGradients) {
    auto labels = ref.get("labels");
    auto run    = [&](bool checkpoint) {
        model->zero_grad();
        model->model->gradient_checkpointing = checkpoint;
        ForwardInputs in;
        in.input_ids      = ids;
        in.attention_mask = mask;
        auto loss         = causal_lm_loss(model->forward_hidden(in).hidden, model->lm_head_weight(), labels);
        loss.backward();
        std::map<std::string, at::Tensor> grads;
        for (const auto& item : model->named_parameters()) grads[item.key()] = item.value().grad().clone();
        return std::make_pair(loss.item<double>(), grads);
    };
    auto [plain_loss, plain] = run(false);
    auto [ckpt_loss, ckpt]   = run(true);
    EXPECT_DOUBLE_EQ(plain_loss, ckpt_loss);
    for (const auto& [name, g] : plain) EXPECT_LT(rel_err(ckpt[name], g), 1e-6) << name;
}

// The loss computes its gradients in forward and backward scales them by the incoming gradient: a scaled loss
// (RPO's alpha * NLL) must give exactly scaled gradients, for the hidden rows and for lm_head.
TEST_P(Qwen2Parity, ScaledLossGivesScaledGradients) {
    auto labels = ref.get("labels");
    auto run    = [&](double factor) {
        model->zero_grad();
        ForwardInputs in;
        in.input_ids      = ids;
        in.attention_mask = mask;
        auto loss         = causal_lm_loss(model->forward_hidden(in).hidden, model->lm_head_weight(), labels);
        (loss * factor).backward();
        std::map<std::string, at::Tensor> grads;
        for (const auto& item : model->named_parameters()) grads[item.key()] = item.value().grad().clone();
        return grads;
    };
    auto unit   = run(1.0);
    auto scaled = run(2.5);
    // 1e-5: the scaled upstream gradient rounds differently through the fp32 layers below the loss.
    for (const auto& [name, g] : unit) EXPECT_LT(rel_err(scaled[name], g * 2.5), 1e-5) << name;
    EXPECT_EQ(unit.count("lm_head.weight"), GetParam() == "qwen2-tiny-untied" ? 1u : 0u);
}

TEST_P(Qwen2Parity, SaveLoadRoundTripKeepsLogits) {
    at::NoGradGuard no_grad;
    auto out_dir = fs::temp_directory_path() / ("medllm_roundtrip_" + GetParam() + std::to_string(::getpid()));
    model->save_pretrained(out_dir.string(), /*max_shard_bytes=*/200'000);  // forces several shards
    EXPECT_TRUE(fs::exists(out_dir / "model.safetensors.index.json"));
    auto again = Qwen2ForCausalLM::from_pretrained(out_dir.string(), at::kFloat);
    ForwardInputs in;
    in.input_ids = ids;
    EXPECT_TRUE(at::equal(again->forward(in), model->forward(in)));
    fs::remove_all(out_dir);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Qwen2Parity, ::testing::Values("qwen2-tiny-tied", "qwen2-tiny-untied"));

TEST(Qwen2Loss, ChunkedCrossEntropyEqualsDenseCrossEntropy) {
    torch::manual_seed(0);
    auto hidden = torch::randn({2, 9, 16}, torch::requires_grad());
    auto weight = torch::randn({40, 16}, torch::requires_grad());
    auto labels = torch::randint(0, 40, {2, 9});
    labels.index_put_({0, 3}, -100);
    auto loss = causal_lm_loss(hidden, weight, labels, /*chunk_tokens=*/4);
    loss.backward();
    auto gh = hidden.grad().clone(), gw = weight.grad().clone();
    hidden.mutable_grad().reset();
    weight.mutable_grad().reset();
    auto logits = torch::matmul(hidden, weight.t()).narrow(1, 0, 8).reshape({-1, 40});
    auto ref =
        torch::nn::functional::cross_entropy(logits, labels.narrow(1, 1, 8).reshape({-1}),
                                             torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
    ref.backward();
    EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-6);
    EXPECT_LT(rel_err(gh, hidden.grad()), 1e-6);
    EXPECT_LT(rel_err(gw, weight.grad()), 1e-6);
    // sum / num_items (gradient-accumulation-correct normalization)
    auto summed = causal_lm_loss(hidden.detach(), weight.detach(), labels, 3, /*num_items=*/100);
    EXPECT_NEAR(summed.item<double>(), ref.item<double>() * 15 / 100.0, 1e-6);
}

TEST(Qwen2Load, MissingOrMisshapenTensorsAreNamed) {
    auto cfg = Qwen2Config::from_file(kFixtures / "qwen2-tiny-untied");
    auto dir = fs::temp_directory_path() / ("medllm_badckpt_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    Qwen2ForCausalLM source(cfg);
    source.init_weights(3);
    auto params = hf_named_parameters(source);
    // Drop one tensor.
    std::vector<std::pair<std::string, at::Tensor>> missing(params.begin() + 1, params.end());
    medllm::io::save_file(dir / "model.safetensors", missing);
    Qwen2ForCausalLM target(cfg);
    try {
        target.load_checkpoint(dir.string());
        FAIL() << "expected an error";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("missing tensor '" + params[0].first + "'"), std::string::npos)
            << e.what();
    }
    // Wrong shape.
    auto reshaped      = params;
    reshaped[0].second = at::zeros({3, 3});
    medllm::io::save_file(dir / "model.safetensors", reshaped);
    try {
        target.load_checkpoint(dir.string());
        FAIL() << "expected an error";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("has shape [3, 3]"), std::string::npos) << e.what();
    }
    fs::remove_all(dir);
}

TEST(Qwen2Forward, OutOfVocabularyIdsAreRefused) {
    auto cfg = Qwen2Config::from_file(kFixtures / "qwen2-tiny-tied");
    Qwen2ForCausalLM m(cfg);
    m.init_weights(0);
    ForwardInputs in;
    in.input_ids = torch::tensor({{1, 2, 100000}});
    EXPECT_THROW(m.forward(in), medllm::Error);
}

}  // namespace

// LoraLinear / QLoraLinear against PEFT (scripts/make_peft_fixtures.py) and against autograd through the
// dequantized dense weight.
#include <gtest/gtest.h>

#include <cmath>

#include "medllm/core/error.h"
#include "medllm/peft/lora.h"
#include "medllm/quant/nf4.h"
#include "peft/peft_test_util.h"

using namespace medllm;
using peft_test::fixture_tensor;

namespace {

std::shared_ptr<model::DenseLinear> dense_from_fixture() {
    auto base = std::make_shared<model::DenseLinear>(48, 40, true, at::TensorOptions().dtype(at::kFloat));
    base->weight.set_data(fixture_tensor("layer.safetensors", "weight"));
    base->bias.set_data(fixture_tensor("layer.safetensors", "bias"));
    return base;
}

void set_adapter(peft::LoraLayer& layer, const at::Tensor& A, const at::Tensor& B) {
    at::NoGradGuard no_grad;
    layer.lora_A->weight.copy_(A);
    layer.lora_B->weight.copy_(B);
}

}  // namespace

class LoraPeftParity : public ::testing::TestWithParam<bool> {};

TEST_P(LoraPeftParity, OutputsAndGradientsMatchPeft) {
    const bool rslora   = GetParam();
    const std::string t = rslora ? "rslora" : "lora";
    peft::LoraConfig cfg;
    cfg.r                     = 4;
    cfg.alpha                 = 8;
    cfg.use_rslora            = rslora;
    const double peft_scaling = fixture_tensor("layer.safetensors", t + ".scaling").item<double>();
    EXPECT_DOUBLE_EQ(cfg.scaling(), peft_scaling);

    peft::LoraLinear layer(*dense_from_fixture(), cfg.r, cfg.scaling(), 0.0);
    set_adapter(layer, fixture_tensor("layer.safetensors", "A"), fixture_tensor("layer.safetensors", "B"));
    auto x = fixture_tensor("layer.safetensors", "x").requires_grad_(true);
    auto y = layer.forward(x);
    (y * fixture_tensor("layer.safetensors", "grad_y")).sum().backward();

    EXPECT_CLOSE(y, fixture_tensor("layer.safetensors", t + ".y"), 1e-5);
    EXPECT_CLOSE(x.grad(), fixture_tensor("layer.safetensors", t + ".grad_x"), 1e-5);
    EXPECT_CLOSE(layer.lora_A->weight.grad(), fixture_tensor("layer.safetensors", t + ".grad_A"), 1e-4);
    EXPECT_CLOSE(layer.lora_B->weight.grad(), fixture_tensor("layer.safetensors", t + ".grad_B"), 1e-4);
    // The base stays frozen.
    EXPECT_FALSE(layer.weight.requires_grad());
    EXPECT_FALSE(layer.weight.grad().defined());
    EXPECT_FALSE(layer.bias.grad().defined());
}

INSTANTIATE_TEST_SUITE_P(PlainAndRsLora, LoraPeftParity, ::testing::Values(false, true));

TEST(LoraInit, MatchesPeftDistribution) {
    // PEFT: A = kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0.
    const double bound = 1.0 / std::sqrt(48.0);
    auto peft_A        = fixture_tensor("layer.safetensors", "peft_init_A");
    EXPECT_LE(peft_A.abs().max().item<double>(), bound);
    EXPECT_GT(peft_A.abs().max().item<double>(), 0.9 * bound);  // the same bound, not a narrower one
    EXPECT_EQ(fixture_tensor("layer.safetensors", "peft_init_B").abs().max().item<double>(), 0.0);

    auto base = std::make_shared<model::DenseLinear>(48, 40, false, at::TensorOptions().dtype(at::kFloat));
    {
        at::NoGradGuard no_grad;
        base->weight.normal_();
    }
    peft::LoraLinear layer(*base, 256, 1.0, 0.0);
    layer.reset_adapter(123);
    const auto& A = layer.lora_A->weight;
    EXPECT_EQ(A.sizes(), (std::vector<int64_t>{256, 48}));
    EXPECT_EQ(layer.lora_B->weight.sizes(), (std::vector<int64_t>{40, 256}));
    EXPECT_EQ(A.scalar_type(), at::kFloat);  // fp32 adapters by default
    EXPECT_LE(A.abs().max().item<double>(), bound);
    EXPECT_NEAR(A.mean().item<double>(), 0.0, 0.01);
    EXPECT_NEAR(A.std().item<double>(), bound / std::sqrt(3.0), 0.03 * bound);  // uniform: std = bound/sqrt(3)
    EXPECT_EQ(layer.lora_B->weight.abs().max().item<double>(), 0.0);
    // Seeded init is reproducible; B = 0 makes the fresh layer equal its base.
    auto A0 = A.clone();
    layer.reset_adapter(123);
    EXPECT_TRUE(at::equal(A0, layer.lora_A->weight));
    auto x = at::randn({3, 48});
    EXPECT_TRUE(at::allclose(layer.forward(x), at::linear(x, base->weight)));
}

TEST(LoraLinear, DropoutOnlyTouchesTheAdapterInputAndOnlyInTraining) {
    auto dense = dense_from_fixture();
    peft::LoraLinear layer(*dense, 4, 2.0, 0.5);
    set_adapter(layer, fixture_tensor("layer.safetensors", "A"), fixture_tensor("layer.safetensors", "B"));
    auto x = fixture_tensor("layer.safetensors", "x");
    layer.eval();
    auto y_eval = layer.forward(x);
    EXPECT_CLOSE(y_eval, fixture_tensor("layer.safetensors", "lora.y"), 1e-5);  // scaling 2 = alpha 8 / r 4
    layer.train();
    at::manual_seed(3);
    auto y_train = layer.forward(x);
    EXPECT_GT(peft_test::max_abs_diff(y_train, y_eval), 1e-3);
    // The base part is untouched: y_train - base(x) is the adapter applied to a dropped-out input.
    at::manual_seed(3);
    auto dropped  = at::dropout(x, 0.5, true);
    auto expected = at::linear(x, dense->weight, dense->bias) +
                    2.0 * at::linear(at::linear(dropped, layer.lora_A->weight), layer.lora_B->weight);
    EXPECT_CLOSE(y_train, expected, 1e-5);
}

TEST(LoraLinear, MergeAndUnmergeRoundTrip) {
    auto dense = dense_from_fixture();
    auto w0    = dense->weight.clone();
    peft::LoraLinear layer(*dense, 4, 2.0, 0.0);
    set_adapter(layer, fixture_tensor("layer.safetensors", "A"), fixture_tensor("layer.safetensors", "B"));
    auto x = fixture_tensor("layer.safetensors", "x");
    auto y = layer.forward(x);
    layer.merge();
    EXPECT_TRUE(layer.merged());
    EXPECT_CLOSE(layer.weight, w0 + 2.0 * at::matmul(layer.lora_B->weight, layer.lora_A->weight), 1e-6);
    EXPECT_CLOSE(layer.forward(x), y, 1e-5);
    layer.merge();  // idempotent
    EXPECT_CLOSE(layer.forward(x), y, 1e-5);
    layer.unmerge();
    EXPECT_FALSE(layer.merged());
    EXPECT_CLOSE(layer.weight, w0, 1e-6);
    EXPECT_CLOSE(layer.forward(x), y, 1e-5);
}

// ---------------------------------------------------------------- QLoRA

namespace {

struct QLoraCase {
    quant::Nf4Tensor w;
    at::Tensor dense_w, bias, A, B, x, gy;
};

QLoraCase make_case(int64_t out, int64_t in, int64_t rows, uint64_t seed, bool double_quant) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    QLoraCase c;
    auto w    = at::randn({out, in}, gen) * 0.05;
    c.w       = quant::nf4_quantize(w, 64, double_quant);
    c.dense_w = quant::nf4_dequantize(c.w, at::kFloat);
    c.bias    = at::randn({out}, gen) * 0.1;
    c.A       = at::randn({8, in}, gen) * 0.1;
    c.B       = at::randn({out, 8}, gen) * 0.1;
    c.x       = at::randn({2, rows, in}, gen);
    c.gy      = at::randn({2, rows, out}, gen);
    return c;
}

}  // namespace

class QLoraGradients : public ::testing::TestWithParam<bool> {};

TEST_P(QLoraGradients, MatchAutogradThroughTheDequantizedWeight) {
    auto c         = make_case(40, 128, 5, 17, GetParam());
    const double s = 0.25;
    peft::QLoraLinear layer(c.w, c.bias.clone(), 8, s, 0.0);
    set_adapter(layer, c.A, c.B);

    auto x = c.x.clone().requires_grad_(true);
    auto y = layer.forward(x);
    (y * c.gy).sum().backward();

    auto xr = c.x.clone().requires_grad_(true);
    auto Ar = c.A.clone().requires_grad_(true);
    auto Br = c.B.clone().requires_grad_(true);
    auto yr = at::linear(xr, c.dense_w, c.bias) + s * at::linear(at::linear(xr, Ar), Br);
    (yr * c.gy).sum().backward();

    EXPECT_CLOSE(y, yr, 1e-5);
    EXPECT_CLOSE(x.grad(), xr.grad(), 1e-5);
    EXPECT_CLOSE(layer.lora_A->weight.grad(), Ar.grad(), 1e-4);
    EXPECT_CLOSE(layer.lora_B->weight.grad(), Br.grad(), 1e-4);
    EXPECT_FALSE(layer.bias.grad().defined());  // frozen bias, and there is no weight parameter at all
    for (const auto& p : layer.named_parameters()) {
        EXPECT_TRUE(p.key() == "bias" || p.key().find("lora_") == 0) << p.key();
    }
}

INSTANTIATE_TEST_SUITE_P(WithAndWithoutDoubleQuant, QLoraGradients, ::testing::Values(true, false));

TEST(QLoraFunction, SeparateDropoutInputAndTrainableBiasGetTheirOwnGradients) {
    auto c  = make_case(24, 64, 3, 5, true);
    auto x  = c.x.clone().requires_grad_(true);
    auto xl = (c.x * 0.5).requires_grad_(true);
    auto b  = c.bias.clone().requires_grad_(true);
    auto A  = c.A.clone().requires_grad_(true);
    auto B  = c.B.clone().requires_grad_(true);
    auto y  = peft::qlora_linear(x, xl, c.w, b, A, B, 1.5);
    (y * c.gy).sum().backward();

    auto xr  = c.x.clone().requires_grad_(true);
    auto xlr = (c.x * 0.5).requires_grad_(true);
    auto br  = c.bias.clone().requires_grad_(true);
    auto Ar  = c.A.clone().requires_grad_(true);
    auto Br  = c.B.clone().requires_grad_(true);
    auto yr  = at::linear(xr, c.dense_w, br) + 1.5 * at::linear(at::linear(xlr, Ar), Br);
    (yr * c.gy).sum().backward();
    EXPECT_CLOSE(y, yr, 1e-5);
    EXPECT_CLOSE(x.grad(), xr.grad(), 1e-5);
    EXPECT_CLOSE(xl.grad(), xlr.grad(), 1e-5);
    EXPECT_CLOSE(b.grad(), br.grad(), 1e-5);
    EXPECT_CLOSE(A.grad(), Ar.grad(), 1e-4);
    EXPECT_CLOSE(B.grad(), Br.grad(), 1e-4);
}

TEST(QLoraFunction, Bf16ActivationsWithFp32Adapters) {
    auto c    = make_case(32, 64, 4, 9, true);
    c.w.dtype = at::kBFloat16;  // dequantize to bf16 as a bf16 checkpoint would
    auto x    = c.x.to(at::kBFloat16).requires_grad_(true);
    auto y    = peft::qlora_linear(x, x, c.w, c.bias.to(at::kBFloat16), c.A, c.B, 2.0);
    EXPECT_EQ(y.scalar_type(), at::kBFloat16);
    y.backward(c.gy.to(at::kBFloat16));
    EXPECT_EQ(x.grad().scalar_type(), at::kBFloat16);
    // Reference in fp32 from the same bf16 weight.
    auto Wb = quant::nf4_dequantize(c.w).to(at::kFloat);
    auto xr = x.detach().to(at::kFloat).requires_grad_(true);
    auto yr = at::linear(xr, Wb, c.bias.to(at::kBFloat16).to(at::kFloat)) + 2.0 * at::linear(at::linear(xr, c.A), c.B);
    yr.backward(c.gy.to(at::kBFloat16).to(at::kFloat));
    const double scale = yr.abs().max().item<double>();
    EXPECT_LE(peft_test::max_abs_diff(y, yr), 0.02 * scale);
    EXPECT_LE(peft_test::max_abs_diff(x.grad(), xr.grad()), 0.02 * xr.grad().abs().max().item<double>());
}

TEST(QLoraLinear, MergeKeepsADenseCopyAndUnmergeDropsIt) {
    auto c = make_case(40, 64, 3, 23, true);
    peft::QLoraLinear layer(c.w, c.bias.clone(), 8, 0.5, 0.0);
    set_adapter(layer, c.A, c.B);
    auto y = layer.forward(c.x);
    layer.merge();
    EXPECT_CLOSE(layer.forward(c.x), y, 1e-5);
    {
        // Disabled adapters inside a merged layer: the scope must give the base output.
        layer.adapters_enabled = false;
        layer.unmerge();
        EXPECT_CLOSE(layer.forward(c.x), at::linear(c.x, c.dense_w, c.bias), 1e-5);
        layer.adapters_enabled = true;
    }
    EXPECT_CLOSE(layer.forward(c.x), y, 1e-5);
}

TEST(QLoraLinear, RankZeroIsAPlainNf4Linear) {
    auto c = make_case(16, 64, 2, 31, false);
    peft::QLoraLinear layer(c.w, at::Tensor(), 0, 1.0, 0.0);
    EXPECT_FALSE(layer.has_adapter());
    auto x = c.x.clone().requires_grad_(true);
    auto y = layer.forward(x);
    EXPECT_CLOSE(y, at::linear(c.x, c.dense_w), 1e-5);
    y.backward(c.gy);
    EXPECT_CLOSE(x.grad(), at::matmul(c.gy, c.dense_w), 1e-5);
    EXPECT_TRUE(layer.parameters().empty());
}

TEST(QLoraFunction, RejectsMismatchedAdapters) {
    auto c = make_case(16, 64, 2, 3, false);
    EXPECT_THROW(peft::qlora_linear(c.x, c.x, c.w, at::Tensor(), c.A, at::Tensor(), 1.0), Error);
    EXPECT_THROW(peft::qlora_linear(c.x, c.x, c.w, at::Tensor(), c.A.t(), c.B, 1.0), Error);
}

TEST(LoraConfig, RejectsBadValues) {
    peft::LoraConfig cfg;
    cfg.r = 0;
    EXPECT_THROW(cfg.validate(), UsageError);
    cfg.r              = 8;
    cfg.target_modules = {"q_proj", "lm_head"};
    try {
        cfg.validate();
        FAIL();
    } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("lm_head"), std::string::npos);
    }
    cfg.target_modules = peft::all_projection_names();
    cfg.dropout        = 1.0;
    EXPECT_THROW(cfg.validate(), UsageError);
    cfg.dropout    = 0.1;
    cfg.use_rslora = true;
    cfg.r          = 16;
    cfg.alpha      = 8;
    EXPECT_DOUBLE_EQ(cfg.scaling(), 2.0);
}

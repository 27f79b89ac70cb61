// NF4 reference properties that do not need the golden fixtures: code book, tie rule, nibble order, error bounds,
// and how bad input is rejected.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "medllm/core/error.h"
#include "medllm/quant/nf4.h"
#include "medllm/quant/nf4_serialize.h"

namespace medllm::quant {
namespace {

TEST(Nf4Reference, CodeBookIsSortedWithExactZeroAndUnitEnds) {
    const auto& code = nf4_code();
    EXPECT_EQ(code[0], -1.0f);
    EXPECT_EQ(code[7], 0.0f);
    EXPECT_EQ(code[15], 1.0f);
    for (int i = 0; i + 1 < 16; ++i) EXPECT_LT(code[i], code[i + 1]);
    // Spec table: midpoint 7 (between codes 7 and 8) is 0x3D22FAFF.
    uint32_t bits = 0;
    std::memcpy(&bits, &nf4_midpoints()[7], 4);
    EXPECT_EQ(bits, 0x3D22FAFFu);
}

TEST(Nf4Reference, TieGoesToLowerCodeAndNanToZero) {
    const auto& mids = nf4_midpoints();
    for (int k = 0; k < 15; ++k) {
        EXPECT_EQ(ref::nf4_index(mids[k]), k) << "exactly on midpoint " << k;
        EXPECT_EQ(ref::nf4_index(std::nextafter(mids[k], 2.0f)), k + 1) << "just above midpoint " << k;
    }
    EXPECT_EQ(ref::nf4_index(-1.0f), 0);
    EXPECT_EQ(ref::nf4_index(1.0f), 15);
    EXPECT_EQ(ref::nf4_index(0.0f), 7);
    EXPECT_EQ(ref::nf4_index(std::nanf("")), 0);
}

TEST(Nf4Reference, FirstElementGoesToHighNibbleAndOddTailIsCodeSeven) {
    // Block of 32 with absmax 1: element 0 = -1 (code 0), element 1 = 1 (code 15), element 2 = 0 (code 7).
    std::vector<float> x(33, 0.0f);
    x[0]  = -1.0f;
    x[1]  = 1.0f;
    x[32] = 0.5f;  // tail block of one element: its own absmax 0.5 -> code 15; padding -> code 7
    std::vector<uint8_t> packed(17);
    std::vector<float> absmax(2);
    ref::nf4_quantize(x.data(), 33, 32, packed.data(), absmax.data());
    EXPECT_EQ(packed[0], 0x0F);
    EXPECT_EQ(packed[1], 0x77);
    EXPECT_EQ(packed[16], 0xF7);
    EXPECT_EQ(absmax[0], 1.0f);
    EXPECT_EQ(absmax[1], 0.5f);
}

TEST(Nf4Reference, AllZeroBlockGivesCode7AndPositiveZero) {
    const at::Tensor zeros = at::zeros({2, 64});
    const Nf4Tensor w      = nf4_quantize(zeros, 64, false);
    EXPECT_TRUE(at::all(w.packed == 0x77).item<bool>());
    const at::Tensor back = nf4_dequantize(w);
    EXPECT_TRUE(at::equal(back, zeros));
    EXPECT_FALSE(std::signbit(back[0][0].item<float>()));
}

// bitsandbytes tests/test_functional.py error oracle (1024x1024 N(0,1)): mean abs error per block size.
TEST(Nf4Reference, ErrorMatchesBitsandbytesOracle) {
    const std::vector<std::pair<int64_t, double>> oracle = {
        {32, 0.067746}, {64, 0.072798}, {128, 0.076831}, {4096, 0.092547}};
    at::manual_seed(0);
    const at::Tensor x = at::randn({1024, 1024});
    for (const auto& [blocksize, expected] : oracle) {
        for (bool dq : {false, true}) {
            const at::Tensor back = nf4_dequantize(nf4_quantize(x, blocksize, dq));
            const double err      = (back - x).abs().mean().item<double>();
            EXPECT_NEAR(err, expected, dq ? 2e-3 : 1e-3) << "blocksize " << blocksize << " dq " << dq;
        }
    }
}

TEST(Nf4Reference, DoubleQuantizedAbsmaxIsCloseToPlainAbsmax) {
    at::manual_seed(1);
    const at::Tensor x     = at::randn({96, 256}) * 0.02;
    const at::Tensor plain = nf4_absmax(nf4_quantize(x, 64, false));
    const at::Tensor dq    = nf4_absmax(nf4_quantize(x, 64, true));
    EXPECT_LT(((dq - plain).abs() / plain).max().item<float>(), 0.02f);
    EXPECT_FALSE(at::equal(dq, plain));
}

TEST(Nf4Reference, Bf16AndFp16KeepTheirDtypeAndRoundTrip) {
    at::manual_seed(2);
    for (auto dtype : {at::kBFloat16, at::kHalf}) {
        const at::Tensor x = at::randn({8, 128}).to(dtype);
        const Nf4Tensor w  = nf4_quantize(x, 64, true);
        EXPECT_EQ(w.dtype, dtype);
        const at::Tensor back = nf4_dequantize(w);
        EXPECT_EQ(back.scalar_type(), dtype);
        EXPECT_EQ(back.sizes(), x.sizes());
        EXPECT_LT((back.to(at::kFloat) - x.to(at::kFloat)).abs().mean().item<float>(), 0.11f);
    }
}

// The tensor API runs in parallel over runs of blocks and dequantizes straight into the target dtype; it must
// give the single-threaded raw reference's bytes and values exactly, tail block and odd length included.
TEST(Nf4Reference, ParallelTensorPathEqualsRawReference) {
    at::manual_seed(5);
    const int saved_threads = at::get_num_threads();
    at::set_num_threads(2);
    for (int64_t blocksize : {32, 64, 4096}) {
        for (int64_t n : {int64_t(1), int64_t(63), int64_t(200001), int64_t(1) << 18}) {
            const at::Tensor x     = at::randn({n}) * 3.0;
            const int64_t n_blocks = (n + blocksize - 1) / blocksize;
            std::vector<uint8_t> packed((n + 1) / 2);
            std::vector<float> absmax(n_blocks), dense(n);
            ref::nf4_quantize(x.data_ptr<float>(), n, blocksize, packed.data(), absmax.data());
            ref::nf4_dequantize(packed.data(), absmax.data(), n, blocksize, dense.data());

            const Nf4Tensor w       = nf4_quantize(x, blocksize, false);
            const std::string where = "n=" + std::to_string(n) + " blocksize=" + std::to_string(blocksize);
            ASSERT_EQ(0, std::memcmp(w.packed.data_ptr<uint8_t>(), packed.data(), packed.size())) << where;
            ASSERT_EQ(0, std::memcmp(w.absmax.data_ptr<float>(), absmax.data(), absmax.size() * 4)) << where;
            const at::Tensor expected = at::from_blob(dense.data(), {n}, at::kFloat).clone();
            for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
                EXPECT_TRUE(at::equal(nf4_dequantize(w, dtype), expected.to(dtype))) << where << " " << dtype;
            }
        }
    }
    at::set_num_threads(saved_threads);
}

TEST(Nf4Reference, LinearEqualsLinearOnDequantizedWeight) {
    at::manual_seed(3);
    const at::Tensor weight = at::randn({48, 64});
    const at::Tensor bias   = at::randn({48});
    // The dequantize + GEMM path (nf4_gemv_cpu_test covers the fused one and the choice between them).
    const at::Tensor x = at::randn({2, 3, 64});
    const Nf4Tensor w  = nf4_quantize(weight, 64, true);
    const at::Tensor y = nf4_linear(x, w, bias, Nf4CpuPath::dequantize_gemm);
    EXPECT_EQ(y.sizes(), (at::IntArrayRef{2, 3, 48}));
    EXPECT_TRUE(at::equal(y, at::linear(x, nf4_dequantize(w), bias)));
    EXPECT_THROW(nf4_linear(at::randn({2, 63}), w), Error);
    EXPECT_THROW(nf4_linear(x, w, at::randn({47})), Error);
}

// Inference linears and the input gradient share one reused dense buffer: results must not alias it (a later call
// with another weight leaves earlier outputs intact), and a smaller weight after a larger one still fits.
TEST(Nf4Reference, WorkspacePathsEqualDenseMathAndDoNotAlias) {
    at::manual_seed(6);
    const at::NoGradGuard no_grad;
    const at::Tensor big_dense   = at::randn({96, 128}).to(at::kBFloat16);
    const at::Tensor small_dense = at::randn({40, 64}).to(at::kHalf);
    const Nf4Tensor big = nf4_quantize(big_dense, 64, true), small = nf4_quantize(small_dense, 32, false);
    const at::Tensor x_big   = at::randn({5, 128}).to(at::kBFloat16);
    const at::Tensor x_small = at::randn({3, 64}).to(at::kBFloat16);  // fp16 weight, bf16 compute: cast path

    const at::Tensor y_big   = nf4_linear(x_big, big, std::nullopt, Nf4CpuPath::dequantize_gemm);
    const at::Tensor y_small = nf4_linear(x_small, small, std::nullopt, Nf4CpuPath::dequantize_gemm);
    EXPECT_TRUE(at::equal(y_big, at::linear(x_big, nf4_dequantize(big))));
    EXPECT_TRUE(at::equal(y_small, at::linear(x_small, nf4_dequantize(small).to(at::kBFloat16))));

    const at::Tensor g_big    = at::randn({2, 3, 96}).to(at::kBFloat16);
    const at::Tensor g_small  = at::randn({7, 40});  // fp32 gradient: dequantize to fp16, then cast
    const at::Tensor dx_big   = nf4_linear_input_grad(g_big, big);
    const at::Tensor dx_small = nf4_linear_input_grad(g_small, small);
    EXPECT_EQ(dx_big.sizes(), (at::IntArrayRef{2, 3, 128}));
    EXPECT_TRUE(at::equal(dx_big, at::matmul(g_big, nf4_dequantize(big))));
    EXPECT_TRUE(at::equal(dx_small, at::matmul(g_small, nf4_dequantize(small).to(at::kFloat))));
    // Still the first results after the workspace was overwritten by later calls.
    EXPECT_TRUE(at::equal(y_big, at::linear(x_big, nf4_dequantize(big))));
    EXPECT_THROW(nf4_linear_input_grad(at::randn({2, 95}), big), Error);
}

TEST(Nf4Reference, RejectsBadInput) {
    EXPECT_THROW(nf4_quantize(at::randn({4, 64}), 48), UsageError);
    EXPECT_THROW(nf4_quantize(at::randn({4, 64}), 8192), UsageError);
    EXPECT_THROW(nf4_quantize(at::ones({4, 64}, at::kLong), 64), Error);
    EXPECT_THROW(nf4_quantize(at::empty({0, 64}), 64), Error);
    at::Tensor bad = at::randn({4, 64});
    bad[1][3]      = std::numeric_limits<float>::quiet_NaN();
    EXPECT_THROW(nf4_quantize(bad, 64), Error);
    bad[1][3] = std::numeric_limits<float>::infinity();
    EXPECT_THROW(nf4_quantize(bad, 64), Error);

    Nf4Tensor w         = nf4_quantize(at::randn({4, 64}), 64, true);
    Nf4Tensor truncated = w;
    truncated.packed    = w.packed.narrow(0, 0, 10);
    EXPECT_THROW(nf4_dequantize(truncated), Error);
    Nf4Tensor wrong_blocks     = w;
    wrong_blocks.nested_absmax = at::zeros({2});
    EXPECT_THROW(nf4_dequantize(wrong_blocks), Error);
    Nf4Tensor wrong_map = w;
    wrong_map.quant_map = at::zeros({16});
    EXPECT_THROW(nf4_dequantize(wrong_map), Error);
    EXPECT_THROW(nf4_dequantize(w, at::kLong), UsageError);
}

TEST(Nf4Serialize, PythonFloatRepr) {
    EXPECT_EQ(python_float_repr(2.5942487716674805), "2.5942487716674805");
    EXPECT_EQ(python_float_repr(0.1), "0.1");
    EXPECT_EQ(python_float_repr(100.0), "100.0");
    EXPECT_EQ(python_float_repr(0.0001), "0.0001");
    EXPECT_EQ(python_float_repr(1e-05), "1e-05");
    EXPECT_EQ(python_float_repr(1.5e16), "1.5e+16");
    EXPECT_EQ(python_float_repr(1e15), "1000000000000000.0");
    EXPECT_EQ(python_float_repr(-0.03125), "-0.03125");
    EXPECT_EQ(python_float_repr(0.0), "0.0");
}

TEST(Nf4Serialize, RoundTripAndErrorsNameTheKey) {
    at::manual_seed(4);
    const Nf4Tensor w     = nf4_quantize(at::randn({16, 96}).to(at::kBFloat16), 32, true);
    const std::string key = "model.layers.0.mlp.up_proj.weight";
    auto sd               = nf4_to_state_dict(w, key);
    EXPECT_EQ(sd.size(), 6u);
    // nf4_state_dict_keys (resume checks in medllm quantize) names the same entries in the same order.
    for (bool nested : {true, false}) {
        std::vector<std::string> names;
        const Nf4Tensor q = nf4_quantize(at::randn({4, 64}), 64, nested);
        for (const auto& [k, v] : nf4_to_state_dict(q, key)) names.push_back(k);
        EXPECT_EQ(nf4_state_dict_keys(key, nested), names);
    }
    const Nf4Tensor back = nf4_from_state_dict(sd, key);
    EXPECT_TRUE(at::equal(nf4_dequantize(back), nf4_dequantize(w)));
    EXPECT_EQ(back.offset, w.offset);
    EXPECT_EQ(back.dtype, at::kBFloat16);

    auto missing = sd;
    missing.erase(key + ".nested_absmax");
    try {
        nf4_from_state_dict(missing, key);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(key + ".nested_absmax"), std::string::npos) << e.what();
    }
    auto garbled                        = sd;
    garbled[key + kNf4QuantStateSuffix] = at::full({5}, 'x', at::kByte);
    EXPECT_THROW(nf4_from_state_dict(garbled, key), Error);
    auto fp4 = sd;
    fp4.erase(key + kNf4QuantStateSuffix);
    fp4[key + ".quant_state.bitsandbytes__fp4"] = sd.at(key + kNf4QuantStateSuffix);
    EXPECT_THROW(nf4_from_state_dict(fp4, key), Error);
    auto not_nf4                = sd;
    not_nf4[key + ".quant_map"] = at::zeros({16});
    EXPECT_THROW(nf4_from_state_dict(not_nf4, key), Error);
    auto short_weight = sd;
    short_weight[key] = sd.at(key).narrow(0, 0, 3);
    EXPECT_THROW(nf4_from_state_dict(short_weight, key), Error);
    // A bfloat16 quant_storage view of the same bytes is accepted.
    auto storage = sd;
    storage[key] = sd.at(key).reshape({-1}).view(at::kBFloat16).reshape({-1, 1});
    EXPECT_TRUE(at::equal(nf4_dequantize(nf4_from_state_dict(storage, key)), nf4_dequantize(w)));
}

}  // namespace
}  // namespace medllm::quant

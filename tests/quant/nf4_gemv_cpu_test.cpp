// The fused CPU NF4 matrix-vector product (nf4_gemv_cpu) against dequantize-then-matmul and the raw-buffer reference,
// and nf4_linear's choice between the two on the CPU.
//
// Tolerance. Both the fused kernel and the dequantize path multiply the same weights (code * absmax rounded to the
// stored dtype: checked exactly below) by the same activations and accumulate in fp32; they differ only in the order
// of the fp32 additions (and in FMA against multiply-then-add). For any order, an fp32 dot product of K terms plus a
// bias is within gamma * S of the exact value, gamma = n*u / (1 - n*u), n = K + 1, u = 2^-24, S = sum |x_k w_k| + |b|
// (Higham, Accuracy and Stability of Numerical Algorithms, eq. 3.5; an FMA rounds once where a multiply and an add
// round twice, so it stays inside the same bound). A bf16 / fp16 output rounds that fp32 value once more: at most
// half an ulp of the output format at |y| + gamma * S. The test computes the exact value in double from the
// reference dequantization and holds every path (fused AVX2, fused scalar, dequantize + GEMM) to that bound, so the
// fused and dense results agree within twice it. A one-hot activation has no accumulation at all, so there the fused
// result must equal the dequantized weight bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include <ATen/Parallel.h>

#include "medllm/core/error.h"
#include "medllm/quant/nf4.h"

namespace medllm::quant {
namespace {

struct Case {
    int64_t out, in, blocksize;
    bool double_quant;
    at::ScalarType weight_dtype, x_dtype;
    int64_t rows;
    bool bias;
};

std::string describe(const Case& c) {
    return std::to_string(c.out) + "x" + std::to_string(c.in) + " block " + std::to_string(c.blocksize) +
           (c.double_quant ? " DQ" : " plain") + " weight " + c10::toString(c.weight_dtype) + " x " +
           c10::toString(c.x_dtype) + " rows " + std::to_string(c.rows) + (c.bias ? " +bias" : "");
}

// The weight in double from the raw-buffer reference: ref::rebuild_absmax + ref::nf4_dequantize (fp32), then the
// rounding to the stored dtype that nf4_dequantize applies.
at::Tensor reference_weight(const Nf4Tensor& w) {
    const int64_t n = w.numel();
    std::vector<float> absmax(static_cast<size_t>(w.n_blocks()));
    if (w.nested) {
        ref::rebuild_absmax(w.absmax.data_ptr<uint8_t>(), w.nested_absmax.data_ptr<float>(),
                            w.nested_quant_map.data_ptr<float>(), w.offset, w.n_blocks(), w.nested_blocksize,
                            absmax.data());
    } else {
        std::copy(w.absmax.data_ptr<float>(), w.absmax.data_ptr<float>() + w.n_blocks(), absmax.begin());
    }
    at::Tensor out = at::empty({n}, at::kFloat);
    ref::nf4_dequantize(w.packed.data_ptr<uint8_t>(), absmax.data(), n, w.blocksize, out.data_ptr<float>());
    return out.to(w.dtype).to(at::kDouble).view(w.shape);
}

// Half an ulp of `format` at magnitude v (normal range; the test's values are far from subnormals).
at::Tensor half_ulp(const at::Tensor& v, at::ScalarType format) {
    const int mantissa = format == at::kBFloat16 ? 7 : format == at::kHalf ? 10 : 23;
    return at::pow(2.0, at::floor(at::log2(v.clamp_min(1e-30))) - mantissa - 1);
}

// max over elements of |y - exact| / bound; <= 1 passes.
double worst_ratio(const at::Tensor& y, const at::Tensor& exact, const at::Tensor& abs_sum, int64_t terms) {
    const double u     = std::ldexp(1.0, -24);
    const double gamma = terms * u / (1.0 - terms * u);
    at::Tensor bound   = gamma * abs_sum;
    if (y.scalar_type() != at::kFloat) bound = bound + half_ulp(exact.abs() + bound, y.scalar_type());
    return ((y.to(at::kDouble) - exact).abs() / bound).max().item<double>();
}

void check_case(const Case& c) {
    SCOPED_TRACE(describe(c) + (nf4_gemv_cpu_vectorized(c.weight_dtype, c.x_dtype, c.in) ? " (AVX2)" : " (scalar)"));
    const at::NoGradGuard no_grad;
    const at::Tensor dense = (at::randn({c.out, c.in}) * 0.02).to(c.weight_dtype);
    const Nf4Tensor w      = nf4_quantize(dense, c.blocksize, c.double_quant);
    const at::Tensor x     = at::randn({c.rows, c.in}).to(c.x_dtype);
    const at::Tensor bias  = c.bias ? at::randn({c.out}).to(c.x_dtype) : at::Tensor();

    // The dequantize path's weights are the reference's, exactly. Cast to x's dtype (bitsandbytes' order: dequantize
    // to the stored dtype, then cast) they are what the fused kernel's tables must reproduce.
    ASSERT_TRUE(at::equal(nf4_dequantize(w).to(at::kDouble), reference_weight(w)));
    const at::Tensor w_ref = reference_weight(w).to(c.x_dtype).to(at::kDouble);

    const at::Tensor xd = x.to(at::kDouble);
    at::Tensor exact    = at::matmul(xd, w_ref.t());
    at::Tensor abs_sum  = at::matmul(xd.abs(), w_ref.abs().t());
    if (c.bias) {
        exact   = exact + bias.to(at::kDouble);
        abs_sum = abs_sum + bias.to(at::kDouble).abs();
    }
    const int64_t terms = c.in + (c.bias ? 1 : 0);

    const at::Tensor fused  = nf4_gemv_cpu(x, w, bias);
    const at::Tensor scalar = nf4_gemv_cpu(x, w, bias, /*scalar=*/true);
    // Today's dequantize-then-matmul, bitsandbytes' order: dequantize to the stored dtype, cast, one GEMM.
    const at::Tensor dequant_matmul = at::linear(x, nf4_dequantize(w).to(c.x_dtype), bias);
    EXPECT_EQ(fused.scalar_type(), c.x_dtype);
    EXPECT_EQ(fused.sizes(), dequant_matmul.sizes());
    EXPECT_LE(worst_ratio(fused, exact, abs_sum, terms), 1.0);
    EXPECT_LE(worst_ratio(scalar, exact, abs_sum, terms), 1.0);
    EXPECT_LE(worst_ratio(dequant_matmul, exact, abs_sum, terms), 1.0);

    // One-hot activations: no accumulation, so every output is one dequantized weight (rounded to x's dtype), exactly.
    const int64_t probes = std::min<int64_t>(c.in, 8);
    at::Tensor one_hot   = at::zeros({probes, c.in}, x.options());
    for (int64_t p = 0; p < probes; ++p) one_hot[p][(p * 7919) % c.in] = 1.0;
    const at::Tensor columns = at::matmul(one_hot.to(at::kDouble), w_ref.t()).to(c.x_dtype);
    EXPECT_TRUE(at::equal(nf4_gemv_cpu(one_hot, w), columns));
    EXPECT_TRUE(at::equal(nf4_gemv_cpu(one_hot, w, at::Tensor(), true), columns));
}

TEST(Nf4GemvCpu, EqualsDequantizeThenMatmulWithinTheAccumulationBound) {
    at::manual_seed(11);
    using S            = at::ScalarType;
    const Case cases[] = {
        // Qwen2.5-0.5B projection shapes (q/o, k/v, gate/up, down) at decode row counts, both activation dtypes.
        {896, 896, 64, true, S::BFloat16, S::BFloat16, 1, true},
        {128, 896, 64, true, S::BFloat16, S::Float, 1, true},
        {4864, 896, 64, true, S::BFloat16, S::Float, 2, false},
        {896, 4864, 64, true, S::BFloat16, S::BFloat16, 8, false},
        // Other block sizes, plain absmax, fp32 and fp16 stored weights, fp16 activations.
        {96, 256, 32, false, S::Float, S::Float, 3, false},
        {64, 512, 128, true, S::Half, S::BFloat16, 5, true},
        {40, 1024, 256, false, S::BFloat16, S::Half, 4, false},
        {33, 2048, 1024, true, S::Float, S::Float, 7, true},
        // A compute dtype other than the stored one: the weight is rounded to the stored dtype, then to x's.
        {64, 512, 64, true, S::Float, S::BFloat16, 2, true},
        {48, 256, 64, false, S::BFloat16, S::Half, 3, false},
        {72, 384, 64, true, S::Half, S::BFloat16, 1, false},
        // A block spanning rows (in < blocksize), still on the vectorized path: 4096-blocks over rows of 896.
        {37, 896, 4096, true, S::BFloat16, S::BFloat16, 2, false},
        // Odd sizes: rows not a multiple of 16 (the scalar kernel), blocks straddling rows, odd row length (rows
        // start mid-byte), a partial last block, odd output counts, and more than 8 activation rows.
        {13, 40, 32, true, S::BFloat16, S::Float, 2, true},
        {7, 33, 64, false, S::Float, S::Float, 3, false},
        {11, 97, 32, true, S::BFloat16, S::BFloat16, 1, true},
        {5, 48, 64, true, S::Half, S::Float, 1, false},
        {19, 320, 64, true, S::BFloat16, S::Float, 11, true},
        {3, 16, 32, false, S::BFloat16, S::BFloat16, 1, false},
    };
    for (const Case& c : cases) check_case(c);
}

// The real projection shapes take an AVX2 kernel wherever the CPU has AVX2, FMA and F16C (so the test above compares
// it with the scalar one there), and the scalar kernel elsewhere.
TEST(Nf4GemvCpu, RealShapesAreVectorizedOnAvx2) {
#if defined(__x86_64__)
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    const bool avx2 = false;
#endif
    for (const int64_t in : {896, 4864, 3584, 18944, 8192, 29568}) {
        for (const auto compute : {at::kFloat, at::kBFloat16, at::kHalf}) {
            EXPECT_EQ(nf4_gemv_cpu_vectorized(at::kBFloat16, compute, in), avx2) << in;
            EXPECT_EQ(nf4_gemv_cpu_vectorized(at::kFloat, compute, in), avx2) << in;
        }
    }
    EXPECT_FALSE(nf4_gemv_cpu_vectorized(at::kBFloat16, at::kFloat, 40));
}

// The parallel split of output rows (and the per-tile rebuild of double-quantized absmax) must not change a bit.
TEST(Nf4GemvCpu, ThreadCountDoesNotChangeTheResult) {
    at::manual_seed(12);
    const at::NoGradGuard no_grad;
    const Nf4Tensor w  = nf4_quantize((at::randn({4864, 896}) * 0.02).to(at::kBFloat16), 64, true);
    const at::Tensor x = at::randn({3, 896}).to(at::kBFloat16);
    const int saved    = at::get_num_threads();
    at::set_num_threads(1);
    const at::Tensor one = nf4_gemv_cpu(x, w);
    at::set_num_threads(std::max(2, saved));
    const at::Tensor many = nf4_gemv_cpu(x, w);
    at::set_num_threads(saved);
    EXPECT_TRUE(at::equal(one, many));
}

// nf4_linear on the CPU: up to nf4_cpu_gemv_max_rows rows (any leading shape) take the fused kernel, more rows the
// dequantize + GEMM path, each bit for bit; a forced path is taken whatever the row count.
TEST(Nf4GemvCpu, LinearDispatchesByRowCount) {
    at::manual_seed(13);
    const at::NoGradGuard no_grad;
    const Nf4Tensor w = nf4_quantize((at::randn({200, 320}) * 0.02).to(at::kBFloat16), 64, true);
    for (const auto dtype : {at::kFloat, at::kBFloat16}) {
        SCOPED_TRACE(c10::toString(dtype));
        const at::Tensor bias = at::randn({200}).to(dtype);
        const int64_t limit   = nf4_cpu_gemv_max_rows(dtype);
        ASSERT_GE(limit, 8);  // decode of a batch of 8 always takes the fused kernel
        const at::Tensor few = at::randn({2, 4, 320}).to(dtype);
        EXPECT_TRUE(at::equal(nf4_linear(few, w, bias), nf4_gemv_cpu(few, w, bias)));
        EXPECT_EQ(nf4_linear(few, w, bias).sizes(), (at::IntArrayRef{2, 4, 200}));
        const at::Tensor many      = at::randn({std::min<int64_t>(limit, 300) + 1, 320}).to(dtype);
        const at::Tensor dense     = at::linear(many, nf4_dequantize(w).to(dtype), bias);
        const at::Tensor fused     = nf4_gemv_cpu(many, w, bias);
        const at::Tensor automatic = nf4_linear(many, w, bias);
        EXPECT_TRUE(at::equal(automatic, many.size(0) > limit ? dense : fused));
        EXPECT_TRUE(at::equal(nf4_linear(many, w, bias, Nf4CpuPath::fused), fused));
        EXPECT_TRUE(at::equal(nf4_linear(few, w, bias, Nf4CpuPath::dequantize_gemm),
                              at::linear(few, nf4_dequantize(w).to(dtype), bias)));
    }
    // fp32 activations keep the BLAS GEMM from the measured crossover on.
    EXPECT_LT(nf4_cpu_gemv_max_rows(at::kFloat), 100);
}

// Teeth: one changed code in the packed weight moves its row's output well past the tolerance.
TEST(Nf4GemvCpu, OneChangedCodeIsDetected) {
    at::manual_seed(14);
    const at::NoGradGuard no_grad;
    Nf4Tensor w              = nf4_quantize(at::randn({16, 256}) * 0.02, 64, true);
    const at::Tensor x       = at::randn({1, 256});
    const at::Tensor w_ref   = reference_weight(w);
    const at::Tensor exact   = at::matmul(x.to(at::kDouble), w_ref.t());
    const at::Tensor abs_sum = at::matmul(x.to(at::kDouble).abs(), w_ref.abs().t());
    ASSERT_LE(worst_ratio(nf4_gemv_cpu(x, w), exact, abs_sum, 256), 1.0);
    w.packed = w.packed.clone();
    // Element 5 * 256 + 10 (row 5): swap its nibble for the opposite end of the code book.
    uint8_t& byte = w.packed.data_ptr<uint8_t>()[(5 * 256 + 10) / 2];
    byte          = static_cast<uint8_t>(((byte >> 4) < 8 ? 0xF0 : 0x00) | (byte & 0x0F));
    EXPECT_GT(worst_ratio(nf4_gemv_cpu(x, w), exact, abs_sum, 256), 1.0);
    EXPECT_GT(worst_ratio(nf4_gemv_cpu(x, w, at::Tensor(), true), exact, abs_sum, 256), 1.0);
}

TEST(Nf4GemvCpu, RejectsBadInput) {
    const Nf4Tensor w = nf4_quantize(at::randn({8, 64}), 64, true);
    EXPECT_THROW(nf4_gemv_cpu(at::randn({1, 63}), w), Error);
    EXPECT_THROW(nf4_gemv_cpu(at::ones({1, 64}, at::kLong), w), Error);
    EXPECT_THROW(nf4_gemv_cpu(at::randn({1, 64}), w, at::randn({7})), Error);
    Nf4Tensor truncated = w;
    truncated.packed    = w.packed.narrow(0, 0, 10);
    EXPECT_THROW(nf4_gemv_cpu(at::randn({1, 64}), truncated), Error);
}

}  // namespace
}  // namespace medllm::quant

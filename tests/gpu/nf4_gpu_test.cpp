// CUDA NF4 kernels against the CPU reference (bit-exact where the algorithm is deterministic: quantize, nested
// absmax, dequantize, the workspace+cuBLAS linear path; tolerance for the fused GEMV, whose accumulation order
// differs). Skips when no CUDA device is present.
#include <gtest/gtest.h>

#include <ATen/core/grad_mode.h>
#include <torch/cuda.h>

#include <cstring>

#include <nlohmann/json.hpp>
#include "medllm/quant/nf4.h"
#include "medllm/quant/nf4_serialize.h"

#include "quant/fixture_reader.h"

#ifdef MEDLLM_HAVE_CUDA_KERNELS
#include "nf4_dequantize.cuh"
#include "nf4_gemv.cuh"
#include "nf4_quantize.cuh"
#endif

namespace medllm::quant {
namespace {

#define SKIP_WITHOUT_CUDA()                                                              \
    do {                                                                                 \
        if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";              \
        if (!nf4_cuda_kernels_available()) GTEST_SKIP() << "built without CUDA kernels"; \
    } while (0)

const at::Device kCuda(at::kCUDA, 0);

void expect_same_bits(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
    const at::Tensor a = actual.cpu().contiguous(), e = expected.cpu().contiguous();
    ASSERT_EQ(a.scalar_type(), e.scalar_type()) << what;
    ASSERT_EQ(a.sizes(), e.sizes()) << what;
    EXPECT_EQ(std::memcmp(a.data_ptr(), e.data_ptr(), a.nbytes()), 0) << what << ": bytes differ";
}

at::Tensor test_weight(std::vector<int64_t> shape, at::ScalarType dtype, int64_t seed) {
    at::manual_seed(seed);
    at::Tensor w = at::randn(shape) * 0.03;
    auto flat    = w.view({-1});
    if (flat.numel() >= 256) flat.narrow(0, 64, 64).zero_();  // an all-zero block (for block sizes <= 64)
    return w.to(dtype);
}

struct Shape {
    std::vector<int64_t> dims;
    int64_t blocksize;
};

const std::vector<Shape> kShapes = {{{64, 200}, 64},   {{7, 9}, 32},     {{33, 70}, 128},   {{128, 512}, 64},
                                    {{8, 4096}, 4096}, {{24, 640}, 256}, {{3, 1000}, 2048}, {{512, 1024}, 32}};

TEST(Nf4Gpu, QuantizeIsBitExactWithCpuReference) {
    SKIP_WITHOUT_CUDA();
    int64_t seed = 0;
    for (const auto& shape : kShapes) {
        for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
            for (bool dq : {false, true}) {
                SCOPED_TRACE(::testing::Message() << at::IntArrayRef(shape.dims) << " bs " << shape.blocksize << " "
                                                  << dtype << " dq " << dq);
                const at::Tensor weight = test_weight(shape.dims, dtype, ++seed);
                const Nf4Tensor cpu     = nf4_quantize(weight, shape.blocksize, dq);
                const Nf4Tensor gpu     = nf4_quantize(weight.to(kCuda), shape.blocksize, dq);
                EXPECT_TRUE(gpu.packed.is_cuda());
                expect_same_bits(gpu.packed, cpu.packed, "packed");
                expect_same_bits(gpu.absmax, cpu.absmax, "absmax");
                if (dq) {
                    expect_same_bits(gpu.nested_absmax, cpu.nested_absmax, "nested_absmax");
                    EXPECT_EQ(gpu.offset, cpu.offset);
                }
            }
        }
    }
}

TEST(Nf4Gpu, DequantizeIsBitExactWithCpuReferenceForEveryDtype) {
    SKIP_WITHOUT_CUDA();
    int64_t seed = 100;
    for (const auto& shape : kShapes) {
        for (bool dq : {false, true}) {
            const Nf4Tensor cpu = nf4_quantize(test_weight(shape.dims, at::kBFloat16, ++seed), shape.blocksize, dq);
            const Nf4Tensor gpu = cpu.to(kCuda);
            expect_same_bits(nf4_absmax(gpu), nf4_absmax(cpu), "rebuilt absmax");
            for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
                SCOPED_TRACE(::testing::Message() << at::IntArrayRef(shape.dims) << " dq " << dq << " -> " << dtype);
                const at::Tensor out = nf4_dequantize(gpu, dtype);
                EXPECT_TRUE(out.is_cuda());
                EXPECT_EQ(out.sizes(), at::IntArrayRef(shape.dims));
                expect_same_bits(out, nf4_dequantize(cpu, dtype), "dequantized");
            }
        }
    }
}

TEST(Nf4Gpu, DequantizeHandlesUnalignedBuffers) {
    SKIP_WITHOUT_CUDA();
#ifdef MEDLLM_HAVE_CUDA_KERNELS
    const Nf4Tensor cpu = nf4_quantize(test_weight({32, 96}, at::kFloat, 7), 32, true);
    const Nf4Tensor gpu = cpu.to(kCuda);
    // Packed bytes and output that start one element past a 16-byte boundary take the scalar path.
    at::Tensor packed_storage = at::empty({gpu.packed.numel() + 1}, gpu.packed.options());
    at::Tensor packed         = packed_storage.narrow(0, 1, gpu.packed.numel());
    packed.copy_(gpu.packed.view({-1}));
    at::Tensor out_storage = at::empty({cpu.numel() + 1}, gpu.packed.options().dtype(at::kBFloat16));
    at::Tensor out         = out_storage.narrow(0, 1, cpu.numel());
    kernels::nf4_dequantize_cuda(packed, gpu.absmax, gpu.nested_absmax, gpu.nested_quant_map, gpu.offset,
                                 gpu.nested_blocksize, cpu.numel(), cpu.blocksize, out);
    expect_same_bits(out.view({32, 96}), nf4_dequantize(cpu, at::kBFloat16), "unaligned dequantize");
#endif
}

TEST(Nf4Gpu, DequantizeMatchesBitsandbytesFixtures) {
    SKIP_WITHOUT_CUDA();
    const auto file  = testing::read_fixture(std::string(MEDLLM_FIXTURES_DIR) + "/quant/nf4_bnb.safetensors");
    const auto cases = nlohmann::json::parse(file.metadata.at("cases"));
    for (const auto& entry : cases) {
        const std::string p = entry.at("name").get<std::string>() + "/";
        SCOPED_TRACE(p);
        std::map<std::string, at::Tensor> sd;
        sd["w"] = file.at(p + "packed").to(kCuda);
        for (const auto& [key, t] : file.tensors) {
            if (key.rfind(p + "state.", 0) == 0) sd["w." + key.substr(p.size() + 6)] = t.to(kCuda);
        }
        const Nf4Tensor w = nf4_from_state_dict(sd, "w");
        expect_same_bits(nf4_dequantize(w), file.at(p + "dequant"), "dequantized");
        expect_same_bits(nf4_dequantize(w, at::kFloat), file.at(p + "dequant_f32"), "dequantized fp32");
    }
}

TEST(Nf4Gpu, FusedGemvMatchesDequantizedMatmulWithinTolerance) {
    SKIP_WITHOUT_CUDA();
    const at::NoGradGuard no_grad;
    for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
        for (bool dq : {false, true}) {
            for (int64_t rows = 1; rows <= 4; ++rows) {
                SCOPED_TRACE(::testing::Message() << dtype << " dq " << dq << " rows " << rows);
                const Nf4Tensor w = nf4_quantize(test_weight({96, 1024}, dtype, rows), 64, dq).to(kCuda);
                at::manual_seed(50 + rows);
                const at::Tensor x    = at::randn({rows, 1024}).to(dtype).to(kCuda);
                const at::Tensor bias = (at::randn({96}) * 0.1).to(dtype).to(kCuda);
                const at::Tensor y    = nf4_linear(x, w, bias);
                ASSERT_EQ(y.scalar_type(), dtype);
                ASSERT_EQ(y.sizes(), (at::IntArrayRef{rows, 96}));
                const at::Tensor expected =
                    at::linear(x.to(at::kFloat).cpu(), nf4_dequantize(w, at::kFloat).cpu(), bias.to(at::kFloat).cpu());
                const double tol = dtype == at::kFloat ? 1e-4 : 2e-2;
                EXPECT_TRUE(at::allclose(y.to(at::kFloat).cpu(), expected, tol, tol))
                    << (y.to(at::kFloat).cpu() - expected).abs().max().item<float>();
            }
        }
    }
}

TEST(Nf4Gpu, TrainingSizeLinearEqualsCublasOnDequantizedWeight) {
    SKIP_WITHOUT_CUDA();
    for (auto dtype : {at::kBFloat16, at::kFloat}) {
        const Nf4Tensor w = nf4_quantize(test_weight({256, 512}, dtype, 9), 64, true).to(kCuda);
        at::manual_seed(10);
        const at::Tensor x    = at::randn({3, 40, 512}).to(dtype).to(kCuda);
        const at::Tensor bias = at::randn({256}).to(dtype).to(kCuda);
        at::Tensor y;
        {
            const at::NoGradGuard no_grad;
            y = nf4_linear(x, w, bias);  // workspace + cuBLAS
            // A second call with another weight reuses the workspace; the first result must stay intact.
            const Nf4Tensor other = nf4_quantize(test_weight({256, 512}, dtype, 11), 64, true).to(kCuda);
            const at::Tensor y2   = nf4_linear(x, other, bias);
            expect_same_bits(y2, at::linear(x, nf4_dequantize(other, dtype), bias), "second layer");
        }
        expect_same_bits(y, at::linear(x, nf4_dequantize(w, dtype), bias), "workspace linear");

        // With autograd the weight gets its own dequantized copy and the input gradient flows through it.
        const at::Tensor xg = x.detach().clone().requires_grad_(true);
        nf4_linear(xg, w, bias).sum().backward();
        const at::Tensor grad_expected = at::ones({3, 40, 256}, x.options()).matmul(nf4_dequantize(w, dtype));
        EXPECT_TRUE(at::allclose(xg.grad(), grad_expected, 1e-2, 1e-2));

        // QLoRA's backward: the input gradient through the per-stream workspace.
        const at::Tensor g = at::randn({3, 40, 256}).to(dtype).to(kCuda);
        expect_same_bits(nf4_linear_input_grad(g, w), at::matmul(g, nf4_dequantize(w, dtype)), "input gradient");
    }
}

TEST(Nf4Gpu, EntryPointsRejectBadArguments) {
    SKIP_WITHOUT_CUDA();
#ifdef MEDLLM_HAVE_CUDA_KERNELS
    EXPECT_THROW(kernels::nf4_quantize_cuda(at::randn({4, 64}), 64), c10::Error);  // CPU tensor
    EXPECT_THROW(kernels::nf4_quantize_cuda(at::randn({4, 64}, kCuda), 48), c10::Error);
    EXPECT_THROW(kernels::nf4_quantize_cuda(at::ones({4, 64}, at::TensorOptions(kCuda).dtype(at::kInt)), 64),
                 c10::Error);
    const Nf4Tensor w    = nf4_quantize(at::randn({4, 64}), 64, false).to(kCuda);
    at::Tensor wrong_out = at::empty({10}, at::TensorOptions(kCuda).dtype(at::kFloat));
    EXPECT_THROW(kernels::nf4_dequantize_cuda(w.packed, w.absmax, {}, {}, 0.0, 256, 256, 64, wrong_out), c10::Error);
    EXPECT_THROW(kernels::nf4_gemv_cuda(at::randn({5, 64}, kCuda), w.packed, w.absmax, {}, {}, 0.0, 256, 4, 64, 64, {}),
                 c10::Error);  // 5 rows
#endif
}

}  // namespace
}  // namespace medllm::quant

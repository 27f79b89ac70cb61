// NF4 / QLoRA benchmark on Qwen2.5-7B-shaped projections, on CUDA or CPU. scripts/bench-nf4.sh runs it together
// with the same measurements through bitsandbytes + PEFT and prints the comparison; this program prints one
// tab-separated row per measurement:
//   medllm <metric> <shape> <milliseconds> <bytes moved or 0>
// metrics:
//   copy      device-to-device copy of 1 GiB (bytes read + written): the bandwidth reference
//   dequant   NF4 + double quantization -> bf16 (bytes = packed + statistics read, bf16 written)
//   gemv1/4   nf4_linear for 1 and 4 rows (the fused dequantize-GEMV on CUDA; bytes = weight + activations)
//   linear    nf4_linear at TOKENS rows, inference (workspace dequantize + GEMM)
//   dense     at::linear on the bf16 weight at TOKENS rows
//   qlora_fb  QLoraLinear forward + backward at TOKENS rows, rank RANK (frozen NF4 base, fp32 adapters)
//   lora_fb   LoraLinear over the bf16 weight, forward + backward, same rank
//   mem72b    bytes of a Qwen2.5-72B-shaped model held in NF4 + double quantization (see measure_72b_memory)
//
//   bench_nf4 cpu|cuda ITERS TOKENS RANK
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include <torch/torch.h>

#ifdef MEDLLM_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "medllm/model/qwen2.h"
#include "medllm/peft/lora.h"
#include "medllm/quant/nf4.h"

using medllm::quant::Nf4Tensor;

namespace {

struct Shape {
    const char* name;
    int64_t out, in;
};

// Qwen2.5-7B: hidden 3584, intermediate 18944, 28 heads / 4 KV heads of 128.
const Shape kShapes[] = {{"q_o_3584x3584", 3584, 3584},
                         {"k_v_512x3584", 512, 3584},
                         {"gate_up_18944x3584", 18944, 3584},
                         {"down_3584x18944", 3584, 18944}};

void sync(const torch::Device& device) {
    if (device.is_cuda()) torch::cuda::synchronize();
}

double time_ms(const torch::Device& device, const std::function<void()>& fn, int iters) {
    fn();  // warm-up: allocator, cuBLAS handles, workspaces
    sync(device);
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) fn();
    sync(device);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / iters;
}

void row(const char* metric, const std::string& shape, double ms, double bytes) {
    std::printf("medllm\t%s\t%s\t%.6f\t%.0f\n", metric, shape.c_str(), ms, bytes);
    std::fflush(stdout);
}

// The NF4 + DQ bytes of all 80 layers' seven projections of a Qwen2.5-72B-shaped model, plus the bf16
// embeddings, lm_head, norms and q/k/v biases that QLoRA keeps unquantized. On CUDA every projection is really
// quantized and kept on the device, and the figure is the allocator's count of live bytes; on CPU one layer is
// quantized and its bytes are multiplied by 80 (all layers have the same shapes).
double measure_72b_memory(const torch::Device& device) {
    const int64_t hidden = 8192, inter = 29568, kv = 8 * 128, layers = 80, vocab = 152064;
    const Shape projections[] = {{"q", hidden, hidden},  {"k", kv, hidden},       {"v", kv, hidden},
                                 {"o", hidden, hidden},  {"gate", inter, hidden}, {"up", inter, hidden},
                                 {"down", hidden, inter}};
    const double unquantized  = 2.0 * (2.0 * vocab * hidden + layers * (2.0 * hidden + hidden + 2.0 * kv) + hidden);
    const auto options        = torch::TensorOptions(device).dtype(torch::kBFloat16);
    auto quantize_layer       = [&](std::vector<Nf4Tensor>& keep) {
        for (const auto& p : projections) {
            keep.push_back(medllm::quant::nf4_quantize(torch::randn({p.out, p.in}, options) * 0.02, 64, true));
        }
    };
#ifdef MEDLLM_HAVE_CUDA_KERNELS
    if (device.is_cuda()) {
        using c10::cuda::CUDACachingAllocator::getDeviceStats;
        torch::cuda::synchronize();
        c10::cuda::CUDACachingAllocator::emptyCache();
        const auto before = getDeviceStats(device.index()).allocated_bytes[0].current;
        std::vector<Nf4Tensor> keep;
        for (int64_t layer = 0; layer < layers; ++layer) quantize_layer(keep);
        torch::cuda::synchronize();
        const auto after = getDeviceStats(device.index()).allocated_bytes[0].current;
        return double(after - before) + unquantized;
    }
#endif
    std::vector<Nf4Tensor> keep;
    quantize_layer(keep);
    double per_layer = 0;
    for (const auto& w : keep) per_layer += double(w.nbytes());
    return per_layer * layers + unquantized;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 5) {
        std::fprintf(stderr, "usage: %s cpu|cuda ITERS TOKENS RANK\n", argv[0]);
        return 2;
    }
    const std::string device_name = argv[1];
    const int iters               = std::max(1, std::atoi(argv[2]));
    const int64_t tokens          = std::max(1, std::atoi(argv[3]));
    const int64_t rank            = std::max(1, std::atoi(argv[4]));
    if (device_name != "cpu" && device_name != "cuda") {
        std::fprintf(stderr, "bench_nf4: device must be cpu or cuda, got '%s'\n", device_name.c_str());
        return 2;
    }
    if (device_name == "cuda" && (!torch::cuda::is_available() || !medllm::quant::nf4_cuda_kernels_available())) {
        std::fprintf(stderr, "bench_nf4: cuda needs a CUDA device and a build with the CUDA kernels\n");
        return 2;
    }
    const torch::Device device = device_name == "cuda" ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
    const auto bf16            = torch::TensorOptions(device).dtype(torch::kBFloat16);
    const int heavy_iters      = std::max(1, iters / 5);
    torch::manual_seed(0);

    {
        const torch::NoGradGuard no_grad;
        const auto src = torch::empty({int64_t(1) << 30}, torch::TensorOptions(device).dtype(torch::kUInt8)).fill_(1);
        auto dst       = torch::empty_like(src);
        row("copy", "1GiB",
            time_ms(
                device, [&] { dst.copy_(src); }, iters),
            2.0 * src.numel());
    }

    for (const auto& s : kShapes) {
        const auto weight = torch::randn({s.out, s.in}, bf16) * 0.02;
        const Nf4Tensor w = medllm::quant::nf4_quantize(weight, 64, true);
        const double n    = double(s.out) * s.in;
        {
            const torch::NoGradGuard no_grad;
            row("dequant", s.name,
                time_ms(
                    device, [&] { (void)medllm::quant::nf4_dequantize(w); }, iters),
                double(w.nbytes()) + 2.0 * n);
            for (int64_t rows : {1, 4}) {
                const auto x = torch::randn({rows, s.in}, bf16);
                row(rows == 1 ? "gemv1" : "gemv4", s.name,
                    time_ms(
                        device, [&] { (void)medllm::quant::nf4_linear(x, w); }, iters),
                    double(w.nbytes()) + 2.0 * rows * (s.in + s.out));
            }
            const auto xt = torch::randn({tokens, s.in}, bf16);
            row("linear", s.name,
                time_ms(
                    device, [&] { (void)medllm::quant::nf4_linear(xt, w); }, heavy_iters),
                0);
            row("dense", s.name,
                time_ms(
                    device, [&] { (void)torch::linear(xt, weight); }, heavy_iters),
                0);
        }

        // Training: LoRA rank `rank`, alpha 16 (QLoRA's setting), fp32 adapters; B is made non-zero so that the
        // adapter path does real work in backward.
        const double scaling = 16.0 / double(rank);
        const auto x         = torch::randn({tokens, s.in}, bf16).requires_grad_(true);
        const auto grad_out  = torch::randn({tokens, s.out}, bf16);
        medllm::peft::QLoraLinear qlora(w, at::Tensor(), rank, scaling, 0.0);
        medllm::model::DenseLinear dense(s.in, s.out, false, bf16);
        {
            const torch::NoGradGuard no_grad;
            dense.weight.copy_(weight);
            qlora.lora_B->weight.normal_(0, 0.01);
        }
        medllm::peft::LoraLinear lora(dense, rank, scaling, 0.0);
        {
            const torch::NoGradGuard no_grad;
            lora.lora_A->weight.copy_(qlora.lora_A->weight);
            lora.lora_B->weight.copy_(qlora.lora_B->weight);
        }
        row("qlora_fb", s.name,
            time_ms(
                device, [&] { qlora.forward(x).backward(grad_out); }, heavy_iters),
            0);
        row("lora_fb", s.name,
            time_ms(
                device, [&] { lora.forward(x).backward(grad_out); }, heavy_iters),
            0);
    }

    row("mem72b", "Qwen2.5-72B", 0, measure_72b_memory(device));
    return 0;
}

// NF4 kernel benchmark (used by scripts/bench-nf4.sh on a GPU machine). Prints one line per measurement:
//   copy       device-to-device copy bandwidth (the reference for dequantize)
//   dequant    NF4 (+double quantization) -> bf16, GB/s over bytes read + written, and % of copy bandwidth
//   gemv       fused dequantize-GEMV, rows 1 and 4, time vs the bandwidth bound (weight bytes / copy bandwidth)
//   linear     training-size nf4_linear (workspace dequantize + cuBLAS) vs bf16 at::linear
//   memory     NF4+DQ bytes of a Qwen2.5-72B-shaped model (all 80 x 7 linears) vs bf16
//   bench_nf4 [ITERS]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include <torch/torch.h>

#include "medllm/quant/nf4.h"

using medllm::quant::Nf4Tensor;

namespace {

double time_ms(const std::function<void()>& fn, int iters) {
    fn();
    torch::cuda::synchronize();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) fn();
    torch::cuda::synchronize();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / iters;
}

struct Shape {
    const char* name;
    int64_t out, in;
};

}  // namespace

int main(int argc, char** argv) {
    const int iters = argc > 1 ? std::atoi(argv[1]) : 50;
    if (!torch::cuda::is_available() || !medllm::quant::nf4_cuda_kernels_available()) {
        std::fprintf(stderr, "bench_nf4: needs a CUDA device and a build with CUDA kernels\n");
        return 2;
    }
    const torch::Device cuda(torch::kCUDA, 0);
    const torch::NoGradGuard no_grad;

    // Device-to-device copy of 1 GiB: bandwidth counts bytes read + written.
    const auto src  = torch::empty({int64_t(1) << 30}, torch::TensorOptions(cuda).dtype(torch::kUInt8));
    auto dst        = torch::empty_like(src);
    const double ms = time_ms([&] { dst.copy_(src); }, iters);
    const double copy_gbs = 2.0 * src.numel() / (ms * 1e6);
    std::printf("copy     1 GiB d2d                      %8.3f ms  %8.1f GB/s\n", ms, copy_gbs);

    const Shape shapes[] = {{"q/o 3584x3584", 3584, 3584}, {"k/v 512x3584", 512, 3584},
                            {"gate/up 18944x3584", 18944, 3584}, {"down 3584x18944", 3584, 18944}};
    for (const auto& s : shapes) {
        const auto weight = torch::randn({s.out, s.in}, torch::TensorOptions(cuda).dtype(torch::kBFloat16)) * 0.02;
        const Nf4Tensor w = medllm::quant::nf4_quantize(weight, 64, true);
        const double n    = double(s.out) * s.in;
        const double read = double(w.nbytes());
        const double dq_ms = time_ms([&] { (void)medllm::quant::nf4_dequantize(w, torch::kBFloat16); }, iters);
        const double dq_gbs = (read + 2.0 * n) / (dq_ms * 1e6);
        std::printf("dequant  %-22s NF4+DQ->bf16 %8.3f ms  %8.1f GB/s  %5.1f%% of copy\n", s.name, dq_ms, dq_gbs,
                    100.0 * dq_gbs / copy_gbs);
        for (int64_t rows : {1, 4}) {
            const auto x     = torch::randn({rows, s.in}, weight.options());
            const double gms = time_ms([&] { (void)medllm::quant::nf4_linear(x, w); }, iters);
            const double bound_ms = (read + 2.0 * rows * (s.in + s.out)) / (copy_gbs * 1e6);
            const double dense_ms = time_ms([&] { (void)torch::linear(x, weight); }, iters);
            std::printf("gemv     %-22s rows=%lld     %8.4f ms  bound %8.4f ms (%5.1f%%)  bf16 linear %8.4f ms\n",
                        s.name, static_cast<long long>(rows), gms, bound_ms, 100.0 * bound_ms / gms, dense_ms);
        }
        const auto xt        = torch::randn({4096, s.in}, weight.options());
        const double lin_ms  = time_ms([&] { (void)medllm::quant::nf4_linear(xt, w); }, iters / 5 + 1);
        const double bf16_ms = time_ms([&] { (void)torch::linear(xt, weight); }, iters / 5 + 1);
        std::printf("linear   %-22s tokens=4096   %8.3f ms  bf16 linear %8.3f ms  (x%.2f)\n", s.name, lin_ms, bf16_ms,
                    lin_ms / bf16_ms);
    }

    // Qwen2.5-72B: hidden 8192, intermediate 29568, 64 heads / 8 KV heads of 128, 80 layers.
    const double h = 8192, inter = 29568, kv = 8 * 128, layers = 80;
    const double per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter;
    const double params    = per_layer * layers;
    const double blocks    = params / 64;
    const double nf4_bytes = params / 2 + blocks + (blocks / 256) * 4;  // nibbles + uint8 absmax + fp32 absmax2
    std::printf("memory   Qwen2.5-72B linears %.2fB params: bf16 %.1f GiB, NF4+DQ %.1f GiB (%.3f bit/param)\n",
                params / 1e9, params * 2 / (1 << 30), nf4_bytes / (1 << 30), nf4_bytes * 8 / params);
    return 0;
}

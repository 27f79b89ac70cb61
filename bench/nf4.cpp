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
//
// CPU decode (scripts/bench-nf4.sh cpu-decode), two more modes:
//   bench_nf4 cpu-layers ITERS MODELS ROWS...
//                                         median ms of nf4_linear at each row count on the projection shapes of
//                                         MODELS (a comma list of 0.5B, 7B, 72B; 72B: the first row count only),
//                                         bf16-stored NF4 + DQ, block 64:
//                                         metrics fused_<bf16|fp32>_r<rows> (nf4_gemv_cpu) and
//                                         dqmm_<bf16|fp32>_r<rows> (dequantize into the workspace + GEMM);
//                                         shape <model>.<projection>_<out>x<in>
//   bench_nf4 generate MODEL_DIR PROMPT_LEN NEW_TOKENS THREADS fp32|bf16
//                                         `medllm generate --load-in-4bit` at batch 1 on a model folder: after a
//                                         warm-up generate(2) on 16 tokens, prefill = P / t(generate 1 token) and
//                                         decode = (G - 1) / (t(G tokens) - t(1 token)) on a random P-token prompt;
//                                         rows prefill_<dtype> and decode_<dtype> (tokens/s of wall time, in the
//                                         milliseconds column) and prefill_cpu_<dtype> / decode_cpu_<dtype>
//                                         (tokens per CPU-second of the process)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#ifdef MEDLLM_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "medllm/generate/engine.h"
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

// This process's CPU time (all threads) in seconds.
double cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Median of `iters` timed calls after one warm-up: on a shared machine a preempted call lands in the tail, not in
// the figure. CLOCK=cpu times the process's CPU time instead of the wall clock (meaningful at one thread: the time
// the work takes on a core of its own while other processes take turns).
double median_ms(const std::function<void()>& fn, int iters) {
    const char* clock = std::getenv("CLOCK");
    const bool cpu    = clock && std::string(clock) == "cpu";
    fn();
    std::vector<double> ms;
    for (int i = 0; i < iters; ++i) {
        const auto start = std::chrono::steady_clock::now();
        const double c0  = cpu_seconds();
        fn();
        ms.push_back(cpu ? 1e3 * (cpu_seconds() - c0)
                         : std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(ms.begin(), ms.end());
    return ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
}

struct ModelShape {
    const char* model;
    const char* name;
    int64_t out, in;
};

// Qwen2.5-0.5B (hidden 896, intermediate 4864, 14 / 2 heads of 64), 7B and 72B (hidden 8192, intermediate 29568,
// 64 / 8 heads of 128): q and o, k and v, gate and up, down.
const ModelShape kDecodeShapes[] = {
    {"0.5B", "q_o", 896, 896},      {"0.5B", "k_v", 128, 896},       {"0.5B", "gate_up", 4864, 896},
    {"0.5B", "down", 896, 4864},    {"7B", "q_o", 3584, 3584},       {"7B", "k_v", 512, 3584},
    {"7B", "gate_up", 18944, 3584}, {"7B", "down", 3584, 18944},     {"72B", "q_o", 8192, 8192},
    {"72B", "k_v", 1024, 8192},     {"72B", "gate_up", 29568, 8192}, {"72B", "down", 8192, 29568}};

int run_cpu_layers(int iters, const std::string& models, const std::vector<int64_t>& rows) {
    const torch::NoGradGuard no_grad;
    torch::manual_seed(0);
    for (const auto& s : kDecodeShapes) {
        if (("," + models + ",").find("," + std::string(s.model) + ",") == std::string::npos) continue;
        const Nf4Tensor w = medllm::quant::nf4_quantize(
            torch::randn({s.out, s.in}, torch::TensorOptions().dtype(torch::kBFloat16)) * 0.02, 64, true);
        const std::string shape =
            std::string(s.model) + "." + s.name + "_" + std::to_string(s.out) + "x" + std::to_string(s.in);
        const bool largest = std::string(s.model) == "72B";
        for (const auto dtype : {torch::kBFloat16, torch::kFloat}) {
            const std::string dt = dtype == torch::kBFloat16 ? "bf16" : "fp32";
            for (const int64_t r : rows) {
                const auto x        = torch::randn({r, s.in}, torch::TensorOptions().dtype(dtype));
                const double nbytes = double(w.nbytes()) + double(x.nbytes()) + double(r * s.out * x.element_size());
                using medllm::quant::Nf4CpuPath;
                for (const auto path : {Nf4CpuPath::fused, Nf4CpuPath::dequantize_gemm}) {
                    const char* kind = path == Nf4CpuPath::fused ? "fused_" : "dqmm_";
                    row((kind + dt + "_r" + std::to_string(r)).c_str(), shape,
                        median_ms([&] { (void)medllm::quant::nf4_linear(x, w, std::nullopt, path); }, iters), nbytes);
                }
                if (largest) break;  // 72B: decode (the first row count) only
            }
        }
    }
    return 0;
}

int run_generate(const std::string& dir, int64_t prompt_len, int64_t new_tokens, int threads,
                 const std::string& dtype) {
    at::set_num_threads(threads);
    medllm::generate::LoadOptions load;
    load.dtype             = dtype;
    load.device            = "cpu";
    load.quantize_base     = true;
    load.require_tokenizer = false;
    auto loaded            = medllm::generate::load_model(dir, load);
    medllm::generate::Generator generator(loaded.model, nullptr, loaded.eos_token_ids);
    // Random prompt ids (the weights are random too); the reference draws its own of the same length.
    torch::manual_seed(1);
    const auto ids = torch::randint(3, loaded.model->config.vocab_size, {prompt_len}, torch::kLong);
    const std::vector<medllm::text::TokenId> prompt(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + prompt_len);
    // Wall time and this process's CPU time of each call: on a shared machine the CPU time shows the work done when
    // other processes take turns on the cores (with one thread it is the wall time of an idle machine).
    struct Times {
        double wall, cpu;
    };
    auto timed = [&](int64_t tokens, int64_t length) {
        medllm::generate::GenerateOptions options;
        options.max_batch_size                                        = 1;
        options.max_new_tokens                                        = tokens;
        options.ignore_eos                                            = true;
        const std::vector<std::vector<medllm::text::TokenId>> prompts = {
            std::vector<medllm::text::TokenId>(prompt.begin(), prompt.begin() + length)};
        const auto t0   = std::chrono::steady_clock::now();
        const double c0 = cpu_seconds();
        generator.generate(prompts, options);
        return Times{std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), cpu_seconds() - c0};
    };
    timed(2, std::min<int64_t>(prompt_len, 16));  // warm-up on a short prompt, as the reference's
    const Times t1          = timed(1, prompt_len);
    const Times tg          = timed(new_tokens, prompt_len);
    const std::string shape = "Qwen2.5-0.5B";
    row(("prefill_" + dtype).c_str(), shape, double(prompt_len) / t1.wall, 0);
    row(("decode_" + dtype).c_str(), shape, double(new_tokens - 1) / std::max(tg.wall - t1.wall, 1e-9), 0);
    row(("prefill_cpu_" + dtype).c_str(), shape, double(prompt_len) / t1.cpu, 0);
    row(("decode_cpu_" + dtype).c_str(), shape, double(new_tokens - 1) / std::max(tg.cpu - t1.cpu, 1e-9), 0);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc >= 4 && std::string(argv[1]) == "cpu-layers") {
        std::vector<int64_t> rows;
        for (int i = 4; i < argc; ++i) rows.push_back(std::max(1, std::atoi(argv[i])));
        if (rows.empty()) rows = {1};
        return run_cpu_layers(std::max(1, std::atoi(argv[2])), argv[3], rows);
    }
    if (argc == 7 && std::string(argv[1]) == "generate") {
        const std::string dtype = argv[6];
        if (dtype != "fp32" && dtype != "bf16") {
            std::fprintf(stderr, "bench_nf4 generate: dtype must be fp32 or bf16, got '%s'\n", argv[6]);
            return 2;
        }
        return run_generate(argv[2], std::max(1, std::atoi(argv[3])), std::max(2, std::atoi(argv[4])),
                            std::max(1, std::atoi(argv[5])), dtype);
    }
    if (argc != 5) {
        std::fprintf(stderr,
                     "usage: %s cpu|cuda ITERS TOKENS RANK\n"
                     "       %s cpu-layers ITERS MODELS ROWS...\n"
                     "       %s generate MODEL_DIR PROMPT_LEN NEW_TOKENS THREADS fp32|bf16\n",
                     argv[0], argv[0], argv[0]);
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

// Forward and forward+backward throughput of a random Qwen2 model (the shape given on the command line).
// Used by scripts/bench-model.sh, which runs HF transformers on the same shape in the same run.
//   bench_model HIDDEN LAYERS HEADS KV_HEADS INTERMEDIATE VOCAB BATCH SEQ DTYPE(fp32|bf16) DEVICE(cpu|cuda) ITERS
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <torch/torch.h>

#include "medllm/model/qwen2.h"

using namespace medllm::model;

int main(int argc, char** argv) {
    if (argc != 12) {
        std::fprintf(stderr, "usage: %s H L NH NKV I V BATCH SEQ fp32|bf16 cpu|cuda ITERS\n", argv[0]);
        return 2;
    }
    auto arg = [&](int i) { return std::atoll(argv[i]); };
    Qwen2Config cfg;
    cfg.hidden_size         = arg(1);
    cfg.num_hidden_layers   = arg(2);
    cfg.num_attention_heads = arg(3);
    cfg.num_key_value_heads = arg(4);
    cfg.intermediate_size   = arg(5);
    cfg.vocab_size          = arg(6);
    cfg.head_dim            = cfg.hidden_size / cfg.num_attention_heads;
    cfg.rope_theta          = 1e6;
    int64_t batch = arg(7), seq = arg(8), iters = arg(11);
    auto dtype  = std::string(argv[9]) == "bf16" ? at::kBFloat16 : at::kFloat;
    auto device = std::string(argv[10]) == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
    if (device.is_cuda() && !torch::cuda::is_available()) {
        std::fprintf(stderr, "bench_model: cuda asked for but no CUDA device is visible\n");
        return 2;
    }
    at::set_num_threads(std::getenv("MEDLLM_BENCH_THREADS") ? std::atoi(std::getenv("MEDLLM_BENCH_THREADS"))
                                                            : at::get_num_threads());

    Qwen2ForCausalLM model(cfg, at::TensorOptions().dtype(dtype).device(device));
    model.init_weights(0);
    auto ids = torch::randint(0, cfg.vocab_size, {batch, seq}, torch::TensorOptions().dtype(at::kLong)).to(device);
    ForwardInputs in;
    in.input_ids = ids;
    auto sync    = [&] {
        if (device.is_cuda()) torch::cuda::synchronize();
    };
    auto time_it = [&](auto&& fn) {
        fn();  // warm-up
        sync();
        auto t0 = std::chrono::steady_clock::now();
        for (int64_t i = 0; i < iters; ++i) fn();
        sync();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
    };
    double fwd     = time_it([&] {
        at::NoGradGuard no_grad;
        model.forward(in);
    });
    double fwd_bwd = time_it([&] {
        model.zero_grad();
        auto loss = causal_lm_loss(model.forward_hidden(in).hidden, model.lm_head_weight(), ids);
        loss.backward();
    });
    double tokens  = static_cast<double>(batch * seq);
    std::printf("{\"impl\": \"medllm\", \"forward_tok_s\": %.1f, \"forward_backward_tok_s\": %.1f}\n", tokens / fwd,
                tokens / fwd_bwd);
    return 0;
}

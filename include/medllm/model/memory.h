// Parameter accounting and memory estimates for a Qwen2 config (used by `medllm info`).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "medllm/model/config.h"

namespace medllm::model {

// Every tensor an HF Qwen2ForCausalLM checkpoint holds, with its shape, in HF names (lm_head only when untied).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const Qwen2Config& config);

struct ParameterCount {
    int64_t embedding      = 0;  // model.embed_tokens
    int64_t lm_head        = 0;  // 0 when tied
    int64_t per_layer      = 0;  // one decoder layer
    int64_t linear_weights = 0;  // q/k/v/o/gate/up/down weights, all layers: what NF4 quantizes
    int64_t other          = 0;  // norms and q/k/v biases, all layers, plus the final norm
    int64_t layers         = 0;  // num_hidden_layers

    int64_t total() const { return embedding + lm_head + linear_weights + other; }
    int64_t non_embedding() const { return total() - embedding - lm_head; }
    int64_t tensors = 0;  // number of checkpoint tensors
};
ParameterCount count_parameters(const Qwen2Config& config);

struct MemoryOptions {
    int64_t batch                 = 1;
    int64_t seq_len               = 2048;
    int64_t lora_rank             = 64;    // adapters on all seven linears of every layer (QLoRA recipe)
    bool activation_checkpointing = true;  // per decoder layer
    int64_t logits_chunk_tokens   = 1024;  // chunked cross-entropy: tokens whose logits exist at once
};

// Bytes unless stated otherwise. Estimates: they count tensors, not allocator slack, CUDA context or workspaces.
struct MemoryEstimate {
    uint64_t bf16_weights        = 0;  // every parameter in bf16
    uint64_t nf4_weights         = 0;  // NF4 + double quant for the linears, bf16 for embeddings/norms/biases
    uint64_t nf4_linear_bytes    = 0;  // ... of which the quantized linears
    int64_t lora_parameters      = 0;  // r * (in + out) per adapted linear
    uint64_t lora_weights        = 0;  // fp32 adapters
    uint64_t lora_training_state = 0;  // fp32 gradients + AdamW first and second moments
    uint64_t activations         = 0;  // training activations for batch x seq_len (see memory.cpp)
    uint64_t logits              = 0;  // ... of which the (chunked) logits and their gradient
    uint64_t kv_cache            = 0;  // bf16 KV cache for batch x seq_len tokens (inference)
    uint64_t dequant_workspace   = 0;  // QLoRA: the reused bf16 buffer for the largest dequantized projection

    uint64_t qlora_training_total() const {
        return nf4_weights + lora_weights + lora_training_state + activations + dequant_workspace;
    }
    uint64_t bf16_inference_total() const { return bf16_weights + kv_cache; }
    uint64_t nf4_inference_total() const { return nf4_weights + kv_cache; }
};
MemoryEstimate estimate_memory(const Qwen2Config& config, const MemoryOptions& options = {});

// Bytes of one weight of `numel` elements in bitsandbytes NF4 with double quantization (blocksize 64, absmax as
// 8-bit codes in blocks of 256 with fp32 second-level scales, an fp32 offset and both code books).
uint64_t nf4_double_quant_bytes(int64_t numel);

}  // namespace medllm::model

// Parameter counts and memory estimates derived from the config alone (no weights needed).
#include "medllm/model/memory.h"

#include <algorithm>

#include "medllm/core/error.h"

namespace medllm::model {

namespace {

int64_t numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

bool is_linear_weight(const std::string& name) {
    static const char* kLinears[] = {"q_proj.weight",    "k_proj.weight",  "v_proj.weight",   "o_proj.weight",
                                     "gate_proj.weight", "up_proj.weight", "down_proj.weight"};
    if (name.rfind("model.layers.", 0) != 0) return false;
    for (const char* suffix : kLinears) {
        const std::string s(suffix);
        if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) return true;
    }
    return false;
}

uint64_t ceil_div(uint64_t a, uint64_t b) {
    return (a + b - 1) / b;
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const Qwen2Config& c) {
    const int64_t H = c.hidden_size, I = c.intermediate_size, q = c.q_dim(), kv = c.kv_dim();
    std::vector<std::pair<std::string, std::vector<int64_t>>> out;
    out.push_back({"model.embed_tokens.weight", {c.vocab_size, H}});
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        out.push_back({p + "input_layernorm.weight", {H}});
        out.push_back({p + "self_attn.q_proj.weight", {q, H}});
        out.push_back({p + "self_attn.q_proj.bias", {q}});
        out.push_back({p + "self_attn.k_proj.weight", {kv, H}});
        out.push_back({p + "self_attn.k_proj.bias", {kv}});
        out.push_back({p + "self_attn.v_proj.weight", {kv, H}});
        out.push_back({p + "self_attn.v_proj.bias", {kv}});
        out.push_back({p + "self_attn.o_proj.weight", {H, q}});
        out.push_back({p + "post_attention_layernorm.weight", {H}});
        out.push_back({p + "mlp.gate_proj.weight", {I, H}});
        out.push_back({p + "mlp.up_proj.weight", {I, H}});
        out.push_back({p + "mlp.down_proj.weight", {H, I}});
    }
    out.push_back({"model.norm.weight", {H}});
    if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, H}});
    return out;
}

ParameterCount count_parameters(const Qwen2Config& c) {
    ParameterCount p;
    p.layers = c.num_hidden_layers;
    for (const auto& [name, shape] : expected_tensors(c)) {
        const int64_t n = numel(shape);
        ++p.tensors;
        if (name == "model.embed_tokens.weight")
            p.embedding += n;
        else if (name == "lm_head.weight")
            p.lm_head += n;
        else if (is_linear_weight(name))
            p.linear_weights += n;
        else
            p.other += n;
        if (name.rfind("model.layers.0.", 0) == 0) p.per_layer += n;
    }
    return p;
}

uint64_t nf4_double_quant_bytes(int64_t numel) {
    const uint64_t n      = static_cast<uint64_t>(numel);
    const uint64_t blocks = ceil_div(n, 64);
    return ceil_div(n, 2)               // two 4-bit codes per byte
           + blocks                     // absmax as 8-bit codes
           + 4 * ceil_div(blocks, 256)  // fp32 absmax of each 256-block of absmax
           + 4                          // fp32 offset (mean absmax)
           + 16 * 4 + 256 * 4;          // NF4 and 8-bit dynamic code books (fp32)
}

MemoryEstimate estimate_memory(const Qwen2Config& c, const MemoryOptions& o) {
    if (o.batch < 1 || o.seq_len < 1 || o.lora_rank < 0 || o.logits_chunk_tokens < 1)
        throw UsageError("memory estimate: batch, seq-len and logits chunk must be >= 1 and lora-rank >= 0");
    MemoryEstimate m;
    const ParameterCount p = count_parameters(c);
    m.bf16_weights         = 2 * static_cast<uint64_t>(p.total());
    uint64_t nf4           = 0;
    for (const auto& [name, shape] : expected_tensors(c))
        if (is_linear_weight(name)) nf4 += nf4_double_quant_bytes(numel(shape));
    m.nf4_linear_bytes = nf4;
    m.nf4_weights      = nf4 + 2 * static_cast<uint64_t>(p.embedding + p.lm_head + p.other);

    const int64_t H = c.hidden_size, I = c.intermediate_size, q = c.q_dim(), kv = c.kv_dim(), r = o.lora_rank;
    // LoRA A [r, in] and B [out, r] on q, k, v, o, gate, up, down.
    const int64_t per_layer_lora = r * ((H + q) + 2 * (H + kv) + (q + H) + 2 * (H + I) + (I + H));
    m.lora_parameters            = per_layer_lora * c.num_hidden_layers;
    m.lora_weights               = 4 * static_cast<uint64_t>(m.lora_parameters);
    m.lora_training_state        = 12 * static_cast<uint64_t>(m.lora_parameters);  // fp32 grad + Adam m + v

    // Activations kept for backward per token of one decoder layer (bf16 unless noted): the layer input and its
    // normed copy (2H), q/k/v projections (q + 2kv), post-RoPE q/k (q + kv), attention output (q), the residual
    // sum and its normed copy (2H), gate, up, silu(gate) and their product (4I), the LoRA A outputs (7r); fp32:
    // two RMSNorm rstd and one softmax log-sum-exp per head (memory-efficient SDPA, no S x S matrix).
    const uint64_t tokens = static_cast<uint64_t>(o.batch) * static_cast<uint64_t>(o.seq_len);
    const uint64_t layer_per_token =
        2 * static_cast<uint64_t>(4 * H + 3 * q + 3 * kv + 4 * I + 7 * r) + 4 * (2 + c.num_attention_heads);
    const uint64_t full_layer = tokens * layer_per_token;
    // Chunked cross-entropy: one chunk's fp32 logits (their gradient is formed in the same buffer) and either the
    // bf16 logits they were upcast from or the bf16 gradient cast for the GEMMs, plus the final norm's input and
    // output and the hidden-state gradient kept from forward to backward.
    const uint64_t chunk  = std::min<uint64_t>(tokens, static_cast<uint64_t>(o.logits_chunk_tokens));
    m.logits              = chunk * static_cast<uint64_t>(c.vocab_size) * (4 + 2) + tokens * 2 * 3 * H;
    const uint64_t layers = static_cast<uint64_t>(c.num_hidden_layers);
    if (o.activation_checkpointing)
        // Each layer keeps only its bf16 input; one layer is recomputed in full during backward.
        m.activations = layers * tokens * 2 * H + full_layer + m.logits;
    else
        m.activations = layers * full_layer + m.logits;
    m.kv_cache = 2 * layers * tokens * static_cast<uint64_t>(kv) * 2;
    // QLoRA's reused dequantization buffer: the largest projection in bf16 (nf4_linear_input_grad).
    m.dequant_workspace = 2 * static_cast<uint64_t>(std::max<int64_t>({H * q, H * kv, H * I}));
    return m;
}

}  // namespace medllm::model

// Qwen2 / Qwen2.5 decoder in LibTorch, numerically following HF transformers' Qwen2ForCausalLM
// (see docs/reference/qwen2.md §3 and §5). Parameter names equal HF's, so a checkpoint loads by name:
//   model.embed_tokens.weight, model.layers.N.{input_layernorm,self_attn.{q,k,v,o}_proj,
//   post_attention_layernorm,mlp.{gate,up,down}_proj}.*, model.norm.weight, lm_head.weight (absent when tied).
//
// Projections are `Projection` modules so the QLoRA layer can replace them (replace_projection) without
// touching the model code.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "medllm/model/config.h"

namespace medllm::model {

// y = x·Wᵀ (+ b). Subclasses: DenseLinear here; NF4 and LoRA variants in quant/ and peft/.
class Projection : public torch::nn::Module {
public:
    virtual at::Tensor forward(const at::Tensor& x) = 0;
    virtual int64_t in_features() const             = 0;
    virtual int64_t out_features() const            = 0;
};

class DenseLinear : public Projection {
public:
    DenseLinear(int64_t in, int64_t out, bool bias, at::TensorOptions options);
    at::Tensor forward(const at::Tensor& x) override;
    int64_t in_features() const override { return weight.size(1); }
    int64_t out_features() const override { return weight.size(0); }
    at::Tensor weight;  // [out, in]
    at::Tensor bias;    // [out] or undefined
};

// Holds the [V, H] embedding matrix (a module so its parameter is named `embed_tokens.weight`).
class Embedding : public torch::nn::Module {
public:
    Embedding(int64_t vocab, int64_t dim, at::TensorOptions options);
    at::Tensor forward(const at::Tensor& ids);
    at::Tensor weight;
};

// RMSNorm with fp32 statistics; the normalized value is cast back to the input dtype before the weight multiply.
class RMSNorm : public torch::nn::Module {
public:
    RMSNorm(int64_t dim, double eps, at::TensorOptions options);
    at::Tensor forward(const at::Tensor& x);
    at::Tensor weight;
    double eps;
};

// Rotary embedding: fp32 inv_freq and cos/sin, cast to the activation dtype.
struct RotaryEmbedding {
    RotaryEmbedding(int64_t head_dim, double theta);
    // position_ids [B, S] (int64) -> cos, sin [B, S, head_dim] in `dtype`.
    std::pair<at::Tensor, at::Tensor> cos_sin(const at::Tensor& position_ids, at::ScalarType dtype) const;
    at::Tensor inv_freq;  // [head_dim/2] fp32, CPU; moved to the positions' device on use
};

// Per-layer key/value cache for incremental decoding. Stores post-RoPE K and V with the KV heads
// (not repeated), preallocated and grown by doubling, so a decode step writes in place.
class KVCache {
public:
    explicit KVCache(int64_t num_layers) : k_(num_layers), v_(num_layers) {}
    int64_t length() const { return length_; }
    // Appends [B, nkv, S, hd] for `layer` and returns the whole [B, nkv, length+S, hd] view.
    std::pair<at::Tensor, at::Tensor> append(int64_t layer, const at::Tensor& k, const at::Tensor& v);
    // Called once per forward after every layer appended S positions.
    void advance(int64_t steps) { length_ += steps; }
    // Keeps only the given batch rows (finished rows stop costing compute).
    void select_rows(const at::Tensor& rows);
    void clear();

private:
    std::vector<at::Tensor> k_, v_;  // [B, nkv, capacity, hd]
    int64_t length_ = 0;
};

// What a forward pass sees. Only input_ids is required.
struct ForwardInputs {
    at::Tensor input_ids;       // [B, S] int64
    at::Tensor position_ids;    // [B, S] int64; default past_len .. past_len+S-1 as HF forward (restarting per segment)
    at::Tensor attention_mask;  // [B, past_len+S], 1 = real token, 0 = padding (left padding for generation)
    at::Tensor segment_ids;     // [B, S] packed documents: attend only within the same id (no KV cache)
    at::Tensor attention_mask_4d;         // [B, 1, S, S] bool, true = attend: an explicit mask (no KV cache, alone)
    KVCache* cache            = nullptr;  // incremental decoding
    bool output_hidden_states = false;
    // > 0: the final hidden states only for the last `last_positions` positions of each row (HF's logits_to_keep,
    // taken into the model): the last layer runs its queries, attention output and MLP on those rows alone, while
    // its keys and values still cover every position (they go to the cache). Prefill for generation needs one.
    // Not combined with output_hidden_states (the last layer's entry would be partial).
    int64_t last_positions = 0;
};

struct ForwardOutputs {
    at::Tensor hidden;                      // final normed hidden states [B, S, H] ([B, last_positions, H] when set)
    std::vector<at::Tensor> hidden_states;  // HF order: embeddings, after each layer (the last one normed)
};

class Qwen2Attention : public torch::nn::Module {
public:
    Qwen2Attention(const Qwen2Config& cfg, at::TensorOptions options);
    // x [B, S, H]; keys and values from all S positions, queries (and the output [B, Q, H]) from the last
    // Q = `queries` of them (0: all). `mask` [B|1, 1, Q, T] and `causal` are the queries' own.
    at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask,
                       bool causal, KVCache* cache, int64_t layer, int64_t queries = 0);
    std::shared_ptr<Projection> q_proj, k_proj, v_proj, o_proj;
    int64_t num_heads, num_kv_heads, head_dim;
};

class Qwen2MLP : public torch::nn::Module {
public:
    Qwen2MLP(const Qwen2Config& cfg, at::TensorOptions options);
    at::Tensor forward(const at::Tensor& x);
    std::shared_ptr<Projection> gate_proj, up_proj, down_proj;
};

class Qwen2DecoderLayer : public torch::nn::Module {
public:
    Qwen2DecoderLayer(const Qwen2Config& cfg, at::TensorOptions options);
    // Output [B, Q, H] for the last Q = `queries` positions (0: all); see Qwen2Attention::forward.
    at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask,
                       bool causal, KVCache* cache, int64_t layer, int64_t queries = 0);
    std::shared_ptr<Qwen2Attention> self_attn;
    std::shared_ptr<Qwen2MLP> mlp;
    std::shared_ptr<RMSNorm> input_layernorm, post_attention_layernorm;
};

// The decoder stack (HF `Qwen2Model`).
class Qwen2Model : public torch::nn::Module {
public:
    Qwen2Model(const Qwen2Config& cfg, at::TensorOptions options);
    ForwardOutputs forward(const ForwardInputs& in);
    std::shared_ptr<Embedding> embed_tokens;
    std::vector<std::shared_ptr<Qwen2DecoderLayer>> layers;  // registered as `layers.N`
    std::shared_ptr<RMSNorm> norm;
    RotaryEmbedding rotary;
    Qwen2Config config;
    // Recompute each decoder layer in backward instead of keeping its activations (training only).
    bool gradient_checkpointing = false;
};

// HF `Qwen2ForCausalLM`: the decoder plus lm_head (tied to embed_tokens when the config says so).
class Qwen2ForCausalLM : public torch::nn::Module {
public:
    Qwen2ForCausalLM(const Qwen2Config& cfg, at::TensorOptions options = at::TensorOptions().dtype(at::kFloat));

    // Loads weights from a HF checkpoint (directory or .safetensors), tensor by tensor, converting to this
    // model's dtype. Unknown tensors other than rotary inv_freq buffers are an error, as are missing ones.
    // `on_tensor` (optional) lets a caller take over a tensor (e.g. quantize it as it streams): it returns
    // true when it consumed the tensor.
    void load_checkpoint(const std::string& path,
                         const std::function<bool(const std::string&, const at::Tensor&)>& on_tensor = nullptr);
    // Convenience: config.json + weights from a HF model directory.
    static std::shared_ptr<Qwen2ForCausalLM> from_pretrained(const std::string& dir, at::ScalarType dtype,
                                                             at::Device device = at::kCPU);
    // HF's init: Linear/Embedding ~ N(0, 0.02), biases 0, norms 1. Construction leaves weights uninitialized
    // (so a model about to be loaded never touches that memory); call this for a fresh random model.
    void init_weights(uint64_t seed);
    // Writes the weights as HF safetensors (sharded above `max_shard_bytes`) plus config.json.
    void save_pretrained(const std::string& dir, uint64_t max_shard_bytes = 5ull << 30) const;

    ForwardOutputs forward_hidden(const ForwardInputs& in) { return model->forward(in); }
    at::Tensor logits(const at::Tensor& hidden);  // lm_head in the model dtype
    at::Tensor forward(const ForwardInputs& in) { return logits(forward_hidden(in).hidden); }

    const at::Tensor& lm_head_weight() const;

    std::shared_ptr<Qwen2Model> model;
    std::shared_ptr<DenseLinear> lm_head;  // nullptr when tied to model->embed_tokens
    Qwen2Config config;
};

// Causal-LM loss as HF ForCausalLMLoss: logits at position t predict labels[t+1]; labels == -100 are ignored;
// mean over the rest (or sum / num_items when num_items > 0). Computed in chunks of `chunk_tokens` rows so the
// fp32 logits of the whole batch × vocabulary never exist at once. When autograd is recording and hidden (or the
// lm_head weight) requires grad, the gradients are computed in forward from each chunk's logits and backward only
// scales them by the incoming gradient, so a forward under grad mode costs one extra GEMM per chunk.
at::Tensor causal_lm_loss(const at::Tensor& hidden, const at::Tensor& lm_head_weight, const at::Tensor& labels,
                          int64_t chunk_tokens = 1024, int64_t num_items = 0);

// Iterates a model's parameters with HF names (lm_head.weight omitted when tied).
std::vector<std::pair<std::string, at::Tensor>> hf_named_parameters(const Qwen2ForCausalLM& model);

}  // namespace medllm::model

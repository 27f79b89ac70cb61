// The Qwen2/Qwen2.5 decoder, op for op as HF transformers' Qwen2ForCausalLM.
#include "medllm/model/qwen2.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>

#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/io/safetensors.h"
#include "medllm/model/checkpoint_check.h"
#include "medllm/model/rng_state.h"

namespace medllm::model {
namespace {

at::Tensor rotate_half(const at::Tensor& x) {
    int64_t half = x.size(-1) / 2;
    return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// Positions that restart at 0 at each new segment id along a row (packed documents).
at::Tensor positions_from_segments(const at::Tensor& seg) {
    int64_t S   = seg.size(1);
    auto idx    = at::arange(S, seg.options().dtype(at::kLong)).unsqueeze(0).expand_as(seg);
    auto change = at::ones_like(seg, seg.options().dtype(at::kBool));
    if (S > 1) change.narrow(1, 1, S - 1).copy_(seg.narrow(1, 1, S - 1) != seg.narrow(1, 0, S - 1));
    auto starts = std::get<0>(at::cummax(at::where(change, idx, at::zeros_like(idx)), 1));
    return idx - starts;
}

// Boolean attention mask [B, 1, S, T] (true = attend), or undefined when SDPA's own causal flag suffices.
at::Tensor build_mask(int64_t B, int64_t S, int64_t past, const ForwardInputs& in, at::Device device, bool& causal) {
    causal = false;
    if (in.attention_mask_4d.defined()) {
        const auto& m = in.attention_mask_4d;
        if (past != 0 || in.attention_mask.defined() || in.segment_ids.defined())
            throw Error("attention_mask_4d cannot be combined with a KV cache, attention_mask or segment_ids");
        if (m.dim() != 4 || m.size(0) != B || m.size(1) != 1 || m.size(2) != S || m.size(3) != S)
            throw Error("attention_mask_4d must be [batch, 1, seq, seq] = [" + std::to_string(B) + ", 1, " +
                        std::to_string(S) + ", " + std::to_string(S) + "]");
        return m.to(device, at::kBool);
    }
    if (!in.attention_mask.defined() && !in.segment_ids.defined()) {
        if (past == 0 && S > 1) {
            causal = true;  // SDPA's is_causal is top-left aligned, right only without a cache prefix
            return {};
        }
        if (S == 1) return {};
    }
    int64_t T    = past + S;
    auto opts    = at::TensorOptions().dtype(at::kLong).device(device);
    auto q_pos   = (at::arange(S, opts) + past).view({S, 1});
    auto k_pos   = at::arange(T, opts).view({1, T});
    auto allowed = (k_pos <= q_pos).view({1, 1, S, T}).expand({B, 1, S, T});
    if (in.attention_mask.defined()) {
        if (in.attention_mask.dim() != 2 || in.attention_mask.size(0) != B || in.attention_mask.size(1) != T)
            throw Error("attention_mask must be [batch, past+seq] = [" + std::to_string(B) + ", " + std::to_string(T) +
                        "]");
        allowed = allowed & in.attention_mask.to(device).to(at::kBool).view({B, 1, 1, T});
    }
    if (in.segment_ids.defined()) {
        if (past != 0) throw Error("segment_ids (packed documents) cannot be combined with a KV cache");
        auto seg = in.segment_ids.to(device);
        allowed  = allowed & (seg.view({B, 1, S, 1}) == seg.view({B, 1, 1, S}));
    }
    // A query with nothing to attend to (a left-padding row) is left fully masked: SDPA (torch >= 2.5) gives it
    // a zero output, exactly what HF gets from the same call, so even the losses over such rows agree.
    return allowed;
}

// Recomputes one decoder layer in backward instead of keeping its activations. Like torch.utils.checkpoint
// (preserve_rng_state), the recomputation replays the forward's random numbers, so dropout masks match and the
// gradients are those of the forward that produced the loss; the generators are then put back as they were.
struct CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
    // Autograd functions cannot take undefined tensors: "no mask" (plain causal attention) travels as an empty one.
    static at::Tensor mask_arg(const at::Tensor& mask) { return mask.defined() ? mask : at::empty({0}); }
    static at::Tensor real_mask(const at::Tensor& mask) { return mask.numel() > 0 ? mask : at::Tensor(); }

    static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor x, at::Tensor cos, at::Tensor sin,
                              at::Tensor mask, bool causal, int64_t layer_ptr) {
        const RngState rng         = RngState::capture(x);
        ctx->saved_data["rng_cpu"] = rng.cpu;
        if (rng.device.defined()) ctx->saved_data["rng_device"] = rng.device;
        ctx->saved_data["rng_device_index"] = static_cast<int64_t>(rng.device_index);
        ctx->save_for_backward({x});
        ctx->saved_data["cos"]    = cos;
        ctx->saved_data["sin"]    = sin;
        ctx->saved_data["mask"]   = mask;
        ctx->saved_data["causal"] = causal;
        ctx->saved_data["layer"]  = layer_ptr;
        auto* layer               = reinterpret_cast<Qwen2DecoderLayer*>(layer_ptr);
        return layer->forward(x, cos, sin, real_mask(mask), causal, nullptr, 0);
    }
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grad_out) {
        auto x      = ctx->get_saved_variables()[0].detach().requires_grad_(true);
        auto* layer = reinterpret_cast<Qwen2DecoderLayer*>(ctx->saved_data["layer"].toInt());
        RngState replay;
        replay.cpu          = ctx->saved_data["rng_cpu"].toTensor();
        replay.device_index = static_cast<int>(ctx->saved_data["rng_device_index"].toInt());
        if (ctx->saved_data.count("rng_device")) replay.device = ctx->saved_data["rng_device"].toTensor();
        const RngState current = RngState::capture(x);
        at::Tensor out;
        {
            at::AutoGradMode grad_on(true);
            replay.restore();
            try {
                out = layer->forward(x, ctx->saved_data["cos"].toTensor(), ctx->saved_data["sin"].toTensor(),
                                     real_mask(ctx->saved_data["mask"].toTensor()), ctx->saved_data["causal"].toBool(),
                                     nullptr, 0);
            } catch (...) {
                current.restore();
                throw;
            }
            current.restore();
        }
        // Parameter gradients accumulate into .grad as in a normal backward; the input gradient is returned.
        torch::autograd::backward({out}, {grad_out[0]});
        return {x.grad(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
};

// Cross-entropy over [N, H] hidden rows against lm_head, chunk by chunk, so the [N, V] fp32 logits never exist
// whole. The loss is a scalar, so its gradient is known up to the incoming scalar already in forward: when autograd
// will want gradients, forward computes them from each chunk's logits while it has them (no recomputation in
// backward), and backward only scales them by the incoming gradient. Nothing else is kept: not the hidden rows,
// not the logits.
struct ChunkedCrossEntropy : public torch::autograd::Function<ChunkedCrossEntropy> {
    static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor hidden, at::Tensor weight,
                              at::Tensor targets, int64_t chunk, double scale, bool need_h, bool need_w) {
        const int64_t N   = hidden.size(0);
        auto total        = at::zeros({}, hidden.options().dtype(at::kFloat));
        at::Tensor grad_h = need_h ? at::empty_like(hidden) : at::Tensor();
        // The weight gradient accumulates in fp32 across chunks and is cast once at the end.
        at::Tensor grad_w = need_w ? at::zeros(weight.sizes(), weight.options().dtype(at::kFloat)) : at::Tensor();
        for (int64_t s = 0; s < N; s += chunk) {
            const int64_t n = std::min(chunk, N - s);
            auto h          = hidden.narrow(0, s, n);
            auto t          = targets.narrow(0, s, n);
            auto valid      = t.ne(-100);
            auto logits     = at::linear(h, weight).to(at::kFloat);  // HF: lm_head, then .float()
            auto lse        = at::logsumexp(logits, -1);
            auto picked     = logits.gather(1, t.clamp_min(0).unsqueeze(1)).squeeze(1);
            total += ((lse - picked) * valid).sum();
            if (!need_h && !need_w) continue;
            // d loss / d logits = scale · (softmax - onehot) on rows with a target, 0 elsewhere.
            // In place in the logits' buffer: a chunk of fp32 logits is large (1024 x 152064 x 4 B = 623 MB), and
            // every fresh one costs page faults on the CPU.
            auto dlogit = logits.sub_(lse.unsqueeze(1)).exp_();  // softmax = exp(logits - logsumexp)
            logits      = at::Tensor();
            dlogit.scatter_add_(1, t.clamp_min(0).unsqueeze(1), at::full({n, 1}, -1.0f, dlogit.options()));
            dlogit = dlogit.mul_((valid.to(at::kFloat) * scale).unsqueeze(1)).to(hidden.scalar_type());
            if (need_h) grad_h.narrow(0, s, n).copy_(at::matmul(dlogit, weight));
            if (need_w) grad_w.add_(at::matmul(dlogit.t(), h).to(at::kFloat));
        }
        if (need_h) ctx->saved_data["grad_h"] = grad_h;
        if (need_w) ctx->saved_data["grad_w"] = grad_w.to(weight.scalar_type());
        return total * scale;
    }
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grad_out) {
        const at::Tensor g = grad_out[0].to(at::kFloat);
        auto scaled        = [&](const char* key) {
            const at::Tensor grad = ctx->saved_data[key].toTensor();
            // The usual incoming gradient is exactly 1 (loss.backward()): hand the tensor over without a pass.
            return g.item<float>() == 1.0f ? grad : (grad.to(at::kFloat) * g).to(grad.scalar_type());
        };
        at::Tensor grad_h, grad_w;
        if (ctx->needs_input_grad(0)) {
            if (!ctx->saved_data.count("grad_h")) throw Error("causal_lm_loss: hidden gradient was not prepared");
            grad_h = scaled("grad_h");
        }
        if (ctx->needs_input_grad(1)) {
            if (!ctx->saved_data.count("grad_w")) throw Error("causal_lm_loss: lm_head gradient was not prepared");
            grad_w = scaled("grad_w");
        }
        return {grad_h, grad_w, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
};

}  // namespace

// ---------------------------------------------------------------- building blocks

DenseLinear::DenseLinear(int64_t in, int64_t out, bool with_bias, at::TensorOptions options) {
    weight = register_parameter("weight", at::empty({out, in}, options));
    if (with_bias) bias = register_parameter("bias", at::empty({out}, options));
}

at::Tensor DenseLinear::forward(const at::Tensor& x) {
    return at::linear(x, weight, bias);
}

Embedding::Embedding(int64_t vocab, int64_t dim, at::TensorOptions options) {
    weight = register_parameter("weight", at::empty({vocab, dim}, options));
}

at::Tensor Embedding::forward(const at::Tensor& ids) {
    return at::embedding(weight, ids);
}

RMSNorm::RMSNorm(int64_t dim, double eps_, at::TensorOptions options) : eps(eps_) {
    weight = register_parameter("weight", at::ones({dim}, options));
}

at::Tensor RMSNorm::forward(const at::Tensor& x) {
    auto h   = x.to(at::kFloat);
    auto var = h.pow(2).mean(-1, /*keepdim=*/true);
    h        = h * at::rsqrt(var + eps);
    return weight * h.to(x.scalar_type());  // cast first, then the weight multiply (HF order)
}

RotaryEmbedding::RotaryEmbedding(int64_t head_dim, double theta) {
    // HF: 1 / theta ** (arange(0, d, 2).float() / d), all in fp32.
    auto exponent = at::arange(0, head_dim, 2, at::kLong).to(at::kFloat) / static_cast<float>(head_dim);
    inv_freq      = 1.0 / at::pow(theta, exponent);
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::cos_sin(const at::Tensor& position_ids, at::ScalarType dtype) const {
    auto inv  = inv_freq.to(position_ids.device());
    auto freq = position_ids.to(at::kFloat).unsqueeze(-1) * inv.view({1, 1, -1});  // one fp32 product each
    auto emb  = at::cat({freq, freq}, -1);
    return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

std::pair<at::Tensor, at::Tensor> KVCache::append(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
    int64_t S = k.size(2), need = length_ + S;
    for (auto* slot : {&k_[layer], &v_[layer]}) {
        const at::Tensor& src = slot == &k_[layer] ? k : v;
        if (!slot->defined() || slot->size(2) < need) {
            int64_t cap = std::max<int64_t>({need, slot->defined() ? 2 * slot->size(2) : 0, 16});
            auto grown  = at::empty({src.size(0), src.size(1), cap, src.size(3)}, src.options());
            if (slot->defined() && length_ > 0) grown.narrow(2, 0, length_).copy_(slot->narrow(2, 0, length_));
            *slot = grown;
        }
        slot->narrow(2, length_, S).copy_(src);
    }
    return {k_[layer].narrow(2, 0, need), v_[layer].narrow(2, 0, need)};
}

void KVCache::select_rows(const at::Tensor& rows) {
    for (auto& t : k_)
        if (t.defined()) t = t.index_select(0, rows.to(t.device()));
    for (auto& t : v_)
        if (t.defined()) t = t.index_select(0, rows.to(t.device()));
}

void KVCache::clear() {
    for (auto& t : k_) t = at::Tensor();
    for (auto& t : v_) t = at::Tensor();
    length_ = 0;
}

// ---------------------------------------------------------------- decoder

Qwen2Attention::Qwen2Attention(const Qwen2Config& cfg, at::TensorOptions options)
    : num_heads(cfg.num_attention_heads), num_kv_heads(cfg.num_key_value_heads), head_dim(cfg.head_dim) {
    q_proj = register_module("q_proj", std::make_shared<DenseLinear>(cfg.hidden_size, cfg.q_dim(), true, options));
    k_proj = register_module("k_proj", std::make_shared<DenseLinear>(cfg.hidden_size, cfg.kv_dim(), true, options));
    v_proj = register_module("v_proj", std::make_shared<DenseLinear>(cfg.hidden_size, cfg.kv_dim(), true, options));
    o_proj = register_module("o_proj", std::make_shared<DenseLinear>(cfg.q_dim(), cfg.hidden_size, false, options));
}

at::Tensor Qwen2Attention::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                   const at::Tensor& mask, bool causal, KVCache* cache, int64_t layer,
                                   int64_t queries) {
    int64_t B = x.size(0), S = x.size(1);
    const int64_t Q = queries > 0 && queries < S ? queries : S;
    auto xq         = Q == S ? x : x.narrow(1, S - Q, Q);
    auto q          = q_proj->forward(xq).view({B, Q, num_heads, head_dim}).transpose(1, 2);
    auto k          = k_proj->forward(x).view({B, S, num_kv_heads, head_dim}).transpose(1, 2);
    auto v          = v_proj->forward(x).view({B, S, num_kv_heads, head_dim}).transpose(1, 2);
    auto c = cos.unsqueeze(1), s = sin.unsqueeze(1);
    auto cq = Q == S ? c : c.narrow(2, S - Q, Q), sq = Q == S ? s : s.narrow(2, S - Q, Q);
    q = q * cq + rotate_half(q) * sq;
    k = k * c + rotate_half(k) * s;
    if (cache) std::tie(k, v) = cache->append(layer, k, v);
    int64_t n_rep = num_heads / num_kv_heads;
    // Inference: SDPA's enable_gqa maps query head h to KV head h / n_rep itself (HF's repeat_kv order), the same
    // numbers without copying K and V n_rep times (on the CPU, about half the attention time). Training keeps the
    // explicit repeat, whose backward is the plain sum over the copies; on CUDA a mask with enable_gqa would fall
    // back to the math kernel.
    const bool gqa = n_rep > 1 && !at::GradMode::is_enabled() && (x.is_cpu() || !mask.defined());
    if (n_rep > 1 && !gqa) {  // KV head j serves query heads j*n_rep .. (j+1)*n_rep-1 (HF repeat_kv)
        int64_t T = k.size(2);
        k         = k.unsqueeze(2).expand({B, num_kv_heads, n_rep, T, head_dim}).reshape({B, num_heads, T, head_dim});
        v         = v.unsqueeze(2).expand({B, num_kv_heads, n_rep, T, head_dim}).reshape({B, num_heads, T, head_dim});
    }
    std::optional<at::Tensor> attn_mask;
    if (mask.defined()) attn_mask = mask;
    auto out = at::scaled_dot_product_attention(q, k, v, attn_mask, 0.0, causal, std::pow(head_dim, -0.5), gqa);
    return o_proj->forward(out.transpose(1, 2).reshape({B, Q, num_heads * head_dim}));
}

Qwen2MLP::Qwen2MLP(const Qwen2Config& cfg, at::TensorOptions options) {
    int64_t H = cfg.hidden_size, I = cfg.intermediate_size;
    gate_proj = register_module("gate_proj", std::make_shared<DenseLinear>(H, I, false, options));
    up_proj   = register_module("up_proj", std::make_shared<DenseLinear>(H, I, false, options));
    down_proj = register_module("down_proj", std::make_shared<DenseLinear>(I, H, false, options));
}

at::Tensor Qwen2MLP::forward(const at::Tensor& x) {
    return down_proj->forward(at::silu(gate_proj->forward(x)) * up_proj->forward(x));
}

Qwen2DecoderLayer::Qwen2DecoderLayer(const Qwen2Config& cfg, at::TensorOptions options) {
    self_attn = register_module("self_attn", std::make_shared<Qwen2Attention>(cfg, options));
    mlp       = register_module("mlp", std::make_shared<Qwen2MLP>(cfg, options));
    input_layernorm =
        register_module("input_layernorm", std::make_shared<RMSNorm>(cfg.hidden_size, cfg.rms_norm_eps, options));
    post_attention_layernorm = register_module("post_attention_layernorm",
                                               std::make_shared<RMSNorm>(cfg.hidden_size, cfg.rms_norm_eps, options));
}

at::Tensor Qwen2DecoderLayer::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                      const at::Tensor& mask, bool causal, KVCache* cache, int64_t layer,
                                      int64_t queries) {
    auto a       = self_attn->forward(input_layernorm->forward(x), cos, sin, mask, causal, cache, layer, queries);
    const auto Q = a.size(1);
    auto h       = (Q == x.size(1) ? x : x.narrow(1, x.size(1) - Q, Q)) + a;
    return h + mlp->forward(post_attention_layernorm->forward(h));
}

Qwen2Model::Qwen2Model(const Qwen2Config& cfg, at::TensorOptions options)
    : rotary(cfg.head_dim, cfg.rope_theta), config(cfg) {
    embed_tokens =
        register_module("embed_tokens", std::make_shared<Embedding>(cfg.vocab_size, cfg.hidden_size, options));
    auto list = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
        layers.push_back(std::make_shared<Qwen2DecoderLayer>(cfg, options));
        list->push_back(layers.back());
    }
    norm = register_module("norm", std::make_shared<RMSNorm>(cfg.hidden_size, cfg.rms_norm_eps, options));
}

ForwardOutputs Qwen2Model::forward(const ForwardInputs& in) {
    if (!in.input_ids.defined() || in.input_ids.dim() != 2) throw Error("input_ids must be a [batch, seq] tensor");
    int64_t B = in.input_ids.size(0), S = in.input_ids.size(1);
    int64_t past = in.cache ? in.cache->length() : 0;
    auto device  = embed_tokens->weight.device();
    // Range-check ids while they are still on the CPU (where callers build them): on a GPU the check would cost a
    // device sync per decode step. Ids that arrive on the GPU are trusted.
    if (S > 0 && B > 0 && in.input_ids.device().is_cpu()) {
        auto lo = in.input_ids.min().item<int64_t>(), hi = in.input_ids.max().item<int64_t>();
        if (lo < 0 || hi >= config.vocab_size)
            throw Error("token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the vocabulary [0, " +
                        std::to_string(config.vocab_size) + ")");
    }
    auto ids = in.input_ids.to(device);

    at::Tensor positions = in.position_ids;
    if (!positions.defined()) {
        positions = in.segment_ids.defined() ? positions_from_segments(in.segment_ids.to(device))
                                             : (at::arange(S, ids.options()) + past).unsqueeze(0).expand({B, S});
    }
    positions       = positions.to(device);
    auto h          = embed_tokens->forward(ids);
    auto [cos, sin] = rotary.cos_sin(positions, h.scalar_type());
    bool causal     = false;
    auto mask       = build_mask(B, S, past, in, device, causal);

    if (in.last_positions < 0) throw Error("last_positions must be >= 0, got " + std::to_string(in.last_positions));
    if (in.last_positions > 0 && in.output_hidden_states)
        throw Error("last_positions cannot be combined with output_hidden_states");
    const int64_t keep = in.last_positions > 0 && in.last_positions < S ? in.last_positions : 0;
    // The last layer's queries are the kept positions only: their rows of the mask, or for plain causal attention
    // (top-left aligned in SDPA) an explicit one; the very last position attends to everything.
    at::Tensor last_mask = mask;
    bool last_causal     = causal;
    if (keep > 0 && mask.defined()) {
        last_mask = mask.narrow(2, S - keep, keep);
    } else if (keep > 0 && causal) {
        last_causal = false;
        if (keep > 1) {
            auto opts = at::TensorOptions().dtype(at::kLong).device(device);
            last_mask = (at::arange(S, opts).view({1, S}) <= at::arange(S - keep, S, opts).view({keep, 1}))
                            .view({1, 1, keep, S});
        }
    }

    ForwardOutputs out;
    bool checkpoint = gradient_checkpointing && at::GradMode::is_enabled() && !in.cache;
    for (size_t i = 0; i < layers.size(); ++i) {
        if (in.output_hidden_states) out.hidden_states.push_back(h);
        if (keep > 0 && !checkpoint && i + 1 == layers.size()) {
            h = layers[i]->forward(h, cos, sin, last_mask, last_causal, in.cache, static_cast<int64_t>(i), keep);
        } else if (checkpoint) {
            // The recomputed layer needs an input that requires grad, or a frozen-embedding (LoRA) model
            // would never run this layer's backward.
            if (!h.requires_grad()) h = h.detach().requires_grad_(true);
            h = CheckpointedLayer::apply(h, cos, sin, CheckpointedLayer::mask_arg(mask), causal,
                                         reinterpret_cast<int64_t>(layers[i].get()));
        } else {
            h = layers[i]->forward(h, cos, sin, mask, causal, in.cache, static_cast<int64_t>(i));
        }
    }
    if (in.cache) in.cache->advance(S);
    if (keep > 0 && h.size(1) != keep) h = h.narrow(1, S - keep, keep);  // checkpointed layers ran on every row
    h = norm->forward(h);
    if (in.output_hidden_states) out.hidden_states.push_back(h);
    out.hidden = h;
    return out;
}

// ---------------------------------------------------------------- causal LM

Qwen2ForCausalLM::Qwen2ForCausalLM(const Qwen2Config& cfg, at::TensorOptions options) : config(cfg) {
    model = register_module("model", std::make_shared<Qwen2Model>(cfg, options));
    if (!cfg.tie_word_embeddings)
        lm_head =
            register_module("lm_head", std::make_shared<DenseLinear>(cfg.hidden_size, cfg.vocab_size, false, options));
}

const at::Tensor& Qwen2ForCausalLM::lm_head_weight() const {
    return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

at::Tensor Qwen2ForCausalLM::logits(const at::Tensor& hidden) {
    return at::linear(hidden, lm_head_weight());
}

void Qwen2ForCausalLM::init_weights(uint64_t seed) {
    at::NoGradGuard no_grad;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    for (auto& item : named_parameters()) {
        const std::string& name = item.key();
        at::Tensor& p           = item.value();
        bool is_norm            = name.find("norm") != std::string::npos;
        bool is_bias            = name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
        if (is_norm) {
            p.fill_(1.0);
        } else if (is_bias) {
            p.zero_();
        } else {  // draw on CPU so the same seed gives the same weights on any device
            p.copy_(at::normal(0.0, config.initializer_range, p.sizes(), gen, at::TensorOptions().dtype(at::kFloat)));
        }
    }
}

void Qwen2ForCausalLM::load_checkpoint(const std::string& path,
                                       const std::function<bool(const std::string&, const at::Tensor&)>& on_tensor) {
    at::NoGradGuard no_grad;
    io::CheckpointReader reader(path);
    auto params = named_parameters();
    std::set<std::string> loaded;
    for (const auto& name : reader.names()) {
        if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;  // old checkpoints store the buffer
        if (config.tie_word_embeddings && name == "lm_head.weight") {
            spdlog::debug("{}: ignoring lm_head.weight (tie_word_embeddings)", path);
            continue;
        }
        at::Tensor* param = params.find(name);
        at::Tensor src    = reader.load(name);
        if (on_tensor && on_tensor(name, src)) {
            loaded.insert(name);
            continue;
        }
        if (!param) throw Error(path + ": unexpected tensor '" + name + "' (not a Qwen2 parameter)");
        if (src.sizes() != param->sizes()) {
            throw Error(path + ": tensor '" + name + "' has shape " + c10::str(src.sizes()) + " but the config needs " +
                        c10::str(param->sizes()));
        }
        // Same dtype on CPU: the mmapped view is used as is (zero copy; the mapping is private).
        param->set_data(src.to(param->device(), param->scalar_type()).contiguous());
        loaded.insert(name);
    }
    for (const auto& item : params) {
        if (!loaded.count(item.key())) throw Error(path + ": missing tensor '" + item.key() + "'");
    }
}

std::shared_ptr<Qwen2ForCausalLM> Qwen2ForCausalLM::from_pretrained(const std::string& dir, at::ScalarType dtype,
                                                                    at::Device device) {
    auto cfg = Qwen2Config::from_file(dir);
    validate_checkpoint(io::CheckpointReader(dir), cfg, dir);  // before anything is allocated
    auto model = std::make_shared<Qwen2ForCausalLM>(cfg, at::TensorOptions().dtype(dtype).device(device));
    model->load_checkpoint(dir);
    return model;
}

void Qwen2ForCausalLM::save_pretrained(const std::string& dir, uint64_t max_shard_bytes) const {
    std::filesystem::create_directories(dir);
    io::CheckpointWriter writer(dir, max_shard_bytes);
    for (const auto& [name, tensor] : hf_named_parameters(*this)) writer.add(name, tensor.detach());
    writer.finish();
    write_file_atomic(std::filesystem::path(dir) / "config.json", config.to_json().dump(2) + "\n");
}

std::vector<std::pair<std::string, at::Tensor>> hf_named_parameters(const Qwen2ForCausalLM& model) {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& item : model.named_parameters()) out.emplace_back(item.key(), item.value());
    return out;
}

at::Tensor causal_lm_loss(const at::Tensor& hidden, const at::Tensor& lm_head_weight, const at::Tensor& labels,
                          int64_t chunk_tokens, int64_t num_items) {
    if (hidden.dim() != 3 || labels.dim() != 2 || hidden.size(0) != labels.size(0) || hidden.size(1) != labels.size(1))
        throw Error("causal_lm_loss: hidden [B, S, H] and labels [B, S] must agree");
    int64_t B = labels.size(0), S = labels.size(1);
    // Position t predicts labels[t+1]; the last position has nothing to predict (HF pads with -100).
    auto targets = at::full({B, S}, -100, labels.options().dtype(at::kLong));
    if (S > 1) targets.narrow(1, 0, S - 1).copy_(labels.narrow(1, 1, S - 1));
    targets            = targets.reshape({B * S}).to(hidden.device());
    int64_t count      = num_items > 0 ? num_items : targets.ne(-100).sum().item<int64_t>();
    double scale       = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
    const bool grad_on = at::GradMode::is_enabled();
    return ChunkedCrossEntropy::apply(hidden.reshape({B * S, hidden.size(2)}), lm_head_weight, targets,
                                      std::max<int64_t>(1, chunk_tokens), scale, grad_on && hidden.requires_grad(),
                                      grad_on && lm_head_weight.requires_grad());
}

}  // namespace medllm::model

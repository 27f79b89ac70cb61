// The decoder over packed sequences with per-sequence KV caches, and the prefix-chunk cache (ragged_forward.h).
#include "medllm/generate/ragged_forward.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include <torch/torch.h>

#include "medllm/core/error.h"
#include "medllm/generate/row_linear.h"

namespace medllm::generate {
namespace {

// HF's rotate_half on the last dimension, as the model computes it (model/qwen2.cpp).
at::Tensor rotate_half(const at::Tensor& x) {
    const int64_t half = x.size(-1) / 2;
    return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// `x` [N, ...] with zero rows appended up to a multiple of kMinRows (at least kMinRows): the row counts whose GEMM
// rows all come out as from 4-row products (see the header).
at::Tensor pad_rows(const at::Tensor& x) {
    const int64_t rows = std::max<int64_t>(kMinRows, (x.size(0) + kMinRows - 1) / kMinRows * kMinRows);
    if (x.size(0) == rows) return x;
    auto shape = x.sizes().vec();
    shape[0]   = rows - x.size(0);
    return at::cat({x, at::zeros(shape, x.options())}, 0);
}

}  // namespace

// ---------------------------------------------------------------- SequenceKV

SequenceKV::SequenceKV(const model::Qwen2Config& cfg, at::TensorOptions options, int64_t capacity)
    : kv_(at::empty({cfg.num_hidden_layers, 2, cfg.num_key_value_heads, std::max<int64_t>(capacity, 1), cfg.head_dim},
                    options)) {}

void SequenceKV::reserve(int64_t tokens) {
    if (tokens <= capacity()) return;
    auto shape = kv_.sizes().vec();
    shape[3]   = std::max(tokens, 2 * capacity());
    auto grown = at::empty(shape, kv_.options());
    if (length_ > 0) grown.narrow(3, 0, length_).copy_(kv_.narrow(3, 0, length_));
    kv_ = grown;
}

SequenceKV SequenceKV::copy(int64_t capacity) const {
    SequenceKV out;
    auto shape = kv_.sizes().vec();
    shape[3]   = std::max({capacity, length_, int64_t{1}});
    out.kv_    = at::empty(shape, kv_.options());
    if (length_ > 0) out.kv_.narrow(3, 0, length_).copy_(kv_.narrow(3, 0, length_));
    out.length_ = length_;
    return out;
}

at::Tensor SequenceKV::block(int64_t start, int64_t count) const {
    return kv_.narrow(3, start, count);
}

void SequenceKV::append_block(const at::Tensor& block) {
    const int64_t count = block.size(3);
    reserve(length_ + count);
    kv_.narrow(3, length_, count).copy_(block);
    length_ += count;
}

double SequenceKV::bytes_per_token(const model::Qwen2Config& cfg, at::ScalarType dtype) {
    return double(cfg.num_hidden_layers) * 2.0 * double(cfg.num_key_value_heads) * double(cfg.head_dim) *
           double(c10::elementSize(dtype));
}

// ---------------------------------------------------------------- RaggedForward

RaggedForward::RaggedForward(model::Qwen2ForCausalLM& model)
    : model_(model), cfg_(model.config), options_(model.model->embed_tokens->weight.options()) {}

at::Tensor RaggedForward::project(model::Projection& p, const at::Tensor& x, int64_t decode_rows) {
    const int64_t N = x.size(0);
    auto* dense     = dynamic_cast<model::DenseLinear*>(&p);
    if (dense && row_linear_applies(x, dense->weight, dense->bias)) {
        if (decode_rows == N) return row_linear(x, dense->weight, dense->bias);
        auto rest = at::linear(pad_rows(x.narrow(0, decode_rows, N - decode_rows)), dense->weight, dense->bias)
                        .narrow(0, 0, N - decode_rows);
        if (decode_rows == 0) return rest;
        return at::cat({row_linear(x.narrow(0, 0, decode_rows), dense->weight, dense->bias), rest}, 0);
    }
    // Other projections (LoRA, NF4) or devices: one product with a multiple of kMinRows rows.
    return p.forward(pad_rows(x)).narrow(0, 0, N);
}

at::Tensor RaggedForward::forward(const std::vector<Segment>& segments) {
    auto& m          = *model_.model;
    const int64_t nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, hd = cfg_.head_dim;
    const int64_t L = cfg_.num_hidden_layers;
    const auto dev  = options_.device();

    // Packed token list; the decoding segments (one token each) come first.
    std::vector<int64_t> ids, pos, offset;
    std::vector<int64_t> want;  // row of each segment's last token, for the segments with `logits`
    int64_t decode_rows = 0, decode_want = 0;
    bool prefill_seen = false;
    for (const auto& s : segments) {
        if (s.count < 1) throw Error("RaggedForward: a segment without tokens");
        if (s.decode) {
            if (prefill_seen || s.count != 1 || !s.logits)
                throw Error("RaggedForward: decoding segments (one token, logits) must come first");
            ++decode_rows;
            ++decode_want;
        } else {
            prefill_seen = true;
        }
        offset.push_back(static_cast<int64_t>(ids.size()));
        for (int64_t t = 0; t < s.count; ++t) {
            ids.push_back(s.tokens[t]);
            pos.push_back(s.kv->length_ + t);
        }
        if (s.logits) want.push_back(static_cast<int64_t>(ids.size()) - 1);
        s.kv->reserve(s.kv->length_ + s.count);
    }
    const int64_t N         = static_cast<int64_t>(ids.size());
    const auto long_opts    = at::TensorOptions().dtype(at::kLong);
    auto h                  = m.embed_tokens->forward(at::tensor(ids, long_opts).to(dev));  // [N, H]
    auto [cos_all, sin_all] = m.rotary.cos_sin(at::tensor(pos, long_opts).to(dev).unsqueeze(0), h.scalar_type());
    auto cos = cos_all[0].unsqueeze(1), sin = sin_all[0].unsqueeze(1);  // [N, 1, hd]

    const int64_t R = static_cast<int64_t>(want.size());
    at::Tensor want_rows;
    if (R > 0) want_rows = at::tensor(want, long_opts).to(dev);
    const double scale = std::pow(static_cast<double>(hd), -0.5);
    auto write_kv      = [&](int64_t l, const at::Tensor& k, const at::Tensor& v) {
        for (std::size_t i = 0; i < segments.size(); ++i) {
            const auto& s = segments[i];
            auto layer_kv = s.kv->kv_[l];
            layer_kv[0].narrow(1, s.kv->length_, s.count).copy_(k.narrow(0, offset[i], s.count).transpose(0, 1));
            layer_kv[1].narrow(1, s.kv->length_, s.count).copy_(v.narrow(0, offset[i], s.count).transpose(0, 1));
        }
    };
    for (int64_t l = 0; l < L; ++l) {
        auto& layer     = *m.layers[l];
        auto& att       = *layer.self_attn;
        const bool last = l + 1 == L;
        auto x          = layer.input_layernorm->forward(h);
        auto k          = project(*att.k_proj, x, decode_rows).view({N, nkv, hd});
        auto v          = project(*att.v_proj, x, decode_rows).view({N, nkv, hd});
        k               = k * cos + rotate_half(k) * sin;
        write_kv(l, k, v);
        if (last && R == 0) break;  // prefill chunks that are not a prompt's end need the last layer's K and V only
        // Queries: every row, or in the last layer the wanted rows only (decoding rows first there too).
        at::Tensor xq = x, cq = cos, sq = sin, residual = h;
        int64_t q_decode = decode_rows;
        if (last) {
            xq       = x.index_select(0, want_rows);
            cq       = cos.index_select(0, want_rows);
            sq       = sin.index_select(0, want_rows);
            residual = h.index_select(0, want_rows);
            q_decode = decode_want;
        }
        const int64_t Q = xq.size(0);
        auto q          = project(*att.q_proj, xq, q_decode).view({Q, nh, hd});
        q               = q * cq + rotate_half(q) * sq;
        auto attn       = at::empty({Q, nh * hd}, q.options());
        int64_t q_row   = 0;  // next row among the last layer's queries
        for (std::size_t i = 0; i < segments.size(); ++i) {
            const auto& s      = segments[i];
            const int64_t past = s.kv->length_, T = past + s.count;
            // This segment's queries: all its tokens, or in the last layer its last token when wanted.
            int64_t q_first = offset[i], q_count = s.count;
            if (last) {
                if (!s.logits) continue;
                q_first = q_row++;
                q_count = 1;
            }
            auto layer_kv = s.kv->kv_[l];
            auto qs       = q.narrow(0, q_first, q_count).transpose(0, 1).unsqueeze(0);  // [1, nh, S, hd]
            auto ks = layer_kv[0].narrow(1, 0, T).unsqueeze(0), vs = layer_kv[1].narrow(1, 0, T).unsqueeze(0);
            // The queries are the last q_count positions: each attends to every key up to its own position.
            std::optional<at::Tensor> mask;
            bool causal = false;
            if (q_count > 1) {
                if (q_count == T) {
                    causal = true;  // SDPA's causal flag is top-left aligned: right when there is no past
                } else {
                    auto opts = at::TensorOptions().dtype(at::kLong).device(dev);
                    mask      = at::arange(T, opts).view({1, T}) <=
                           (at::arange(q_count, opts) + (T - q_count)).view({q_count, 1});
                }
            }
            // SDPA's enable_gqa maps query head j to KV head j / n_rep (HF's repeat_kv order) without copying K and
            // V; on CUDA, a mask with enable_gqa falls back to the math kernel, so the heads are repeated there.
            const bool gqa = nh != nkv && (dev.is_cpu() || !mask);
            if (nh != nkv && !gqa) {
                ks = ks.repeat_interleave(nh / nkv, 1);
                vs = vs.repeat_interleave(nh / nkv, 1);
            }
            auto out = at::scaled_dot_product_attention(qs, ks, vs, mask, 0.0, causal, scale, gqa);
            attn.narrow(0, q_first, q_count).copy_(out[0].transpose(0, 1).reshape({q_count, nh * hd}));
        }
        h        = residual + project(*att.o_proj, attn, q_decode);
        auto x2  = layer.post_attention_layernorm->forward(h);
        auto& mp = *layer.mlp;
        h        = h + project(*mp.down_proj,
                               at::silu(project(*mp.gate_proj, x2, q_decode)) * project(*mp.up_proj, x2, q_decode), q_decode);
    }
    for (const auto& s : segments) s.kv->length_ += s.count;
    if (R == 0) return at::empty({0, cfg_.hidden_size}, options_);
    return m.norm->forward(h);
}

at::Tensor RaggedForward::logits(const at::Tensor& hidden) {
    const int64_t R = hidden.size(0);
    if (R == 0) return at::empty({0, cfg_.vocab_size}, options_.dtype(at::kFloat));
    const at::Tensor& w = model_.lm_head_weight();
    // Every row, a prompt's last as well as a decoding one, through row_linear: at the few rows a step has, it
    // streams the 151,936-row head once for all of them, faster than MKL's GEMM (bench_row_linear), and its rows do
    // not depend on each other.
    if (row_linear_applies(hidden, w, at::Tensor())) return row_linear(hidden, w, at::Tensor()).to(at::kFloat);
    return model_.logits(pad_rows(hidden)).narrow(0, 0, R).to(at::kFloat);
}

// ---------------------------------------------------------------- PrefixCache

uint64_t PrefixCache::chunk_key(uint64_t parent, const TokenId* tokens, int64_t count) {
    return XXH3_64bits_withSeed(tokens, static_cast<std::size_t>(count) * sizeof(TokenId), parent);
}

const at::Tensor* PrefixCache::find(uint64_t key, uint64_t parent, const TokenId* tokens) {
    auto it = entries_.find(key);
    if (it == entries_.end()) return nullptr;
    Entry& e = it->second;
    if (e.parent != parent || !std::equal(e.tokens.begin(), e.tokens.end(), tokens)) return nullptr;
    lru_.splice(lru_.begin(), lru_, e.use);
    return &e.block;
}

void PrefixCache::insert(uint64_t key, uint64_t parent, const TokenId* tokens, at::Tensor block) {
    if (entries_.count(key)) return;
    const double b = double(block.numel()) * double(block.element_size());
    if (b > max_bytes_) return;
    evict_to(max_bytes_ - b);
    lru_.push_front(key);
    Entry e;
    e.parent = parent;
    e.tokens.assign(tokens, tokens + block.size(3));
    e.block = std::move(block);
    e.use   = lru_.begin();
    entries_.emplace(key, std::move(e));
    bytes_ += b;
}

void PrefixCache::evict_to(double bytes) {
    while (bytes_ > bytes && !lru_.empty()) {
        auto it = entries_.find(lru_.back());
        bytes_ -= double(it->second.block.numel()) * double(it->second.block.element_size());
        entries_.erase(it);
        lru_.pop_back();
    }
}

void PrefixCache::clear() {
    entries_.clear();
    lru_.clear();
    bytes_ = 0;
}

void PrefixCache::set_max_bytes(double max_bytes) {
    max_bytes_ = max_bytes;
    evict_to(max_bytes_);
}

}  // namespace medllm::generate

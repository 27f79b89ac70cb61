// The model's forward over several sequences at once without padding, each with its own KV cache, and the cache of
// prompt prefixes that later prompts continue from. What the generation engine (engine.h) runs every step.
//
// The new tokens of every sequence are packed into one token list: embeddings, projections, MLPs and norms run on
// it as one matrix, and each sequence's queries attend to its own keys only (one attention call per sequence). So
// nothing is computed on padding, and a row's numbers do not depend on the other rows:
//   * attention sees one sequence's keys, in a call whose shape depends on that sequence alone;
//   * the rows of decoding sequences (one token each) go through row_linear (row_linear.h), which sums every
//     output in one fixed order whatever the number of rows; prompt rows go through GEMMs whose row count is a
//     multiple of kMinRows (padded with zero rows): MKL's fp32 GEMM on the CPU uses other kernels, with other
//     summation orders, for 1 row, for 2-3 rows and for the last 1-3 rows of 5-7 and 9-11 rows, while with a
//     multiple of 4 rows every row's result is the same bits whatever the row count and the other rows (measured
//     with LibTorch 2.11's MKL on AVX2, row counts 4 to 1024, the 0.5B and test shapes). A prompt's rows are always
//     prompt rows and a decoding token always a decoding row, in any batch. The BatchInvariance tests check it on every
//     build.
// A sequence's logits are then the same bits in any batch, so its samples depend on the seed, the prompt and the
// sample index only (issue 24 §3). On CUDA, cuBLAS chooses kernels by shape and this holds only approximately.
//
// Prompts are prefilled in chunks at fixed positions [c·kPrefillChunk, (c+1)·kPrefillChunk): a chunk's keys and
// values depend only on the tokens up to its end, whoever computes it. That makes them shareable: PrefixCache keeps
// the chunks of earlier prompts, and a prompt that starts with the same tokens continues from them instead of
// computing them again (what vLLM calls automatic prefix caching), with the same numbers as if it had computed them.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include <ATen/Tensor.h>

#include "medllm/model/qwen2.h"
#include "medllm/text/tokenizer.h"

namespace medllm::generate {

using text::TokenId;

// GEMM row counts are multiples of this (see above).
constexpr int64_t kMinRows = 4;
// Prompt positions prefilled together: chunk c covers positions [c·64, (c+1)·64). Also the prefix cache's unit.
constexpr int64_t kPrefillChunk = 64;

// One sequence's keys and values after RoPE, the KV heads not repeated: [layers, 2 (K, V), kv_heads, capacity,
// head_dim], positions 0 .. length-1 filled. Grows by doubling.
class SequenceKV {
public:
    SequenceKV() = default;
    SequenceKV(const model::Qwen2Config& cfg, at::TensorOptions options, int64_t capacity);
    bool defined() const { return kv_.defined(); }
    int64_t length() const { return length_; }
    int64_t capacity() const { return kv_.defined() ? kv_.size(3) : 0; }
    // Room for at least `tokens` positions (a copy when it grows).
    void reserve(int64_t tokens);
    // An independent copy with room for `capacity` positions (a sample's own cache).
    SequenceKV copy(int64_t capacity) const;
    // Positions [start, start+count) of every layer: a view [layers, 2, kv_heads, count, head_dim].
    at::Tensor block(int64_t start, int64_t count) const;
    // Appends a block of that shape (a cached prefix chunk) at the end.
    void append_block(const at::Tensor& block);
    // Bytes of `tokens` positions.
    static double bytes_per_token(const model::Qwen2Config& cfg, at::ScalarType dtype);

private:
    friend class RaggedForward;
    at::Tensor kv_;
    int64_t length_ = 0;
};

// One sequence's share of a forward: `count` new tokens appended at its cache's end (positions length ..
// length+count-1).
struct Segment {
    SequenceKV* kv        = nullptr;
    const TokenId* tokens = nullptr;
    int64_t count         = 0;
    bool logits           = false;  // the final hidden state of its last token is wanted
    // A decoding sequence's token (count 1, logits): its rows go through row_linear (fixed summation order for any
    // number of rows); the other rows through GEMMs of a multiple of kMinRows rows. Decoding segments come first.
    bool decode = false;
};

class RaggedForward {
public:
    explicit RaggedForward(model::Qwen2ForCausalLM& model);
    // Runs the decoder on the segments (each sequence at most once), appending their keys and values to their caches;
    // returns the final normed hidden states [R, H] of the segments with `logits`, in segment order. The last layer
    // computes queries, attention and MLP only for those rows (its keys and values still cover every token).
    at::Tensor forward(const std::vector<Segment>& segments);
    // fp32 logits [R, V] of the hidden rows forward() returned.
    at::Tensor logits(const at::Tensor& hidden);

private:
    // x·Wᵀ of a projection: the first `decode_rows` rows through row_linear, the others through one GEMM of a
    // multiple of kMinRows rows (dense CPU weights); other projections through their forward on such a row count.
    at::Tensor project(model::Projection& p, const at::Tensor& x, int64_t decode_rows);
    model::Qwen2ForCausalLM& model_;
    const model::Qwen2Config& cfg_;
    at::TensorOptions options_;
};

// Keys and values of full prefill chunks of earlier prompts, looked up by the tokens from the prompt's start to the
// chunk's end. An entry holds its chunk's tokens and its parent's key, so a hash collision is never a hit.
// Least recently used entries go first when `max_bytes` would be exceeded.
class PrefixCache {
public:
    explicit PrefixCache(double max_bytes) : max_bytes_(max_bytes) {}
    // The key of a chunk: XXH3-64 of its tokens seeded with its parent's key (0 for the first chunk).
    static uint64_t chunk_key(uint64_t parent, const TokenId* tokens, int64_t count);
    // The chunk's [layers, 2, kv_heads, kPrefillChunk, head_dim] block, or nullptr.
    const at::Tensor* find(uint64_t key, uint64_t parent, const TokenId* tokens);
    void insert(uint64_t key, uint64_t parent, const TokenId* tokens, at::Tensor block);
    void clear();
    void set_max_bytes(double max_bytes);
    double bytes() const { return bytes_; }

private:
    struct Entry {
        uint64_t parent = 0;
        std::vector<TokenId> tokens;
        at::Tensor block;
        std::list<uint64_t>::iterator use;  // position in lru_ (front = most recent)
    };
    void evict_to(double bytes);
    double max_bytes_;
    double bytes_ = 0;
    std::unordered_map<uint64_t, Entry> entries_;
    std::list<uint64_t> lru_;
};

}  // namespace medllm::generate

// The generation engine: continuous batching over prompts of any lengths, without padding, with prefix caching.
//
// Every step is one forward (RaggedForward, ragged_forward.h) over one new token of each decoding sequence and the
// next chunk of each prompt being prefilled, packed into one token list; each sequence attends over its own KV
// cache. Prompts are prefilled in 64-token chunks at fixed positions, and full chunks go into a prefix cache kept
// by the Generator across calls: a prompt that starts with the same tokens as an earlier one (the few-shot examples
// every IgakuQA question carries, an instruction every task prompt repeats) continues from the cached keys and
// values instead of computing them again. A finished sequence frees its row at once and waiting prompts take the
// free rows. `n` samples of a prompt share its prefill.
//
// A sequence's numbers do not depend on the other sequences of the call, the batch size, the slot it runs in or
// what the prefix cache holds (ragged_forward.h says how), and each sequence draws from its own random stream
// (sampling.h): a sampled completion is a function of the seed, the prompt's key and the sample index only, so one
// process and several, a resumed run and an uninterrupted one, write the same samples (on the CPU, bit for bit;
// on CUDA up to the kernels cuBLAS picks per shape).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "medllm/generate/load.h"  // load_model, LoadedModel, load_eos_token_ids: what a Generator is built from
#include "medllm/generate/sampling.h"
#include "medllm/model/qwen2.h"
#include "medllm/text/tokenizer.h"

namespace medllm::generate {

class PrefixCache;

using text::TokenId;

enum class FinishReason { stop, eos, length };
const char* to_string(FinishReason reason);

struct GenerateOptions {
    int64_t max_new_tokens = 256;
    SamplingParams sampling;
    int64_t num_samples = 1;  // completions per prompt, sharing the prompt's prefill
    uint64_t seed       = 0;
    // Each prompt's identity for its random streams (default: its position). A caller that runs a subset of a
    // larger list (a resumed file) passes the positions in the full list, so every prompt keeps its samples.
    std::vector<uint64_t> prompt_keys;
    std::vector<int64_t> stop_token_ids;    // end a sequence like EOS, with finish reason "stop"
    std::vector<std::string> stop_strings;  // matched on decoded text; needs a tokenizer
    bool ignore_eos          = false;       // keep going past EOS (benchmarks)
    bool logprobs            = false;       // record log p(token) under the model (raw logits, before processors)
    int64_t max_batch_size   = 64;          // sequences decoded together
    bool skip_special_tokens = true;        // in the decoded text
    // Throws UsageError naming the bad value.
    void validate() const;
};

struct Completion {
    std::size_t prompt_index = 0;
    int64_t sample_index     = 0;
    std::string text;          // decoded (empty without a tokenizer), cut before a matched stop string
    std::vector<TokenId> ids;  // generated tokens; the EOS / stop token is not included
    FinishReason finish_reason = FinishReason::length;
    std::string stop;              // the stop string, or the EOS / stop token id (as text) that ended it
    int64_t prompt_tokens    = 0;  // length of the prompt
    int64_t generated_tokens = 0;  // tokens produced, the final EOS / stop token included
    std::vector<float> logprobs;   // one per entry of `ids` when asked
};

struct GenerationStats {
    int64_t prompt_tokens        = 0;  // prompt tokens (each prompt once, whatever num_samples)
    int64_t cached_prompt_tokens = 0;  // of those, taken from the prefix cache instead of computed
    int64_t generated_tokens     = 0;
    // Steps are prefill steps (forwards with prompt chunks; decoding rows ride along, their tokens are counted in
    // generated_tokens only) or decode steps (decoding rows only), each timed with its token choice.
    int64_t decode_steps   = 0;
    int64_t decode_tokens  = 0;  // tokens chosen by decode steps
    double prefill_seconds = 0;
    double decode_seconds  = 0;
    // The same steps' CPU time (the process's, all threads): what benchmarks on a shared machine compare, where
    // wall time depends on the other processes.
    double prefill_cpu_seconds = 0;
    double decode_cpu_seconds  = 0;
};

struct GenerateCallbacks {
    // Streamed text of a sequence as it becomes final (stop strings held back until they can be ruled out).
    std::function<void(const Completion& partial, const std::string& piece)> on_text;
    // A sequence is done (called in finishing order).
    std::function<void(const Completion&)> on_complete;
};

class Generator {
public:
    // `tokenizer` may be null: then completions carry ids only and stop strings are refused.
    // `eos_token_ids`: usually from load_eos_token_ids().
    // The model's weights must not change while the Generator is used (the prefix cache holds keys and values
    // computed with them); call clear_prefix_cache() after changing them.
    Generator(std::shared_ptr<model::Qwen2ForCausalLM> model, std::shared_ptr<const text::Tokenizer> tokenizer,
              std::vector<int64_t> eos_token_ids);
    ~Generator();

    // Completions for every prompt × sample, ordered by prompt then sample. Throws before generating anything
    // when a prompt is empty or does not leave room for one new token in the model's context
    // (max_position_embeddings); otherwise max_new_tokens is cut to what fits, with finish reason "length".
    std::vector<Completion> generate(const std::vector<std::vector<TokenId>>& prompts, const GenerateOptions& options,
                                     const GenerateCallbacks& callbacks = {});

    const GenerationStats& last_stats() const { return stats_; }
    const std::vector<int64_t>& eos_token_ids() const { return eos_; }
    model::Qwen2ForCausalLM& model() { return *model_; }
    const text::Tokenizer* tokenizer() const { return tokenizer_.get(); }
    int64_t context_length() const { return model_->config.max_position_embeddings; }
    // The prefix cache (1 GiB by default; least recently used chunks go first). Emptying it changes no result.
    void clear_prefix_cache();
    void set_prefix_cache_bytes(double bytes);

private:
    std::shared_ptr<model::Qwen2ForCausalLM> model_;
    std::shared_ptr<const text::Tokenizer> tokenizer_;
    std::vector<int64_t> eos_;
    GenerationStats stats_;
    std::unique_ptr<PrefixCache> prefix_cache_;
};

}  // namespace medllm::generate

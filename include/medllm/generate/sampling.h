// Logits processing and token choice, following HF transformers' processors (generation/logits_process.py):
// repetition penalty first, then (sampling only) temperature, top-k, top-p, min-p, in that order.
//
// Random draws come from one generator per sequence (seeded from the run seed, the prompt index and the sample
// index), so a seeded run gives the same tokens whatever the batch size, the slot a sequence runs in, or the
// other prompts in the file. A draw is one uniform number per step, turned into a token by inverse CDF.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include <ATen/Tensor.h>

namespace medllm::generate {

struct SamplingParams {
    bool do_sample            = false;  // false: greedy (argmax after the repetition penalty, as HF)
    double temperature        = 1.0;    // > 0
    int64_t top_k             = 0;      // 0 = off
    double top_p              = 1.0;    // (0, 1]; 1 = off
    double min_p              = 0.0;    // [0, 1]; 0 = off
    double repetition_penalty = 1.0;    // > 0; 1 = off. Applies to prompt and generated tokens (not padding)
    // Throws UsageError naming the bad value.
    void validate() const;
};

// HF RepetitionPenaltyLogitsProcessor: for tokens in `seen` ([B, V] bool), logit < 0 ? logit·p : logit / p.
at::Tensor apply_repetition_penalty(const at::Tensor& logits, const at::Tensor& seen, double penalty);
// HF TopKLogitsWarper: drops tokens below the k-th largest logit (ties with it are kept).
at::Tensor apply_top_k(const at::Tensor& logits, int64_t top_k);
// HF TopPLogitsWarper: drops the low tail whose cumulative probability is <= 1 - top_p; the top token stays.
at::Tensor apply_top_p(const at::Tensor& logits, double top_p);
// HF MinPLogitsWarper: drops tokens whose probability is below min_p · (top probability); the top token stays.
at::Tensor apply_min_p(const at::Tensor& logits, double min_p);
// Every processor of `params`, in HF order. `seen` may be undefined when the penalty is off.
at::Tensor process_logits(const at::Tensor& logits, const SamplingParams& params, const at::Tensor& seen);

// Picks one token per row of processed fp32 `scores` [B, V]: argmax (greedy) or the inverse CDF of
// softmax(scores) at `uniforms` [B] (values in [0, 1)). Returns [B] int64 on the scores' device.
at::Tensor choose_tokens(const at::Tensor& scores, bool do_sample, const std::vector<double>& uniforms);

// A sequence's own random stream (mt19937_64 seeded by SplitMix64 of seed, prompt and sample index).
class SequenceRng {
public:
    SequenceRng(uint64_t seed, uint64_t prompt_index, uint64_t sample_index);
    double uniform();  // [0, 1)

private:
    std::mt19937_64 engine_;
};

}  // namespace medllm::generate

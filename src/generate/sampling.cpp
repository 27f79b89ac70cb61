// Logits processors and token choice as HF transformers applies them.
#include "medllm/generate/sampling.h"

#include <cmath>
#include <limits>
#include <string>

#include <torch/torch.h>

#include "medllm/core/error.h"

namespace medllm::generate {
namespace {

constexpr float kFiltered = -std::numeric_limits<float>::infinity();

uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

}  // namespace

void SamplingParams::validate() const {
    if (!(temperature > 0.0) || !std::isfinite(temperature))
        throw UsageError("temperature must be > 0 (use greedy decoding instead of temperature 0), got " +
                         std::to_string(temperature));
    if (top_k < 0) throw UsageError("top_k must be >= 0 (0 = off), got " + std::to_string(top_k));
    if (!(top_p > 0.0 && top_p <= 1.0)) throw UsageError("top_p must be in (0, 1], got " + std::to_string(top_p));
    if (!(min_p >= 0.0 && min_p <= 1.0)) throw UsageError("min_p must be in [0, 1], got " + std::to_string(min_p));
    if (!(repetition_penalty > 0.0) || !std::isfinite(repetition_penalty))
        throw UsageError("repetition_penalty must be > 0 (1 = off), got " + std::to_string(repetition_penalty));
}

at::Tensor apply_repetition_penalty(const at::Tensor& logits, const at::Tensor& seen, double penalty) {
    if (penalty == 1.0 || !seen.defined()) return logits;
    auto penalized = at::where(logits < 0, logits * penalty, logits / penalty);
    return at::where(seen, penalized, logits);
}

at::Tensor apply_top_k(const at::Tensor& logits, int64_t top_k) {
    if (top_k <= 0) return logits;
    int64_t k = std::min<int64_t>(top_k, logits.size(-1));
    auto kth  = std::get<0>(at::topk(logits, k, -1)).narrow(-1, k - 1, 1);
    return logits.masked_fill(logits < kth, kFiltered);
}

at::Tensor apply_top_p(const at::Tensor& logits, double top_p) {
    if (top_p >= 1.0) return logits;
    auto [sorted, order] = at::sort(logits, -1, /*descending=*/false);
    auto cumulative      = at::softmax(sorted, -1).cumsum(-1);
    auto remove_sorted   = cumulative <= (1.0 - top_p);
    remove_sorted.narrow(-1, remove_sorted.size(-1) - 1, 1).fill_(false);  // the top token always stays
    auto remove = at::zeros_like(remove_sorted).scatter(-1, order, remove_sorted);
    return logits.masked_fill(remove, kFiltered);
}

at::Tensor apply_min_p(const at::Tensor& logits, double min_p) {
    if (min_p <= 0.0) return logits;
    auto probs  = at::softmax(logits, -1);
    auto top    = probs.amax(-1, /*keepdim=*/true);
    auto remove = probs < top * min_p;
    remove.scatter_(-1, probs.argmax(-1, /*keepdim=*/true), false);
    return logits.masked_fill(remove, kFiltered);
}

at::Tensor process_logits(const at::Tensor& logits, const SamplingParams& params, const at::Tensor& seen) {
    auto scores = apply_repetition_penalty(logits, seen, params.repetition_penalty);
    if (!params.do_sample) return scores;
    if (params.temperature != 1.0) scores = scores / params.temperature;
    scores = apply_top_k(scores, params.top_k);
    scores = apply_top_p(scores, params.top_p);
    return apply_min_p(scores, params.min_p);
}

at::Tensor choose_tokens(const at::Tensor& scores, bool do_sample, const std::vector<double>& uniforms) {
    if (!do_sample) return scores.argmax(-1);
    if (static_cast<int64_t>(uniforms.size()) != scores.size(0))
        throw Error("choose_tokens: " + std::to_string(uniforms.size()) + " random draws for " +
                    std::to_string(scores.size(0)) + " rows");
    auto cdf = at::softmax(scores.to(at::kFloat), -1).cumsum(-1);
    auto u   = at::tensor(std::vector<float>(uniforms.begin(), uniforms.end()), at::kFloat).to(cdf.device());
    // The first token whose cumulative probability exceeds u·total; filtered tokens (probability 0) never do.
    auto target = (u * cdf.select(-1, cdf.size(-1) - 1)).unsqueeze(-1).contiguous();
    auto picked = at::searchsorted(cdf, target, /*out_int32=*/false, /*right=*/true).squeeze(-1);
    return picked.clamp_max(scores.size(-1) - 1);
}

SequenceRng::SequenceRng(uint64_t seed, uint64_t prompt_index, uint64_t sample_index)
    : engine_(splitmix64(splitmix64(splitmix64(seed) ^ prompt_index) ^ (sample_index * 0x632BE59BD9B4E019ull))) {}

double SequenceRng::uniform() {
    return std::generate_canonical<double, 53>(engine_);
}

}  // namespace medllm::generate

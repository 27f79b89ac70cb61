// Option log-likelihoods for multiple-choice scoring (`medllm eval mcqa`), with each question's prompt run once.
//
// For one request (context C, continuations X_1..X_K): the context is prefilled once into a KV cache (only its
// last position's hidden state is kept: it predicts every continuation's first token); the cache is replicated to
// one row per option with more than one token and those options run together as one right-padded continuation
// forward of their tokens but the last (right padding needs no mask under causal attention). The hidden states
// that predict each continuation token go through lm_head, fp32 log-softmax, in chunks of `chunk_rows` rows.
// Options of one token (labels "A".."E") cost no forward beyond the prefix.
//
// Requests are scored one after another and never padded against each other, so a score does not depend on which
// other requests share the call: any batch size gives the same numbers, bit for bit.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/eval/mcqa_evaluator.h"
#include "medllm/generate/engine.h"

namespace medllm::generate {

struct LoglikRequestIds {
    std::vector<TokenId> context;
    std::vector<std::vector<TokenId>> continuations;
};

// lm-evaluation-harness's HFLM._encode_pair: trailing whitespace of the context moves to the front of each
// continuation; context ids = encode(context), continuation ids = encode(context + continuation) after the first
// len(context ids) tokens. Nothing special is added (the prompt text carries any chat markup). Throws Error for an
// empty context or a continuation that encodes to no token.
LoglikRequestIds encode_loglik_request(const text::Tokenizer& tokenizer, const std::string& context,
                                       const std::vector<std::string>& continuations);

struct LoglikOptions {
    int64_t chunk_rows      = 256;  // hidden rows per lm_head + log-softmax (bounds the [rows, vocab] fp32 logits)
    int64_t max_option_rows = 64;   // options per continuation forward (more are split into several)
};

// Scores as described above. Throws Error (naming the request index) when context + continuation does not fit the
// model's context (max_position_embeddings).
std::vector<std::vector<eval::ContinuationScore>> score_continuations(model::Qwen2ForCausalLM& model,
                                                                      const std::vector<LoglikRequestIds>& requests,
                                                                      const LoglikOptions& options = {});

// The evaluator's McqaBackend over a loaded model: log-likelihoods as above, greedy completions through the
// generation engine (as EngineBackend).
class McqaEngineBackend : public eval::McqaBackend {
public:
    McqaEngineBackend(const std::filesystem::path& model_dir, const LoadOptions& load, GenerateOptions base = {},
                      LoglikOptions loglik = {});

    std::vector<std::vector<eval::ContinuationScore>> loglikelihood(
        const std::vector<eval::LoglikRequest>& requests) override;
    std::vector<std::string> complete(const std::vector<std::string>& prompts,
                                      const eval::GenerationParams& params) override;
    bool has_chat_template() const override { return model_.has_chat_template; }
    std::string model_name() const override { return model_.name; }
    nlohmann::json identity() const override { return identity_; }

private:
    LoadedModel model_;
    GenerateOptions base_;
    LoglikOptions loglik_;
    Generator generator_;
    nlohmann::json identity_;
};

}  // namespace medllm::generate

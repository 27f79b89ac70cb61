// The model side of the option-text scores (include/medllm/generate/option_scores.h).
#include "medllm/generate/option_scores.h"

#include <algorithm>
#include <memory>

#include <ATen/ATen.h>

#include "medllm/core/error.h"
#include "medllm/generate/load.h"

namespace medllm::generate {
namespace {

// Mean log-probability per token of each continuation after `prefix`, one forward pass for all of them.
std::vector<double> continuation_scores(model::Qwen2ForCausalLM& model, const text::Tokenizer& tokenizer,
                                        const std::string& prefix, const std::vector<std::string>& continuations,
                                        at::Device device) {
    const auto prefix_ids = tokenizer.encode(prefix);
    std::vector<std::vector<text::TokenId>> rows;
    std::vector<int64_t> starts;
    size_t longest = 0;
    for (const auto& c : continuations) {
        // Encoded together so the boundary is tokenized as the model sees it; the continuation is what follows
        // the prefix's own tokens (identical for a character vocabulary, and the common case for BPE).
        auto ids     = tokenizer.encode(prefix + c);
        size_t start = 0;
        while (start < prefix_ids.size() && start < ids.size() && ids[start] == prefix_ids[start]) ++start;
        if (start == ids.size() || start == 0) throw Error("option scoring: the choice '" + c + "' encodes to nothing");
        starts.push_back(static_cast<int64_t>(start));
        longest = std::max(longest, ids.size());
        rows.push_back(std::move(ids));
    }
    const int64_t n = static_cast<int64_t>(rows.size()), len = static_cast<int64_t>(longest);
    auto input = at::zeros({n, len}, at::kLong);
    auto mask  = at::zeros({n, len}, at::kLong);
    for (int64_t i = 0; i < n; ++i) {
        const auto& r = rows[i];
        for (size_t t = 0; t < r.size(); ++t) {
            input[i][static_cast<int64_t>(t)] = r[t];
            mask[i][static_cast<int64_t>(t)]  = 1;
        }
    }
    model::ForwardInputs in;
    in.input_ids      = input.to(device);
    in.attention_mask = mask.to(device);  // right padding: padded positions are never scored
    const auto logp   = at::log_softmax(model.forward(in).to(at::kFloat), -1).cpu();
    std::vector<double> scores;
    for (int64_t i = 0; i < n; ++i) {
        const auto& r = rows[i];
        double sum    = 0;
        for (size_t t = static_cast<size_t>(starts[i]); t < r.size(); ++t)
            sum += logp[i][static_cast<int64_t>(t) - 1][r[t]].item<float>();
        scores.push_back(sum / static_cast<double>(r.size() - static_cast<size_t>(starts[i])));
    }
    return scores;
}

}  // namespace

eval::OptionTextScorer load_option_text_scorer(const std::filesystem::path& model_dir, const std::string& device,
                                               const std::filesystem::path& tokenizer_dir) {
    LoadOptions load;
    load.device                                      = device;
    load.dtype                                       = "fp32";
    load.require_tokenizer                           = tokenizer_dir.empty();
    auto loaded                                      = std::make_shared<LoadedModel>(load_model(model_dir, load));
    std::shared_ptr<const text::Tokenizer> tokenizer = loaded->tokenizer;
    if (!tokenizer_dir.empty()) tokenizer = text::Tokenizer::from_dir(tokenizer_dir);
    const at::Device where = parse_device(device);
    loaded->model->eval();
    return [loaded, tokenizer, where](const std::string& prefix, const std::vector<std::string>& continuations) {
        at::NoGradGuard no_grad;
        return continuation_scores(*loaded->model, *tokenizer, prefix, continuations, where);
    };
}

}  // namespace medllm::generate

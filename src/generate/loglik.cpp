// Option log-likelihoods for MCQA scoring, each question's prompt computed once.
#include "medllm/generate/loglik.h"

#include <algorithm>

#include <torch/torch.h>

#include "medllm/core/error.h"
#include "medllm/generate/eval_backend.h"

namespace medllm::generate {

namespace {

// Bytes of the whitespace character that ends `s[0, end)` (Python str.isspace: ASCII \t..\r, \x1c..\x1f and
// space, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000), or 0.
size_t trailing_space_bytes(const std::string& s, size_t end) {
    if (end == 0) return 0;
    const auto b          = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
    const unsigned char c = b(end - 1);
    if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return 1;
    if (end >= 2 && b(end - 2) == 0xC2 && (c == 0x85 || c == 0xA0)) return 2;
    if (end >= 3) {
        const unsigned cp = ((b(end - 3) & 0x0Fu) << 12) | ((b(end - 2) & 0x3Fu) << 6) | (c & 0x3Fu);
        if ((b(end - 3) & 0xF0) == 0xE0 && (b(end - 2) & 0xC0) == 0x80 && (c & 0xC0) == 0x80 &&
            (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
             cp == 0x205F || cp == 0x3000))
            return 3;
    }
    return 0;
}

}  // namespace

LoglikRequestIds encode_loglik_request(const text::Tokenizer& tokenizer, const std::string& context,
                                       const std::vector<std::string>& continuations) {
    // lm-eval moves the context's trailing whitespace (Python str.rstrip()) to the continuation.
    size_t keep = context.size();
    while (size_t n = trailing_space_bytes(context, keep)) keep -= n;
    const std::string ctx = context.substr(0, keep), moved = context.substr(keep);
    if (ctx.empty()) throw Error("log-likelihood request with an empty context");
    LoglikRequestIds out;
    out.context = tokenizer.encode(ctx, false);
    for (const auto& cont : continuations) {
        const auto whole = tokenizer.encode(ctx + moved + cont, false);
        if (whole.size() <= out.context.size())
            throw Error("continuation '" + cont + "' encodes to no token after its context");
        out.continuations.emplace_back(whole.begin() + static_cast<long>(out.context.size()), whole.end());
    }
    return out;
}

namespace {

// Sum of log-softmax(logits(rows))[targets] per group of rows, and whether each row's argmax is its target.
void score_rows(model::Qwen2ForCausalLM& model, const at::Tensor& rows, const std::vector<int64_t>& targets,
                int64_t chunk_rows, std::vector<float>& logprob, std::vector<uint8_t>& greedy) {
    const int64_t n = rows.size(0);
    logprob.resize(static_cast<size_t>(n));
    greedy.resize(static_cast<size_t>(n));
    auto tgt = at::tensor(targets, at::kLong).to(rows.device());
    for (int64_t b = 0; b < n; b += chunk_rows) {
        const int64_t len = std::min(chunk_rows, n - b);
        auto logits       = model.logits(rows.narrow(0, b, len)).to(at::kFloat);
        auto lp           = at::log_softmax(logits, -1);
        auto t            = tgt.narrow(0, b, len).unsqueeze(1);
        auto chosen       = lp.gather(1, t).squeeze(1).to(at::kCPU).contiguous();
        auto is_greedy    = (logits.argmax(-1) == t.squeeze(1)).to(at::kCPU).to(at::kByte).contiguous();
        std::copy_n(chosen.data_ptr<float>(), len, logprob.begin() + b);
        std::copy_n(is_greedy.data_ptr<uint8_t>(), len, greedy.begin() + b);
    }
}

std::vector<eval::ContinuationScore> score_one(model::Qwen2ForCausalLM& model, const LoglikRequestIds& req,
                                               const LoglikOptions& options, size_t index) {
    const int64_t P       = static_cast<int64_t>(req.context.size());
    const int64_t context = model.config.max_position_embeddings;
    if (P == 0) throw Error("log-likelihood request " + std::to_string(index) + ": empty context");
    for (const auto& c : req.continuations) {
        if (c.empty()) throw Error("log-likelihood request " + std::to_string(index) + ": empty continuation");
        if (P + static_cast<int64_t>(c.size()) > context)
            throw Error("log-likelihood request " + std::to_string(index) + ": prompt + option is " +
                        std::to_string(P + static_cast<int64_t>(c.size())) + " tokens, the model's context is " +
                        std::to_string(context));
    }
    const auto device   = model.lm_head_weight().device();
    const auto ids_opts = at::TensorOptions().dtype(at::kLong);

    // Prefix: once, into the cache; its last hidden state predicts each continuation's first token.
    model::KVCache cache(static_cast<int64_t>(model.config.num_hidden_layers));
    model::ForwardInputs in;
    in.input_ids =
        at::tensor(std::vector<int64_t>(req.context.begin(), req.context.end()), ids_opts).view({1, P}).to(device);
    in.cache              = &cache;
    in.last_positions     = 1;
    const at::Tensor last = model.forward_hidden(in).hidden.view({1, -1});  // [1, H]

    const size_t K = req.continuations.size();
    // Rows of hidden states in option order, token order; their targets are the continuation tokens.
    std::vector<at::Tensor> option_rows(K);
    std::vector<size_t> multi;
    for (size_t k = 0; k < K; ++k) {
        if (req.continuations[k].size() == 1)
            option_rows[k] = last;
        else
            multi.push_back(k);
    }
    for (size_t begin = 0; begin < multi.size(); begin += static_cast<size_t>(options.max_option_rows)) {
        const size_t end = std::min(multi.size(), begin + static_cast<size_t>(options.max_option_rows));
        const int64_t n  = static_cast<int64_t>(end - begin);
        int64_t width    = 0;
        for (size_t m = begin; m < end; ++m)
            width = std::max<int64_t>(width, static_cast<int64_t>(req.continuations[multi[m]].size()) - 1);
        // Each option's tokens but its last (the last is only predicted), right-padded with a valid id.
        std::vector<int64_t> ids(static_cast<size_t>(n * width), 0);
        for (size_t m = begin; m < end; ++m) {
            const auto& c = req.continuations[multi[m]];
            for (size_t j = 0; j + 1 < c.size(); ++j) ids[(m - begin) * static_cast<size_t>(width) + j] = c[j];
        }
        model::KVCache rows = cache;  // select_rows makes new tensors: the prefix cache stays as it is
        rows.select_rows(at::zeros({n}, ids_opts));
        model::ForwardInputs cin;
        cin.input_ids           = at::tensor(ids, ids_opts).view({n, width}).to(device);
        cin.cache               = &rows;
        const at::Tensor hidden = model.forward_hidden(cin).hidden;  // [n, width, H]
        for (size_t m = begin; m < end; ++m) {
            const int64_t len = static_cast<int64_t>(req.continuations[multi[m]].size()) - 1;
            option_rows[multi[m]] =
                at::cat({last, hidden.select(0, static_cast<int64_t>(m - begin)).narrow(0, 0, len)}, 0);
        }
    }
    std::vector<int64_t> targets;
    for (const auto& c : req.continuations) targets.insert(targets.end(), c.begin(), c.end());
    std::vector<float> lp;
    std::vector<uint8_t> greedy;
    score_rows(model, at::cat(option_rows, 0), targets, options.chunk_rows, lp, greedy);

    std::vector<eval::ContinuationScore> out(K);
    size_t at_row = 0;
    for (size_t k = 0; k < K; ++k) {
        auto& s  = out[k];
        s.tokens = static_cast<int64_t>(req.continuations[k].size());
        s.greedy = true;
        // Summed in the order of the tokens, in double (lm-eval sums the fp32 values with torch; well within 1e-4).
        for (int64_t j = 0; j < s.tokens; ++j, ++at_row) {
            s.logprob += static_cast<double>(lp[at_row]);
            s.greedy = s.greedy && greedy[at_row];
        }
    }
    return out;
}

}  // namespace

std::vector<std::vector<eval::ContinuationScore>> score_continuations(model::Qwen2ForCausalLM& model,
                                                                      const std::vector<LoglikRequestIds>& requests,
                                                                      const LoglikOptions& options) {
    if (options.chunk_rows < 1 || options.max_option_rows < 1)
        throw UsageError("log-likelihood options: chunk_rows and max_option_rows must be at least 1");
    c10::InferenceMode inference;
    std::vector<std::vector<eval::ContinuationScore>> out;
    out.reserve(requests.size());
    for (size_t i = 0; i < requests.size(); ++i) out.push_back(score_one(model, requests[i], options, i));
    return out;
}

McqaEngineBackend::McqaEngineBackend(const std::filesystem::path& model_dir, const LoadOptions& load,
                                     GenerateOptions base, LoglikOptions loglik)
    : model_(load_model(model_dir, load)),
      base_(std::move(base)),
      loglik_(loglik),
      generator_(model_.model, model_.tokenizer, model_.eos_token_ids) {
    if (!model_.tokenizer) throw Error(model_.name + ": evaluation needs the model's tokenizer files");
    identity_           = engine_identity(model_dir, load, model_, base_);
    identity_["loglik"] = {{"method", "prefix-cache, fp32 log-softmax"}, {"encode", "lm-eval _encode_pair"}};
}

std::vector<std::vector<eval::ContinuationScore>> McqaEngineBackend::loglikelihood(
    const std::vector<eval::LoglikRequest>& requests) {
    std::vector<LoglikRequestIds> ids;
    ids.reserve(requests.size());
    for (const auto& r : requests) ids.push_back(encode_loglik_request(*model_.tokenizer, r.context, r.continuations));
    return score_continuations(*model_.model, ids, loglik_);
}

std::vector<std::string> McqaEngineBackend::complete(const std::vector<std::string>& prompts,
                                                     const eval::GenerationParams& params) {
    return complete_prompts(generator_, *model_.tokenizer, base_, prompts, params);
}

}  // namespace medllm::generate

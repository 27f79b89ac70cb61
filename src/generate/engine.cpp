// The generation engine: batched KV-cache decoding over prompts of different lengths.
#include "medllm/generate/engine.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <new>
#include <set>

#include <torch/torch.h>

#include "medllm/core/error.h"
#include "medllm/generate/stop.h"

namespace medllm::generate {
namespace {

// Padded prompt tokens prefilled in one forward at most (bounds activation memory; at least one prompt).
constexpr int64_t kPrefillTokenBudget = 32768;

// Upper bounds of the options: far above real use, low enough that a typo is refused before anything is allocated.
// The n samples of a prompt decode together (their KV caches held at once), best-of-n and preference sampling use
// tens; vLLM's default for sequences decoded together is 256; no Qwen2 context is longer than 2^22 tokens
// (Qwen2.5-1M: 1,010,000), and completions are cut to the context anyway.
constexpr int64_t kMaxNumSamples   = 1024;
constexpr int64_t kMaxBatchSize    = 4096;
constexpr int64_t kMaxMaxNewTokens = int64_t{1} << 22;

double gib(double bytes) {
    return bytes / double(int64_t{1} << 30);
}

std::string gib_text(double bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", gib(bytes));
    return buf;
}

// Bytes of the KV cache of `rows` sequences of `tokens` positions.
double kv_cache_bytes(const model::Qwen2Config& cfg, int64_t rows, int64_t tokens, at::ScalarType dtype) {
    return double(rows) * double(tokens) * double(cfg.num_hidden_layers) * 2.0 * double(cfg.num_key_value_heads) *
           double(cfg.head_dim) * double(c10::elementSize(dtype));
}

// Physical memory of this machine, 0 when unknown.
double physical_memory_bytes() {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? double(pages) * double(page) : 0.0;
}

// What LibTorch or the C++ runtime throws when memory runs out: CUDA's OutOfMemoryError, the CPU allocator's
// c10::Error ("DefaultCPUAllocator: can't allocate memory: ..."), std::bad_alloc. Empty for anything else.
std::string allocation_failure(const std::exception& e) {
    if (dynamic_cast<const std::bad_alloc*>(&e)) return e.what();
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    if (!c10_error) return {};
    std::string what = c10_error->what_without_backtrace();
    if (!dynamic_cast<const c10::OutOfMemoryError*>(&e) && what.find("can't allocate memory") == std::string::npos &&
        what.find("out of memory") == std::string::npos)
        return {};
    what = what.substr(0, what.find('\n'));
    return what;
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Sequence {
    explicit Sequence(SequenceRng sequence_rng) : rng(std::move(sequence_rng)) {}
    Completion out;
    std::optional<text::StreamDecoder> decoder;
    std::optional<StopStringMatcher> matcher;
    SequenceRng rng;
    int64_t budget = 0;  // max new tokens for this sequence (options, cut by the context)
    bool done      = false;
};

// Rows decoding together. Every row's real tokens are right-aligned in the cache: row r has pad[r] leading padding
// columns, so the attention mask and the positions follow from `pad` alone.
struct Batch {
    explicit Batch(int64_t layers) : cache(layers) {}
    model::KVCache cache;
    std::vector<std::size_t> seqs;  // sequence index of each row
    std::vector<int64_t> pad;
    std::vector<int64_t> last;  // token each row feeds next
    at::Tensor seen;            // [rows, V] bool, tokens for the repetition penalty (undefined when off)
    int64_t rows() const { return static_cast<int64_t>(seqs.size()); }
    bool padded() const {
        return std::any_of(pad.begin(), pad.end(), [](int64_t p) { return p > 0; });
    }
};

at::Tensor long_tensor(const std::vector<int64_t>& values, at::Device device) {
    return at::tensor(values, at::kLong).to(device);
}

// mask [rows, length] = 1 from column pad[r] on.
at::Tensor mask_from_pad(const std::vector<int64_t>& pad, int64_t length, at::Device device) {
    auto cols = at::arange(length, at::TensorOptions().dtype(at::kLong).device(device)).unsqueeze(0);
    return (cols >= long_tensor(pad, device).unsqueeze(1)).to(at::kLong);
}

// The cache's current [rows, nkv, length, hd] views of one layer (appending nothing).
std::pair<at::Tensor, at::Tensor> cache_views(model::KVCache& cache, int64_t layer, int64_t rows,
                                              const model::Qwen2Config& cfg, at::TensorOptions options) {
    auto none = at::empty({rows, cfg.num_key_value_heads, 0, cfg.head_dim}, options);
    return cache.append(layer, none, none);
}

}  // namespace

const char* to_string(FinishReason reason) {
    switch (reason) {
        case FinishReason::stop:
            return "stop";
        case FinishReason::eos:
            return "eos";
        case FinishReason::length:
            return "length";
    }
    return "?";
}

void GenerateOptions::validate() const {
    auto in_range = [](const char* what, int64_t value, int64_t max) {
        if (value < 1 || value > max)
            throw UsageError(std::string(what) + " must be in [1, " + std::to_string(max) + "], got " +
                             std::to_string(value));
    };
    in_range("max_new_tokens (--max-new-tokens)", max_new_tokens, kMaxMaxNewTokens);
    in_range("num_samples (-n/--num-samples)", num_samples, kMaxNumSamples);
    in_range("max_batch_size (--batch-size)", max_batch_size, kMaxBatchSize);
    sampling.validate();
    for (const auto& s : stop_strings)
        if (s.empty()) throw UsageError("stop strings must not be empty");
    for (auto id : stop_token_ids)
        if (id < 0) throw UsageError("stop token ids (--stop-token-id) must be >= 0, got " + std::to_string(id));
}

Generator::Generator(std::shared_ptr<model::Qwen2ForCausalLM> model, std::shared_ptr<const text::Tokenizer> tokenizer,
                     std::vector<int64_t> eos_token_ids)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)), eos_(std::move(eos_token_ids)) {
    if (!model_) throw Error("Generator: no model");
}

namespace {

// Throws before anything is generated for a prompt that is empty, leaves no room in the context, or holds an id
// outside the vocabulary.
void check_prompts(const std::vector<std::vector<TokenId>>& prompts, const model::Qwen2Config& cfg) {
    const int64_t ctx   = cfg.max_position_embeddings;
    const int64_t vocab = cfg.vocab_size;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        const int64_t len = static_cast<int64_t>(prompts[i].size());
        if (len == 0) throw Error("prompt " + std::to_string(i) + " is empty (at least one token is needed)");
        if (len >= ctx)
            throw Error("prompt " + std::to_string(i) + " has " + std::to_string(len) +
                        " tokens, which leaves no room in the model's context of " + std::to_string(ctx) +
                        " tokens (max_position_embeddings in " + cfg.source + "); shorten it");
        for (TokenId id : prompts[i])
            if (id < 0 || id >= vocab)
                throw Error("prompt " + std::to_string(i) + " has token id " + std::to_string(id) +
                            " outside the model's vocabulary [0, " + std::to_string(vocab) + ")");
    }
}

// One call of Generator::generate: every prompt × sample as a Sequence, and the loop that refills the running
// batch from the waiting prompts (prefill + join) or decodes one token for all of its rows.
class GenerationRun {
public:
    GenerationRun(model::Qwen2ForCausalLM& model, const text::Tokenizer* tokenizer, const std::vector<int64_t>& eos,
                  const std::vector<std::vector<TokenId>>& prompts, const GenerateOptions& options,
                  const GenerateCallbacks& callbacks, GenerationStats& stats);

    // Generates every sequence. Throws Error (one line) when memory runs out, with the batch that needed it.
    std::vector<Completion> run();

private:
    // Refuses (Error) a run whose KV cache cannot fit in this machine's memory at all (CPU only).
    void check_kv_cache_fits() const;
    // The refill / decode loop.
    void decode_all();
    // End of the group of waiting prompts [first, end) prefilled together into `free_rows` rows.
    std::size_t prefill_group_end(std::size_t first, int64_t free_rows) const;
    // Prefills prompts [first, last) into a new batch (n rows per prompt) and chooses their first tokens.
    Batch prefill(std::size_t first, std::size_t last);
    // Joins `incoming` rows to `running`, left-padding the shorter cache; all-padding leading columns are dropped.
    void join(Batch& running, Batch& incoming);
    // One decode step for every running row.
    void decode_step(Batch& running);
    // Chooses each row's next token from its logits [rows, V] (fp32), records it, and drops finished rows.
    void advance(Batch& batch, const at::Tensor& logits);
    // Records token `t` for sequence `s`; finishes it on EOS, a stop token or string, or its length budget.
    void record_token(Sequence& s, int64_t t, const at::Tensor& logprobs, int64_t row);
    // Keeps rows `keep` of `batch`; columns that are padding in every remaining row go too.
    void keep_rows(Batch& batch, const std::vector<int64_t>& keep);
    void finish(Sequence& s, FinishReason reason, std::string stop);

    model::Qwen2ForCausalLM& model_;
    const std::vector<std::vector<TokenId>>& prompts_;
    const GenerateOptions& options_;
    const GenerateCallbacks& callbacks_;
    GenerationStats& stats_;
    const model::Qwen2Config& cfg_;
    const at::TensorOptions params_opts_;
    const at::Device device_;
    const int64_t layers_, n_, max_rows_;
    const bool penalty_;
    std::set<int64_t> eos_, stop_ids_;
    std::vector<Sequence> seqs_;
    int64_t rows_ = 0, tokens_ = 0;  // the batch of the forward in progress (for an allocation failure's message)
};

GenerationRun::GenerationRun(model::Qwen2ForCausalLM& model, const text::Tokenizer* tokenizer,
                             const std::vector<int64_t>& eos, const std::vector<std::vector<TokenId>>& prompts,
                             const GenerateOptions& options, const GenerateCallbacks& callbacks, GenerationStats& stats)
    : model_(model),
      prompts_(prompts),
      options_(options),
      callbacks_(callbacks),
      stats_(stats),
      cfg_(model.config),
      params_opts_(model.model->embed_tokens->weight.options()),
      device_(params_opts_.device()),
      layers_(cfg_.num_hidden_layers),
      n_(options.num_samples),
      max_rows_(std::max(options.max_batch_size, options.num_samples)),
      penalty_(options.sampling.repetition_penalty != 1.0),
      stop_ids_(options.stop_token_ids.begin(), options.stop_token_ids.end()) {
    if (!options.ignore_eos) eos_.insert(eos.begin(), eos.end());
    if (!options.prompt_keys.empty() && options.prompt_keys.size() != prompts.size())
        throw Error("generate: " + std::to_string(options.prompt_keys.size()) + " prompt keys for " +
                    std::to_string(prompts.size()) + " prompts");
    const int64_t ctx = cfg_.max_position_embeddings;
    seqs_.reserve(prompts.size() * n_);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        for (int64_t j = 0; j < n_; ++j) {
            const uint64_t key  = options.prompt_keys.empty() ? i : options.prompt_keys[i];
            Sequence& s         = seqs_.emplace_back(SequenceRng(options.seed, key, j));
            s.out.prompt_index  = i;
            s.out.sample_index  = j;
            s.out.prompt_tokens = static_cast<int64_t>(prompts[i].size());
            s.budget            = std::min(options.max_new_tokens, ctx - s.out.prompt_tokens);
            if (tokenizer) {
                s.decoder.emplace(*tokenizer, options.skip_special_tokens);
                s.matcher.emplace(options.stop_strings);
            }
        }
    }
}

std::vector<Completion> GenerationRun::run() {
    check_kv_cache_fits();
    try {
        decode_all();
    } catch (const std::exception& e) {
        const std::string why = allocation_failure(e);
        if (why.empty()) throw;
        throw Error("cannot allocate memory for a batch of " + std::to_string(rows_) + " x " + std::to_string(tokens_) +
                    " tokens (its KV cache alone is " +
                    gib_text(kv_cache_bytes(cfg_, rows_, tokens_, params_opts_.dtype().toScalarType())) +
                    " GiB): " + why + "; lower --batch-size, -n or --max-new-tokens");
    }
    std::vector<Completion> out;
    out.reserve(seqs_.size());
    for (auto& s : seqs_) out.push_back(std::move(s.out));
    return out;
}

void GenerationRun::check_kv_cache_fits() const {
    if (!device_.is_cpu()) return;  // a CUDA out-of-memory error is caught in run()
    int64_t longest = 0;
    for (const auto& p : prompts_) longest = std::max<int64_t>(longest, p.size());
    const int64_t rows   = std::min<int64_t>(max_rows_, static_cast<int64_t>(seqs_.size()));
    const int64_t tokens = std::min(cfg_.max_position_embeddings, longest + options_.max_new_tokens);
    const double need    = kv_cache_bytes(cfg_, rows, tokens, params_opts_.dtype().toScalarType());
    const double have    = physical_memory_bytes();
    // Only a cache larger than all of the machine's memory is refused up front: the allocation could not succeed,
    // and on Linux it might not even fail but grow until the kernel kills the process.
    if (have > 0 && need > have)
        throw Error("cannot allocate " + gib_text(need) + " GiB for the KV cache of batch " + std::to_string(rows) +
                    " x " + std::to_string(tokens) + " tokens: the machine has " + gib_text(have) +
                    " GiB; lower --batch-size, -n or --max-new-tokens");
}

void GenerationRun::decode_all() {
    Batch running(layers_);
    std::size_t next_prompt   = 0;
    const int64_t refill_rows = std::max<int64_t>(n_, max_rows_ / 4);  // refill in chunks: each join copies the cache
    while (next_prompt < prompts_.size() || running.rows() > 0) {
        const int64_t free_rows = max_rows_ - running.rows();
        if (next_prompt < prompts_.size() && (running.rows() == 0 || free_rows >= refill_rows)) {
            const std::size_t last = prefill_group_end(next_prompt, free_rows);
            Batch incoming         = prefill(next_prompt, last);
            next_prompt            = last;
            join(running, incoming);
        } else {
            decode_step(running);
        }
    }
}

std::size_t GenerationRun::prefill_group_end(std::size_t first, int64_t free_rows) const {
    std::size_t last = first;
    int64_t longest  = 0;
    while (last < prompts_.size() && static_cast<int64_t>(last - first + 1) * n_ <= free_rows) {
        const int64_t longer = std::max<int64_t>(longest, prompts_[last].size());
        if (last > first && longer * static_cast<int64_t>(last - first + 1) > kPrefillTokenBudget) break;
        longest = longer;
        ++last;
    }
    if (last == first) ++last;  // n > free rows only when the batch is empty: max_rows >= n
    return last;
}

Batch GenerationRun::prefill(std::size_t first, std::size_t last) {
    auto t0         = Clock::now();
    const int64_t G = static_cast<int64_t>(last - first);
    int64_t Lp      = 0;
    for (auto i = first; i < last; ++i) Lp = std::max<int64_t>(Lp, prompts_[i].size());
    rows_   = G * n_;
    tokens_ = Lp;
    std::vector<int64_t> ids(G * Lp, 0), pad(G);
    for (int64_t g = 0; g < G; ++g) {
        const auto& p = prompts_[first + g];
        pad[g]        = Lp - static_cast<int64_t>(p.size());
        std::copy(p.begin(), p.end(), ids.begin() + g * Lp + pad[g]);
        stats_.prompt_tokens += static_cast<int64_t>(p.size());
    }
    Batch batch(layers_);
    model::ForwardInputs in;
    in.input_ids = long_tensor(ids, device_).view({G, Lp});
    in.cache     = &batch.cache;
    if (std::any_of(pad.begin(), pad.end(), [](int64_t p) { return p > 0; })) {
        in.attention_mask = mask_from_pad(pad, Lp, device_);
        // HF generate: positions = cumsum(mask) - 1, padding positions set to 1.
        in.position_ids = (in.attention_mask.cumsum(1) - 1).masked_fill(in.attention_mask == 0, 1);
    }
    in.last_positions = 1;  // every row's last column is a real token (left padding); only its logits are needed
    auto hidden       = model_.forward_hidden(in).hidden.select(1, 0);
    auto logits       = model_.logits(hidden).to(at::kFloat);
    at::Tensor seen;
    if (penalty_) {
        auto counts = at::zeros({G, cfg_.vocab_size}, at::TensorOptions().dtype(at::kLong).device(device_));
        auto mask   = in.attention_mask.defined() ? in.attention_mask : at::ones_like(in.input_ids);
        seen        = counts.scatter_add_(1, in.input_ids, mask) > 0;
    }
    for (int64_t g = 0; g < G; ++g) {
        for (int64_t j = 0; j < n_; ++j) {
            batch.seqs.push_back((first + g) * n_ + j);
            batch.pad.push_back(pad[g]);
        }
    }
    batch.last.assign(batch.seqs.size(), 0);
    if (n_ > 1) {  // the samples of a prompt share its prefill: copy its cache row n times
        auto rows = at::arange(G, at::TensorOptions().dtype(at::kLong).device(device_)).repeat_interleave(n_);
        batch.cache.select_rows(rows);
        logits = logits.index_select(0, rows);
        if (penalty_) seen = seen.index_select(0, rows);
    }
    batch.seen = seen;
    advance(batch, logits);
    stats_.prefill_seconds += seconds_since(t0);
    return batch;
}

void GenerationRun::join(Batch& running, Batch& incoming) {
    if (incoming.rows() == 0) return;
    if (running.rows() == 0) {
        std::swap(running, incoming);
        return;
    }
    const int64_t L1 = running.cache.length(), L2 = incoming.cache.length(), T = std::max(L1, L2);
    std::vector<int64_t> pad;
    for (auto p : running.pad) pad.push_back(p + T - L1);
    for (auto p : incoming.pad) pad.push_back(p + T - L2);
    const int64_t trim = *std::min_element(pad.begin(), pad.end());
    model::KVCache joined(layers_);
    for (int64_t l = 0; l < layers_; ++l) {
        auto [k1, v1] = cache_views(running.cache, l, running.rows(), cfg_, params_opts_);
        auto [k2, v2] = cache_views(incoming.cache, l, incoming.rows(), cfg_, params_opts_);
        auto k = at::cat({at::constant_pad_nd(k1, {0, 0, T - L1, 0}), at::constant_pad_nd(k2, {0, 0, T - L2, 0})}, 0);
        auto v = at::cat({at::constant_pad_nd(v1, {0, 0, T - L1, 0}), at::constant_pad_nd(v2, {0, 0, T - L2, 0})}, 0);
        joined.append(l, k.narrow(2, trim, T - trim), v.narrow(2, trim, T - trim));
    }
    joined.advance(T - trim);
    running.cache = std::move(joined);
    for (auto& p : pad) p -= trim;
    running.pad = std::move(pad);
    running.seqs.insert(running.seqs.end(), incoming.seqs.begin(), incoming.seqs.end());
    running.last.insert(running.last.end(), incoming.last.begin(), incoming.last.end());
    if (penalty_) running.seen = at::cat({running.seen, incoming.seen}, 0);
}

void GenerationRun::decode_step(Batch& running) {
    auto t0            = Clock::now();
    const int64_t rows = running.rows();
    const int64_t T    = running.cache.length();
    rows_              = rows;
    tokens_            = T + 1;
    std::vector<int64_t> positions(rows);
    for (int64_t r = 0; r < rows; ++r) positions[r] = T - running.pad[r];
    model::ForwardInputs in;
    in.input_ids    = long_tensor(running.last, device_).view({rows, 1});
    in.position_ids = long_tensor(positions, device_).view({rows, 1});
    if (running.padded()) in.attention_mask = mask_from_pad(running.pad, T + 1, device_);
    in.cache    = &running.cache;
    auto hidden = model_.forward_hidden(in).hidden.select(1, 0);
    advance(running, model_.logits(hidden).to(at::kFloat));
    ++stats_.decode_steps;
    stats_.decode_tokens += rows;
    stats_.decode_seconds += seconds_since(t0);
}

void GenerationRun::advance(Batch& batch, const at::Tensor& logits) {
    const int64_t rows = batch.rows();
    auto scores        = process_logits(logits, options_.sampling, batch.seen);
    std::vector<double> uniforms;
    if (options_.sampling.do_sample)
        for (auto idx : batch.seqs) uniforms.push_back(seqs_[idx].rng.uniform());
    auto chosen = choose_tokens(scores, options_.sampling.do_sample, uniforms);
    at::Tensor logprobs;
    if (options_.logprobs)
        logprobs = at::log_softmax(logits, -1).gather(1, chosen.unsqueeze(1)).squeeze(1).to(at::kCPU);
    if (batch.seen.defined()) batch.seen.scatter_(1, chosen.unsqueeze(1), true);
    auto tokens        = chosen.to(at::kCPU);
    const int64_t* tok = tokens.data_ptr<int64_t>();
    std::vector<int64_t> keep;
    for (int64_t r = 0; r < rows; ++r) {
        Sequence& s = seqs_[batch.seqs[r]];
        record_token(s, tok[r], logprobs, r);
        if (!s.done) keep.push_back(r);
        batch.last[r] = tok[r];
    }
    if (static_cast<int64_t>(keep.size()) != rows) keep_rows(batch, keep);
}

void GenerationRun::record_token(Sequence& s, int64_t t, const at::Tensor& logprobs, int64_t row) {
    ++s.out.generated_tokens;
    ++stats_.generated_tokens;
    if (eos_.count(t)) {
        finish(s, FinishReason::eos, std::to_string(t));
        return;
    }
    if (stop_ids_.count(t)) {
        finish(s, FinishReason::stop, std::to_string(t));
        return;
    }
    s.out.ids.push_back(static_cast<TokenId>(t));
    if (options_.logprobs) s.out.logprobs.push_back(logprobs[row].item<float>());
    if (s.matcher) {
        if (s.matcher->feed(s.decoder->push(static_cast<TokenId>(t)))) {
            finish(s, FinishReason::stop, *s.matcher->matched());
        } else if (callbacks_.on_text) {
            std::string piece = s.matcher->take_safe();
            if (!piece.empty()) callbacks_.on_text(s.out, piece);
        }
    }
    if (!s.done && s.out.generated_tokens >= s.budget) finish(s, FinishReason::length, "");
}

void GenerationRun::keep_rows(Batch& batch, const std::vector<int64_t>& keep) {
    if (keep.empty()) {
        batch.cache.clear();
        batch.seqs.clear();
        batch.pad.clear();
        batch.last.clear();
        batch.seen = at::Tensor();
        return;
    }
    const int64_t rows = batch.rows();
    int64_t trim       = batch.pad[keep[0]];
    for (auto r : keep) trim = std::min(trim, batch.pad[r]);
    auto rows_t = long_tensor(keep, device_);
    if (trim == 0) {
        batch.cache.select_rows(rows_t);
    } else {
        const int64_t length = batch.cache.length();
        model::KVCache kept(layers_);
        for (int64_t l = 0; l < layers_; ++l) {
            auto [k, v] = cache_views(batch.cache, l, rows, cfg_, params_opts_);
            kept.append(l, k.index_select(0, rows_t).narrow(2, trim, length - trim),
                        v.index_select(0, rows_t).narrow(2, trim, length - trim));
        }
        kept.advance(length - trim);
        batch.cache = std::move(kept);
    }
    auto pick = [&](auto& v) {
        std::remove_reference_t<decltype(v)> out;
        for (auto r : keep) out.push_back(v[r]);
        v = std::move(out);
    };
    pick(batch.seqs);
    pick(batch.last);
    pick(batch.pad);
    for (auto& p : batch.pad) p -= trim;
    if (batch.seen.defined()) batch.seen = batch.seen.index_select(0, rows_t);
}

void GenerationRun::finish(Sequence& s, FinishReason reason, std::string stop) {
    s.done              = true;
    s.out.finish_reason = reason;
    s.out.stop          = std::move(stop);
    if (s.matcher) {
        if (!s.matcher->stopped() && s.matcher->feed(s.decoder->finish())) {
            s.out.finish_reason = FinishReason::stop;
            s.out.stop          = *s.matcher->matched();
        }
        s.out.text = s.matcher->text();
        if (callbacks_.on_text) {
            std::string rest = s.matcher->take_rest();
            if (!rest.empty()) callbacks_.on_text(s.out, rest);
        }
    }
    if (callbacks_.on_complete) callbacks_.on_complete(s.out);
}

}  // namespace

std::vector<Completion> Generator::generate(const std::vector<std::vector<TokenId>>& prompts,
                                            const GenerateOptions& options, const GenerateCallbacks& callbacks) {
    options.validate();
    if (!options.stop_strings.empty() && !tokenizer_)
        throw UsageError("stop strings need a tokenizer (the model folder has none)");
    check_prompts(prompts, model_->config);
    c10::InferenceMode inference;
    stats_ = {};
    GenerationRun run(*model_, tokenizer_.get(), eos_, prompts, options, callbacks, stats_);
    return run.run();
}

}  // namespace medllm::generate

// Generator: the scheduler that runs prompts x samples through RaggedForward with continuous batching, prefix
// caching and per-sequence random streams (engine.h).
#include "medllm/generate/engine.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <new>
#include <set>
#include <unordered_set>

#include <torch/torch.h>

#include "medllm/core/error.h"
#include "medllm/generate/ragged_forward.h"
#include "medllm/generate/stop.h"

namespace medllm::generate {
namespace {

// Prompt tokens prefilled in one forward at most (at least one chunk): large enough for efficient matrix
// products, small enough to bound activation memory and to keep decoding rows moving between prefills.
constexpr int64_t kStepPrefillTokens = 1024;
// Default bound of the prefix cache: a few hundred prompts' worth of shared few-shot examples at the 0.5B-7B
// shapes (about 25-60 KiB per token in fp32 / bf16), small next to the weights.
constexpr double kDefaultPrefixCacheBytes = double(int64_t{1} << 30);

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

// CPU time of this process, all threads (GenerationStats' *_cpu_seconds).
double process_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
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
    : model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      eos_(std::move(eos_token_ids)),
      prefix_cache_(std::make_unique<PrefixCache>(kDefaultPrefixCacheBytes)) {
    if (!model_) throw Error("Generator: no model");
}

Generator::~Generator() = default;

void Generator::clear_prefix_cache() {
    prefix_cache_->clear();
}

void Generator::set_prefix_cache_bytes(double bytes) {
    prefix_cache_->set_max_bytes(bytes);
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

struct Sequence {
    explicit Sequence(SequenceRng sequence_rng) : rng(std::move(sequence_rng)) {}
    Completion out;
    std::optional<text::StreamDecoder> decoder;
    std::optional<StopStringMatcher> matcher;
    SequenceRng rng;
    SequenceKV kv;
    TokenId last   = 0;  // the token it feeds next
    int64_t budget = 0;  // max new tokens for this sequence (options, cut by the context)
    bool done      = false;
};

// A prompt being prefilled, chunk by chunk, before its samples decode.
struct Prefill {
    std::size_t prompt = 0;
    SequenceKV kv;     // its tokens [0, kv.length()) are in; kv.length() is a multiple of kPrefillChunk
    uint64_t key = 0;  // prefix-cache key of the chunks in kv (0 before the first)
};

// One call of Generator::generate: every prompt × sample as a Sequence, and the loop that builds each forward from
// the decoding sequences (one token each) and the next chunks of the prompts being prefilled.
class GenerationRun {
public:
    GenerationRun(model::Qwen2ForCausalLM& model, const text::Tokenizer* tokenizer, const std::vector<int64_t>& eos,
                  const std::vector<std::vector<TokenId>>& prompts, const GenerateOptions& options,
                  const GenerateCallbacks& callbacks, GenerationStats& stats, PrefixCache& cache);

    // Generates every sequence. Throws Error (one line) when memory runs out, with the batch that needed it.
    std::vector<Completion> run();

private:
    // Refuses (Error) a run whose KV cache cannot fit in this machine's memory at all (CPU only).
    void check_kv_cache_fits() const;
    void loop();
    // Copies the chunks of the prompt's prefix that the cache holds into its KV (never its last chunk: the last
    // token's logits must be computed).
    void take_cached_chunks(Prefill& p);
    // Records token `t` for sequence `s`; finishes it on EOS, a stop token or string, or its length budget.
    void record_token(Sequence& s, int64_t t, const float* logprob);
    void finish(Sequence& s, FinishReason reason, std::string stop);
    // Chooses one token for each row of fp32 `logits` [R, V], row r for sequence seqs[r] (its own random stream and
    // repetition-penalty history).
    std::vector<int64_t> choose(const at::Tensor& logits, const std::vector<std::size_t>& seqs,
                                std::vector<float>* logprobs);

    model::Qwen2ForCausalLM& model_;
    const std::vector<std::vector<TokenId>>& prompts_;
    const GenerateOptions& options_;
    const GenerateCallbacks& callbacks_;
    GenerationStats& stats_;
    PrefixCache& cache_;
    RaggedForward forward_;
    const model::Qwen2Config& cfg_;
    const at::TensorOptions params_opts_;
    const at::Device device_;
    const int64_t n_, max_rows_;
    std::set<int64_t> eos_, stop_ids_;
    std::vector<Sequence> seqs_;
    int64_t rows_ = 0, tokens_ = 0;  // the batch of the forward in progress (for an allocation failure's message)
};

GenerationRun::GenerationRun(model::Qwen2ForCausalLM& model, const text::Tokenizer* tokenizer,
                             const std::vector<int64_t>& eos, const std::vector<std::vector<TokenId>>& prompts,
                             const GenerateOptions& options, const GenerateCallbacks& callbacks, GenerationStats& stats,
                             PrefixCache& cache)
    : model_(model),
      prompts_(prompts),
      options_(options),
      callbacks_(callbacks),
      stats_(stats),
      cache_(cache),
      forward_(model),
      cfg_(model.config),
      params_opts_(model.model->embed_tokens->weight.options()),
      device_(params_opts_.device()),
      n_(options.num_samples),
      max_rows_(std::max(options.max_batch_size, options.num_samples)),
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
        loop();
    } catch (const std::exception& e) {
        const std::string why = allocation_failure(e);
        if (why.empty()) throw;
        throw Error("cannot allocate memory for a batch of " + std::to_string(rows_) + " x " + std::to_string(tokens_) +
                    " tokens (its KV cache alone is " +
                    gib_text(double(rows_) * double(tokens_) *
                             SequenceKV::bytes_per_token(cfg_, params_opts_.dtype().toScalarType())) +
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
    const double need =
        double(rows) * double(tokens) * SequenceKV::bytes_per_token(cfg_, params_opts_.dtype().toScalarType());
    const double have = physical_memory_bytes();
    // Only a cache larger than all of the machine's memory is refused up front: the allocation could not succeed,
    // and on Linux it might not even fail but grow until the kernel kills the process.
    if (have > 0 && need > have)
        throw Error("cannot allocate " + gib_text(need) + " GiB for the KV cache of batch " + std::to_string(rows) +
                    " x " + std::to_string(tokens) + " tokens: the machine has " + gib_text(have) +
                    " GiB; lower --batch-size, -n or --max-new-tokens");
}

void GenerationRun::take_cached_chunks(Prefill& p) {
    const auto& prompt = prompts_[p.prompt];
    const int64_t len  = static_cast<int64_t>(prompt.size());
    while (p.kv.length() + kPrefillChunk < len) {
        const TokenId* tokens = prompt.data() + p.kv.length();
        const uint64_t key    = PrefixCache::chunk_key(p.key, tokens, kPrefillChunk);
        const at::Tensor* hit = cache_.find(key, p.key, tokens);
        if (!hit) return;
        p.kv.append_block(*hit);
        p.key = key;
        stats_.cached_prompt_tokens += kPrefillChunk;
    }
}

void GenerationRun::loop() {
    std::deque<std::size_t> waiting;
    for (std::size_t i = 0; i < prompts_.size(); ++i) waiting.push_back(i);
    std::deque<Prefill> prefilling;    // admission order
    std::vector<std::size_t> running;  // sequences decoding
    const int64_t ctx = cfg_.max_position_embeddings;
    while (!waiting.empty() || !prefilling.empty() || !running.empty()) {
        // Admit prompts while their samples have rows (a prompt being prefilled holds its n rows already).
        while (!waiting.empty() &&
               static_cast<int64_t>(running.size()) + n_ * static_cast<int64_t>(prefilling.size() + 1) <= max_rows_) {
            Prefill p;
            p.prompt       = waiting.front();
            const auto len = static_cast<int64_t>(prompts_[p.prompt].size());
            p.kv = SequenceKV(cfg_, params_opts_, std::min(ctx, len + std::min<int64_t>(options_.max_new_tokens, 256)));
            stats_.prompt_tokens += len;
            prefilling.push_back(std::move(p));
            waiting.pop_front();
        }
        const auto t0     = Clock::now();
        const double cpu0 = process_cpu_seconds();
        // The forward: one token of every decoding sequence, then the next chunk of each prompt being prefilled
        // (up to kStepPrefillTokens), skipping a chunk another prompt computes in this very forward (it will be in
        // the prefix cache next time).
        std::vector<Segment> segments;
        for (auto idx : running) segments.push_back({&seqs_[idx].kv, &seqs_[idx].last, 1, true, true});
        struct Chunk {
            Prefill* prefill;
            uint64_t key;  // its prefix-cache key
            int64_t start, count;
        };
        std::vector<Chunk> chunks;
        std::unordered_set<uint64_t> computing;
        int64_t prefill_tokens = 0;
        for (auto& p : prefilling) {
            if (prefill_tokens >= kStepPrefillTokens) break;
            take_cached_chunks(p);
            const auto& prompt  = prompts_[p.prompt];
            const int64_t start = p.kv.length();
            const int64_t end   = std::min<int64_t>(static_cast<int64_t>(prompt.size()), start + kPrefillChunk);
            const uint64_t key  = PrefixCache::chunk_key(p.key, prompt.data() + start, end - start);
            if (end - start == kPrefillChunk && !computing.insert(key).second) continue;
            segments.push_back(
                {&p.kv, prompt.data() + start, end - start, end == static_cast<int64_t>(prompt.size()), false});
            chunks.push_back({&p, key, start, end - start});
            prefill_tokens += end - start;
        }
        rows_   = static_cast<int64_t>(running.size() + prefilling.size() * n_);
        tokens_ = 0;
        for (const auto& s : segments) tokens_ = std::max(tokens_, s.kv->length() + s.count);
        const auto hidden = forward_.forward(segments);
        const auto logits = forward_.logits(hidden);  // rows: the decoding sequences, then the prompts that ended

        // Rows of the tokens to choose: each decoding sequence, then n per prompt whose prefill ended.
        std::vector<std::size_t> seq_of_row(running.begin(), running.end());
        std::vector<int64_t> logit_row(running.size());
        for (std::size_t r = 0; r < running.size(); ++r) logit_row[r] = static_cast<int64_t>(r);
        int64_t next_logit_row = static_cast<int64_t>(running.size());
        std::vector<Prefill*> ended;
        for (const auto& c : chunks) {
            Prefill* p         = c.prefill;
            const auto& prompt = prompts_[p->prompt];
            if (c.count == kPrefillChunk) {
                cache_.insert(c.key, p->key, prompt.data() + c.start, p->kv.block(c.start, kPrefillChunk).clone());
                p->key = c.key;
            }
            if (p->kv.length() == static_cast<int64_t>(prompt.size())) {
                for (int64_t j = 0; j < n_; ++j) {
                    seq_of_row.push_back(p->prompt * n_ + j);
                    logit_row.push_back(next_logit_row);
                }
                ++next_logit_row;
                ended.push_back(p);
            }
        }
        std::vector<float> logprobs;
        const auto chosen = choose(logits.index_select(0, at::tensor(logit_row, at::kLong).to(logits.device())),
                                   seq_of_row, options_.logprobs ? &logprobs : nullptr);
        // Prompts whose prefill ended: their samples get their caches (sample 0 takes the prompt's) and decode.
        for (Prefill* p : ended) {
            for (int64_t j = n_ - 1; j >= 0; --j) {
                Sequence& s        = seqs_[p->prompt * n_ + j];
                const int64_t room = std::min(ctx, p->kv.length() + std::min<int64_t>(s.budget, 256) + 1);
                s.kv               = j == 0 ? std::move(p->kv) : p->kv.copy(room);
            }
        }
        std::vector<std::size_t> still;
        for (std::size_t r = 0; r < seq_of_row.size(); ++r) {
            Sequence& s = seqs_[seq_of_row[r]];
            record_token(s, chosen[r], options_.logprobs ? &logprobs[r] : nullptr);
            s.last = static_cast<TokenId>(chosen[r]);
            if (s.done) {
                s.kv = SequenceKV();
            } else {
                still.push_back(seq_of_row[r]);
            }
        }
        if (!ended.empty()) {
            std::deque<Prefill> left;
            for (auto& p : prefilling)
                if (std::find(ended.begin(), ended.end(), &p) == ended.end()) left.push_back(std::move(p));
            prefilling = std::move(left);
        }
        const double seconds = seconds_since(t0), cpu = process_cpu_seconds() - cpu0;
        if (prefill_tokens > 0) {
            stats_.prefill_seconds += seconds;
            stats_.prefill_cpu_seconds += cpu;
        } else {
            stats_.decode_seconds += seconds;
            stats_.decode_cpu_seconds += cpu;
            ++stats_.decode_steps;
            stats_.decode_tokens += static_cast<int64_t>(running.size());
        }
        running = std::move(still);
    }
}

std::vector<int64_t> GenerationRun::choose(const at::Tensor& logits, const std::vector<std::size_t>& seqs,
                                           std::vector<float>* logprobs) {
    const int64_t R = logits.size(0);
    if (R == 0) return {};
    at::Tensor seen;
    if (options_.sampling.repetition_penalty != 1.0) {
        // HF's penalty covers the prompt and every generated token.
        std::vector<int64_t> rows, ids;
        for (int64_t r = 0; r < R; ++r) {
            const Sequence& s  = seqs_[seqs[r]];
            const auto& prompt = prompts_[s.out.prompt_index];
            for (TokenId t : prompt) rows.push_back(r), ids.push_back(t);
            for (TokenId t : s.out.ids) rows.push_back(r), ids.push_back(t);
        }
        seen = at::zeros({R, cfg_.vocab_size}, at::TensorOptions().dtype(at::kBool).device(logits.device()));
        seen.index_put_(
            {at::tensor(rows, at::kLong).to(logits.device()), at::tensor(ids, at::kLong).to(logits.device())},
            at::ones({}, seen.options()));
    }
    auto scores = process_logits(logits, options_.sampling, seen);
    std::vector<double> uniforms;
    if (options_.sampling.do_sample)
        for (auto idx : seqs) uniforms.push_back(seqs_[idx].rng.uniform());
    auto picked = choose_tokens(scores, options_.sampling.do_sample, uniforms);
    if (logprobs) {
        auto lp = at::log_softmax(logits, -1).gather(1, picked.unsqueeze(1)).squeeze(1).to(at::kCPU).contiguous();
        logprobs->assign(lp.data_ptr<float>(), lp.data_ptr<float>() + R);
    }
    auto cpu = picked.to(at::kCPU).contiguous();
    return std::vector<int64_t>(cpu.data_ptr<int64_t>(), cpu.data_ptr<int64_t>() + R);
}

void GenerationRun::record_token(Sequence& s, int64_t t, const float* logprob) {
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
    if (logprob) s.out.logprobs.push_back(*logprob);
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
    GenerationRun run(*model_, tokenizer_.get(), eos_, prompts, options, callbacks, stats_, *prefix_cache_);
    return run.run();
}

}  // namespace medllm::generate

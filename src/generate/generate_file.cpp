// `medllm generate --input/--output`: prompt records through a Generator into a resumable JSONL.
#include "medllm/generate/generate_file.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>
#include <memory>
#include <set>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/shards.h"

namespace medllm::generate {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

PromptRecord parse_prompt_record(const json& j, const std::string& where, const text::Tokenizer& tokenizer) {
    if (!j.is_object()) throw Error(where + ": expected a JSON object with \"prompt\" or \"messages\"");
    PromptRecord r;
    if (j.contains("id")) r.id = j["id"];
    if (j.contains("prompt_ids")) {
        const auto& p = j["prompt_ids"];
        if (!p.is_array()) throw Error(where + ": \"prompt_ids\" must be a list of token ids");
        std::vector<TokenId> ids;
        for (const auto& v : p) {
            if (!v.is_number_integer() || v.get<int64_t>() < 0 ||
                v.get<int64_t>() > std::numeric_limits<TokenId>::max())
                throw Error(where + ": \"prompt_ids\" holds " + v.dump() + ", not a token id");
            ids.push_back(v.get<TokenId>());
        }
        r.ids = std::move(ids);
    } else if (j.contains("prompt")) {
        if (!j["prompt"].is_string()) throw Error(where + ": \"prompt\" must be a string");
        r.text = j["prompt"].get<std::string>();
    } else if (j.contains("messages")) {
        const auto& m = j["messages"];
        if (!m.is_array() || m.empty()) throw Error(where + ": \"messages\" must be a non-empty list");
        std::vector<text::ChatMessage> messages;
        for (const auto& msg : m) {
            if (!msg.is_object() || !msg.contains("role") || !msg.contains("content") || !msg["role"].is_string() ||
                !msg["content"].is_string())
                throw Error(where + ": each message needs string \"role\" and \"content\"");
            messages.push_back({msg["role"].get<std::string>(), msg["content"].get<std::string>()});
        }
        r.text = tokenizer.apply_chat_template(messages, /*add_generation_prompt=*/true);
    } else {
        throw Error(where + ": needs a \"prompt\" string, a \"messages\" list or \"prompt_ids\"");
    }
    return r;
}

json completion_json(const Completion& c, bool logprobs) {
    json j;
    j["text"]             = c.text;
    j["token_ids"]        = c.ids;
    j["finish_reason"]    = to_string(c.finish_reason);
    j["stop"]             = c.stop;
    j["generated_tokens"] = c.generated_tokens;
    if (logprobs) j["logprobs"] = c.logprobs;
    return j;
}

// The prompts an existing output already holds, checked against the input: every record names a prompt of this
// input, once.
std::set<std::size_t> done_indices(const std::vector<json>& records, const std::vector<std::string>& where,
                                   std::size_t num_prompts) {
    std::set<std::size_t> done;
    for (std::size_t i = 0; i < records.size(); ++i) {
        const json& r = records[i];
        if (!r.contains("index") || !r["index"].is_number_unsigned())
            throw Error(where[i] + ": record has no \"index\"; not a generate output file?");
        const auto index = r["index"].get<std::size_t>();
        if (index >= num_prompts)
            throw Error(where[i] + ": record index " + std::to_string(index) + " but the input has " +
                        std::to_string(num_prompts) + " prompts; the file is damaged");
        if (!done.insert(index).second)
            throw Error(where[i] + ": prompt " + std::to_string(index) + " is recorded twice; the file is damaged");
    }
    return done;
}

// A record's "index" (ShardedRecords' key and order); a record without one sorts first and is refused by
// done_indices on the next run.
int64_t record_index(const json& r) {
    return r.is_object() && r.contains("index") && r["index"].is_number_unsigned() ? r["index"].get<int64_t>() : -1;
}

}  // namespace

std::vector<PromptRecord> read_prompt_records(const fs::path& path, const text::Tokenizer& tokenizer) {
    const std::string content = read_text_file(path);
    std::vector<PromptRecord> records;
    std::size_t pos = 0;
    for (std::size_t line_no = 1; pos < content.size(); ++line_no) {
        std::size_t nl = content.find('\n', pos);
        if (nl == std::string::npos) nl = content.size();
        std::string_view line(content.data() + pos, nl - pos);
        pos = nl + 1;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
        const std::string where = path.string() + ":" + std::to_string(line_no);
        json j;
        try {
            j = json::parse(line);
        } catch (const std::exception& e) {
            throw Error(where + ": not valid JSON (" + std::string(e.what()) + ")");
        }
        PromptRecord r = parse_prompt_record(j, where, tokenizer);
        r.index        = records.size();
        r.line         = line_no;
        records.push_back(std::move(r));
    }
    return records;
}

json decoding_identity(const GenerateOptions& o, const std::vector<int64_t>& eos_token_ids) {
    const auto& s = o.sampling;
    json sampling = {{"do_sample", s.do_sample}};
    if (s.do_sample) {
        sampling["temperature"] = s.temperature;
        sampling["top_k"]       = s.top_k;
        sampling["top_p"]       = s.top_p;
        sampling["min_p"]       = s.min_p;
        sampling["seed"]        = o.seed;  // greedy decoding draws nothing
    }
    sampling["repetition_penalty"] = s.repetition_penalty;
    return {{"max_new_tokens", o.max_new_tokens},
            {"sampling", sampling},
            {"num_samples", o.num_samples},
            {"stop_token_ids", o.stop_token_ids},
            {"stop_strings", o.stop_strings},
            {"eos_token_ids", eos_token_ids},
            {"ignore_eos", o.ignore_eos},
            {"logprobs", o.logprobs},
            {"skip_special_tokens", o.skip_special_tokens}};
}

std::vector<std::vector<TokenId>> encode_prompt_records(const std::vector<PromptRecord>& records, Generator& generator,
                                                        const std::string& source) {
    const text::Tokenizer* tok = generator.tokenizer();
    std::vector<std::string> texts;
    bool need_tokenizer = false;
    for (const auto& r : records) {
        texts.push_back(r.ids ? std::string() : r.text);
        need_tokenizer = need_tokenizer || !r.ids;
    }
    if (need_tokenizer && !tok) throw Error(source + ": text prompts need a tokenizer (the model folder has none)");
    std::vector<std::vector<TokenId>> ids =
        need_tokenizer ? tok->encode_batch(texts) : std::vector<std::vector<TokenId>>(records.size());
    const int64_t vocab = generator.model().config.vocab_size;
    const int64_t ctx   = generator.context_length();
    for (std::size_t i = 0; i < records.size(); ++i) {
        if (records[i].ids) ids[i] = *records[i].ids;
        const std::string where = records[i].line ? source + ":" + std::to_string(records[i].line) : source;
        for (auto id : ids[i])
            if (id >= vocab)
                throw Error(where + ": token id " + std::to_string(id) + " is outside the model's vocabulary of " +
                            std::to_string(vocab));
        if (ids[i].empty()) throw Error(where + ": the prompt is empty");
        if (static_cast<int64_t>(ids[i].size()) >= ctx)
            throw Error(where + ": the prompt has " + std::to_string(ids[i].size()) +
                        " tokens, which leaves no room in the model's context of " + std::to_string(ctx) + " tokens");
    }
    return ids;
}

GenerateFileResult generate_to_file(Generator& generator, const std::vector<PromptRecord>& records, GenerateOptions gen,
                                    const GenerateFileOptions& options) {
    gen.validate();
    const ShardPlace& place = options.place;
    GenerateFileResult result;
    result.prompts = records.size();
    if (records.empty()) throw Error(options.source + ": no prompts");
    if (place.sharded() && options.output.empty())
        throw UsageError(options.source + ": several processes share the prompts only into an output file");
    // Every prompt is checked before anything is written, so a bad line never leaves a half-run file.
    auto all_ids = encode_prompt_records(records, generator, options.source);

    std::unique_ptr<ShardedRecords> out;
    std::set<std::size_t> done;
    if (!options.output.empty()) {
        json identity        = options.identity.is_null() ? json::object() : options.identity;
        identity["decoding"] = decoding_identity(gen, generator.eos_token_ids());
        out                  = std::make_unique<ShardedRecords>(
            options.output, identity, options.overwrite, "pass --overwrite to start over, or choose another --output",
            place, [](const json& r) { return std::to_string(record_index(r)); }, record_index);
        done           = done_indices(out->existing(), out->existing_where(), records.size());
        result.resumed = done.size();
        if (!done.empty() && place.is_main())
            spdlog::info("{}: resuming, {} of {} prompts already done", options.output.string(), done.size(),
                         records.size());
    }
    // Every rank computes the same list; rank R runs its items k with k % world_size == R.
    std::vector<const PromptRecord*> todo;
    std::vector<std::vector<TokenId>> ids;
    std::size_t todo_count = 0;
    for (std::size_t i = 0; i < records.size(); ++i) {
        if (done.count(records[i].index)) continue;
        if (place.owns(todo_count++)) {
            todo.push_back(&records[i]);
            ids.push_back(std::move(all_ids[i]));
        }
    }
    result.generated = todo_count;
    if (todo_count == 0 && place.is_main())
        spdlog::info("{}: all {} prompts are done", options.output.string(), records.size());
    if (place.sharded())
        spdlog::info("rank {} of {}: {} of the {} prompts to do", place.rank, place.world_size, todo.size(),
                     todo_count);

    const int64_t n = gen.num_samples;
    std::map<std::size_t, std::vector<Completion>> partial;  // prompt -> finished samples
    std::size_t prompts_done = 0;
    int64_t tokens_done      = 0;
    const auto t0            = std::chrono::steady_clock::now();
    auto last_log            = t0;

    GenerateCallbacks cb;
    cb.on_text     = options.on_text;
    cb.on_complete = [&](const Completion& c) {
        tokens_done += c.generated_tokens;
        auto& samples = partial[c.prompt_index];
        samples.push_back(c);
        if (static_cast<int64_t>(samples.size()) < n) return;
        std::sort(samples.begin(), samples.end(),
                  [](const Completion& a, const Completion& b) { return a.sample_index < b.sample_index; });
        const PromptRecord& r = *todo[c.prompt_index];
        if (out) {
            json j;
            j["index"] = r.index;
            if (!r.id.is_null()) j["id"] = r.id;
            j["prompt_tokens"] = c.prompt_tokens;
            j["completions"]   = json::array();
            for (const auto& s : samples) j["completions"].push_back(completion_json(s, gen.logprobs));
            out->append(j);  // flushed and checked: a full disk stops the run here
        }
        if (options.on_record) options.on_record(r, samples);
        partial.erase(c.prompt_index);
        ++prompts_done;
        const auto now = std::chrono::steady_clock::now();
        if (options.log_progress &&
            (std::chrono::duration<double>(now - last_log).count() >= 5.0 || prompts_done == todo.size())) {
            last_log       = now;
            const double s = std::chrono::duration<double>(now - t0).count();
            spdlog::info("{}/{} prompts, {} tokens generated, {:.1f} tok/s, ETA {:.0f} s", prompts_done, todo.size(),
                         tokens_done, tokens_done / std::max(s, 1e-9),
                         s / static_cast<double>(prompts_done) * static_cast<double>(todo.size() - prompts_done));
        }
    };
    if (!todo.empty()) {
        gen.prompt_keys.clear();
        for (const auto* r : todo) gen.prompt_keys.push_back(r->index);  // a resumed run draws the same samples
        result.completions = generator.generate(ids, gen, cb);
        result.stats       = generator.last_stats();
    }
    // In a group: waits for every rank's share; rank 0 folds the shards into the output in index order.
    if (out) out->finish();
    return result;
}

}  // namespace medllm::generate
